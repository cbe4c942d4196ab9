"""What averaging each age with its mirror image's buys: the MAE of a benchmarked repository's model with and
without it, on the test split and on every test source, from the faces the pipeline ingested (the cost, twice the
network's work, is in :mod:`benchmarks.engines`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from faceage.data.manifest import load_images, load_manifest
from faceage.model.checkpoint import load_model
from faceage.model.inference import predict
from faceage.params import load_params
from faceage.runtime import select_device
from faceage.stage import pipeline_paths


def mirror_image_maes(repo: Path) -> dict[str, dict]:
    """Per evaluated set (``test``, then each test source with faces): its faces and the MAE with and without
    mirror images, the model's calibration applied to both."""
    params, paths = load_params(repo / "params.yaml"), pipeline_paths(repo)
    device = select_device()
    model, _ = load_model(paths["model"], device)
    split = load_manifest(paths["ingested"]).merge(pd.read_csv(paths["split"])).query("split == 'test'")
    sets = {"test": (paths["ingested"], split)}
    for name in params.test_sources:
        folder = paths["test_sources"] / name
        sets[name] = (folder, load_manifest(folder))
    maes = {}
    for name, (folder, rows) in sets.items():
        if rows.empty:
            continue
        images, ids, ages = load_images(folder), rows["id"].to_numpy(), rows["age"].to_numpy(float)
        by_flip = {
            flip: predict(model, images, ids, params.evaluate.batch_size, device, flip=flip)["age"]
            for flip in (True, False)
        }
        maes[name] = {
            "faces": len(rows),
            **{
                key: round(float(np.abs(by_flip[flip] - ages).mean()), 3)
                for key, flip in (("with", True), ("without", False))
            },
        }
    return maes
