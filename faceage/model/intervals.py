"""Calibrated age intervals: a monotone correction of the age, and a per-face spread scaled by split-conformal
quantiles (one, or one per true-age group) so that the interval holds the true age of a set share of faces like
the calibration faces."""

from __future__ import annotations

import itertools
import math
import typing
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from faceage.errors import FaceageError
from faceage.report_sections import Spread

SPREADS: tuple[str, ...] = typing.get_args(Spread)  # what scales each face's interval, see Calibration
MIN_SPREAD = 0.05  # years: a spread is never taken below this, so that every score is finite
Knots = tuple[tuple[float, ...], tuple[float, ...]]  # x and y of a piecewise-linear function


def faces_needed(level: float) -> int:
    """The fewest calibration faces that calibrate an interval at ``level``: n with ceil((n + 1) x level) <= n."""
    return next(n for n in itertools.count(1) if math.ceil((n + 1) * level) <= n)


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile of calibration ``scores``: the ceil((n + 1) x ``level``)-th smallest, so that
    a new score of an exchangeable face is at most it with probability at least ``level``."""
    scores = np.sort(np.asarray(scores, dtype=float))
    rank = math.ceil((len(scores) + 1) * level)
    if rank > len(scores):
        raise FaceageError(
            f"{len(scores)} calibration faces cannot calibrate a {level:.0%} interval: it needs at least "
            f"{faces_needed(level)} (raise split.calibration or lower intervals.level)"
        )
    return float(scores[rank - 1])


def age_group_quantiles(
    scores: np.ndarray, ages: np.ndarray, firsts: tuple[int, ...], level: float, age_range: tuple[int, int]
) -> Knots:
    """The first age of each true-age group and the conformal quantile of its faces' ``scores`` (faces of true
    ``ages``; the groups start at the model's youngest age and at each of ``firsts`` within its range). A group
    with too few faces for ``level`` joins the next older one, the oldest the one before."""
    starts = np.array([age_range[0], *(first for first in firsts if age_range[0] < first <= age_range[1])], float)
    member = (np.searchsorted(starts, np.asarray(ages, dtype=float), side="right") - 1).clip(min=0)
    groups: list[list[int]] = []
    pending: list[int] = []
    for index in range(len(starts)):
        pending.append(index)
        if np.isin(member, pending).sum() >= faces_needed(level):
            groups.append(pending)
            pending = []
    if not groups:
        conformal_quantile(scores, level)  # too few faces for even one group: its one-line error
    groups[-1] += pending
    quantiles = (conformal_quantile(np.asarray(scores)[np.isin(member, group)], level) for group in groups)
    return tuple(float(starts[group[0]]) for group in groups), tuple(quantiles)


KNOTS = ("correction", "age_spread", "age_group_quantiles")  # the Calibration fields that are Knots


@dataclass(frozen=True)
class Calibration:
    """How a model turns its age and spread into an interval, as fitted by the train stage.

    ``correction`` maps the model's age to the corrected age (``None``: kept as it is). The face's spread is
    its age distribution's standard deviation (``distribution``), the standard deviation of its networks' ages
    (``members``), the validation error expected at its corrected age (``age``, knots ``age_spread``) or 1
    (``fixed``: one width for all). The interval is the corrected age +/- ``quantile`` x spread, within the
    model's age range; ``fixed_quantile`` is the half-width of the one-width interval calibrated on the same
    faces, kept to measure what the spread gains.

    With ``age_group_quantiles`` (the first age of each true-age group, and its quantile), the interval holds the
    level for the faces of each group rather than on average over all: it is the smallest interval holding every
    age y for which the face's distance |y - age| is within y's group's quantile x spread (label-conditional
    split conformal prediction), and ``quantile`` is kept only to report the one quantile of the same faces.
    """

    level: float
    spread: str
    quantile: float
    fixed_quantile: float
    faces: int  # calibration faces
    flip: bool  # whether the calibration faces were predicted with their mirror images
    correction: Knots | None = None
    age_spread: Knots | None = None
    age_group_quantiles: Knots | None = None
    shared: bool = False  # whether validation faces, which chose the spread and correction, calibrated too

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Calibration:
        knots = {key: tuple(map(tuple, values[key])) if values.get(key) else None for key in KNOTS}
        calibration = cls(**{**values, **knots})
        if calibration.spread not in SPREADS:
            raise ValueError(f"unknown spread {calibration.spread!r}")
        return calibration


class PiecewiseLinear(nn.Module):
    """The piecewise-linear function through knots ``(x, y)`` (x increasing), constant beyond the first and last
    knot, in operations every export format has."""

    def __init__(self, knots: Knots):
        super().__init__()
        x, y = (torch.tensor(values, dtype=torch.float32) for values in knots)
        self.register_buffer("start", x[:1].clone(), persistent=False)
        self.register_buffer("first", y[:1].clone(), persistent=False)
        self.register_buffer("lower", x[:-1].clone(), persistent=False)
        self.register_buffer("upper", x[1:].clone(), persistent=False)
        self.register_buffer("slopes", ((y[1:] - y[:-1]) / (x[1:] - x[:-1])).clone(), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.slopes.numel() == 0:
            return self.first.expand_as(t)
        covered = torch.minimum(torch.maximum(t[:, None], self.lower), self.upper) - self.lower
        return self.first + covered @ self.slopes


class AgeGroups(nn.Module):
    """The bounds of label-conditional intervals (see :class:`Calibration`) from each face's age, within the age
    range, and spread: in each true-age group, the ages within its quantile x spread of the face's age; then the
    smallest interval holding them all, in operations every export format has."""

    def __init__(self, quantiles: Knots, age_range: tuple[int, int]):
        super().__init__()
        starts, values = (torch.tensor(values, dtype=torch.float32) for values in quantiles)
        ends = torch.cat([starts[1:], torch.tensor([float(age_range[1])])])
        self.register_buffer("starts", starts, persistent=False)
        self.register_buffer("ends", ends, persistent=False)
        self.register_buffer("quantiles", values.clone(), persistent=False)

    def forward(self, age: torch.Tensor, spread: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.quantiles * spread[:, None]
        low = torch.maximum(age[:, None] - half, self.starts)
        high = torch.minimum(age[:, None] + half, self.ends)
        held = low <= high  # the group of the face's own age always holds it
        return (
            torch.where(held, low, torch.full_like(low, math.inf)).amin(1),
            torch.where(held, high, torch.full_like(high, -math.inf)).amax(1),
        )


def spread_names(outputs: dict) -> tuple[str, ...]:
    """The spreads a model's ``outputs`` offer: each output ``<name>_spread``, and ``age`` and ``fixed``."""
    return (*(name for name in SPREADS[:2] if f"{name}_spread" in outputs), "age", "fixed")


