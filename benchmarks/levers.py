"""Levers on UTKFace, chosen on validation only: each lever is the train stage with some params changed, run in
one prepared workspace (data ingested and split once), with its best validation MAE, the epoch it came from and
the training time, and its MAE and age-group accuracy on ``photos_val``, validation faces pasted into harsh
photos (:func:`benchmarks.photos.make_harsh_photo`) and found and aligned again; beside them dlib's untouched age
model on the same images, and ensembles that average their members' predictions.

    python -m benchmarks.levers --lever "name:section.key=value,section.key=value" ... \\
        [--ensemble name+name ...] [--workspace DIR] [--source ../shared/datasets/UTKFace.tar.gz]

Results accumulate in ``<out>/levers.json`` (one entry per name, re-running a name replaces it) and
``<out>/levers.md``. Every run copies the repository's ``faceage``, ``stages`` and ``params.yaml`` into the
workspace first (as committed: edits under way do not leak in), so levers of new code can be measured on data
prepared earlier.
Predictions are without flip TTA, as training selects its epoch.
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
import yaml

from benchmarks import results_page
from benchmarks.dataset import add_source_argument
from benchmarks.photos import add_photo_sources
from benchmarks.run import REPO, parse_settings
from benchmarks.workspace import copy_worktree, set_params, tool_env
from faceage.data.manifest import load_images, load_manifest
from faceage.data.sources import open_source
from faceage.evaluation.metrics import group_confusion
from faceage.model.age_model import untouched_dlib
from faceage.model.checkpoint import load_model
from faceage.model.inference import predict
from faceage.params import load_params
from faceage.runtime import select_device
from faceage.stage import pipeline_paths

CODE = ("faceage", "stages")
PHOTOS = "photos_val"
PHOTO_FACES = 1000
REFERENCE = "dlib_untouched"  # the name of dlib's age model, as it was trained, in the table


def prepare(workspace: Path, source: Path) -> None:
    """A copy of the repository with ``source`` ingested and split and ``photos_val`` made and ingested, unless
    ``workspace`` already has them."""
    env = tool_env(PYTHONPATH=str(workspace))
    if not workspace.is_dir():
        copy_worktree(REPO, workspace, {"data": {"source": str(source)}})
    (workspace / "levers").mkdir(exist_ok=True)
    if not pipeline_paths(workspace)["split"].is_file():
        subprocess.run(["dvc", "repro", "split"], cwd=workspace, env=env, check=True)
    if (pipeline_paths(workspace)["test_sources"] / PHOTOS).is_dir():
        return
    paths = pipeline_paths(workspace)
    rows = load_manifest(paths["ingested"]).merge(pd.read_csv(paths["split"]))
    rows = rows[rows["split"] == "val"]
    files = dict(open_source(source).read(set(rows["source_path"])))
    add_photo_sources(workspace, files, rows, PHOTO_FACES, kinds={PHOTOS: "val"})
    shutil.copy2(workspace / "params.yaml", workspace / "params.base.yaml")
    subprocess.run([sys.executable, "stages/ingest.py", PHOTOS], cwd=workspace, env=env, check=True)


class Scorer:
    """Validation and photo predictions of kept models, and their figures."""

    def __init__(self, workspace: Path):
        self.workspace = workspace
        paths = pipeline_paths(workspace)
        split = pd.read_csv(paths["split"])
        manifest = load_manifest(paths["ingested"]).merge(split[split["split"] == "val"])
        photos = load_manifest(paths["test_sources"] / PHOTOS)
        sets = {
            "val": (load_images(paths["ingested"]), manifest.sort_values("id")),
            PHOTOS: (load_images(paths["test_sources"] / PHOTOS), photos.sort_values("id")),
        }
        self.sets = {key: (images, rows) for key, (images, rows) in sets.items() if len(rows)}  # photos may have none
        self.params = load_params(workspace / "params.yaml")
        self.device = select_device()

    def predictions(self, name: str) -> dict[str, np.ndarray]:
        """``name``'s predictions on each set, computed once and kept beside its model."""
        path = self.workspace / "levers" / f"{name}.predictions.npz"
        if not path.is_file():
            if name == REFERENCE:
                model = untouched_dlib((self.params.data.min_age, self.params.data.max_age)).to(self.device)
            else:
                model, _ = load_model(path.with_name(f"{name}.pt"), self.device)
            found = {
                key: predict(model, images, rows["id"].to_numpy(), 128, self.device)["age"]
                for key, (images, rows) in self.sets.items()
            }
            np.savez(path, **found)
        return dict(np.load(path))

    def score(self, members: list[str]) -> dict:
        """Validation MAE, and MAE and age-group accuracy on the photos where faces were found in them, of the
        mean of ``members``."""
        found = [self.predictions(name) for name in members]
        figures = {}
        for key, (_, rows) in self.sets.items():
            predicted, true = np.mean([f[key] for f in found], axis=0), rows["age"].to_numpy(float)
            figures[f"{key}_mae"] = round(float(np.abs(predicted - true).mean()), 4)
        if PHOTOS not in self.sets:
            return {**figures, f"{PHOTOS}_faces": 0}
        photos = np.mean([f[PHOTOS] for f in found], axis=0)
        accuracy = group_confusion(self.sets[PHOTOS][1]["age"].to_numpy(float), photos, self.params.evaluate.age_groups)
        return {**figures, f"{PHOTOS}_age_group_accuracy": accuracy["accuracy"], f"{PHOTOS}_faces": len(photos)}


