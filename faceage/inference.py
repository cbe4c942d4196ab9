"""Rebuild a trained model from its checkpoint and predict ages."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from faceage.batches import index_batches, to_input
from faceage.errors import FaceageError
from faceage.models import build_model
from faceage.params import ModelParams, from_dict


def make_checkpoint(model: nn.Module, params: ModelParams, age_mean: float, age_std: float, **extra: object) -> dict:
    """Everything needed to rebuild ``model`` and its preprocessing; loadable with ``weights_only=True``."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"state_dict": state, "model": asdict(params), "age_mean": age_mean, "age_std": age_std, **extra}


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The model saved at ``path``, in eval mode on ``device``, and its checkpoint dict."""
    path = Path(path)
    if not path.is_file():
        raise FaceageError(f"no model at {path}: run the train stage first")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    params = replace(from_dict(ModelParams, checkpoint["model"], str(path)), pretrained=False)
    model = build_model(params)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint


@torch.no_grad()
def predict_ages(
    model: nn.Module,
    images: np.ndarray,
    indices: np.ndarray,
    input_size: int,
    age_mean: float,
    age_std: float,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Predicted age in years for ``images[indices]``, in the order of ``indices``."""
    was_training = model.training
    model.eval()
    indices = np.asarray(indices)
    order = np.argsort(indices, kind="stable")
    predictions = np.empty(len(indices), dtype=np.float64)
    position = 0
    for batch in index_batches(indices[order], batch_size):
        output = model(to_input(images[batch], input_size, device)).squeeze(1).float().cpu().numpy()
        predictions[order[position : position + len(batch)]] = output * age_std + age_mean
        position += len(batch)
    model.train(was_training)
    return predictions
