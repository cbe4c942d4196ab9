"""Predict the validation and test splits, and the test sources, with a trained model and measure the errors,
beside those of dlib's untouched age model on the same images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from faceage.evaluation.gradcam import grad_cam
from faceage.evaluation.intervals import challenge_report, interval_report, threshold_report
from faceage.evaluation.metrics import (
    GENDER_NAMES,
    RACE_NAMES,
    bias,
    bucket_index,
    bucket_mae,
    cs_name,
    cumulative_score,
    group_confusion,
    mae,
    r2,
    rmse,
    subgroup_mae,
    with_interval,
)
from faceage.model.age_model import AgeModel, untouched_dlib
from faceage.model.batches import to_input
from faceage.model.inference import predict
from faceage.model.intervals import interval_text
from faceage.report_sections import EvaluateParams

EVALUATED_SPLITS = ("test", "val")  # the test split is the headline; validation is for model selection


def predict_splits(
    model: AgeModel,
    images: np.ndarray,
    manifest: pd.DataFrame,
    split: pd.DataFrame,
    params: EvaluateParams,
    device: torch.device,
) -> pd.DataFrame:
    """One row per validation and test image: see :func:`predict_rows`."""
    rows = manifest[["id", "age", "gender", "race"]].merge(split, on="id")
    rows = rows[rows["split"].isin(EVALUATED_SPLITS)]
    return predict_rows(model, images, rows, params, device)


def predict_source(
    model: AgeModel,
    images: np.ndarray,
    manifest: pd.DataFrame,
    name: str,
    params: EvaluateParams,
    device: torch.device,
) -> pd.DataFrame:
    """One row per image of the test source ``name`` (all of its images), its ``split`` the source's name, with
    dlib's untouched model's ``reference_age``."""
    rows = manifest[["id", "age", "gender", "race"]].assign(split=name)
    return with_reference_ages(predict_rows(model, images, rows, params, device), images, model, params)


def predict_rows(
    model: AgeModel,
    images: np.ndarray,
    rows: pd.DataFrame,
    params: EvaluateParams,
    device: torch.device,
) -> pd.DataFrame:
    """For ``rows`` (id, age, gender, race, split), ordered by id: true and predicted age, error, the interval
    (``age_low``, ``age_high``) when the model is calibrated, and the predicted probability of gender 1 when the
    model has a gender head."""
    rows = rows.sort_values("id").reset_index(drop=True)
    ids = rows["id"].to_numpy()
    outputs = predict(model, images, ids, params.batch_size, device, flip=params.flip_tta)
    rows["predicted_age"] = outputs["age"]
    rows["error"] = rows["predicted_age"] - rows["age"]
    columns = ["id", "split", "true_age", "predicted_age", "error", "gender", "race"]
    for name in ("age_low", "age_high", "female_probability"):
        if name in outputs:
            rows[name] = outputs[name]
            columns.append(name)
    return rows.rename(columns={"age": "true_age"})[columns]


def with_reference_ages(
    predictions: pd.DataFrame, images: np.ndarray, model: AgeModel, params: EvaluateParams
) -> pd.DataFrame:
    """``predictions`` of ``images`` with a ``reference_age`` column after ``error``: what dlib's untouched age
    model predicts at its own 64 px, on ``model``'s bins and with the same mirror-image TTA."""
    device = model.bin_ages.device
    reference = untouched_dlib(model.age_range).to(device)
    ids = predictions["id"].to_numpy()
    ages = predict(reference, images, ids, params.batch_size, device, flip=params.flip_tta)["age"]
    return predictions.assign(reference_age=ages)[[*predictions.columns[:5], "reference_age", *predictions.columns[5:]]]


