import os

import numpy as np
import pandas as pd
import pytest
from conftest import settings
from mlflow import MlflowClient

from faceage.evaluation.compare import (
    BETTER,
    CHAMPION,
    NO_DIFFERENCE,
    WORSE,
    console_summary,
    entry_from_reports,
    leaderboard,
    leaderboard_entry,
    paired_comparison,
    promote_if_better,
    promote_leaderboard_best,
    promotion_decision,
    verdict_against_best_other,
)
from faceage.report_sections import CompareParams
from faceage.sections import FacesParams
from faceage.serving.pyfunc import log_age_model
from faceage.tracking.registry import champion_run
from faceage.tracking.runs import RunTracker


def entry(backbone, val_mae, test_mae, run_id=None):
    return {"run_id": run_id or f"{backbone}-{val_mae}", "backbone": backbone, "val_mae": val_mae, "test_mae": test_mae}


def test_validation_not_test_picks_each_backbones_best_run():
    board = leaderboard(
        [
            entry("resnet18", val_mae=5.0, test_mae=4.0),
            entry("resnet18", val_mae=4.5, test_mae=6.0),  # better on validation, worse on test: chosen
            entry("mobilenet_v2", val_mae=4.8, test_mae=3.0),
        ]
    )
    assert [(row["rank"], row["backbone"], row["test_mae"]) for row in board] == [
        (1, "resnet18", 6.0),
        (2, "mobilenet_v2", 3.0),
    ]


def errors_frame(errors, ids=None):
    return pd.DataFrame({"id": ids if ids is not None else range(len(errors)), "error": errors})


def test_paired_bootstrap_finds_a_known_difference():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 6, 2000)
    better = errors_frame(base * 0.8)  # every absolute error 20 % smaller
    other = errors_frame(base)
    result = paired_comparison(better, other, resamples=1000, seed=0, confidence=0.95)
    expected = np.abs(base * 0.8).mean() - np.abs(base).mean()
    assert result["mae_difference"] == pytest.approx(expected, abs=1e-4)
    assert result["ci_low"] < expected < result["ci_high"] < 0
    assert result["verdict"] == BETTER and result["wilcoxon_p_value"] < 1e-6 and result["images"] == 2000
    assert paired_comparison(other, better, resamples=1000, seed=0, confidence=0.95)["verdict"] == WORSE


def test_noise_alone_is_no_significant_difference():
    rng = np.random.default_rng(1)
    first, second = errors_frame(rng.normal(0, 6, 300)), errors_frame(rng.normal(0, 6, 300))
    result = paired_comparison(first, second, resamples=1000, seed=0, confidence=0.95)
    assert result["ci_low"] < 0 < result["ci_high"] and result["verdict"] == NO_DIFFERENCE


def test_only_shared_test_images_are_paired():
    result = paired_comparison(
        errors_frame([1.0, 2.0, 3.0], ids=[1, 2, 3]), errors_frame([1.0, 9.0], ids=[3, 4]), 100, 0, 0.95
    )
    assert result["images"] == 1 and result["mae_difference"] == 2.0
    assert paired_comparison(errors_frame([1.0], ids=[1]), errors_frame([1.0], ids=[2]), 100, 0, 0.95) is None


LOGGED_PARAMS = {
    "model.backbone": "resnet18",
    "model.pretrained": "False",
    "model.input_size": "64",
    "train.head_epochs": "3",
    "train.epochs": "16",
    "mlflow.experiment": "faceage",
}


