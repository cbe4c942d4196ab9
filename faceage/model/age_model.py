"""The one type every faceage model has: networks whose ages are averaged, then blended with dlib's untouched
age model, then (once calibrated) corrected and given an interval."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn

from faceage.model.batches import resized
from faceage.model.dlib_resnet import AGE_CLASSES
from faceage.model.inference import mirrored
from faceage.model.intervals import Calibration, IntervalHead
from faceage.model.networks import AgeNet
from faceage.model.reference import REFERENCE_INPUT, ReferenceAgeModel

UNTOUCHED_DLIB = "dlib"  # the model name for dlib's age model as its authors trained it
UNTOUCHED_DLIB_DATASET = {"name": "dlib's age training faces", "kind": "real"}
Ages = TypeVar("Ages")  # tensors or arrays of ages in years


def blended(own: Ages, reference: Ages, weight: float) -> Ages:
    """The blend of a model's own ages with dlib's untouched model's: (1 - ``weight``) x own + ``weight`` x
    reference. Every blended age faceage gives or chooses a weight by is computed here."""
    return (1 - weight) * own + weight * reference


def float32(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off where it is on: ages are read out of the networks' outputs in float32."""
    enabled = torch.is_autocast_enabled(device_type)
    return torch.autocast(device_type, enabled=False) if enabled else contextlib.nullcontext()


def faces_size(input_sizes: Sequence[int], image_size: int) -> int:
    """The size faces are given to a model at: its one network's input size, else the size they are stored at
    (each network resizes them to its own)."""
    return input_sizes[0] if len(input_sizes) == 1 else image_size


