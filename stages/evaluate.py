"""Stage evaluate: predict the validation and test splits and every test source; write metrics, predictions,
plots and galleries, and add them to the MLflow run of the model."""

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
from faceage.model.age_model import AgeModel
from faceage.model.checkpoint import load_model
from faceage.params import Params, load_params
from faceage.runtime import select_device
from faceage.stage import run_stage, write_csv, write_json
from faceage.tracking.runs import EVALUATE_ARTIFACTS, FLIP_TTA_TAG, RunTracker

INGESTED = "data/ingested"
TEST_SOURCES = Path("data/test_sources")  # one ingested folder per test source, by name
TEST_SOURCE_REPORTS = Path("reports/test_sources")  # what ingest kept of each, and why it rejected the rest
SPLIT_FILE = "data/split.csv"
MODEL = "models/model.pt"
PREDICTIONS = "data/predictions.csv"
METRICS = "metrics/evaluate.json"  # headline figures, tracked by DVC and charted by MLflow
REPORT = "reports/evaluate.json"  # every figure
PLOTS = Path("plots/evaluate")
GALLERIES = Path("data/galleries")  # face images: DVC-cached, never committed
log = logging.getLogger("faceage.evaluation.evaluate")


def main() -> None:
    params = load_params()
    device = select_device()
    model, checkpoint = load_model(MODEL, device)
    images = load_images(INGESTED)
    started = time.perf_counter()
    predictions = evaluate.predict_splits(
        model, images, load_manifest(INGESTED), pd.read_csv(SPLIT_FILE), params.evaluate, device
    )
    speed = round(len(predictions) / (time.perf_counter() - started), 1)
    predictions = evaluate.with_reference_ages(predictions, images, model, params.evaluate)
    sources = list(params.test_sources)
    others = test_source_predictions(model, params, device)
    predictions = pd.concat([predictions, *others], ignore_index=True)
    write_csv(predictions, PREDICTIONS)
    report = evaluate.evaluation_report(predictions, params.evaluate, sources)
    write_json({**report, "inference": {"images_per_second": speed, "flip_tta": params.evaluate.flip_tta}}, REPORT)
    headline = evaluate.headline_metrics(report, cs_name(params.evaluate.cs_threshold), speed, sources)
    write_json(headline, METRICS)

    write_plots(report, predictions, params)
    write_galleries(predictions, images, model, params, device)

    run_id = checkpoint.run_id
    if run_id:
        tracker = RunTracker(run_id=run_id)
        tracker.log_metrics(headline)
        tracker.set_tags({FLIP_TTA_TAG: str(params.evaluate.flip_tta)})
        for path in (
            METRICS,
            REPORT,
            PREDICTIONS,
            *sorted(PLOTS.iterdir()),
            *sorted(GALLERIES.iterdir()),
        ):
            tracker.log_artifact(path, EVALUATE_ARTIFACTS)


def write_plots(report: dict, predictions: pd.DataFrame, params: Params) -> None:
    """Per-bucket MAE (CSV for ``dvc plots``, PNG), predicted against true age, errors and age groups."""
    write_csv(evaluate.bucket_table(report["test"]), PLOTS / "bucket_mae.csv")
    plots.bucket_mae({name: summary["buckets"] for name, summary in report.items()}, PLOTS / "bucket_mae.png")
    test = predictions[predictions["split"] == "test"]
    ages = (params.data.min_age, params.data.max_age)
    plots.predicted_vs_true(
        test["true_age"], test["predicted_age"], ages, "Test split", PLOTS / "predicted_vs_true.png"
    )
    plots.error_histogram(test["error"].to_numpy(), "Test split errors", PLOTS / "error_histogram.png")
    plots.confusion(report["test"]["age_groups"]["confusion"], "Test split age groups", PLOTS / "age_groups.png")


def write_galleries(
    predictions: pd.DataFrame,
    images: np.ndarray,
    model: AgeModel,
    params: Params,
    device: torch.device,
) -> None:
    """The worst test errors, and Grad-CAM maps of a few test faces per age bucket."""
    worst = evaluate.worst_errors(predictions, params.evaluate.worst_errors)
    captions = [evaluate.caption(row) for _, row in worst.iterrows()]
    plots.face_gallery(images[worst["id"].to_numpy()], captions, GALLERIES / "worst_errors.png")
    examples = evaluate.gradcam_examples(predictions, params.evaluate)
    ids = examples["id"].to_numpy()
    heat = evaluate.gradcam_maps(model, images, ids, device)
    captions = [evaluate.caption(row) for _, row in examples.iterrows()]
    plots.face_gallery(images[ids], captions, GALLERIES / "gradcam.png", heat_maps=heat)


def test_source_predictions(model: AgeModel, params: Params, device: torch.device) -> list[pd.DataFrame]:
    """The predictions on each test source that has images; a warning names each that has none."""
    found = []
    for name in params.test_sources:
        folder = TEST_SOURCES / name
        if not (folder / MANIFEST_FILE).is_file():
            raise FaceageError(f"test source {name!r} is not ingested in {folder}: run dvc repro test_source@{name}")
        manifest = load_manifest(folder)
        if manifest.empty:
            log.warning("test source %r has no images: %s says why", name, TEST_SOURCE_REPORTS / f"{name}.json")
            continue
        images = load_images(folder)
        found.append(evaluate.predict_source(model, images, manifest, name, params.evaluate, device))
    return found


if __name__ == "__main__":
    run_stage(main)