def test_mlflow_entry_needs_an_evaluation_and_shows_what_makes_runs_comparable():
    assert leaderboard_entry("r1", {"best_val_mae": 5.0}, LOGGED_PARAMS, {}, ["1-5"], "cs5") is None
    metrics = {"val.mae": 5.0, "test.mae": 6.0, "test_bucket_mae.101_": 40.0, "parameters": 10.0, "best_val_mae": 5.2}
    tags = {"dvc_experiment": "tidy-kiln", "evaluated_with_flip_tta": "True"}
    result = leaderboard_entry("r1", metrics, LOGGED_PARAMS, tags, ["1-5", "101+"], "cs5")
    assert result["test_bucket_mae"] == {"1-5": None, "101+": 40.0}
    assert (result["backbone"], result["val_mae"], result["test_mae"], result["parameters"]) == (
        "resnet18",
        5.0,
        6.0,
        10,
    )
    assert (result["epochs"], result["pretrained"], result["input_size"]) == ("3+16", False, 64)
    assert (result["experiment"], result["dvc_experiment"], result["run_id"]) == ("faceage", "tidy-kiln", "r1")
    assert result["flip_tta"] is True and result["val_mae_in_training"] == 5.2


def test_an_ensemble_is_ranked_under_its_networks_backbones():
    from faceage.params import MemberParams, Params

    members = {"wide": MemberParams(model={"backbone": "mobilenet_v2"}), "seed2": MemberParams(train={"seed": 7})}
    metrics = [{"val.mae": 5.0, "test.mae": 6.0}]
    params = settings(Params, members=members)
    entry = entry_from_reports("r1", metrics, params, [], "cs5")
    main = params.model.backbone
    assert entry["backbone"] == f"{main}+{main}+mobilenet_v2"  # members by name; seed2 inherits the main backbone
    # a logged run is ranked under the label its run was tagged with
    logged = {"val.mae": 5.0, "test.mae": 6.0}
    assert leaderboard_entry("r2", logged, LOGGED_PARAMS, {"backbone": "a+b"}, [], "cs5")["backbone"] == "a+b"


@pytest.mark.parametrize("threshold", [5.0, 3.0, 2.5])
def test_reports_and_mlflow_give_the_same_entry_for_any_cs_threshold(threshold, monkeypatch):
    from dataclasses import asdict

    from faceage.evaluation.evaluate import evaluation_report, headline_metrics
    from faceage.evaluation.metrics import bucket_labels, cs_name
    from faceage.params import Params
    from faceage.report_sections import EvaluateParams
    from faceage.tracking.runs import flatten, metric_key
    from faceage.tracking.training_runs import backbone_label

    monkeypatch.setenv("DVC_EXP_NAME", "tidy-kiln")
    params = settings(Params, evaluate=settings(EvaluateParams, cs_threshold=threshold, bootstrap_resamples=50))
    rng = np.random.default_rng(0)
    true = rng.integers(1, 100, 80)
    predictions = pd.DataFrame(
        {
            "id": range(80),
            "split": ["val", "test", "photos", "test"] * 20,
            "true_age": true,
            "predicted_age": true + rng.normal(0, 4, 80),
            "reference_age": true + rng.normal(0, 8, 80),
        }
    ).assign(gender=0, race=0)
    predictions["error"] = predictions["predicted_age"] - predictions["true_age"]
    report = evaluation_report(predictions, params.evaluate, ["photos"])
    buckets, key = bucket_labels(params.evaluate.bucket_edges), cs_name(threshold)
    metric_files = [
        {"best_val_mae": 4.0, "parameters": 10},
        headline_metrics(report, key, 99.0, ["photos"]),
    ]
    from_reports = entry_from_reports("r1", metric_files, params, buckets, key)
    # What the train and evaluate stages log to MLflow: the same files' figures, params as strings, tags.
    logged = {metric_key(k): v for files in metric_files for k, v in flatten(files).items()}
    logged_params = {k: str(v) for k, v in flatten(asdict(params)).items()}
    tags = {
        "backbone": backbone_label(params),
        "dvc_experiment": "tidy-kiln",
        "evaluated_with_flip_tta": str(params.evaluate.flip_tta),
    }
    assert leaderboard_entry("r1", logged, logged_params, tags, buckets, key) == from_reports
    assert from_reports["test_cs"] == report["test"][key]["value"] is not None
    assert from_reports["test_mae"] == report["test"]["mae"]["value"]
    assert from_reports["val_mae"] == report["val"]["mae"]["value"]
    photos = report["photos"]
    assert photos["count"] == 20 and from_reports["sources"] == {
        "photos": {
            "mae": photos["mae"]["value"],
            "age_group_accuracy": photos["age_groups"]["accuracy"],
            "reference_mae": photos["reference"]["mae"]["value"],
            "reference_age_group_accuracy": photos["reference"]["age_group_accuracy"],
        }
    }


