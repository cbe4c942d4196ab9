"""Fine-tune a backbone to regress age, keeping the epoch with the best validation MAE."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from faceage.batches import index_batches, to_input
from faceage.errors import FaceageError
from faceage.inference import make_checkpoint, predict_ages
from faceage.models import build_model, count_parameters
from faceage.params import ModelParams, TrainParams
from faceage.runtime import make_deterministic, select_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """The best checkpoint, one row per epoch, and a summary for ``metrics/train.json``."""

    checkpoint: dict
    history: list[dict]
    summary: dict


def split_ids(split: pd.DataFrame, name: str) -> np.ndarray:
    """Array rows (manifest ids) of one split."""
    return split.loc[split["split"] == name, "id"].to_numpy()


def train_model(
    images: np.ndarray,
    ages: np.ndarray,
    split: pd.DataFrame,
    model_params: ModelParams,
    params: TrainParams,
    device: torch.device | None = None,
) -> TrainResult:
    """Train on the ``train`` split of ``images`` (indexed by manifest id), select on ``val``."""
    train_ids, val_ids = split_ids(split, "train"), split_ids(split, "val")
    if len(train_ids) == 0 or len(val_ids) == 0:
        raise FaceageError(f"training needs train and val images, got {len(train_ids)} and {len(val_ids)}")
    device = device or select_device()
    make_deterministic(params.seed, params.threads)
    rng = np.random.default_rng(params.seed)
    age_mean, age_std = float(ages[train_ids].mean()), float(ages[train_ids].std() or 1.0)
    targets = torch.from_numpy((ages - age_mean) / age_std).float()

    model = build_model(model_params).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    history: list[dict] = []
    best: dict | None = None
    started, train_seconds = time.perf_counter(), 0.0
    for epoch in range(1, params.epochs + 1):
        model.train()
        epoch_started, loss_sum, error_sum, seen = time.perf_counter(), 0.0, 0.0, 0
        batches = tqdm(
            list(index_batches(train_ids, params.batch_size, rng)), desc=f"epoch {epoch}/{params.epochs}", unit="batch"
        )
        for batch in batches:
            x = to_input(images[batch], model_params.input_size, device)
            y = targets[batch].to(device)
            output = model(x).squeeze(1)
            loss = F.l1_loss(output, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
            error_sum += (output.detach() - y).abs().sum().item() * age_std
            seen += len(batch)
            batches.set_postfix(loss=f"{loss_sum / seen:.3f}", mae=f"{error_sum / seen:.2f}")
        train_seconds += time.perf_counter() - epoch_started
        predicted = predict_ages(
            model, images, val_ids, model_params.input_size, age_mean, age_std, params.batch_size, device
        )
        val_mae = float(np.abs(predicted - ages[val_ids]).mean())
        history.append(
            {"epoch": epoch, "train_loss": loss_sum / seen, "train_mae": error_sum / seen, "val_mae": val_mae}
        )
        log.info("epoch %d: train MAE %.2f, val MAE %.2f", epoch, error_sum / seen, val_mae)
        if best is None or val_mae < best["val_mae"]:
            best = {"epoch": epoch, "val_mae": val_mae, "state": copy.deepcopy(model.state_dict())}

    model.load_state_dict(best["state"])
    checkpoint = make_checkpoint(model, model_params, age_mean, age_std, epoch=best["epoch"], val_mae=best["val_mae"])
    summary = {
        "backbone": model_params.backbone,
        "best_epoch": best["epoch"],
        "best_val_mae": round(best["val_mae"], 4),
        "epochs": params.epochs,
        "parameters": count_parameters(model),
        "device": device.type,
        "seconds": round(time.perf_counter() - started, 1),
        "train_images_per_second": round(len(train_ids) * params.epochs / train_seconds, 1),
    }
    return TrainResult(checkpoint, history, summary)
