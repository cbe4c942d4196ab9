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

CHECKPOINT_KEYS = frozenset({"state_dict", "model", "age_range", "image_size"})


def make_checkpoint(
    model: AgeNet, params: ModelParams, age_range: tuple[int, int], image_size: int, **extra: object
) -> dict:
    """Everything needed to rebuild ``model`` and its preprocessing (``image_size``: the size images are
    stored at before the network resizes them); loadable with ``torch.load(..., weights_only=True)``."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "state_dict": state,
        "model": asdict(params),
        "age_range": list(age_range),
        "image_size": image_size,
        **extra,
    }


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[AgeNet, dict]:
    """The model saved at ``path``, in eval mode on ``device``, and its checkpoint dict."""
    path = Path(path)
    if not path.is_file():
        raise FaceageError(f"no model at {path}: run the train stage first")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on damaged files; each means "not a checkpoint"
        raise not_a_checkpoint(path, describe(error)) from None
    missing = CHECKPOINT_KEYS - set(checkpoint) if isinstance(checkpoint, dict) else CHECKPOINT_KEYS
    if missing:
        raise not_a_checkpoint(path, f"it has no {', '.join(sorted(missing))}")
    params = replace(from_dict(ModelParams, checkpoint["model"], str(path)), pretrained=False, head_init="random")
    model = build_model(params, tuple(checkpoint["age_range"]))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError) as error:
        mismatch = describe(error).split(". ")[0]
        raise FaceageError(f"{path}: its weights do not fit a {params.backbone} model ({mismatch})") from None
    return model.to(device, memory_format=torch.channels_last).eval(), checkpoint


def not_a_checkpoint(path: Path, reason: str) -> FaceageError:
    return FaceageError(f"{path} is not a faceage checkpoint ({reason}): run the train stage again")


def describe(error: Exception) -> str:
    """An exception as one short line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else f"{text[:200]}..."


@torch.no_grad()
def predict(
    model: AgeNet,
    images: np.ndarray,
    indices: np.ndarray,
    input_size: int,
    batch_size: int,
    device: torch.device,
    amp: contextlib.AbstractContextManager | None = None,
    flip: bool = False,
) -> dict[str, np.ndarray]:
    """Predictions for ``images[indices]`` in the order of ``indices``: ``age`` in years, and the
    probability of ``gender`` 1 (female) when the model has a gender head.

    With ``flip``, each prediction is the mean of the image's and its mirror image's.
    """
    was_training = model.training
    model.eval()
    indices = np.asarray(indices)
    order = np.argsort(indices, kind="stable")
    results: dict[str, np.ndarray] = {}
    position = 0
    for batch in index_batches(indices[order], batch_size):
        x = to_input(images[batch], input_size, device)
        views = (x, x.flip(-1)) if flip else (x,)
        with amp or contextlib.nullcontext():
            outputs = [model(view) for view in views]
        batch_results = {"age": torch.stack([model.years(o["age"]) for o in outputs]).mean(0)}
        if "gender" in outputs[0]:
            batch_results["gender"] = torch.stack([o["gender"].float().sigmoid() for o in outputs]).mean(0)
        rows = order[position : position + len(batch)]
        for key, values in batch_results.items():
            results.setdefault(key, np.empty(len(indices)))[rows] = values.float().cpu().numpy()
        position += len(batch)
    model.train(was_training)
    return results
