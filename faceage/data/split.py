"""Reproducible train/validation/calibration/test split, stratified on age, keeping duplicate images together."""

from __future__ import annotations

import numpy as np
import pandas as pd

from faceage.sections import SplitParams

SPLITS = ("train", "val", "calibration", "test")  # in this order, so that calibration faces come out of val's


def age_strata(ages: pd.Series, bins: int) -> np.ndarray:
    """Age-quantile bin of each sample (fewer bins when ages repeat a lot)."""
    return pd.qcut(ages.rank(method="first"), q=min(bins, len(ages)), labels=False, duplicates="drop").to_numpy()


def _allocate(groups: pd.DataFrame, fractions: dict[str, float], rng: np.random.Generator) -> dict[int, str]:
    """Assign whole groups to splits so each split's share of images in every stratum matches ``fractions``."""
    assignment: dict[int, str] = {}
    names = list(fractions)
    cumulative = np.cumsum([fractions[n] for n in names])
    for _, stratum in groups.groupby("stratum", sort=True):
        order = rng.permutation(len(stratum))
        sizes = stratum["size"].to_numpy()[order]
        midpoints = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
        choice = np.minimum(np.searchsorted(cumulative, midpoints), len(names) - 1)
        assignment.update(zip(stratum["group"].to_numpy()[order].tolist(), (names[c] for c in choice), strict=True))
    return assignment


def split_manifest(manifest: pd.DataFrame, params: SplitParams) -> pd.DataFrame:
    """Return ``id, split`` for every row of ``manifest``.

    Images with identical pixels (``pixel_hash``) form one group that never straddles two splits.
    When ``params.use_given`` is set and the data set names splits (``given_split``), those are
    kept; a validation split is carved from the given training images when none is given, and a calibration
    split from the validation images when none is given.
    """
    fractions = {name: getattr(params, name) for name in SPLITS}
    frame = manifest[["id", "age", "pixel_hash"]].copy()
    frame["group"] = frame.groupby("pixel_hash", sort=False).ngroup()
    frame["stratum"] = age_strata(frame["age"], params.stratify_bins)
    given = manifest.get("given_split", pd.Series(pd.NA, index=manifest.index))
    frame["split"] = given.astype("string") if params.use_given else pd.NA
    rng = np.random.default_rng(params.seed)

    undecided = frame["split"].isna()
    if not undecided.all():
        # A given split decides for its whole group; fill the rest from the given training images.
        by_group = frame[~undecided].groupby("group")["split"].first()
        frame.loc[undecided, "split"] = frame.loc[undecided, "group"].map(by_group)
        given_names = set(frame["split"].dropna())
        if "val" not in given_names:  # with the calibration faces, carved from these in turn
            held_out = params.val + (params.calibration if "calibration" not in given_names else 0)
            _carve(frame, "train", "val", params.train, held_out, rng)
        if "calibration" not in given_names:
            _carve(frame, "val", "calibration", params.val, params.calibration, rng)
        undecided = frame["split"].isna()
    if undecided.any():
        assignment = _allocate(_groups(frame[undecided]), fractions, rng)
        frame.loc[undecided, "split"] = frame.loc[undecided, "group"].map(assignment)
    return frame[["id", "split"]].astype({"split": "string"})


def _carve(frame: pd.DataFrame, source: str, carved: str, kept: float, share: float, rng: np.random.Generator) -> None:
    """Move ``share / (kept + share)`` of split ``source``'s groups to split ``carved``, in place."""
    rows = frame["split"] == source
    fractions = {source: kept / (kept + share), carved: share / (kept + share)}
    assignment = _allocate(_groups(frame[rows]), fractions, rng)
    frame.loc[rows, "split"] = frame.loc[rows, "group"].map(assignment)


def _groups(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per duplicate group: its stratum (of its first image) and size."""
    return frame.groupby("group", sort=True).agg(stratum=("stratum", "first"), size=("id", "size")).reset_index()


def split_report(manifest: pd.DataFrame, split: pd.DataFrame) -> dict:
    """Counts and age statistics per split."""
    ages = manifest[["id", "age"]].merge(split, on="id")
    report = {"total": len(ages)}
    for name in SPLITS:
        part = ages.loc[ages["split"] == name, "age"]
        report[name] = {
            "count": len(part),
            "share": round(len(part) / max(len(ages), 1), 4),
            "age_mean": round(float(part.mean()), 2) if len(part) else None,
            "age_std": round(float(part.std()), 2) if len(part) > 1 else None,
            "age_median": float(part.median()) if len(part) else None,
            "age_min": int(part.min()) if len(part) else None,
            "age_max": int(part.max()) if len(part) else None,
        }
    return report
