"""Predict the validation and test splits with a trained model and measure the errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from faceage.inference import predict_ages
from faceage.metrics import error_summary
from faceage.params import EvaluateParams

EVALUATED_SPLITS = ("val", "test")


def predict_splits(
    model: torch.nn.Module,
    checkpoint: dict,
    images: np.ndarray,
    manifest: pd.DataFrame,
    split: pd.DataFrame,
    params: EvaluateParams,
    device: torch.device,
) -> pd.DataFrame:
    """One row per validation and test image: id, split, true and predicted age, error, gender, race."""
    rows = manifest[["id", "age", "gender", "race"]].merge(split, on="id")
    rows = rows[rows["split"].isin(EVALUATED_SPLITS)].sort_values("id").reset_index(drop=True)
    rows["predicted_age"] = predict_ages(
        model,
        images,
        rows["id"].to_numpy(),
        checkpoint["model"]["input_size"],
        params.batch_size,
        device,
    )
    rows["error"] = rows["predicted_age"] - rows["age"]
    return rows.rename(columns={"age": "true_age"})[
        ["id", "split", "true_age", "predicted_age", "error", "gender", "race"]
    ]


def evaluation_report(predictions: pd.DataFrame, params: EvaluateParams) -> dict:
    """Error summary per evaluated split; the test split is the headline."""
    return {
        name: error_summary(part["true_age"], part["predicted_age"], params.bucket_edges)
        for name, part in ((name, predictions[predictions["split"] == name]) for name in EVALUATED_SPLITS)
        if len(part)
    }
