"""Error metrics of age predictions, with bootstrap confidence intervals."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

Metric = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (true, predicted) along the last axis -> value
GENDER_NAMES = {0: "male", 1: "female"}
RACE_NAMES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}
UNKNOWN = "unknown"
BOOTSTRAP_CHUNK = 100  # resamples evaluated at once; does not change results


def mae(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Mean absolute error."""
    return np.abs(predicted - true).mean(axis=-1)


def rmse(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Root mean squared error."""
    return np.sqrt(((predicted - true) ** 2).mean(axis=-1))


def bias(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Mean signed error: positive when the model overestimates ages."""
    return (predicted - true).mean(axis=-1)


def r2(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Coefficient of determination."""
    residual = ((true - predicted) ** 2).sum(axis=-1)
    total = ((true - true.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    return 1 - residual / np.where(total > 0, total, np.nan)


def cumulative_score(threshold: float) -> Metric:
    """CS@threshold: share of predictions within ``threshold`` years."""

    def score(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        return (np.abs(predicted - true) <= threshold).mean(axis=-1)

    return score


def bootstrap_interval(
    metric: Metric, true: np.ndarray, predicted: np.ndarray, resamples: int, seed: int, confidence: float
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` over resampled (true, predicted) pairs."""
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        rows = rng.integers(0, len(true), (min(BOOTSTRAP_CHUNK, resamples - start), len(true)))
        values.append(metric(true[rows], predicted[rows]))
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(np.concatenate(values), [tail, 100 - tail])
    return float(low), float(high)


def with_interval(
    metric: Metric, true: np.ndarray, predicted: np.ndarray, resamples: int, seed: int, confidence: float
) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high"}`` of one metric."""
    low, high = bootstrap_interval(metric, true, predicted, resamples, seed, confidence)
    return {"value": round(float(metric(true, predicted)), 4), "ci_low": round(low, 4), "ci_high": round(high, 4)}


def cs_name(threshold: float) -> str:
    """The name of the CS@k metric for ``threshold`` k: ``cs5`` for 5, ``cs2.5`` for 2.5."""
    return f"cs{threshold:g}"


def bucket_labels(edges: tuple[int, ...]) -> list[str]:
    """Names of the age buckets that start at ``edges``: ``1-5``, ..., ``101+`` (both ends inclusive)."""
    return [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)] + [f"{edges[-1]}+"]


def bucket_index(ages: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """Bucket of each age; bucket ``i`` holds ``edges[i] <= age < edges[i + 1]`` (younger ages go to the first)."""
    return np.clip(np.searchsorted(np.asarray(edges), ages, side="right") - 1, 0, len(edges) - 1)


def bucket_mae(true: np.ndarray, predicted: np.ndarray, edges: tuple[int, ...]) -> dict[str, dict]:
    """Count, MAE and bias (mean signed error) per age bucket of the true age (``None`` where a bucket is
    empty)."""
    buckets = bucket_index(true, edges)
    table = {}
    for index, label in enumerate(bucket_labels(edges)):
        inside = buckets == index
        table[label] = {
            "count": int(inside.sum()),
            "mae": round(float(mae(true[inside], predicted[inside])), 4) if inside.any() else None,
            "bias": round(float(bias(true[inside], predicted[inside])), 4) if inside.any() else None,
        }
    return table


def group_confusion(true: np.ndarray, predicted: np.ndarray, lower_edges: tuple[int, ...]) -> dict:
    """Accuracy and confusion matrix (rows: true group, columns: predicted) over age groups.

    ``lower_edges`` are the first ages of the groups after the first, e.g. ``(26, 51, 76)`` for
    0-25, 26-50, 51-75 and 76+.
    """
    edges = (0, *lower_edges)
    labels = bucket_labels(edges)
    true_group = bucket_index(true, edges)
    predicted_group = bucket_index(np.round(predicted), edges)
    matrix = confusion_matrix(true_group, predicted_group, labels=range(len(labels)))
    return {
        "accuracy": round(float((true_group == predicted_group).mean()), 4),
        "confusion": {t: {p: int(matrix[i, j]) for j, p in enumerate(labels)} for i, t in enumerate(labels)},
    }


def subgroup_mae(errors: pd.Series, groups: pd.Series, names: dict[int, str]) -> dict:
    """MAE per subgroup (``unknown`` where the label is missing) and the largest gap between two of them."""
    labels = groups.map(names).astype(object).where(groups.notna(), UNKNOWN)
    table = {
        str(label): {"count": len(part), "mae": round(float(part.abs().mean()), 4)}
        for label, part in errors.groupby(labels, sort=True)
    }
    known = {label: row["mae"] for label, row in table.items() if label != UNKNOWN}
    gap = None
    if len(known) >= 2:
        worst, best = max(known, key=known.get), min(known, key=known.get)
        gap = {"worst": worst, "best": best, "mae_gap": round(known[worst] - known[best], 4)}
    return {"groups": table, "largest_gap": gap}