class IntervalHead(nn.Module):
    """A :class:`Calibration` applied to a model's outputs (ages in years, after mirror-image averaging): the age
    corrected, and ``age_low`` and ``age_high`` added."""

    def __init__(self, calibration: Calibration, age_range: tuple[int, int]):
        super().__init__()
        self.calibration = calibration
        self.age_range = age_range
        self.correction = PiecewiseLinear(calibration.correction) if calibration.correction else None
        self.age_spread = PiecewiseLinear(calibration.age_spread) if calibration.age_spread else None
        self.groups = AgeGroups(calibration.age_group_quantiles, age_range) if calibration.age_group_quantiles else None

    def centre_and_spread(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each face's corrected age and its spread (see :func:`face_spread`)."""
        age = self.correction(outputs["age"]) if self.correction is not None else outputs["age"]
        return age, face_spread(self.calibration.spread, age, outputs, self.age_spread)

    def forward(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        age, spread = self.centre_and_spread(outputs)
        if self.groups is not None:
            low, high = self.groups(age.clamp(*self.age_range), spread)
        else:
            half = self.calibration.quantile * spread
            low, high = (bound.clamp(*self.age_range) for bound in (age - half, age + half))
        return {**outputs, "age": age, "age_low": low, "age_high": high}

    @torch.no_grad()
    def on_arrays(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`forward` on outputs already predicted, as arrays."""
        tensors = {key: torch.tensor(np.asarray(values), dtype=torch.float32) for key, values in outputs.items()}
        return {key: values.numpy().astype(float) for key, values in self(tensors).items()}

    @torch.no_grad()
    def scores(self, outputs: dict[str, np.ndarray], ages: np.ndarray) -> np.ndarray:
        """Conformity scores of faces of true ``ages``: distance to the corrected age in units of spread."""
        tensors = {key: torch.tensor(np.asarray(values), dtype=torch.float32) for key, values in outputs.items()}
        age, spread = (values.numpy().astype(float) for values in self.centre_and_spread(tensors))
        return np.abs(np.asarray(ages, dtype=float) - age) / spread


def face_spread(
    spread: str, age: torch.Tensor, outputs: dict[str, torch.Tensor], age_spread: nn.Module | None
) -> torch.Tensor:
    """Each face's spread of kind ``spread`` (see :class:`Calibration`), at least :data:`MIN_SPREAD`."""
    if spread == "fixed":
        return torch.ones_like(age)
    values = age_spread(age) if spread == "age" else outputs[f"{spread}_spread"]
    return values.clamp(min=MIN_SPREAD)


def over_decisions(low: np.ndarray, high: np.ndarray, threshold: float) -> np.ndarray:
    """Whether each face is at least ``threshold`` years old, from its interval: ``yes`` when the whole interval is
    at or above it, ``no`` when it is all below, else ``uncertain``."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    return np.where(low >= threshold, "yes", np.where(high < threshold, "no", "uncertain"))


def one_width(calibration: Calibration) -> Calibration:
    """The one-width interval calibrated on the same faces, around ages already corrected: the baseline that
    shows what the per-face spread gains."""
    return Calibration(
        calibration.level,
        "fixed",
        calibration.fixed_quantile,
        calibration.fixed_quantile,
        calibration.faces,
        calibration.flip,
    )


def interval_text(low: float, high: float) -> str:
    """An interval in whole years, rounded outward: ``26-37`` for 26.4 to 36.2."""
    return f"{math.floor(low)}-{math.ceil(high)}"


def group_quantiles(calibration: Calibration) -> dict[str, float] | None:
    """Each true-age group's conformal quantile by the group's first age, as the reports write them; ``None`` where
    one quantile serves all faces."""
    groups = calibration.age_group_quantiles
    return {f"{first:g}": round(q, 6) for first, q in zip(*groups, strict=True)} if groups else None