def test_promotion_rule():
    assert promotion_decision(None, has_champion=False) == (True, "no champion yet")
    assert promotion_decision(None, has_champion=True)[0] is False
    better = {"verdict": BETTER, "mae_difference": -0.5, "ci_low": -0.8, "ci_high": -0.2}
    assert promotion_decision(better, has_champion=True)[0] is True
    for verdict in (WORSE, NO_DIFFERENCE):
        promote, reason = promotion_decision({**better, "verdict": verdict, "ci_high": 0.1}, has_champion=True)
        assert promote is False and verdict in reason


def logged_run(tmp_path, name, errors, model, split="val"):
    """An MLflow run with a logged model and predictions on ``split`` whose errors are ``errors``."""
    tracker = RunTracker("exp", run_name=name)
    folder = tmp_path / name
    folder.mkdir()
    predictions = pd.DataFrame({"id": range(len(errors)), "split": split, "error": errors})
    predictions.to_csv(folder / "predictions.csv", index=False)
    log_age_model(
        tracker, model, settings(FacesParams), np.zeros((32, 32, 3), np.uint8), {"name": "noise", "kind": "real"}
    )
    tracker.log_artifact(folder / "predictions.csv", "evaluate")
    tracker.finish()
    return tracker.run_id, predictions


def test_champion_moves_only_to_a_significantly_better_model(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = settings(CompareParams, bootstrap_resamples=500, promote=True)
    errors = np.random.default_rng(0).normal(0, 6, 400)
    first, first_predictions = logged_run(tmp_path, "first", errors, tiny_model)
    decision = promote_if_better(first, first_predictions, params)
    assert decision["promoted"] and decision["reason"] == "no champion yet"
    assert champion_run("faceage", CHAMPION) == ("1", first)

    same, same_predictions = logged_run(
        tmp_path, "same", errors + np.random.default_rng(1).normal(0, 0.5, 400), tiny_model
    )
    decision = promote_if_better(same, same_predictions, params)
    assert not decision["promoted"] and decision["evidence"]["verdict"] != BETTER
    assert champion_run("faceage", CHAMPION) == ("1", first)

    better, better_predictions = logged_run(tmp_path, "better", errors * 0.7, tiny_model)
    decision = promote_if_better(better, better_predictions, params)
    assert decision["promoted"] and decision["evidence"]["verdict"] == BETTER
    assert decision["previous_champion_version"] == "1"
    assert champion_run("faceage", CHAMPION) == (decision["champion_version"], better)
    assert promote_if_better(better, better_predictions, params)["reason"] == "already the champion"
    tags = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(better).data.tags
    assert tags["promoted"] == "true" and "significantly better" in tags["champion_decision"]


def test_promotion_picks_the_leaderboards_best_run_not_the_current_one(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = settings(CompareParams, bootstrap_resamples=200, promote=True)
    errors = np.random.default_rng(0).normal(0, 6, 200)
    strong, _ = logged_run(tmp_path, "strong", errors * 0.5, tiny_model)
    current, current_predictions = logged_run(tmp_path, "current", errors, tiny_model)
    board = leaderboard([entry("resnet18", 3.55, 3.6, strong), entry("mobilenet_v2", 6.01, 6.1, current)])
    decision = promote_leaderboard_best(board, current, current_predictions, params)
    assert decision["candidate_run"] == strong and decision["promoted"] and decision["reason"] == "no champion yet"
    assert champion_run("faceage", CHAMPION) == ("1", strong)
    # The registered version is the run's loadable MLflow model.
    assert MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_model_version("faceage", "1").run_id == strong
    import mlflow.pyfunc

    assert mlflow.pyfunc.load_model("models:/faceage@champion").metadata.run_id == strong
    # Now the current run is the leaderboard's best, but not significantly better than the champion.
    board = leaderboard([entry("mobilenet_v2", 3.0, 3.1, current), entry("resnet18", 3.55, 3.6, strong)])
    decision = promote_leaderboard_best(board, current, current_predictions, params)
    assert decision["candidate_run"] == current and not decision["promoted"]
    assert decision["evidence"]["verdict"] == WORSE
    assert champion_run("faceage", CHAMPION) == ("1", strong)


def test_the_verdict_is_against_the_other_run_best_on_validation_not_the_latest(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = settings(CompareParams, bootstrap_resamples=200)
    errors = np.random.default_rng(0).normal(0, 6, 200)
    best, _ = logged_run(tmp_path, "best", errors * 0.5, tiny_model, split="test")
    latest, _ = logged_run(tmp_path, "latest", errors * 2, tiny_model, split="test")
    current = pd.DataFrame({"id": range(len(errors)), "split": "test", "error": errors})
    others = [entry("resnet18", 3.5, 3.6, best), entry("mobilenet_v2", 6.0, 6.1, latest)]
    for order in (others, others[::-1]):
        verdict = verdict_against_best_other(order, current, params)
        assert (verdict["against_run"], verdict["against_backbone"], verdict["split"]) == (best, "resnet18", "test")
        half = np.abs(errors).mean() / 2  # the rival's errors are half the current run's
        assert verdict["verdict"] == WORSE and verdict["mae_difference"] == pytest.approx(half, abs=1e-4)
    assert verdict_against_best_other([], current, params) is None


def test_an_interval_that_holds_0_is_no_significant_difference_whatever_the_p_value():
    # Fifty images slightly better, one far worse: nearly every pair favours the current run, so the
    # signed-rank test's p-value is tiny, but the mean difference is not clearly below or above 0.
    current = errors_frame([1.0] * 50 + [25.0])
    other = errors_frame([1.1] * 50 + [5.0])
    result = paired_comparison(current, other, resamples=2000, seed=0, confidence=0.95)
    assert result["wilcoxon_p_value"] < 1e-3
    assert result["ci_low"] < 0 < result["ci_high"]
    assert result["verdict"] == NO_DIFFERENCE


def test_an_interval_that_ends_at_0_is_no_significant_difference():
    # Resamples of these differences (-1, -1, 0) average 0 one time in 27, more often than the 2.5 % tail.
    result = paired_comparison(errors_frame([1.0, 1.0, 2.0]), errors_frame([2.0, 2.0, 2.0]), 2000, 0, 0.95)
    assert result["ci_high"] == 0 and result["ci_low"] < 0
    assert result["verdict"] == NO_DIFFERENCE


def test_the_console_shows_the_leaderboard_the_verdict_and_the_registrys_decision():
    table = pd.DataFrame({"rank": [1, 2], "backbone": ["resnet18", "mobilenet_v2"], "val_mae": [5.1, 5.4]})
    significance = {**paired_comparison(*errors_pair(), 200, 0, 0.95), "against_backbone": "mobilenet_v2"}
    shown = console_summary(table, significance, {"promoted": False, "reason": "already the champion"})
    assert "Leaderboard (2 runs on this data" in shown and "mobilenet_v2" in shown and "5.4" in shown
    assert f"Verdict against mobilenet_v2 on 50 test images: {significance['verdict']}" in shown
    assert shown.endswith("Registry: not promoted (already the champion)")
    alone = console_summary(table.head(1), None, None)
    assert "(1 run on this data" in alone and "no other run on this data" in alone and "Registry" not in alone


def errors_pair() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    return tuple(pd.DataFrame({"id": range(50), "error": rng.normal(0, 5, 50)}) for _ in range(2))
