"""Train an age model: an optional head-only stage on a frozen backbone, then fine-tuning.

The epoch with the best validation MAE is kept; with ``train.ema_decay``, an exponential moving average
of the weights is what is validated and kept. After every epoch the full training state is saved, so an
interrupted run resumes where it stopped and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from faceage.augment import BatchAugmenter, is_active
from faceage.batches import index_batches, to_input
from faceage.errors import FaceageError
from faceage.inference import make_checkpoint, predict
from faceage.losses import total_loss
from faceage.models import AgeNet, build_model, count_parameters, freeze_trunk, set_train_mode, trunk_is_frozen
from faceage.optim import Schedule, build_optimizer
from faceage.params import AugmentParams, ModelParams, TrainParams
from faceage.runtime import make_deterministic, select_device

log = logging.getLogger(__name__)
FINGERPRINT_BLOCK = 1024  # images hashed at a time


@dataclass(frozen=True)
class Phase:
    """One stage of the schedule."""

    name: str
    epochs: int
    lr: float
    freeze: str
    freeze_bn: bool
    augment: bool


@dataclass(frozen=True)
class TrainResult:
    """The best checkpoint, one row per epoch, and a summary for ``metrics/train.json``."""

    checkpoint: dict
    history: list[dict]
    summary: dict


def plan_phases(params: TrainParams, augment: AugmentParams) -> list[Phase]:
    """Head-only stage (frozen backbone) when ``head_epochs`` > 0, then fine-tuning when ``epochs`` > 0."""
    phases = []
    if params.head_epochs > 0:
        augment_head = is_active(augment) and augment.in_head_stage
        phases.append(Phase("head", params.head_epochs, params.head_lr, "backbone", False, augment_head))
    if params.epochs > 0:
        phases.append(Phase("finetune", params.epochs, params.lr, params.freeze, params.freeze_bn, is_active(augment)))
    if not phases:
        raise FaceageError("train.head_epochs and train.epochs are both 0: nothing to train")
    return phases


def split_ids(split: pd.DataFrame, name: str) -> np.ndarray:
    """Array rows (manifest ids) of one split."""
    return split.loc[split["split"] == name, "id"].to_numpy()


def autocast(device: torch.device, params: TrainParams) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA (``amp``), bfloat16 on the CPU (``cpu_bf16``), else nothing."""
    if device.type == "cuda" and params.amp:
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and params.cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Inputs:
    """Turns manifest ids into model outputs, from images or from backbone features computed once."""

    def __init__(self, model: AgeNet, images: np.ndarray, input_size: int, batch_size: int, device: torch.device):
        self.model = model
        self.images = images
        self.input_size = input_size
        self.batch_size = batch_size
        self.device = device
        self.features: torch.Tensor | None = None
        self.rows: dict[int, int] = {}

    @torch.no_grad()
    def cache_features(self, ids: np.ndarray, amp: contextlib.AbstractContextManager) -> None:
        """Run the frozen backbone once over ``ids`` and keep the pooled features."""
        self.model.trunk.eval()
        ids = np.sort(ids)
        parts = []
        for batch in tqdm(list(index_batches(ids, self.batch_size)), desc="backbone features", unit="batch"):
            with amp:
                parts.append(self.model.trunk(to_input(self.images[batch], self.input_size, self.device)).float())
        self.features = torch.cat(parts)
        self.rows = {int(i): row for row, i in enumerate(ids)}

    def outputs(self, batch: np.ndarray, augment: BatchAugmenter | None = None) -> dict[str, torch.Tensor]:
        if self.features is not None:
            rows = torch.tensor([self.rows[int(i)] for i in batch], device=self.device)
            return self.model.head(self.features[rows])
        return self.model(to_input(self.images[batch], self.input_size, self.device, augment))

    @torch.no_grad()
    def predict(self, model: AgeNet, ids: np.ndarray, amp: contextlib.AbstractContextManager) -> np.ndarray:
        """Ages in years that ``model`` (the trained one or its average, same trunk) predicts for ``ids``."""
        if self.features is None:
            return predict(model, self.images, ids, self.input_size, self.batch_size, self.device, amp)["age"]
        was_training = model.training
        model.eval()
        rows = torch.tensor([self.rows[int(i)] for i in ids], device=self.device)
        with amp:
            age_output = model.head(self.features[rows])["age"]
        years = model.years(age_output)  # in float32: autocast would run the read-out in low precision
        model.train(was_training)
        return years.cpu().numpy()


