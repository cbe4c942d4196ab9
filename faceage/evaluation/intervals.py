"""How well intervals and over/under decisions serve: coverage and width per age bucket, threshold error rates
for the point estimate and the interval rule, and challenge ages."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from faceage.evaluation.metrics import bucket_index, bucket_labels
from faceage.model.intervals import Calibration, IntervalHead, one_width, over_decisions

CHALLENGE_STEP = 0.1  # years: challenge ages are given to this step, rounded up


def level_held(quantiles: dict[str, float] | None, quantile: float) -> str:
    """Where intervals hold their level, and by which conformal quantiles: in each true-age group, ``quantiles`` by
    :func:`~faceage.model.intervals.group_quantiles`, or ``quantile`` on average."""
    if not quantiles:
        return f"the level held on average, quantile {quantile:.3f}"
    groups = ", ".join(f"{first}+ {value:.3f}" for first, value in quantiles.items())
    return f"the level held in each true-age group, quantiles {groups}"


def share(condition: np.ndarray) -> float | None:
    """The share of true values, ``None`` for no values."""
    return round(float(np.mean(condition)), 4) if len(condition) else None


def coverage_report(true: np.ndarray, low: np.ndarray, high: np.ndarray, edges: tuple[int, ...], level: float) -> dict:
    """Share of faces whose interval holds their true age, and mean interval width: overall and per age bucket
    of the true age."""
    inside, widths = (low <= true) & (true <= high), high - low
    buckets = bucket_index(true, edges)
    table = {}
    for index, label in enumerate(bucket_labels(edges)):
        rows = buckets == index
        table[label] = {
            "count": int(rows.sum()),
            "coverage": share(inside[rows]),
            "width": round(float(widths[rows].mean()), 4) if rows.any() else None,
        }
    return {"level": level, "coverage": share(inside), "width": round(float(widths.mean()), 4), "buckets": table}


def threshold_rates(true: np.ndarray, predicted: np.ndarray, low: np.ndarray, high: np.ndarray, threshold: int) -> dict:
    """At one age threshold: the share of faces under it called over it, and of faces at or over it called under
    it, by the point estimate (over: estimated at ``threshold`` or more) and by the interval rule
    (:func:`~faceage.model.intervals.over_decisions`, with the shares it leaves uncertain)."""
    under, decisions = true < threshold, over_decisions(low, high, threshold)
    return {
        "under_faces": int(under.sum()),
        "over_faces": int((~under).sum()),
        "point_under_called_over": share(predicted[under] >= threshold),
        "point_over_called_under": share(predicted[~under] < threshold),
        "interval_under_called_over": share(decisions[under] == "yes"),
        "interval_under_uncertain": share(decisions[under] == "uncertain"),
        "interval_over_called_under": share(decisions[~under] == "no"),
        "interval_over_uncertain": share(decisions[~under] == "uncertain"),
    }


def challenge_buffer(predicted_under: np.ndarray, threshold: int, rate: float) -> float | None:
    """The smallest buffer B (a multiple of :data:`CHALLENGE_STEP`, at least 0) such that at most ``rate`` of the
    faces under ``threshold`` (their estimates ``predicted_under``) are estimated at ``threshold`` + B or more;
    ``None`` without such faces."""
    if not len(predicted_under):
        return None
    allowed = math.floor(rate * len(predicted_under))
    if allowed >= len(predicted_under):
        return 0.0
    pivot = np.sort(predicted_under)[::-1][allowed]  # threshold + B must be above this estimate
    steps = math.floor((pivot - threshold) / CHALLENGE_STEP) + 1
    return round(max(0, steps) * CHALLENGE_STEP, 4)


def challenge_rates(true: np.ndarray, predicted: np.ndarray, threshold: int, buffer: float) -> dict:
    """At the challenge age ``threshold`` + ``buffer``: the share of faces under ``threshold`` estimated at it or
    above (let through), and of faces at or over ``threshold`` estimated below it (sent to a further check)."""
    under, challenge = true < threshold, threshold + buffer
    return {
        "challenge_age": round(challenge, 4),
        "buffer": buffer,
        "under_at_or_above": share(predicted[under] >= challenge),
        "over_below": share(predicted[~under] < challenge),
    }


def interval_report(
    predictions: pd.DataFrame, calibration: Calibration, age_range: tuple[int, int], edges: tuple[int, ...]
) -> dict:
    """:func:`coverage_report` of the model's intervals, and under ``one_width`` that of one width for every
    face calibrated on the same faces (:func:`~faceage.model.intervals.one_width`)."""
    true, predicted = predictions["true_age"].to_numpy(float), predictions["predicted_age"].to_numpy(float)
    fixed = IntervalHead(one_width(calibration), age_range).on_arrays({"age": predicted})
    level = calibration.level
    return {
        **coverage_report(
            true, predictions["age_low"].to_numpy(float), predictions["age_high"].to_numpy(float), edges, level
        ),
        "one_width": coverage_report(true, fixed["age_low"], fixed["age_high"], edges, level),
    }


def threshold_report(predictions: pd.DataFrame, thresholds: tuple[int, ...]) -> dict:
    """:func:`threshold_rates` at each of ``thresholds``."""
    true, predicted = predictions["true_age"].to_numpy(float), predictions["predicted_age"].to_numpy(float)
    low, high = predictions["age_low"].to_numpy(float), predictions["age_high"].to_numpy(float)
    return {str(t): threshold_rates(true, predicted, low, high, t) for t in thresholds}


def challenge_report(
    predictions: pd.DataFrame, splits: list[str], thresholds: tuple[int, ...], rate: float
) -> dict[str, dict]:
    """Per split of ``splits``, per threshold: :func:`challenge_rates` at the buffer chosen on the validation
    split (:func:`challenge_buffer`)."""
    val = predictions[predictions["split"] == "val"]
    buffers = {}
    for threshold in thresholds:
        under = val["true_age"].to_numpy(float) < threshold
        buffers[threshold] = challenge_buffer(val["predicted_age"].to_numpy(float)[under], threshold, rate)
    report: dict[str, dict] = {}
    for name in splits:
        rows = predictions[predictions["split"] == name]
        true, predicted = rows["true_age"].to_numpy(float), rows["predicted_age"].to_numpy(float)
        report[name] = {
            str(t): {"buffer": None, "reason": "no validation face under the threshold"}
            if buffer is None
            else challenge_rates(true, predicted, t, buffer)
            for t, buffer in buffers.items()
        }
    return report
