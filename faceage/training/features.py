"""Network outputs for manifest ids: from images, or from backbone features computed once while the trunk is
frozen; and a teacher's age distributions of the training faces, computed once."""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from faceage.model.age_model import AgeModel
from faceage.model.batches import index_batches, to_input
from faceage.model.inference import predict
from faceage.model.networks import AgeNet
from faceage.training.augment import BatchAugmenter


@torch.no_grad()
def taught_distributions(
    teacher: AgeModel,
    images: np.ndarray,
    ids: np.ndarray,
    batch_size: int,
    device: torch.device,
    amp: contextlib.AbstractContextManager,
    show_progress: bool = True,
) -> torch.Tensor:
    """``teacher``'s age distribution of the faces ``ids`` (un-augmented, one view, as training validates) in a
    table by manifest id; other rows are 0."""
    teacher.eval()
    table = torch.zeros(len(images), len(teacher.bin_ages), device=device)
    batches = list(index_batches(np.sort(ids), batch_size))
    for batch in tqdm(
        batches, desc="teacher's age distributions", unit="batch", disable=None if show_progress else True
    ):
        with amp:
            table[torch.from_numpy(batch).to(device)] = teacher.age_distribution(
                to_input(images[batch], teacher.input_size, device)
            ).float()
    return table


class Inputs:
    """Turns manifest ids into model outputs, from images or from backbone features computed once; with
    ``taught`` (:func:`taught_distributions`), the outputs hold the teacher's age distribution as ``teacher``."""

    def __init__(
        self,
        model: AgeNet,
        images: np.ndarray,
        input_size: int,
        batch_size: int,
        device: torch.device,
        show_progress: bool = True,
        taught: torch.Tensor | None = None,
    ):
        self.model = model
        self.taught = taught
        self.images = images
        self.input_size = input_size
        self.train_size = input_size  # of training batches from images; validation is always at input_size
        self.batch_size = batch_size
        self.device = device
        self.show_progress = show_progress  # a bar on terminals; never in the processes besides the main one
        self.features: torch.Tensor | None = None
        self.rows: dict[int, int] = {}

    @torch.no_grad()
    def cache_features(self, ids: np.ndarray, amp: contextlib.AbstractContextManager) -> None:
        """Run the frozen backbone once over ``ids`` and keep the pooled features."""
        self.model.trunk.eval()
        ids = np.sort(ids)
        parts = []
        batches = list(index_batches(ids, self.batch_size))
        disable = None if self.show_progress else True  # None: a bar on terminals only
        for batch in tqdm(batches, desc="backbone features", unit="batch", disable=disable):
            x = to_input(self.images[batch], self.input_size, self.device)
            with amp:
                parts.append(self.model.trunk(x).float())
        self.features = torch.cat(parts)
        self.rows = {int(i): row for row, i in enumerate(ids)}

    def outputs(
        self,
        network: nn.Module,
        ids: np.ndarray,
        augmenter: BatchAugmenter | None = None,
        share: tuple[slice, int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """What ``network`` (the model, or the model under DDP) outputs for ``ids``; ``share`` as for
        :class:`BatchAugmenter` when ``ids`` are this process's rows of a batch."""
        if self.features is not None:
            rows = torch.tensor([self.rows[int(i)] for i in ids], device=self.device)
            outputs = network(self.features[rows], pooled=True)
        else:
            augment = functools.partial(augmenter, share=share) if augmenter is not None else None
            outputs = network(to_input(self.images[ids], self.train_size, self.device, augment))
        if self.taught is not None:
            outputs["teacher"] = self.taught[torch.from_numpy(np.asarray(ids)).to(self.device)]
        return outputs

    @torch.no_grad()
    def predict(self, network: AgeNet, ids: np.ndarray, amp: contextlib.AbstractContextManager) -> np.ndarray:
        """Ages in years that ``network`` (the trained one or its average, same trunk) predicts for ``ids``."""
        if self.features is None:
            alone = AgeModel.of(network, self.input_size)
            return predict(alone, self.images, ids, self.batch_size, self.device, amp)["age"]
        was_training = network.training
        network.eval()
        rows = torch.tensor([self.rows[int(i)] for i in ids], device=self.device)
        with amp:
            age_output = network.head(self.features[rows])["age_output"]
        years = network.years(age_output)  # in float32: autocast would run the read-out in low precision
        network.train(was_training)
        return years.cpu().numpy()
