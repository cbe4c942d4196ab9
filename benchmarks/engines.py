"""The network under each engine, in one run: PyTorch on the checkpoint and ONNX Runtime on its exported graph,
each timed on a batch of faces (faces/s) and on one image (decode, resize, forward passes; ms), and the age
differences between them on the same faces; then the same in a process held to AVX2 (as on a CPU without
AVX-512). ``--graph`` also times a graph of the model written before (an int8 one from
``faceage export --int8``).

    python -m benchmarks.engines --model models/model.pt [--graph models/model.int8.onnx]
                                 [--source ../shared/datasets/UTKFace.tar.gz] [--faces 512]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
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
from faceage.runtime import cpu_features
from faceage.serving.export import export_model
from faceage.serving.photos import AgeEstimator
from faceage.serving.quantize import graph_ages, pipeline_chips

BATCH_SIZE = 64
BASELINES = ("pytorch_float32", "pytorch_mirrored")  # PyTorch paths the others are compared with
# torch's kernels and oneDNN's as on a CPU without AVX-512 (and so without native bfloat16)
HELD_TO_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
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


def engine_speeds(checkpoint: Path, graphs: dict[str, Path], images: list[bytes], repeats: int) -> dict:
    """Batch faces/s and one image's latency of ``checkpoint`` under PyTorch (as it predicts by default: under
    bfloat16 autocast where the CPU computes it natively; and in float32), of its exported ``graphs`` (name ->
    ONNX graph: ``onnxruntime``, the float32 one, and others such as an int8 one) under ONNX Runtime, and of the
    checkpoint under PyTorch in float32 with mirror images averaged (``pytorch_mirrored``: the path every speed
    target of the default was set against), on ``images`` (face crops; the first is the one image); the others'
    ratios to that path, the float32 graph's to PyTorch's default, how far each engine's ages are from the float32
    ones (mean and largest absolute difference), and the CPU features they ran with."""
    estimators = {
        "pytorch": AgeEstimator(checkpoint),
        "pytorch_float32": AgeEstimator(checkpoint, bf16=False),
        **{name: AgeEstimator(graph) for name, graph in graphs.items()},
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
        "cpu": cpu_features(),
        **ratios(results["onnxruntime"], results["pytorch"]),
        "against_mirrored": {
            name: ratios(results[name], results["pytorch_mirrored"]) for name in estimators if name not in BASELINES
        },
        "age_difference": difference("onnxruntime", "pytorch_float32"),
        "bf16_age_difference": difference("pytorch", "pytorch_float32"),
        "graph_age_differences": {name: difference(name, "onnxruntime") for name in graphs if name != "onnxruntime"},
    }


def default_graph_check(paths: dict[str, Path], graph: Path, chip_size: int) -> dict | None:
    """The export stage's int8 check of the pipeline's default graph (``paths`` as
    :func:`~faceage.stage.pipeline_paths` names them; ``None`` where int8 is off) and, where int8 was kept, the
    test split's MAE under it and under ``graph``, the checkpoint's float32 graph, which takes ``chip_size``."""
    check = json.loads(paths["export_report"].read_text())["int8"]
    if check and check["kept"]:
        chips, ages = pipeline_chips(chip_size, paths, "test")
        check["test_mae"] = {
            name: round(float(np.abs(graph_ages(path, chips) - ages).mean()), 4)
            for name, path in (("float32", graph), ("int8", paths["graph"]))
        }
    return check


def held_to_avx2(checkpoint: Path, graphs: dict[str, Path], images: list[bytes], repeats: int) -> dict:
    """:func:`engine_speeds` in a fresh process whose torch and oneDNN kernels are held to AVX2
    (:data:`HELD_TO_AVX2`) and whose torch threads are this process's: PyTorch as on a CPU without AVX-512, so in
    float32 by default. ONNX Runtime picks its kernels from the CPU itself and is not held."""
    saved = {name: os.environ.get(name) for name in HELD_TO_AVX2}
    os.environ.update(HELD_TO_AVX2)
    try:
        context = multiprocessing.get_context("spawn")  # torch reads the settings when imported
        with context.Pool(1, initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) as pool:
            return pool.apply(engine_speeds, (checkpoint, graphs, images, repeats))
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="trained checkpoint")
    add_source_argument(parser)
    parser.add_argument("--faces", type=int, default=512, help="faces of the source timed in batches")
    parser.add_argument("--repeats", type=int, default=50, help="timed single-image predictions")
    parser.add_argument("--graph", type=Path, help="another ONNX graph of the model to time, e.g. an int8 one")
    args = parser.parse_args(argv)
    images = first_images(args.source, args.faces)
    with tempfile.TemporaryDirectory(prefix="faceage-engines-") as folder:
        graphs = {"onnxruntime": Path(folder) / "model.onnx", **({args.graph.name: args.graph} if args.graph else {})}
        export_model(args.model, graphs["onnxruntime"], "onnx")
        speeds = {
            "native": engine_speeds(args.model, graphs, images, args.repeats),
            "held_to_avx2": held_to_avx2(args.model, graphs, images, args.repeats),
        }
        print(json.dumps(speeds, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
