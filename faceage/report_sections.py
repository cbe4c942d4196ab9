"""The sections of ``params.yaml`` about what a trained model answers and reports: its intervals, the graph it
is served as, its evaluation, and its comparison with other runs. Their values are written in ``params.yaml``
only."""

from __future__ import annotations

import itertools
import typing
from dataclasses import dataclass
from typing import ClassVar, Literal

from faceage.checked import COUNT, INCREASING, MAX_BATCH, OPEN_UNIT, POSITIVE, SEED, Checked, Range, between
from faceage.sections import MAX_AGE

Spread = Literal["distribution", "members", "age", "fixed"]  # intervals.spreads: what scales a face's interval


@dataclass(frozen=True)
class EvaluateParams(Checked):
    """Metrics, their confidence intervals, and the galleries."""

    SECTION: ClassVar[str] = "evaluate"
    RANGES: ClassVar[dict[str, Range]] = {
        "batch_size": between(1, MAX_BATCH),
        "bootstrap_resamples": between(1, COUNT),
        "bootstrap_seed": SEED,
        "confidence": OPEN_UNIT,
        "cs_threshold": POSITIVE,
        "bucket_edges": INCREASING,
        "worst_errors": between(0, COUNT),
        "gradcam_per_bucket": between(0, COUNT),
        "age_groups": INCREASING,
        "thresholds": INCREASING,
        "challenge_rate": OPEN_UNIT,
    }

    batch_size: int
    flip_tta: bool  # average the predictions of each image and its mirror image
    bootstrap_resamples: int
    bootstrap_seed: int
    confidence: float
    cs_threshold: float  # CS@k: share of predictions within k years
    bucket_edges: tuple[int, ...]
    worst_errors: int  # faces in the worst-errors gallery
    gradcam_per_bucket: int  # test faces per age bucket in the Grad-CAM gallery
    age_groups: tuple[int, ...]  # first ages of the groups after the first: <30, 30-59, 60+
    thresholds: tuple[int, ...]  # ages of the over/under decisions reported
    challenge_rate: float  # share of faces under a threshold allowed at or above its challenge age


@dataclass(frozen=True)
class IntervalParams(Checked):
    """The interval given with every age: its level, the per-face spreads tried, and the monotone correction."""

    SECTION: ClassVar[str] = "intervals"
    RANGES: ClassVar[dict[str, Range]] = {
        "level": OPEN_UNIT,
        "spreads": (
            lambda v: len(v) > 0 and len(set(v)) == len(v) and set(v) <= set(typing.get_args(Spread)),
            f"different names of {', '.join(typing.get_args(Spread))}",
        ),
        "age_bins": between(1, 1000),
        "age_groups": (lambda v: all(a < b for a, b in itertools.pairwise(v)), "increasing ages, or none"),
        "correction_folds": between(2, 100),
        "seed": SEED,
    }

    level: float  # share of faces like the calibration faces whose interval holds their age
    spreads: tuple[str, ...]  # tried on validation: the narrowest kept
    age_bins: int  # spread "age": predicted-age bins over which validation errors are averaged
    age_groups: tuple[int, ...]  # first ages of the true-age groups after the first, each holding the level
    calibrate_with_val: bool  # the validation faces calibrate too (they also choose the spread and correction)
    correction: bool  # try the monotone correction of the age
    correction_folds: int  # cross-fitting folds that judge the correction on validation
    seed: int


@dataclass(frozen=True)
class ExportParams(Checked):
    """The graph ``faceage predict`` and ``faceage serve`` run when no model is named (the export stage): the
    model in ONNX, its convolutions in int8 where that keeps the validation MAE."""

    SECTION: ClassVar[str] = "export"
    RANGES: ClassVar[dict[str, Range]] = {
        "calibration_faces": between(1, COUNT),
        "int8_tolerance": (lambda v: 0 < v <= MAX_AGE, f"0 < value <= {MAX_AGE}"),
    }

    int8: bool  # convolutions in int8 where the validation MAE moves by less than int8_tolerance
    calibration_faces: int  # validation faces calibrating int8 (at most half of them: the others check it)
    int8_tolerance: float  # years


@dataclass(frozen=True)
class CompareParams(Checked):
    """The paired test of the current run against the best other run on the same data."""

    SECTION: ClassVar[str] = "compare"
    RANGES: ClassVar[dict[str, Range]] = {
        "bootstrap_resamples": between(1, COUNT),
        "seed": SEED,
        "confidence": OPEN_UNIT,
        "model_name": (lambda v: bool(v.strip()), "a name"),
    }

    bootstrap_resamples: int
    seed: int
    confidence: float
    promote: bool  # register the model, and make it the champion if significantly better on val
    model_name: str  # name in the MLflow Model Registry
