"""Levers on UTKFace, chosen on the validation split only: each lever is the train stage with some params
changed, run in one prepared workspace (data ingested and split once), with its best validation MAE, the
epoch it came from and the training time; ensembles average their members' validation predictions.

    python -m benchmarks.levers --lever "name:section.key=value,section.key=value" ... \
        [--ensemble name+name ...] [--workspace DIR] [--source ../shared/datasets/UTKFace.tar.gz]

Results accumulate in ``<out>/levers.json`` (one entry per name, re-running a name replaces it) and
``<out>/levers.md``. Every run copies the repository's current ``faceage`` and ``stages`` into the workspace
first (as committed: edits under way do not leak in), so levers of new code can be measured on data prepared
earlier.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.run import DEFAULT_SOURCE, REPO, parse_settings
from benchmarks.workspace import copy_worktree, set_params, tool_env
from faceage.inference import load_checkpoint, predict
from faceage.ingest import load_images
from faceage.runtime import select_device

CODE = ("faceage", "stages")


def prepare(workspace: Path, source: Path) -> None:
    """A copy of the repository with ``source`` ingested and split, unless ``workspace`` already has one."""
    if (workspace / "data" / "split.csv").is_file():
        return
    copy_worktree(REPO, workspace, {"data": {"source": str(source)}})
    shutil.copy2(workspace / "params.yaml", workspace / "params.base.yaml")
    subprocess.run(["dvc", "repro", "split"], cwd=workspace, env=tool_env(PYTHONPATH=str(workspace)), check=True)


def val_predictions(workspace: Path, model_path: Path) -> np.ndarray:
    """The kept model's validation predictions (no flip), in the order of the split's validation ids."""
    split = pd.read_csv(workspace / "data" / "split.csv")
    ids = split.loc[split["split"] == "val", "id"].to_numpy()
    device = select_device()
    model, checkpoint = load_checkpoint(model_path, device)
    images = load_images(workspace / "data" / "ingested")
    return predict(model, images, ids, checkpoint["model"]["input_size"], 128, device)["age"]


def val_ages(workspace: Path) -> np.ndarray:
    manifest = pd.read_csv(workspace / "data" / "ingested" / "manifest.csv")
    split = pd.read_csv(workspace / "data" / "split.csv")
    return manifest.merge(split[split["split"] == "val"], on="id").sort_values("id")["age"].to_numpy(float)


def run_lever(workspace: Path, name: str, settings: str) -> dict:
    """Train with ``settings`` (``section.key=value,...``) changed; the figures of the kept model."""
    for folder in CODE:
        shutil.rmtree(workspace / folder)
    archive = subprocess.run(["git", "archive", "HEAD", *CODE], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(workspace)], input=archive, check=True)
    shutil.copy2(workspace / "params.base.yaml", workspace / "params.yaml")
    set_params(workspace, parse_settings([item for item in settings.split(",") if item]))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "stages/train.py"], cwd=workspace, env=tool_env(PYTHONPATH=str(workspace)), check=True
    )
    seconds = time.perf_counter() - started
    kept = workspace / "levers" / f"{name}.pt"
    kept.parent.mkdir(exist_ok=True)
    shutil.copy2(workspace / "models" / "model.pt", kept)
    np.save(kept.with_suffix(".val.npy"), val_predictions(workspace, kept))
    report = json.loads((workspace / "reports" / "train.json").read_text())
    return {
        "settings": settings,
        "best_val_mae": report["best_val_mae"],
        "best_epoch": report["best_epoch"],
        "epochs_run": report["epochs_run"],
        "train_stage_seconds": round(seconds, 1),
    }


def ensemble(workspace: Path, members: list[str]) -> dict:
    """Validation MAE of the mean of ``members``' validation predictions."""
    predictions = np.mean([np.load(workspace / "levers" / f"{name}.val.npy") for name in members], axis=0)
    mae = float(np.abs(predictions - val_ages(workspace)).mean())
    return {"settings": " + ".join(members), "best_val_mae": round(mae, 4)}


def markdown(results: dict[str, dict]) -> str:
    lines = ["| lever | settings | best val MAE | epoch | train stage |", "|---|---|---|---|---|"]
    for name, row in results.items():
        minutes = f"{row['train_stage_seconds'] / 60:.1f} min" if "train_stage_seconds" in row else ""
        epoch = f"{row['best_epoch']} of {row['epochs_run']}" if "best_epoch" in row else ""
        lines.append(f"| {name} | `{row['settings']}` | {row['best_val_mae']:.3f} | {epoch} | {minutes} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="UTKFace archive or folder")
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/faceage-levers"), help="kept between runs")
    parser.add_argument("--out", type=Path, default=REPO / "reports", help="folder for levers.json and .md")
    parser.add_argument("--lever", action="append", default=[], metavar="NAME:SETTINGS", help="a lever to train")
    parser.add_argument("--ensemble", action="append", default=[], metavar="A+B", help="members to average")
    args = parser.parse_args(argv)
    if not args.source.exists():
        print(f"error: no data set at {args.source}: pass --source", file=sys.stderr)
        return 1
    prepare(args.workspace, args.source.resolve())
    path = args.out / "levers.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    jobs = [(lever.partition(":")[0], lever.partition(":")[2]) for lever in args.lever]
    for name, settings in jobs:
        results[name] = run_lever(args.workspace, name, settings)
        path.write_text(json.dumps(results, indent=2) + "\n")
    for members in args.ensemble:
        results[members] = ensemble(args.workspace, members.split("+"))
    path.write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "levers.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
