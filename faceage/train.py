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
from dataclasses import asdict, dataclass, field
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
    """The best checkpoint, one row per epoch, and a summary for ``reports/train.json``."""

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
        for batch in tqdm(
            list(index_batches(ids, self.batch_size)), desc="backbone features", unit="batch", disable=None
        ):
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


def training_fingerprint(
    images: np.ndarray,
    ages: np.ndarray,
    genders: np.ndarray,
    split: pd.DataFrame,
    model_params: ModelParams,
    params: TrainParams,
    augment_params: AugmentParams,
    age_range: tuple[int, int],
) -> str:
    """Hash of everything that decides a training run (its arguments, as for :func:`train_model`), so a saved
    state is resumed only by the same run. Arrays are hashed by content in blocks, so a memory-mapped image
    array is never read whole into memory."""
    digest = hashlib.blake2b()
    settings = [asdict(model_params), asdict(params), asdict(augment_params), list(age_range)]
    digest.update(json.dumps(settings, sort_keys=True).encode())
    arrays = (split_ids(split, "train"), split_ids(split, "val"), np.asarray(ages), np.asarray(genders), images)
    for array in arrays:
        digest.update(json.dumps([array.shape, str(array.dtype)]).encode())
        for start in range(0, len(array), FINGERPRINT_BLOCK):
            digest.update(np.ascontiguousarray(array[start : start + FINGERPRINT_BLOCK]).tobytes())
    return digest.hexdigest()


