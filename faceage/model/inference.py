"""Ages from a model: over arrays of stored faces, and with mirror-image test-time augmentation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from faceage.model.batches import index_batches, to_input


def mirrored(
    model: Callable[[torch.Tensor], dict[str, torch.Tensor]], x: torch.Tensor, flip: bool
) -> dict[str, torch.Tensor]:
    """``model``'s outputs for the faces ``x``; with ``flip``, the mean of each face's and its mirror image's.
    The one place mirror-image test-time augmentation is done: a model's forward (which evaluation,
    ``faceage predict``, the served model and the exported graphs all call) predicts through it."""
    views = (x, x.flip(-1)) if flip else (x,)
    outputs = [model(view) for view in views]
    return {key: torch.stack([output[key].float() for output in outputs]).mean(0) for key in outputs[0]}


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device,
    amp: contextlib.AbstractContextManager | None = None,
    flip: bool = False,
) -> dict[str, np.ndarray]:
    """The outputs of ``model`` (an :class:`~faceage.model.age_model.AgeModel`) for ``images[indices]`` in the
    order of ``indices``, each face resized to ``model.input_size``; ``flip`` as for :func:`mirrored`."""
    was_training = model.training
    model.eval()
    indices = np.asarray(indices)
    order = np.argsort(indices, kind="stable")
    results: dict[str, np.ndarray] = {}
    position = 0
    for batch in index_batches(indices[order], batch_size):
        x = to_input(images[batch], model.input_size, device)
        with amp or contextlib.nullcontext():
            outputs = model(x, flip=flip)
        rows = order[position : position + len(batch)]
        for key, values in outputs.items():
            results.setdefault(key, np.empty(len(indices)))[rows] = values.float().cpu().numpy()
        position += len(batch)
    model.train(was_training)
    return results
