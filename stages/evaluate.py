"""Stage evaluate: predict the validation and test splits and every test source; write metrics, predictions,
plots, galleries and the model card, and add them to the MLflow run of the model."""

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from faceage import plots
from faceage.data.manifest import MANIFEST_FILE, load_images, load_manifest
from faceage.errors import FaceageError
from faceage.evaluation import evaluate
from faceage.evaluation.metrics import cs_name
from faceage.evaluation.model_card import model_card
from faceage.model.age_model import AgeModel
from faceage.model.checkpoint import load_model
from faceage.params import Params, load_params
from faceage.runtime import select_device
from faceage.stage import pipeline_paths, run_stage, write_csv, write_json
from faceage.tracking.registry import RUN_DESCRIPTION_TAG
from faceage.tracking.runs import EVALUATE_ARTIFACTS, FLIP_TTA_TAG, RunTracker

log = logging.getLogger("faceage.evaluation.evaluate")


PLOTS = (
    "bucket_table",
    "bucket_plot",
    "predicted_vs_true",
    "error_histogram",
    "age_groups_plot",
    "interval_table",
    "interval_plot",
    "threshold_table",
)


def main() -> None:
    params, paths = load_params(), pipeline_paths()
    device = select_device()
    model, checkpoint = load_model(paths["model"], device)
    if model.calibration is None:
        raise FaceageError(f"{paths['model']} has no calibrated intervals (it predates them): run the train stage")
    images = load_images(paths["ingested"])
    started = time.perf_counter()
    manifest, split = load_manifest(paths["ingested"]), pd.read_csv(paths["split"])
    predictions = evaluate.predict_splits(model, images, manifest, split, params.evaluate, device)
    speed = round(len(predictions) / (time.perf_counter() - started), 1)
    predictions = evaluate.with_reference_ages(predictions, images, model, params.evaluate)
    sources = list(params.test_sources)
    others = test_source_predictions(model, params, paths, device)
    predictions = pd.concat([predictions, *others], ignore_index=True)
    write_csv(predictions, paths["predictions"])
    report = evaluate.evaluation_report(predictions, params.evaluate, sources, model)
    inference = {"images_per_second": speed, "flip_tta": params.evaluate.flip_tta}
    write_json({**report, "inference": inference}, paths["evaluate_report"])
    headline = evaluate.headline_metrics(report, cs_name(params.evaluate.cs_threshold), speed, sources)
    write_json(headline, paths["evaluate_metrics"])

    write_plots(report, predictions, params, paths)
    write_galleries(predictions, images, model, params, paths["galleries"], device)
    card = model_card(checkpoint, report, sources)
    paths["model_card"].write_text(card)

    if checkpoint.run_id:
        tracker = RunTracker(run_id=checkpoint.run_id)
        tracker.log_metrics({**headline, **evaluate.interval_details(report, sources)})
        tracker.set_tags({FLIP_TTA_TAG: str(params.evaluate.flip_tta), RUN_DESCRIPTION_TAG: card})
        tracker.log_artifact(paths["model_card"])
        logged = ["evaluate_metrics", "evaluate_report", "predictions", *PLOTS]
        for path in (*(paths[name] for name in logged), *sorted(paths["galleries"].iterdir())):
            tracker.log_artifact(path, EVALUATE_ARTIFACTS)


def write_plots(report: dict, predictions: pd.DataFrame, params: Params, paths: dict[str, Path]) -> None:
    """Per-bucket MAE (CSV for ``dvc plots``, PNG), predicted against true age, errors and age groups, interval
    coverage and width per bucket (CSV, PNG) and the threshold table (CSV)."""
    write_csv(evaluate.bucket_table(report["test"]), paths["bucket_table"])
    plots.bucket_mae({name: summary["buckets"] for name, summary in report.items()}, paths["bucket_plot"])
    test = predictions[predictions["split"] == "test"]
    ages = (params.data.min_age, params.data.max_age)
    plots.predicted_vs_true(test["true_age"], test["predicted_age"], ages, "Test split", paths["predicted_vs_true"])
    plots.error_histogram(test["error"].to_numpy(), "Test split errors", paths["error_histogram"])
    plots.confusion(report["test"]["age_groups"]["confusion"], "Test split age groups", paths["age_groups_plot"])
    write_csv(evaluate.interval_table(report["test"]), paths["interval_table"])
    intervals = {name: summary["intervals"] for name, summary in report.items() if name != "val"}
    plots.interval_buckets(intervals, paths["interval_plot"])
    write_csv(evaluate.threshold_table(report), paths["threshold_table"])


def write_galleries(
    predictions: pd.DataFrame,
    images: np.ndarray,
    model: AgeModel,
    params: Params,
    folder: Path,
    device: torch.device,
) -> None:
    """The worst test errors, and Grad-CAM maps of a few test faces per age bucket, in ``folder`` (faces:
    DVC-cached, never committed)."""
    worst = evaluate.worst_errors(predictions, params.evaluate.worst_errors)
    captions = [evaluate.caption(row) for _, row in worst.iterrows()]
    plots.face_gallery(images[worst["id"].to_numpy()], captions, folder / "worst_errors.png")
    examples = evaluate.gradcam_examples(predictions, params.evaluate)
    ids = examples["id"].to_numpy()
    heat = evaluate.gradcam_maps(model, images, ids, device)
    captions = [evaluate.caption(row) for _, row in examples.iterrows()]
    plots.face_gallery(images[ids], captions, folder / "gradcam.png", heat_maps=heat)


def test_source_predictions(
    model: AgeModel, params: Params, paths: dict[str, Path], device: torch.device
) -> list[pd.DataFrame]:
    """The predictions on each test source that has images; a warning names each that has none."""
    found = []
    for name in params.test_sources:
        folder = paths["test_sources"] / name
        if not (folder / MANIFEST_FILE).is_file():
            raise FaceageError(f"test source {name!r} is not ingested in {folder}: run dvc repro test_source@{name}")
        manifest = load_manifest(folder)
        if manifest.empty:
            report = paths["test_source_reports"] / f"{name}.json"
            log.warning("test source %r has no images: %s says why", name, report)
            continue
        images = load_images(folder)
        found.append(evaluate.predict_source(model, images, manifest, name, params.evaluate, device))
    return found


if __name__ == "__main__":
    run_stage(main)
