"""The network under each engine, in one run: PyTorch on the checkpoint and ONNX Runtime on its exported graph,
each timed on a batch of faces (faces/s) and on one image (decode, resize, forward passes; ms), and the age
differences between them on the same faces. ``--graph`` times a graph of the model written before (an int8 one
from ``faceage export --int8``) instead of exporting it.

    python -m benchmarks.engines --model models/model.pt [--graph models/model.int8.onnx]
                                 [--source ../shared/datasets/UTKFace.tar.gz] [--faces 512]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.dataset import add_source_argument, first_images
from faceage.data.images import decode_image
from faceage.serving.export import export_model
from faceage.serving.photos import AgeEstimator

BATCH_SIZE = 64
DEFAULT_ENGINES = ("onnxruntime", "pytorch")  # engines as a model predicts by default, timed against the baseline
WARM_UP = 3


def single_image_latency(estimator: AgeEstimator, image: bytes, repeats: int) -> dict:
    """Milliseconds to predict one JPEG (decode, resize, forward passes), the model loaded once, after a warm-up."""

    def once() -> float:
        started = time.perf_counter()
        face = decode_image(image, estimator.chip_size, estimator.faces.max_pixels)[None]
        estimator.engine.outputs(face, estimator.flip, 1)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return (time.perf_counter() - started) * 1000

    for _ in range(WARM_UP):
        once()
    times = np.array([once() for _ in range(repeats)])
    return {"median_ms": round(float(np.median(times)), 2), "p90_ms": round(float(np.percentile(times, 90)), 2)}


def batch_speed(estimator: AgeEstimator, faces: np.ndarray) -> tuple[float, np.ndarray]:
    """Faces per second over ``faces`` (uint8 chips) in batches of :data:`BATCH_SIZE`, after a warm-up batch, and
    the ages."""
    estimator.engine.outputs(faces[:BATCH_SIZE], estimator.flip, BATCH_SIZE)
    started = time.perf_counter()
    ages = estimator.engine.outputs(faces, estimator.flip, BATCH_SIZE)["age"]
    return round(len(faces) / (time.perf_counter() - started), 1), ages


def engine_speeds(checkpoint: Path, graph: Path, images: list[bytes], repeats: int) -> dict:
    """Batch faces/s and one image's latency of ``checkpoint`` under PyTorch (as it predicts by default: under
    bfloat16 autocast where the CPU computes it natively; and in float32) and of its exported ``graph`` under ONNX
    Runtime, and of the checkpoint under PyTorch in float32 with mirror images averaged (``pytorch_mirrored``: the
    path every speed target of the default was set against), on ``images`` (face crops; the first is the one
    image); the default engines' ratios to that path, the graph's to PyTorch's default, how far apart the float32
    engines' ages are, and what bfloat16 changes of PyTorch's (mean and largest absolute difference)."""
    estimators = {
        "pytorch": AgeEstimator(checkpoint),
        "pytorch_float32": AgeEstimator(checkpoint, bf16=False),
        "onnxruntime": AgeEstimator(graph),
        "pytorch_mirrored": AgeEstimator(checkpoint, flip=True, bf16=False),
    }
    first = estimators["pytorch"]
    faces = np.stack([decode_image(data, first.chip_size, first.faces.max_pixels) for data in images])
    results, ages = {}, {}
    for name, estimator in tqdm(estimators.items(), desc="engines", unit="engine"):
        speed, ages[name] = batch_speed(estimator, faces)
        results[name] = {
            "faces_per_second": speed,
            "single_image": single_image_latency(estimator, images[0], repeats),
            "precision": estimator.engine.precision,
        }

    def ratios(ours: dict, theirs: dict) -> dict:
        return {
            "batch_ratio": round(ours["faces_per_second"] / theirs["faces_per_second"], 2),
            "single_image_ratio": round(ours["single_image"]["median_ms"] / theirs["single_image"]["median_ms"], 2),
        }

    def difference(a: str, b: str) -> dict:
        gap = np.abs(ages[a] - ages[b])
        return {"mean": round(float(gap.mean()), 5), "max": round(float(gap.max()), 5)}

    return {
        **results,
        "faces": len(faces),
        "batch_size": BATCH_SIZE,
        "flip": first.flip,
        **ratios(results["onnxruntime"], results["pytorch"]),
        "against_mirrored": {name: ratios(results[name], results["pytorch_mirrored"]) for name in DEFAULT_ENGINES},
        "age_difference": difference("onnxruntime", "pytorch_float32"),
        "bf16_age_difference": difference("pytorch", "pytorch_float32"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="trained checkpoint")
    add_source_argument(parser)
    parser.add_argument("--faces", type=int, default=512, help="faces of the source timed in batches")
    parser.add_argument("--repeats", type=int, default=50, help="timed single-image predictions")
    parser.add_argument("--graph", type=Path, help="ONNX graph of the model to time (default: exported from it)")
    args = parser.parse_args(argv)
    images = first_images(args.source, args.faces)
    with tempfile.TemporaryDirectory(prefix="faceage-engines-") as folder:
        graph = args.graph or Path(folder) / "model.onnx"
        if args.graph is None:
            export_model(args.model, graph, "onnx")
        print(json.dumps(engine_speeds(args.model, graph, images, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
