"""Rank evaluated runs: validation MAE decides, test MAE is reported."""

from __future__ import annotations


def run_entry(train_summary: dict, evaluation: dict) -> dict:
    """One leaderboard row from a run's ``train.json`` and ``evaluate.json``."""
    return {
        "backbone": train_summary["backbone"],
        "val_mae": evaluation["val"]["mae"]["value"],
        "test_mae": evaluation["test"]["mae"]["value"],
        "test_mae_ci": [evaluation["test"]["mae"]["ci_low"], evaluation["test"]["mae"]["ci_high"]],
        "test_rmse": evaluation["test"]["rmse"]["value"],
        "test_cs5": evaluation["test"]["cs5"]["value"],
        "parameters": train_summary["parameters"],
        "train_seconds": train_summary["seconds"],
    }


def leaderboard(entries: list[dict]) -> list[dict]:
    """``entries`` best first by validation MAE, each with its rank; test MAE never decides."""
    ranked = sorted(entries, key=lambda entry: entry["val_mae"])
    return [{"rank": rank, **entry} for rank, entry in enumerate(ranked, start=1)]
