"""The calibration of a trained model's intervals. Validation faces choose (the monotone correction, the
spread); the calibration faces, used for nothing else, give the conformal quantile, so that the interval's
coverage is guaranteed on faces like them."""

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
from faceage.model.intervals import Calibration, IntervalHead, Knots, conformal_quantile, spread_names
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
    correction, correction_report = fit_correction(val["age"], val_true, params)
    base = Calibration(params.level, "fixed", 1.0, 1.0, len(calibration_ids), flip, correction)
    corrected = IntervalHead(base, model.age_range).on_arrays(val)["age"]
    base = replace(base, age_spread=age_spread_knots(corrected, val_true, params.age_bins))

    offered = spread_names(val)
    tried = [name for name in params.spreads if name in offered]
    if not tried:
        raise FaceageError(f"intervals.spreads: this model offers none of {list(params.spreads)}; it offers {offered}")
    widths = {}
    for name in tried:
        candidate = replace(base, spread=name)
        quantile = conformal_quantile(IntervalHead(candidate, model.age_range).scores(val, val_true), params.level)
        widths[name] = width(IntervalHead(replace(candidate, quantile=quantile), model.age_range), val)
    spread = min(tried, key=widths.get)

    def quantile_on_calibration_faces(name: str) -> float:
        head = IntervalHead(replace(base, spread=name), model.age_range)
        return conformal_quantile(head.scores(held, held_true), params.level)

    calibration = replace(
        base,
        spread=spread,
        quantile=quantile_on_calibration_faces(spread),
        fixed_quantile=quantile_on_calibration_faces("fixed"),
        age_spread=base.age_spread if spread == "age" else None,
    )
    model.calibrate(calibration)
    log.info("interval spreads, mean validation width at %s: %s", params.level, widths)
    return {
        "level": params.level,
        "calibration_faces": len(calibration_ids),
        "correction": correction_report,
        "val_width_by_spread": {name: round(value, 4) for name, value in widths.items()},
        "not_offered": [name for name in params.spreads if name not in offered],
        "spread": spread,
        "quantile": round(calibration.quantile, 6),
        "fixed_quantile": round(calibration.fixed_quantile, 6),
    }