class AgeModel(nn.Module):
    """Networks trained apart that predict as one, in evaluation: each sees the faces resized to its own input
    size (as in its training), their ages in years are averaged, and that age is blended with dlib's untouched
    model by ``blend`` (:func:`blended`). A single network is a model of one; dlib's untouched model alone is a
    model of none with ``blend`` 1.

    Its outputs are ``age`` in years, the spreads it offers for intervals (``distribution_spread``: the standard
    deviation of the blended age distribution, when every network has one; ``members_spread``: that of the
    networks' ages, when there are several) and, when the first network has a gender head,
    ``female_probability``; once :meth:`calibrate` d, the age is corrected and ``age_low`` and ``age_high`` are
    added (:class:`~faceage.model.intervals.IntervalHead`). Grad-CAM explains the first network (``trunk``,
    ``last_conv``).
    """

    def __init__(
        self,
        networks: Sequence[AgeNet],
        input_sizes: Sequence[int],
        blend: float,
        age_range: tuple[int, int],
        image_size: int,
    ):
        super().__init__()
        if not networks and blend != 1:
            raise ValueError("a model without networks is dlib's untouched model: its blend is 1")
        self.networks = nn.ModuleList(networks)
        self.input_sizes = tuple(input_sizes)
        self.blend = blend
        self.age_range = age_range
        self.image_size = image_size
        self.input_size = faces_size(self.input_sizes, image_size)
        bins = torch.arange(age_range[0], age_range[1] + 1, dtype=torch.float32)
        self.register_buffer("bin_ages", bins, persistent=False)
        self.reference = ReferenceAgeModel(bins) if blend > 0 else None
        self.calibration: Calibration | None = None
        self.interval_head: IntervalHead | None = None

    def calibrate(self, calibration: Calibration | None) -> None:
        """Correct ages and give intervals as ``calibration`` says (``None``: neither)."""
        self.calibration = calibration
        self.interval_head = IntervalHead(calibration, self.age_range) if calibration else None

    @classmethod
    def of(cls, network: AgeNet, input_size: int) -> AgeModel:
        """``network`` alone, unblended, given faces at ``input_size``."""
        bins = network.bin_ages
        return cls([network], [input_size], 0.0, (int(bins[0]), int(bins[-1])), input_size)

    @property
    def trunk(self) -> nn.Module:
        return self.networks[0].trunk

    @property
    def last_conv(self) -> str:
        return self.networks[0].last_conv

    def network_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The networks' mean age in years, unblended, their spreads, the mean of their age distributions (when
        each has one) and the first network's probability of female."""
        ages, distributions, outputs = [], [], {}
        for index, (network, size) in enumerate(zip(self.networks, self.input_sizes, strict=True)):
            network_outputs = network(resized(x, size))
            with float32(x.device.type):  # the read-out as in training
                ages.append(network.years(network_outputs["age_output"]))
                if network.classification:
                    distributions.append(network_outputs["age_output"].float().softmax(dim=1))
                if index == 0 and "gender" in network_outputs:
                    outputs["female_probability"] = network_outputs["gender"].float().sigmoid()
        stacked = torch.stack(ages)
        outputs["age"] = stacked.mean(0)
        if len(ages) > 1:
            outputs["members_spread"] = stacked.std(0, correction=0)
        if len(distributions) == len(ages):
            outputs["distribution"] = torch.stack(distributions).mean(0)
        return outputs

    def reference_distribution(self, x: torch.Tensor) -> torch.Tensor:
        """dlib's untouched model's age distribution on this model's 1-year bins."""
        distribution = self.reference(x)
        with float32(x.device.type):
            return distribution.float()

    def blended_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The networks' outputs blended with dlib's untouched model, with the blended age ``distribution`` when
        every network has one."""
        if not self.networks:
            distribution = self.reference_distribution(x)
            return {"age": distribution @ self.bin_ages, "distribution": distribution}
        outputs = self.network_outputs(x)
        if self.reference is not None:
            reference = self.reference_distribution(x)
            outputs["age"] = blended(outputs["age"], reference @ self.bin_ages, self.blend)
            if "distribution" in outputs:
                outputs["distribution"] = blended(outputs["distribution"], reference, self.blend)
        return outputs

    @property
    def calibrated_flip(self) -> bool:
        """Whether the ages its intervals were calibrated on were averaged with the mirror images' (``False``
        without intervals): how it predicts unless told otherwise."""
        return self.calibration.flip if self.calibration else False

    @property
    def has_distribution(self) -> bool:
        """Whether the model gives an age distribution: every network has a classification head."""
        return all(network.classification for network in self.networks)

    def age_distribution(self, x: torch.Tensor) -> torch.Tensor:
        """The model's age distribution over ``bin_ages`` for the faces ``x`` (one view, uncalibrated): what a
        student network learns from."""
        if not self.has_distribution:
            raise ValueError("a model with a regression network has no age distribution")
        return self.blended_outputs(x)["distribution"]

    def estimate(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs for one view of the faces ``x``, before mirror-image averaging and calibration."""
        outputs = self.blended_outputs(x)
        if "distribution" in outputs:
            distribution = outputs.pop("distribution")
            with float32(x.device.type):
                mean = distribution @ self.bin_ages
                variance = (distribution * (self.bin_ages - mean[:, None]).square()).sum(1)
                outputs["distribution_spread"] = variance.sqrt()
        return outputs

    def forward(self, x: torch.Tensor, flip: bool = False) -> dict[str, torch.Tensor]:
        """The outputs for the faces ``x``; with ``flip``, each the mean of the face's and its mirror image's."""
        outputs = mirrored(self.estimate, x, flip)
        return self.interval_head(outputs) if self.interval_head is not None else outputs


def untouched_dlib(age_range: tuple[int, int] | None = None) -> AgeModel:
    """dlib's age model as its authors trained it on real faces (no training of ours): its 64 px chips in, its
    expected age read out on the 1-year bins of ``age_range`` (by default those its classes round to)."""
    age_range = age_range or (round(min(AGE_CLASSES)), round(max(AGE_CLASSES)))
    return AgeModel([], [], blend=1.0, age_range=age_range, image_size=REFERENCE_INPUT).eval()