def split_report(predictions: pd.DataFrame, params: EvaluateParams, model: AgeModel | None = None) -> dict:
    """All metrics of one split's (or test source's) predictions; with a ``reference_age`` column, the MAE and
    age-group accuracy of dlib's untouched model on the same images as ``reference``; when ``model`` (which
    predicted them) is calibrated, its intervals' coverage and the over/under decisions at each threshold."""
    true = predictions["true_age"].to_numpy(float)
    predicted = predictions["predicted_age"].to_numpy(float)
    metrics = {
        "mae": mae,
        "rmse": rmse,
        "r2": r2,
        "bias": bias,
        cs_name(params.cs_threshold): cumulative_score(params.cs_threshold),
    }
    bootstrap = (params.bootstrap_resamples, params.bootstrap_seed, params.confidence)
    report: dict = {"count": len(predictions)}
    for name, metric in metrics.items():
        report[name] = with_interval(metric, true, predicted, *bootstrap)
    report["buckets"] = bucket_mae(true, predicted, params.bucket_edges)
    report["age_groups"] = group_confusion(true, predicted, params.age_groups)
    if model is not None and model.calibration is not None:
        report["intervals"] = interval_report(predictions, model.calibration, model.age_range, params.bucket_edges)
        report["thresholds"] = threshold_report(predictions, params.thresholds)
    if "reference_age" in predictions:
        reference = predictions["reference_age"].to_numpy(float)
        report["reference"] = {
            "mae": with_interval(mae, true, reference, *bootstrap),
            "age_group_accuracy": group_confusion(true, reference, params.age_groups)["accuracy"],
        }
    report["by_gender"] = subgroup_mae(predictions["error"], predictions["gender"], GENDER_NAMES)
    report["by_race"] = subgroup_mae(predictions["error"], predictions["race"], RACE_NAMES)
    if "female_probability" in predictions:
        known = predictions["gender"].notna()
        guessed = (predictions.loc[known, "female_probability"] > 0.5).astype(int)
        report["gender_accuracy"] = round(float((guessed == predictions.loc[known, "gender"]).mean()), 4)
    return report


def evaluation_report(
    predictions: pd.DataFrame, params: EvaluateParams, sources: list[str], model: AgeModel | None = None
) -> dict:
    """Metrics per evaluated split, then per test source (``sources``, by name); for a calibrated ``model``,
    each with the rates at the challenge ages chosen on validation (``challenge``)."""
    names = [name for name in (*EVALUATED_SPLITS, *sources) if (predictions["split"] == name).any()]
    report = {name: split_report(predictions[predictions["split"] == name], params, model) for name in names}
    if model is not None and model.calibration is not None:
        for name, rates in challenge_report(predictions, names, params.thresholds, params.challenge_rate).items():
            report[name]["challenge"] = rates
    return report


def headline_metrics(report: dict, cs_key: str, images_per_second: float, sources: list[str]) -> dict:
    """The figures DVC tracks and MLflow charts: test and validation MAE with their interval, test RMSE,
    bias, CS@k (``cs_key``), age-group accuracy and (calibrated) interval coverage and width, test MAE per age
    bucket, inference speed, and per test source its MAE, age-group accuracy and those of dlib's untouched
    model. The rest of ``report`` is details. The test MAE comes first in ``dvc exp show`` (file order) and
    near the top of ``dvc metrics diff`` (sorted names: the interval's ``pi_coverage`` and ``pi_width``, pi for
    prediction interval, sort after it)."""

    def mae(split: str) -> dict:
        metric = report[split]["mae"]
        return {"mae": metric["value"], "mae_low": metric["ci_low"], "mae_high": metric["ci_high"]}

    def intervals(split: str) -> dict:
        found = report[split].get("intervals")
        return {"pi_coverage": found["coverage"], "pi_width": found["width"]} if found else {}

    def other(name: str) -> dict:
        reference = report[name]["reference"]
        return {
            **mae(name),
            "age_group_accuracy": report[name]["age_groups"]["accuracy"],
            "reference_mae": reference["mae"]["value"],
            "reference_age_group_accuracy": reference["age_group_accuracy"],
        }

    test = {**mae("test"), **{name: report["test"][name]["value"] for name in ("rmse", "bias", cs_key)}}
    test["age_group_accuracy"] = report["test"]["age_groups"]["accuracy"]
    test.update(intervals("test"))
    buckets = {label: row["mae"] for label, row in report["test"]["buckets"].items()}
    headline = {"test": test, "val": mae("val"), "test_bucket_mae": buckets}
    if sources:
        headline["test_sources"] = {name: other(name) for name in sources if name in report}
    return {**headline, "inference_images_per_second": images_per_second}