def reset_params(workspace: Path) -> None:
    """The repository's committed ``params.yaml`` in ``workspace``, with the workspace's data set and photos."""
    own = yaml.safe_load((workspace / "params.base.yaml").read_text())
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, check=True)
    (workspace / "params.yaml").write_bytes(committed.stdout)
    set_params(workspace, {"data": {"source": own["data"]["source"]}, "test_sources": own["test_sources"]})


def run_lever(workspace: Path, name: str, settings: str) -> dict:
    """Train with ``settings`` (``section.key=value,...``) changed; the training figures of the kept model."""
    for folder in CODE:
        shutil.rmtree(workspace / folder)
    archive = subprocess.run(["git", "archive", "HEAD", *CODE], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(workspace)], input=archive, check=True)
    reset_params(workspace)
    set_params(workspace, parse_settings([item for item in settings.split(",") if item]))
    started = time.perf_counter()
    env = tool_env(PYTHONPATH=str(workspace))
    subprocess.run([sys.executable, "stages/train.py"], cwd=workspace, env=env, check=True)
    seconds = time.perf_counter() - started
    kept = workspace / "levers" / f"{name}.pt"
    shutil.copy2(pipeline_paths(workspace)["model"], kept)
    kept.with_suffix(".predictions.npz").unlink(missing_ok=True)
    report = json.loads(pipeline_paths(workspace)["train_report"].read_text())
    return {
        "settings": settings,
        "best_val_mae": report["best_val_mae"],
        "best_epoch": report["best_epoch"],
        "epochs_run": report["epochs_run"],
        "train_stage_seconds": round(seconds, 1),
    }


def markdown(results: dict[str, dict]) -> str:
    lines = [
        f"| lever | settings | val MAE | {PHOTOS} MAE | {PHOTOS} age groups | best epoch | train stage |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        minutes = f"{row['train_stage_seconds'] / 60:.1f} min" if "train_stage_seconds" in row else ""
        epoch = f"{row['best_epoch']} of {row['epochs_run']}" if "best_epoch" in row else ""
        photos = (
            f"{row[f'{PHOTOS}_mae']:.3f} | {row[f'{PHOTOS}_age_group_accuracy']:.1%}"
            if row[f"{PHOTOS}_faces"]
            else "no faces found | "
        )
        lines.append(f"| {name} | `{row['settings']}` | {row['val_mae']:.3f} | {photos} | {epoch} | {minutes} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_argument(parser)
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/faceage-levers"), help="kept between runs")
    parser.add_argument("--out", type=Path, default=results_page.REPORTS, help="folder for levers.json and .md")
    parser.add_argument("--lever", action="append", default=[], metavar="NAME:SETTINGS", help="a lever to train")
    parser.add_argument("--ensemble", action="append", default=[], metavar="A+B", help="members to average")
    args = parser.parse_args(argv)
    if not args.source.exists():
        print(f"error: no data set at {args.source}: pass --source", file=sys.stderr)
        return 1
    prepare(args.workspace, args.source.resolve())
    path = args.out / "levers.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name, _, settings in (lever.partition(":") for lever in args.lever):
        results[name] = run_lever(args.workspace, name, settings)
        path.write_text(json.dumps(results, indent=2) + "\n")
    scorer = Scorer(args.workspace)
    results[REFERENCE] = {"settings": "no training, 64 px"}
    for members in args.ensemble:
        results[members] = {"settings": " + ".join(members.split("+"))}
    for name, row in results.items():
        row.update(scorer.score(name.split("+")))
    path.write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "levers.md").write_text(markdown(results))
    results_page.refresh(args.out)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
