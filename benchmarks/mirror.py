"""What averaging each age with its mirror image's buys, and what bfloat16 autocast costs: the MAE of a
benchmarked repository's model with and without mirror images (float32), and without them under bfloat16 autocast
where the CPU computes it natively (as :class:`~faceage.serving.engines.TorchEngine` runs by default there), on the
test split and on every test source, from the faces the pipeline ingested (the costs and gains in speed are in
:mod:`benchmarks.engines`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from faceage.data.manifest import load_images, load_manifest
from faceage.model.checkpoint import load_model
from faceage.model.inference import predict
from faceage.params import load_params
from faceage.runtime import select_device
from faceage.serving.engines import TorchEngine
from faceage.stage import pipeline_paths

FLIPS = (("with", True), ("without", False))  # MAE keys, and whether mirror images are averaged


def mirror_image_maes(repo: Path) -> dict[str, dict]:
    """Per evaluated set (``test``, then each test source with faces): its faces, the MAE with and without
    mirror images and, on a CPU with native bfloat16, without them under bfloat16 autocast; the model's
    calibration applied to each."""
    params, paths = load_params(repo / "params.yaml"), pipeline_paths(repo)
    device = select_device()
    model, _ = load_model(paths["model"], device)
    engine = TorchEngine(model, device)  # as a checkpoint predicts by default: bfloat16 where the CPU has it
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
        batch_size = params.evaluate.batch_size
        predicted = {key: predict(model, images, ids, batch_size, device, flip=flip)["age"] for key, flip in FLIPS}
        if engine.bf16:
            predicted["without_bf16"] = engine.outputs(images[ids], False, batch_size)["age"]
        maes[name] = {
            "faces": len(rows),
            **{key: round(float(np.abs(ages - age).mean()), 3) for key, age in predicted.items()},
        }
    return maes
