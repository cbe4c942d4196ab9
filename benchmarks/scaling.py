"""How costs grow with the data and with training processes, on the demo generator:

- at each size (default 2k, 20k, 100k images, stored small): ingest images/s and peak memory of its largest
  process, the training step time and the evaluation time per image (both on ids spread over the whole array);
- training images/s in 1 and 2 processes (``train.nproc``) on the default demo data.

    python -m benchmarks.scaling [--sizes 2000 20000 100000] [--out reports]

Writes ``<out>/scaling.json``, ``<out>/scaling.md`` and ``<out>/scaling.png``. Each stage runs in its own
process, so imports and start-up count in the stage figures, not in the step and per-image times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import matplotlib

from benchmarks import results_page

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from benchmarks.workspace import copy_worktree, set_params, tool_env
from faceage.data.manifest import load_images, load_manifest
from faceage.model.inference import predict
from faceage.model.networks import build_network
from faceage.params import load_params
from faceage.runtime import make_deterministic
from faceage.stage import pipeline_paths
from faceage.training.loop import train_network
from faceage.training.setup import TrainingSetup, autocast

REPO = Path(__file__).resolve().parents[1]
SMALL = {"demo": {"image_size": 64}, "data": {"image_size": 48}}  # small stored size, the default model
PEAK = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
PEAK += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"  # KiB, largest process that ended
SAMPLE = 1600  # ids timed at every size (at most the smallest size): half are trained on, all evaluated


def run_stage(repo: Path, name: str) -> float:
    """Run ``stages/<name>.py`` in ``repo``; the peak resident memory (MiB) of its largest process."""
    command = [sys.executable, "-c", PEAK, sys.executable, f"stages/{name}.py"]
    result = subprocess.run(command, cwd=repo, env=tool_env(PYTHONPATH=str(repo)), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"stage {name} failed in {repo}:\n{result.stderr[-2000:]}")
    return int(result.stdout.split()[-1]) / 1024


def per_image_costs(repo: Path, seed: int = 0) -> dict:
    """Training step time and evaluation time per image, on ids spread over the whole ingested array."""
    params = load_params(repo / "params.yaml")
    ingested = pipeline_paths(repo)["ingested"]
    images, ages = load_images(ingested), load_manifest(ingested)["age"].to_numpy()
    ids = np.sort(np.random.default_rng(seed).choice(len(images), SAMPLE, replace=False))
    split = pd.DataFrame({"id": ids, "split": ["train", "val"] * (SAMPLE // 2)})
    train = replace(params.train, head_epochs=0, epochs=1)
    age_range = (params.data.min_age, params.data.max_age)
    setup = TrainingSetup(images, ages, np.zeros(len(ages)), split, params.model, train, params.augment, age_range)
    device = torch.device("cpu")
    trained = train_network(setup, device)
    make_deterministic(0, params.train.threads)
    model = build_network(params.model, age_range).to(device)
    started = time.perf_counter()
    amp, flip = autocast(device, train), params.evaluate.flip_tta
    predict(model, images, ids, params.model.input_size, params.evaluate.batch_size, device, amp, flip)
    evaluate_seconds = time.perf_counter() - started
    return {
        "train_step_ms": round(1000 * train.batch_size / trained.summary["finetune_images_per_second"], 1),
        "train_images_per_second": trained.summary["finetune_images_per_second"],
        "evaluate_ms_per_image": round(1000 * evaluate_seconds / len(ids), 2),
    }


def data_scaling(size: int, folder: Path) -> dict:
    """Make ``size`` demo images, ingest and split them, and time the per-image costs."""
    repo = copy_worktree(REPO, folder, {**SMALL, "demo": {**SMALL["demo"], "num_images": size}})
    started = time.perf_counter()
    run_stage(repo, "demo")
    demo_seconds = time.perf_counter() - started
    ingest_peak = run_stage(repo, "ingest")
    run_stage(repo, "split")
    ingest = json.loads(pipeline_paths(repo)["ingest_report"].read_text())
    return {
        "images": size,
        "demo_seconds": round(demo_seconds, 1),
        "ingest_images_per_second": ingest["images_per_second"],
        "ingest_peak_mib": round(ingest_peak, 1),
        "array_mib": round(ingest["array_megabytes"] / 1.048576, 1),
        **per_image_costs(repo),
    }


def process_scaling(folder: Path, epochs: int = 2) -> dict:
    """Fine-tuning images/s of the train stage in 1 and 2 processes, on the default demo data."""
    repo = copy_worktree(REPO, folder, {"train": {"head_epochs": 0, "epochs": epochs}})
    for name in ("demo", "ingest", "split"):
        run_stage(repo, name)
    speeds = {}
    for nproc in (1, 2):
        set_params(repo, {"train": {"nproc": nproc}})
        run_stage(repo, "train")
        speeds[nproc] = json.loads(pipeline_paths(repo)["train_report"].read_text())["finetune_images_per_second"]
    return {
        "epochs": epochs,
        "images_per_second": speeds,
        "speed_up": round(speeds[2] / speeds[1], 2),
    }


def plot(rows: list[dict], path: Path) -> None:
    """Peak ingest memory and the per-image costs against the number of images."""
    table = pd.DataFrame(rows)
    panels = (
        ("ingest_peak_mib", "ingest peak memory (MiB)"),
        ("train_step_ms", "training step (ms)"),
        ("evaluate_ms_per_image", "evaluation per image (ms)"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(12, 3.5))
    for axis, (column, title) in zip(axes, panels, strict=True):
        axis.plot(table["images"], table[column], marker="o")
        axis.set(xscale="log", xlabel="images", title=title, ylim=(0, table[column].max() * 1.2))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown(report: dict) -> str:
    lines = [
        "| images | ingest img/s | ingest peak MiB | array MiB | train step ms | train img/s | evaluate ms/img |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["sizes"]:
        lines.append(
            f"| {row['images']:,} | {row['ingest_images_per_second']:.0f} | {row['ingest_peak_mib']:.0f} "
            f"| {row['array_mib']:.0f} | {row['train_step_ms']:.0f} | {row['train_images_per_second']:.0f} "
            f"| {row['evaluate_ms_per_image']:.2f} |"
        )
    processes = report["processes"]
    lines += [
        "",
        f"Training on the default demo data ({processes['epochs']} fine-tuning epochs): "
        f"{processes['images_per_second'][1]:.0f} images/s in 1 process, "
        f"{processes['images_per_second'][2]:.0f} in 2 ({processes['speed_up']:.2f}x).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    parser.add_argument("--out", type=Path, default=results_page.REPORTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="faceage-scaling-") as folder:
        rows = []
        for size in args.sizes:
            (Path(folder) / str(size)).mkdir()
            rows.append(data_scaling(size, Path(folder) / str(size)))
            print(json.dumps(rows[-1]), flush=True)
        (Path(folder) / "processes").mkdir()
        report = {"sizes": rows, "processes": process_scaling(Path(folder) / "processes")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "scaling.md").write_text(markdown(report))
    plot(rows, args.out / "scaling.png")
    results_page.refresh(args.out)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
