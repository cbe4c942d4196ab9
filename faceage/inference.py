"""Rebuild a trained model from its checkpoint and predict ages."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from faceage.batches import index_batches, to_input
from faceage.errors import FaceageError
from faceage.models import AgeNet, build_model
from faceage.params import ModelParams, from_dict


def make_checkpoint(model: AgeNet, params: ModelParams, age_range: tuple[int, int], **extra: object) -> dict:
    """Everything needed to rebuild ``model``; loadable with ``torch.load(..., weights_only=True)``."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"state_dict": state, "model": asdict(params), "age_range": list(age_range), **extra}


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[AgeNet, dict]:
    """The model saved at ``path``, in eval mode on ``device``, and its checkpoint dict."""
    path = Path(path)
    if not path.is_file():
        raise FaceageError(f"no model at {path}: run the train stage first")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    params = replace(from_dict(ModelParams, checkpoint["model"], str(path)), pretrained=False)
    model = build_model(params, tuple(checkpoint["age_range"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint


@torch.no_grad()
def predict_ages(
    model: AgeNet,
    images: np.ndarray,
    indices: np.ndarray,
    input_size: int,
    batch_size: int,
    device: torch.device,
    amp: contextlib.AbstractContextManager | None = None,
) -> np.ndarray:
    """Predicted age in years for ``images[indices]``, in the order of ``indices``."""
    was_training = model.training
    model.eval()
    indices = np.asarray(indices)
    order = np.argsort(indices, kind="stable")
    predictions = np.empty(len(indices), dtype=np.float64)
    position = 0
    for batch in index_batches(indices[order], batch_size):
        with amp or contextlib.nullcontext():
            years = model.years(model(to_input(images[batch], input_size, device))["age"])
        predictions[order[position : position + len(batch)]] = years.float().cpu().numpy()
        position += len(batch)
    model.train(was_training)
    return predictions