def weight_average(model: AgeNet, decay: float) -> AveragedModel | None:
    """Exponential moving average of ``model``'s weights and buffers, updated after every step; None for 0."""
    if decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def run_fingerprint(*parts: object) -> str:
    """Hash that identifies a training run's configuration and data, to refuse resuming a different one.

    Arrays are hashed by content, in blocks, so a memory-mapped image array is never read whole into memory.
    """
    digest = hashlib.blake2b()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(json.dumps([part.shape, str(part.dtype)]).encode())
            for start in range(0, len(part), FINGERPRINT_BLOCK):
                digest.update(np.ascontiguousarray(part[start : start + FINGERPRINT_BLOCK]).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True).encode())
    return digest.hexdigest()


def train_model(
    images: np.ndarray,
    ages: np.ndarray,
    genders: np.ndarray,
    split: pd.DataFrame,
    model_params: ModelParams,
    params: TrainParams,
    augment_params: AugmentParams,
    age_range: tuple[int, int],
    device: torch.device | None = None,
    state_path: str | Path | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train on the ``train`` split of ``images`` (rows are manifest ids) and select the epoch on ``val``.

    ``genders`` holds 0/1 or ``UNKNOWN_GENDER``. With ``state_path``, the state after each epoch is
    saved there and a matching saved state is resumed; it is removed when training completes.
    """
    train_ids, val_ids = split_ids(split, "train"), split_ids(split, "val")
    if len(train_ids) == 0 or len(val_ids) == 0:
        raise FaceageError(f"training needs train and val images, got {len(train_ids)} and {len(val_ids)}")
    device = device or select_device()
    make_deterministic(params.seed, params.threads)
    amp = autocast(device, params)
    phases = plan_phases(params, augment_params)
    age_stats = (float(ages[train_ids].mean()), float(ages[train_ids].std() or 1.0))
    model = build_model(model_params, age_range, age_stats).to(device, memory_format=torch.channels_last)
    ages_t = torch.from_numpy(np.asarray(ages, dtype=np.float32)).to(device)
    genders_t = torch.from_numpy(np.asarray(genders, dtype=np.int64)).to(device)
    shuffle_rng = np.random.default_rng(params.seed)
    augment_rng = torch.Generator().manual_seed(params.seed)
    inputs = Inputs(model, images, model_params.input_size, params.batch_size, device)
    average = weight_average(model, params.ema_decay)
    validated = average.module if average is not None else model

    fingerprint = run_fingerprint(
        asdict(model_params),
        asdict(params),
        asdict(augment_params),
        list(age_range),
        train_ids,
        val_ids,
        np.asarray(ages),
        np.asarray(genders),
        images,
    )
    state = _load_state(state_path, fingerprint, device)
    history: list[dict] = state["history"] if state else []
    best: dict | None = state["best"] if state else None
    start_phase, start_epoch = (state["phase"], state["epoch"]) if state else (0, 0)
    if state:
        model.load_state_dict(state["model"])
        if average is not None:
            average.load_state_dict(state["average"])
        shuffle_rng.bit_generator.state = state["shuffle_rng"]
        augment_rng.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resuming from %s after epoch %d", state_path, len(history))

    seconds = dict.fromkeys(("head", "finetune"), 0.0)
    images_seen = dict.fromkeys(("head", "finetune"), 0)
    started = time.perf_counter()
    for phase_index in range(start_phase, len(phases)):
        phase = phases[phase_index]
        freeze_trunk(model, phase.freeze, phase.freeze_bn)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(trainable, phase.lr, params)
        steps_per_epoch = math.ceil(len(train_ids) / params.batch_size)
        schedule = Schedule(optimizer, params, phase.epochs, steps_per_epoch)
        scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and params.amp)
        augmenter = BatchAugmenter(augment_params, augment_rng) if phase.augment else None
        inputs.features = None
        if trunk_is_frozen(model) and augmenter is None:
            inputs.cache_features(np.concatenate([train_ids, val_ids]), amp)
        stale, first_epoch = 0, 0
        if state and phase_index == start_phase and start_epoch > 0:
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            scaler.load_state_dict(state["scaler"])
            stale, first_epoch = state["stale"], start_epoch

        for epoch in range(first_epoch, phase.epochs):
            set_train_mode(model)
            epoch_started, loss_sum, error_sum, seen = time.perf_counter(), 0.0, 0.0, 0
            batches = tqdm(
                list(index_batches(train_ids, params.batch_size, shuffle_rng)),
                desc=f"{phase.name} {epoch + 1}/{phase.epochs}",
                unit="batch",
            )
            for batch in batches:
                batch_t = torch.from_numpy(batch).to(device)
                with amp:
                    outputs = inputs.outputs(batch, augmenter)
                    loss = total_loss(model, outputs, ages_t[batch_t], genders_t[batch_t], model_params, params)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise FaceageError(
                        f"training loss is {loss_value} in epoch {len(history) + 1}: lower train.lr, "
                        "or train in float32 (train.cpu_bf16: false, train.amp: false)"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if params.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                schedule.after_batch()
                if average is not None:
                    average.update_parameters(model)
                loss_sum += loss_value * len(batch)
                error_sum += (model.years(outputs["age"].detach()) - ages_t[batch_t]).abs().sum().item()
                seen += len(batch)
                batches.set_postfix(loss=f"{loss_sum / seen:.3f}", mae=f"{error_sum / seen:.2f}")
            seconds[phase.name] += time.perf_counter() - epoch_started
            images_seen[phase.name] += seen

            val_mae = float(np.abs(inputs.predict(validated, val_ids, amp) - ages[val_ids]).mean())
            schedule.after_epoch(val_mae)
            row = {
                "epoch": len(history) + 1,
                "phase": phase.name,
                "train_loss": loss_sum / seen,
                "train_mae": error_sum / seen,
                "val_mae": val_mae,
                "lr": optimizer.param_groups[0]["lr"],
            }
            history.append(row)
            log.info("epoch %d (%s): train MAE %.2f, val MAE %.2f", row["epoch"], phase.name, row["train_mae"], val_mae)
            if best is None or val_mae < best["val_mae"]:
                best = {"epoch": row["epoch"], "val_mae": val_mae, "model": _cpu_copy(validated.state_dict())}
                stale = 0
            else:
                stale += 1
            stop = params.patience > 0 and stale >= params.patience
            done = stop or epoch + 1 == phase.epochs
            next_position = (phase_index + 1, 0) if done else (phase_index, epoch + 1)
            if state_path is not None:
                _save_state(
                    state_path,
                    {
                        "fingerprint": fingerprint,
                        "phase": next_position[0],
                        "epoch": next_position[1],
                        "model": _cpu_copy(model.state_dict()),
                        "average": average.state_dict() if average is not None else None,
                        "optimizer": copy.deepcopy(optimizer.state_dict()),
                        "schedule": schedule.state_dict(),
                        "scaler": scaler.state_dict(),
                        "stale": stale,
                        "best": best,
                        "history": history,
                        "shuffle_rng": shuffle_rng.bit_generator.state,
                        "augment_rng": augment_rng.get_state(),
                        "torch_rng": torch.get_rng_state(),
                    },
                )
            if on_epoch_end is not None:
                on_epoch_end(row)
            if stop:
                log.info("early stop: validation MAE has not improved for %d epochs", stale)
                break
        state = None

    model.load_state_dict(best["model"])
    if state_path is not None:
        Path(state_path).unlink(missing_ok=True)
    checkpoint = make_checkpoint(
        model, model_params, age_range, image_size=images.shape[1], epoch=best["epoch"], val_mae=best["val_mae"]
    )
    summary = {
        "backbone": model_params.backbone,
        "head": model_params.head,
        "best_epoch": best["epoch"],
        "best_val_mae": round(best["val_mae"], 4),
        "epochs_run": len(history),
        "parameters": count_parameters(model),
        "device": device.type,
        "seconds": round(time.perf_counter() - started, 1),
        **{
            f"{name}_images_per_second": round(images_seen[name] / seconds[name], 1)
            for name in seconds
            if seconds[name] > 0
        },
    }
    return TrainResult(checkpoint, history, summary)


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def _save_state(path: str | Path, state: dict) -> None:
    """Write atomically, so an interruption while saving leaves the previous state intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def _load_state(path: str | Path | None, fingerprint: str, device: torch.device) -> dict | None:
    if path is None or not Path(path).is_file():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.info("ignoring %s: it belongs to other parameters or data", path)
        return None
    state["torch_rng"] = state["torch_rng"].cpu()
    state["augment_rng"] = state["augment_rng"].cpu()
    return state
