"""An ingested data set as the stages after ingest read it: the image array, the manifest and what the images
are. Reading it needs no face detection or decoding."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

IMAGES_FILE = "images.npy"
MANIFEST_FILE = "manifest.csv"
DATASET_FILE = "dataset.json"  # what the images are: name and kind (synthetic or real)
SYNTHETIC_NAME = "faceage synthetic demo"
MANIFEST_COLUMNS = ["id", "age", "gender", "race", "given_split", "source_path", "content_hash", "pixel_hash"]


def load_images(in_dir: str | Path) -> np.ndarray:
    """The ingested ``(N, H, W, 3)`` uint8 array, memory-mapped."""
    return np.load(Path(in_dir) / IMAGES_FILE, mmap_mode="r")


def describe_dataset(source: str | Path, synthetic: bool) -> dict[str, str]:
    """The data set's ``name`` (the source's file or folder name, or the demo's) and ``kind``: ``synthetic``
    (faces drawn by the demo stage; a model of them knows nothing of real faces) or ``real``."""
    if synthetic:
        return {"name": SYNTHETIC_NAME, "kind": "synthetic"}
    return {"name": Path(source).name, "kind": "real"}


def load_dataset(in_dir: str | Path) -> dict[str, str]:
    """The ingested data set's :func:`describe_dataset`."""
    return json.loads((Path(in_dir) / DATASET_FILE).read_text())


def load_manifest(in_dir: str | Path) -> pd.DataFrame:
    """The ingested manifest, one row per image in array order."""
    return pd.read_csv(
        Path(in_dir) / MANIFEST_FILE, dtype={"gender": "Int64", "race": "Int64", "given_split": "string"}
    )


def dataset_fingerprint(ingested: str | Path, split: str | Path) -> str:
    """Short hash of what defines the data a model sees: the ingested manifest and the split. MLflow runs are
    tagged with it, and only runs on the same data are compared."""
    digest = hashlib.sha256()
    for path in (Path(ingested) / MANIFEST_FILE, Path(split)):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
