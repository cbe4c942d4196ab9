"""Error metrics of age predictions."""

from __future__ import annotations

import itertools

import numpy as np


def bucket_labels(edges: tuple[int, ...]) -> list[str]:
    """Readable names of the age buckets that start at ``edges``: ``1-5``, ..., ``101+``."""
    return [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)] + [f"{edges[-1]}+"]


def bucket_index(ages: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """Bucket of each age; bucket ``i`` holds ``edges[i] <= age < edges[i + 1]`` (younger ages go to the first)."""
    return np.clip(np.searchsorted(np.asarray(edges), ages, side="right") - 1, 0, len(edges) - 1)


def error_summary(true: np.ndarray, predicted: np.ndarray, edges: tuple[int, ...]) -> dict:
    """MAE, RMSE, CS@5 and MAE per age bucket (``None`` where a bucket is empty)."""
    true, predicted = np.asarray(true, float), np.asarray(predicted, float)
    error = predicted - true
    buckets = bucket_index(true, edges)
    per_bucket = {}
    for index, label in enumerate(bucket_labels(edges)):
        inside = buckets == index
        per_bucket[label] = {
            "count": int(inside.sum()),
            "mae": round(float(np.abs(error[inside]).mean()), 4) if inside.any() else None,
        }
    return {
        "count": len(true),
        "mae": round(float(np.abs(error).mean()), 4),
        "rmse": round(float(np.sqrt((error**2).mean())), 4),
        "cs5": round(float((np.abs(error) <= 5).mean()), 4),
        "buckets": per_bucket,
    }
