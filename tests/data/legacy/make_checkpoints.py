"""Write checkpoints in the layout faceage wrote before its models became one type (up to commit 7c09e64):
``model`` held the first network's params with the chosen blend as a one-tuple ``reference_blend``, an
ensemble's other networks were under ``members``, and a single network's weights had no ``members.0.`` prefix.

Weights are drawn from each tensor's name, so the files do not depend on how modules are built, and dlib's
untouched model, held inside when the blend is above 0, has its real weights. ``ages.json`` beside this script
holds the ages the code of that commit predicted with these files for :func:`faces`
(``python tests/data/legacy/make_checkpoints.py OUT`` writes the checkpoints to OUT).
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import torch

AGE_RANGE = (1, 100)
IMAGE_SIZE = 40  # the stored size of the faces an ensemble is given
MODEL = {  # a ModelParams of that commit, as asdict wrote it
    "backbone": "mobilenet_v3_small",
    "pretrained": False,
    "input_size": 32,
    "head": "classification",
    "hidden": 16,
    "head_init": "random",
    "dropout": 0.2,
    "gender_weight": 1.0,
    "age_group_weight": 0.0,
    "age_group_edges": (26, 51, 76),
    "reference_blend": (0.25,),
}
SECOND = {**MODEL, "head": "regression", "input_size": 36, "gender_weight": 0.0, "reference_blend": (0.0,)}
FACES = {"upsample": 0, "padding": 0.2, "max_side": 1280, "min_size": 32, "min_score": 0.2, "rotations": (-15.0, 15.0)}


def drawn(name: str, like: torch.Tensor) -> torch.Tensor:
    """A tensor shaped as ``like`` drawn from a generator seeded by ``name``: positive for BatchNorm variances."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if name.endswith("running_var"):
        return torch.rand(like.shape, generator=generator) + 0.5
    return torch.randn(like.shape, generator=generator) * 0.1


def network_state(layout: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """``layout``'s tensors, every floating one but the age read-out buffers drawn from its name."""
    kept = ("bin_ages", "age_mean", "age_std")
    return {
        prefix + key: value if key in kept or not value.is_floating_point() else drawn(prefix + key, value)
        for key, value in layout.items()
    }


def reference_state() -> dict[str, torch.Tensor]:
    """dlib's untouched model's weights and its map to the 1-year bins, as the old models held them."""
    from faceage.model.reference import ReferenceAgeModel

    bins = torch.arange(AGE_RANGE[0], AGE_RANGE[1] + 1, dtype=torch.float32)
    return {f"reference.{key}": value for key, value in ReferenceAgeModel(bins).state_dict().items()}


def layout(values: dict) -> dict[str, torch.Tensor]:
    """The state dict layout of one network of ``values`` (its regression statistics 40 and 20 years)."""
    from faceage.checked import from_dict
    from faceage.model.networks import build_network
    from faceage.sections import ModelParams

    params = from_dict(ModelParams, {**values, "reference_blend": (0.0,)}, "legacy")
    network = build_network(params, AGE_RANGE)
    network.age_mean.fill_(40.0)
    network.age_std.fill_(20.0)
    return network.state_dict()


def write(folder: Path) -> dict[str, Path]:
    """A single network blended with dlib's untouched model at 0.25, and an ensemble of two at 0.125."""
    folder.mkdir(parents=True, exist_ok=True)
    common = {"age_range": list(AGE_RANGE), "image_size": IMAGE_SIZE, "epoch": 3, "val_mae": 9.5, "faces": FACES}
    single = {"state_dict": {**network_state(layout(MODEL)), **reference_state()}, "model": MODEL, **common}
    first = {**MODEL, "gender_weight": 0.0, "reference_blend": (0.125,)}
    weights = {**network_state(layout(first), "members.0."), **network_state(layout(SECOND), "members.1.")}
    ensemble = {"state_dict": {**weights, **reference_state()}, "model": first, "members": [SECOND], **common}
    paths = {"single": folder / "single.pt", "ensemble": folder / "ensemble.pt"}
    torch.save(single, paths["single"])
    torch.save(ensemble, paths["ensemble"])
    return paths


def faces() -> np.ndarray:
    """Eight uint8 faces of noise, at the stored size."""
    return np.random.default_rng(0).integers(0, 256, (8, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
