"""Rebuild a trained model from its checkpoint and predict ages."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from faceage.errors import FaceageError
from faceage.model.batches import index_batches, to_input
from faceage.model.networks import AgeEnsemble, AgeModel, build_model
from faceage.model.reference import REFERENCE_INPUT
from faceage.params import DataParams, ModelParams, from_dict

CHECKPOINT_KEYS = frozenset({"state_dict", "model", "age_range", "image_size"})
UNTOUCHED_DLIB = "dlib"  # the model name for dlib's age model as its authors trained it
UNTOUCHED_DLIB_DATASET = {"name": "dlib's age training faces", "kind": "real"}


def make_checkpoint(
    model: AgeModel,
    params: ModelParams,
    age_range: tuple[int, int],
    image_size: int,
    members: Sequence[ModelParams] = (),
    **extra: object,
) -> dict:
    """Everything needed to rebuild ``model`` and its preprocessing (``image_size``: the size images are
    stored at before the network resizes them); loadable with ``torch.load(..., weights_only=True)``.
    For an :class:`~faceage.model.networks.AgeEnsemble`, ``params`` are its first member's with the ensemble's blend,
    and ``members`` the params of the others."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "state_dict": state,
        "model": asdict(params),
        "age_range": list(age_range),
        "image_size": image_size,
        **({"members": [asdict(member) for member in members]} if members else {}),
        **extra,
    }


def checkpoint_input_size(checkpoint: dict) -> int:
    """The size of the faces the checkpoint's model takes: its network's input size, or for an ensemble the
    size faces are stored at (each member resizes them to its own)."""
    return checkpoint["image_size"] if "members" in checkpoint else checkpoint["model"]["input_size"]


def model_from_checkpoint(checkpoint: dict, where: str) -> AgeModel:
    """The untrained network (or ensemble) a checkpoint's weights fit."""
    params = untrained(checkpoint["model"], where)
    age_range = tuple(checkpoint["age_range"])
    if "members" not in checkpoint:
        return build_model(params, age_range)
    members = [replace(params, reference_blend=(0.0,)), *(untrained(m, where) for m in checkpoint["members"])]
    networks = [build_model(member, age_range) for member in members]
    return AgeEnsemble(networks, [member.input_size for member in members], params.reference_blend[0])


def untrained(values: dict, where: str) -> ModelParams:
    """A checkpoint's model params, to build the network its weights are then loaded into."""
    return replace(from_dict(ModelParams, values, where), pretrained=False, head_init="random")


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[AgeModel, dict]:
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
    model = model_from_checkpoint(checkpoint, str(path))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError) as error:
        mismatch = describe(error).split(". ")[0]
        kind = "an ensemble" if "members" in checkpoint else f"a {checkpoint['model']['backbone']} model"
        raise FaceageError(f"{path}: its weights do not fit {kind} ({mismatch})") from None
    return model.to(device, memory_format=torch.channels_last).eval(), checkpoint


def untouched_dlib(device: torch.device) -> tuple[AgeModel, dict]:
    """dlib's age model as its authors trained it on real faces (no training of ours), in eval mode on ``device``,
    and a checkpoint of it: its network and classifier at its own 64 px, on chips stored as ingest stores them."""
    params = ModelParams(input_size=REFERENCE_INPUT, hidden=0, head_init="dlib", reference_blend=(0.0,))
    data = DataParams()
    model = build_model(params, (data.min_age, data.max_age))
    checkpoint = make_checkpoint(model, params, (data.min_age, data.max_age), data.image_size)
    return model.to(device).eval(), {**checkpoint, "dataset": UNTOUCHED_DLIB_DATASET}


def not_a_checkpoint(path: Path, reason: str) -> FaceageError:
    return FaceageError(f"{path} is not a faceage checkpoint ({reason}): run the train stage again")


def describe(error: Exception) -> str:
    """An exception as one short line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else f"{text[:200]}..."


@torch.no_grad()
def predict(
    model: AgeModel,
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