class ResumeFile:
    """The training state saved after every epoch, resumed only by the run with the same fingerprint.

    The state also carries ``run_id``, the MLflow run the training logs to, so a resumed training keeps
    logging to the run it started. A state of another fingerprint is ignored; its run id is kept in
    ``abandoned_run_id`` so the caller can close that run.
    """

    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.run_id: str | None = None
        self.abandoned_run_id: str | None = None
        self.saved = self._read()

    def _read(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a state cut short by a crash is not worth a failed run
            log.warning("ignoring %s: it cannot be read (%s)", self.path, error)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.info("ignoring %s: it belongs to other parameters or data", self.path)
            self.abandoned_run_id = state.get("run_id")
            return None
        self.run_id = state.get("run_id")
        return state

    @property
    def history(self) -> list[dict]:
        """The epochs the saved state has been through."""
        return self.saved["history"] if self.saved else []

    def save(self, state: dict) -> None:
        """Write atomically, so an interruption while saving leaves the previous state intact."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        torch.save({**state, "fingerprint": self.fingerprint, "run_id": self.run_id}, temporary)
        temporary.replace(self.path)

    def remove(self) -> None:
        """Forget the state once training has completed."""
        self.path.unlink(missing_ok=True)
        self.saved = None


@dataclass
class Progress:
    """Where training stands: the epochs run, the best so far, epochs since it last improved, and the
    phase and epoch to run next."""

    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    stale: int = 0
    phase: int = 0
    epoch: int = 0


class Stepper:
    """Updates one phase's trainable weights from a loss: optimiser, gradient scaling and clipping, and the
    learning-rate schedule."""

    def __init__(
        self,
        trainable: list[torch.nn.Parameter],
        phase: Phase,
        params: TrainParams,
        steps_per_epoch: int,
        device: torch.device,
    ):
        self.trainable = trainable
        self.grad_clip = params.grad_clip
        self.optimizer = build_optimizer(trainable, phase.lr, params)
        self.schedule = Schedule(self.optimizer, params, phase.epochs, steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and params.amp)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.after_batch()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])


@dataclass(frozen=True)
class Targets:
    """The labels of every manifest id, on the training device, and how the loss weighs them."""

    ages: torch.Tensor
    genders: torch.Tensor
    model_params: ModelParams
    params: TrainParams

    def loss(self, model: AgeNet, outputs: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        return total_loss(model, outputs, self.ages[batch], self.genders[batch], self.model_params, self.params)


def train_one_epoch(
    model: AgeNet,
    inputs: Inputs,
    batches: list[np.ndarray],
    targets: Targets,
    stepper: Stepper,
    amp: contextlib.AbstractContextManager,
    augmenter: BatchAugmenter | None,
    average: AveragedModel | None,
    desc: str,
) -> dict[str, float]:
    """One pass over ``batches``; mean training loss and MAE (in years) and the images seen."""
    set_train_mode(model)
    loss_sum, error_sum, seen = 0.0, 0.0, 0
    progress = tqdm(batches, desc=desc, unit="batch", disable=None)  # bars on terminals only
    for batch in progress:
        batch_t = torch.from_numpy(batch).to(inputs.device)
        with amp:
            outputs = inputs.outputs(batch, augmenter)
            loss = targets.loss(model, outputs, batch_t)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FaceageError(
                f"training loss is {loss_value} in {desc}: lower train.lr, "
                "or train in float32 (train.cpu_bf16: false, train.amp: false)"
            )
        stepper.step(loss)
        if average is not None:
            average.update_parameters(model)
        loss_sum += loss_value * len(batch)
        error_sum += (model.years(outputs["age"].detach()) - targets.ages[batch_t]).abs().sum().item()
        seen += len(batch)
        progress.set_postfix(loss=f"{loss_sum / seen:.3f}", mae=f"{error_sum / seen:.2f}")
    return {"train_loss": loss_sum / seen, "train_mae": error_sum / seen, "images": seen}


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
    resume: ResumeFile | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train on the ``train`` split of ``images`` (rows are manifest ids) and select the epoch on ``val``.

    ``genders`` holds 0/1 or ``UNKNOWN_GENDER``. With ``resume``, the state after each epoch is saved
    there and its saved state is resumed; it is removed when training completes.
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
    targets = Targets(
        torch.from_numpy(np.asarray(ages, dtype=np.float32)).to(device),
        torch.from_numpy(np.asarray(genders, dtype=np.int64)).to(device),
        model_params,
        params,
    )
    shuffle_rng = np.random.default_rng(params.seed)
    augment_rng = torch.Generator().manual_seed(params.seed)
    inputs = Inputs(model, images, model_params.input_size, params.batch_size, device)
    average = weight_average(model, params.ema_decay)
    validated = average.module if average is not None else model
    rngs = (shuffle_rng, augment_rng)

    saved = resume.saved if resume is not None else None
    progress = _restore(saved, model, average, rngs) if saved else Progress()
    if saved:
        log.info("resuming from %s after epoch %d", resume.path, len(progress.history))
    seconds = dict.fromkeys(("head", "finetune"), 0.0)
    images_seen = dict.fromkeys(("head", "finetune"), 0)
    started = time.perf_counter()
    for phase_index in range(progress.phase, len(phases)):
        phase = phases[phase_index]
        freeze_trunk(model, phase.freeze, phase.freeze_bn)
        trainable = [p for p in model.parameters() if p.requires_grad]
        stepper = Stepper(trainable, phase, params, math.ceil(len(train_ids) / params.batch_size), device)
        augmenter = BatchAugmenter(augment_params, augment_rng) if phase.augment else None
        inputs.features = None
        if trunk_is_frozen(model) and augmenter is None:
            inputs.cache_features(np.concatenate([train_ids, val_ids]), amp)
        if saved and progress.epoch > 0:
            stepper.load_state_dict(saved["stepper"])
        saved = None

        for epoch in range(progress.epoch, phase.epochs):
            epoch_started = time.perf_counter()
            batches = list(index_batches(train_ids, params.batch_size, shuffle_rng))
            desc = f"epoch {len(progress.history) + 1} ({phase.name} {epoch + 1}/{phase.epochs})"
            stats = train_one_epoch(model, inputs, batches, targets, stepper, amp, augmenter, average, desc)
            seconds[phase.name] += time.perf_counter() - epoch_started
            images_seen[phase.name] += stats["images"]
            val_mae = float(np.abs(inputs.predict(validated, val_ids, amp) - ages[val_ids]).mean())
            stepper.schedule.after_epoch(val_mae)
            row = {"epoch": len(progress.history) + 1, "phase": phase.name, "train_loss": stats["train_loss"]}
            row |= {"train_mae": stats["train_mae"], "val_mae": val_mae, "lr": stepper.lr}
            stop = _record_epoch(progress, row, validated, params.patience)
            done = stop or epoch + 1 == phase.epochs
            progress.phase, progress.epoch = (phase_index + 1, 0) if done else (phase_index, epoch + 1)
            if resume is not None:
                resume.save(_snapshot(progress, model, average, stepper, rngs))
            if on_epoch_end is not None:
                on_epoch_end(row)
            if stop:
                log.info("early stop: validation MAE has not improved for %d epochs", progress.stale)
                break
        progress.epoch = 0

    best = progress.best
    model.load_state_dict(best["model"])
    if resume is not None:
        resume.remove()
    checkpoint = make_checkpoint(
        model, model_params, age_range, image_size=images.shape[1], epoch=best["epoch"], val_mae=best["val_mae"]
    )
    summary = {
        "backbone": model_params.backbone,
        "head": model_params.head,
        "best_epoch": best["epoch"],
        "best_val_mae": round(best["val_mae"], 4),
        "epochs_run": len(progress.history),
        "parameters": count_parameters(model),
        "device": device.type,
        "seconds": round(time.perf_counter() - started, 1),
        **{
            f"{name}_images_per_second": round(images_seen[name] / seconds[name], 1)
            for name in seconds
            if seconds[name] > 0
        },
    }
    return TrainResult(checkpoint, progress.history, summary)


def headline_metrics(summary: dict) -> dict:
    """The training figures DVC tracks; the rest of ``summary`` is details. Few and short, so that
    ``dvc exp show`` fits the test figures beside them on one screen. The speed is fine-tuning's, or the
    head stage's when there is no fine-tuning."""
    phase = "finetune" if "finetune_images_per_second" in summary else "head"
    return {
        "best_val_mae": summary["best_val_mae"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": summary["seconds"],
        "train_images_per_second": summary.get(f"{phase}_images_per_second", 0.0),
    }


def history_table(history: list[dict], best_epoch: int) -> pd.DataFrame:
    """One row per epoch, with a ``marker`` naming the epoch where fine-tuning starts and the kept one."""
    table = pd.DataFrame(history)
    starts = (table["phase"] == "finetune") & (table["phase"].shift() == "head")
    best = table["epoch"] == best_epoch
    names = (("fine-tuning starts", starts), ("best epoch", best))
    table["marker"] = [", ".join(name for name, rows in names if rows[row]) for row in table.index]
    return table


def _record_epoch(progress: Progress, row: dict, validated: AgeNet, patience: int) -> bool:
    """Add ``row`` to the history, keep the weights if they are the best so far; whether to stop early."""
    progress.history.append(row)
    log.info(
        "epoch %d (%s): train MAE %.2f, val MAE %.2f", row["epoch"], row["phase"], row["train_mae"], row["val_mae"]
    )
    if progress.best is None or row["val_mae"] < progress.best["val_mae"]:
        progress.best = {"epoch": row["epoch"], "val_mae": row["val_mae"], "model": _cpu_copy(validated.state_dict())}
        progress.stale = 0
    else:
        progress.stale += 1
    return patience > 0 and progress.stale >= patience


def _snapshot(
    progress: Progress,
    model: AgeNet,
    average: AveragedModel | None,
    stepper: Stepper,
    rngs: tuple[np.random.Generator, torch.Generator],
) -> dict:
    """Everything needed to go on after this epoch as if training had not stopped."""
    return {
        **asdict(progress),
        "model": _cpu_copy(model.state_dict()),
        "average": average.state_dict() if average is not None else None,
        "stepper": stepper.state_dict(),
        "shuffle_rng": rngs[0].bit_generator.state,
        "augment_rng": rngs[1].get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def _restore(
    state: dict, model: AgeNet, average: AveragedModel | None, rngs: tuple[np.random.Generator, torch.Generator]
) -> Progress:
    """Load a :func:`_snapshot` into the model, its average and the random generators."""
    model.load_state_dict(state["model"])
    if average is not None:
        average.load_state_dict(state["average"])
    rngs[0].bit_generator.state = state["shuffle_rng"]
    rngs[1].set_state(state["augment_rng"])
    torch.set_rng_state(state["torch_rng"])
    return Progress(**{name: state[name] for name in ("history", "best", "stale", "phase", "epoch")})


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}
