"""Stage compare: leaderboard of the backbones evaluated on the same data, and a paired test of the
current run against the best other run."""

import json

import pandas as pd

from faceage import plots
from faceage.data.manifest import dataset_fingerprint
from faceage.evaluation.compare import (
    console_summary,
    entry_from_reports,
    leaderboard,
    other_runs,
    promote_leaderboard_best,
    verdict_against_best_other,
)
from faceage.evaluation.metrics import bucket_labels, cs_name
from faceage.params import load_params
from faceage.stage import pipeline_paths, run_stage, write_csv, write_json


def main() -> None:
    params, paths = load_params(), pipeline_paths()
    train_report = json.loads(paths["train_report"].read_text())
    run_id = train_report.get("mlflow_run_id")
    buckets, cs_key = bucket_labels(params.evaluate.bucket_edges), cs_name(params.evaluate.cs_threshold)
    # The figures the run logs to MLflow: the headline metrics and the model's size.
    metrics = [
        {"parameters": train_report["parameters"]},
        *(json.loads(path.read_text()) for path in (paths["train_metrics"], paths["evaluate_metrics"])),
    ]
    current = entry_from_reports(run_id, metrics, params, buckets, cs_key)
    fingerprint = dataset_fingerprint(paths["ingested"], paths["split"])
    others = other_runs(params.mlflow.experiment, fingerprint, run_id, buckets, cs_key)
    board = leaderboard([current, *others])
    predictions = pd.read_csv(paths["predictions"])
    significance = verdict_against_best_other(others, predictions, params.compare)
    promotion = None
    if params.compare.promote and run_id:
        promotion = promote_leaderboard_best(board, run_id, predictions, params.compare)
    write_json(
        {
            "dataset_fingerprint": fingerprint,
            "runs_considered": 1 + len(others),
            "cs_threshold": params.evaluate.cs_threshold,
            "current_run": run_id,
            "leaderboard": board,
            "significance": significance,
            "promotion": promotion,
        },
        paths["compare_report"],
    )
    columns = ["rank", "backbone", "epochs", "pretrained", "input_size", "val_mae", "test_mae", "run_id"]
    table = pd.DataFrame(board)[columns]
    for name in params.test_sources:  # each test source's MAE, empty for runs not evaluated on it
        table[f"{name}_mae"] = [entry["sources"].get(name, {}).get("mae") for entry in board]
    write_csv(table, paths["leaderboard"])
    plots.mae_by_backbone(board, paths["compare_test_plot"])
    plots.bucket_mae_by_backbone(board, paths["compare_bucket_plot"])
    print(console_summary(table, significance, promotion))


if __name__ == "__main__":
    run_stage(main)