def interval_details(report: dict, sources: list[str]) -> dict:
    """The interval and threshold figures MLflow charts beside the headline (DVC's headline keeps to test
    coverage and width, so that ``dvc metrics diff`` fits one screen): one width's test width, each test
    source's coverage and width, and the challenge ages."""
    intervals = {"test_one_width_width": report["test"]["intervals"]["one_width"]["width"]}
    for name in (name for name in sources if name in report):
        found = report[name]["intervals"]
        intervals.update({f"{name}_coverage": found["coverage"], f"{name}_width": found["width"]})
    challenge = report["test"]["challenge"].items()
    ages = {t: rates["challenge_age"] for t, rates in challenge if rates["buffer"] is not None}
    return {"intervals": intervals, "challenge_ages": ages}


def bucket_table(report: dict) -> pd.DataFrame:
    """Per-bucket MAE and bias of one split as rows, for ``dvc plots``."""
    return pd.DataFrame(
        [
            {"bucket": label, **{key: row[key] for key in ("mae", "bias", "count")}}
            for label, row in report["buckets"].items()
        ]
    )


def interval_table(report: dict) -> pd.DataFrame:
    """Per-bucket coverage and mean width of one split's intervals, beside the nominal level and the one-width
    interval's, as rows for ``dvc plots``."""
    intervals, fixed = report["intervals"], report["intervals"]["one_width"]["buckets"]
    return pd.DataFrame(
        [
            {
                "bucket": label,
                "coverage": row["coverage"],
                "nominal": intervals["level"],
                "width": row["width"],
                "one_width_coverage": fixed[label]["coverage"],
                "one_width_width": fixed[label]["width"],
                "count": row["count"],
            }
            for label, row in intervals["buckets"].items()
        ]
    )


def threshold_table(report: dict) -> pd.DataFrame:
    """The over/under decision rates at each threshold, on every split and test source, with the challenge age
    and its rates: one row per split and threshold."""
    rows = []
    for name, summary in report.items():
        for threshold, rates in summary.get("thresholds", {}).items():
            challenge = summary.get("challenge", {}).get(threshold, {})
            extra = {
                key if key.startswith("challenge_") else f"challenge_{key}": value
                for key, value in challenge.items()
                if key != "reason"
            }
            rows.append({"split": name, "threshold": int(threshold), **rates, **extra})
    return pd.DataFrame(rows)


def worst_errors(predictions: pd.DataFrame, count: int) -> pd.DataFrame:
    """The ``count`` test predictions with the largest absolute error, largest first."""
    test = predictions[predictions["split"] == "test"]
    return test.loc[test["error"].abs().sort_values(ascending=False, kind="stable").index[:count]]


def gradcam_examples(predictions: pd.DataFrame, params: EvaluateParams) -> pd.DataFrame:
    """Up to ``gradcam_per_bucket`` test images per age bucket (lowest ids first, so the choice is stable),
    youngest first."""
    test = predictions[predictions["split"] == "test"].sort_values("id")
    buckets = bucket_index(test["true_age"].to_numpy(), params.bucket_edges)
    chosen = test.groupby(buckets, sort=True).head(params.gradcam_per_bucket)
    return chosen.sort_values(["true_age", "id"])


def gradcam_maps(model: AgeModel, images: np.ndarray, ids: np.ndarray, device: torch.device) -> np.ndarray:
    """Grad-CAM heat maps for ``images[ids]`` at the stored image size."""
    ids = np.asarray(ids)
    order = np.argsort(ids)
    maps = grad_cam(model, to_input(images[ids[order]], model.input_size, device))
    maps = F.interpolate(maps[:, None], size=images.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
    result = np.empty((len(ids), *images.shape[1:3]), dtype=np.float32)
    result[order] = maps.cpu().numpy()
    return result


def caption(row: pd.Series) -> str:
    """``true 34 / pred 41.2``, and the interval when there is one: ``(36-47)``."""
    text = f"true {row['true_age']:.0f} / pred {row['predicted_age']:.1f}"
    return f"{text} ({interval_text(row['age_low'], row['age_high'])})" if "age_low" in row else text
