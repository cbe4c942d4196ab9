"""The calibration of a trained model's intervals. Validation faces choose (the monotone correction, the
spread); the calibration faces give the conformal quantiles, so that the interval's coverage is guaranteed on
faces like them: on average, or in each true-age group (``intervals.age_groups``). With
``intervals.calibrate_with_val`` the validation faces calibrate too: more faces per age group, at the cost of
faces that also chose the spread."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import KFold

from faceage.errors import FaceageError
from faceage.model.age_model import AgeModel
from faceage.model.inference import predict
from faceage.model.intervals import (
    Calibration,
    IntervalHead,
    Knots,
    age_group_quantiles,
    conformal_quantile,
    group_quantiles,
    spread_names,
)
from faceage.report_sections import IntervalParams

log = logging.getLogger(__name__)


def isotonic_knots(predicted: np.ndarray, true: np.ndarray) -> Knots:
    """The knots of the increasing isotonic regression of ``true`` on ``predicted`` (linear between them)."""
    fit = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(predicted, true)
    return tuple(map(float, fit.X_thresholds_)), tuple(map(float, fit.y_thresholds_))


def fit_correction(predicted: np.ndarray, true: np.ndarray, params: IntervalParams) -> tuple[Knots | None, dict]:
    """The monotone correction fitted on all validation faces, kept only if its cross-fitted validation MAE
    (each fold corrected by a fit on the other folds) is below the uncorrected MAE; and that comparison."""
    before = float(np.abs(predicted - true).mean())
    if not params.correction:
        return None, {"tried": False}
    if len(true) < 2 * params.correction_folds:
        return None, {"tried": False, "reason": f"fewer than {2 * params.correction_folds} validation faces"}
    crossed = np.empty_like(predicted)
    folds = KFold(params.correction_folds, shuffle=True, random_state=params.seed)
    for fitting, held in folds.split(predicted):
        x, y = isotonic_knots(predicted[fitting], true[fitting])
        crossed[held] = np.interp(predicted[held], x, y)
    after = float(np.abs(crossed - true).mean())
    kept = after < before
    report = {"tried": True, "kept": kept, "val_mae": round(before, 4), "val_mae_corrected": round(after, 4)}
    return (isotonic_knots(predicted, true) if kept else None), report


def age_spread_knots(age: np.ndarray, true: np.ndarray, bins: int) -> Knots:
    """The validation error expected at a predicted age: the mean absolute error in each of ``bins``
    predicted-age quantile bins, placed at the bin's median age."""
    order = np.argsort(age, kind="stable")
    x, y = [], []
    for chunk in np.array_split(order, min(bins, len(age))):
        centre = float(np.median(age[chunk]))
        if not x or centre > x[-1]:
            x.append(centre)
            y.append(float(np.abs(true[chunk] - age[chunk]).mean()))
    return tuple(x), tuple(y)


def width(head: IntervalHead, outputs: dict[str, np.ndarray]) -> float:
    """Mean width of the intervals ``head`` gives the faces of ``outputs``."""
    bounds = head.on_arrays(outputs)
    return float((bounds["age_high"] - bounds["age_low"]).mean())


def calibrate(
    model: AgeModel,
    images: np.ndarray,
    ages: np.ndarray,
    val_ids: np.ndarray,
    calibration_ids: np.ndarray,
    params: IntervalParams,
    batch_size: int,
    device: torch.device,
    flip: bool,
) -> dict:
    """Calibrate ``model``'s intervals (see the module's docstring) on faces predicted as evaluation predicts
    them (float32, mirror images with ``flip``); return what was tried and chosen."""
    model.calibrate(None)
    val = predict(model, images, val_ids, batch_size, device, flip=flip)
    held = predict(model, images, calibration_ids, batch_size, device, flip=flip)
    val_true, held_true = ages[val_ids].astype(float), ages[calibration_ids].astype(float)
    if params.calibrate_with_val:
        held = {key: np.concatenate([val[key], values]) for key, values in held.items()}
        held_true = np.concatenate([val_true, held_true])
    correction, correction_report = fit_correction(val["age"], val_true, params)
    base = Calibration(
        params.level, "fixed", 1.0, 1.0, len(held_true), flip, correction, shared=params.calibrate_with_val
    )
    corrected = IntervalHead(base, model.age_range).on_arrays(val)["age"]
    base = replace(base, age_spread=age_spread_knots(corrected, val_true, params.age_bins))

    def calibrated(spread: str, outputs: dict[str, np.ndarray], true: np.ndarray) -> Calibration:
        """``base`` with ``spread``, its quantiles those of the faces of ``outputs``."""
        candidate = replace(base, spread=spread)
        scores = IntervalHead(candidate, model.age_range).scores(outputs, true)
        groups = (
            age_group_quantiles(scores, true, params.age_groups, params.level, model.age_range)
            if params.age_groups
            else None
        )
        return replace(
            candidate,
            quantile=conformal_quantile(scores, params.level),
            age_group_quantiles=groups,
            age_spread=base.age_spread if spread == "age" else None,
        )

    offered = spread_names(val)
    tried = [name for name in params.spreads if name in offered]
    if not tried:
        raise FaceageError(f"intervals.spreads: this model offers none of {list(params.spreads)}; it offers {offered}")
    widths = {name: width(IntervalHead(calibrated(name, val, val_true), model.age_range), val) for name in tried}
    spread = min(tried, key=widths.get)
    calibration = replace(
        calibrated(spread, held, held_true), fixed_quantile=calibrated("fixed", held, held_true).quantile
    )
    model.calibrate(calibration)
    log.info("interval spreads, mean validation width at %s: %s", params.level, widths)
    return {
        "level": params.level,
        "calibration_faces": len(held_true),
        "calibrated_on": ["val", "calibration"] if params.calibrate_with_val else ["calibration"],
        "correction": correction_report,
        "val_width_by_spread": {name: round(value, 4) for name, value in widths.items()},
        "not_offered": [name for name in params.spreads if name not in offered],
        "spread": spread,
        "quantile": round(calibration.quantile, 6),
        "age_group_quantiles": group_quantiles(calibration),
        "fixed_quantile": round(calibration.fixed_quantile, 6),
    }
