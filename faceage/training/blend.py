"""The choice of the weight with which a model blends dlib's untouched age model into its ages."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch

from faceage.model.age_model import AgeModel, blended
from faceage.model.inference import predict

log = logging.getLogger(__name__)


def blend_errors(own: np.ndarray, reference: np.ndarray, ages: np.ndarray, weights: tuple[float, ...]) -> dict:
    """Mean absolute error of the ages :func:`~faceage.model.age_model.blended` by each weight."""
    return {b: float(np.abs(blended(own, reference, b) - ages).mean()) for b in weights}


def choose_blend(
    model: AgeModel,
    images: np.ndarray,
    val_ids: np.ndarray,
    ages: np.ndarray,
    weights: tuple[float, ...],
    batch_size: int,
    device: torch.device,
    amp: contextlib.AbstractContextManager | None = None,
) -> dict[float, float]:
    """Set ``model.blend`` to the weight in ``weights`` (``model.reference_blend``) whose blended ages have the
    lowest validation MAE (predicted as training validates: without mirror images), dropping dlib's untouched
    model at weight 0; return each weight's validation MAE. ``model`` holds the untouched model (it was built
    with a blend of ``max(weights)``) when any weight is above 0."""
    predicted = {}
    for b in sorted({0.0, 1.0} if model.reference is not None else {0.0}):  # its own ages, then the reference's
        model.blend = b
        predicted[b] = predict(model, images, val_ids, batch_size, device, amp)["age"]
    errors = blend_errors(predicted[0.0], predicted.get(1.0, predicted[0.0]), ages[val_ids], weights)
    model.blend = min(weights, key=errors.get)
    if model.blend == 0:
        model.reference = None
    log.info("validation MAE blended with dlib's untouched model: %s", {b: round(e, 3) for b, e in errors.items()})
    return errors
