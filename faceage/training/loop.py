"""Train one age network: an optional head-only stage on a frozen backbone, then fine-tuning.

The epoch with the best validation MAE is kept; with ``train.ema_decay``, an exponential moving average
of the weights is what is validated and kept. After every epoch the full training state is saved
(:mod:`faceage.training.resume`). With several processes (:mod:`faceage.training.distributed`), each takes
its share of every batch and DistributedDataParallel averages their gradients.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from faceage.errors import FaceageError
from faceage.model.age_model import untouched_dlib
from faceage.model.batches import index_batches
from faceage.model.networks import (
    AgeNet,
    build_network,
    count_parameters,
    freeze_trunk,
    set_train_mode,
    trunk_is_frozen,
)
from faceage.runtime import cpu_features, make_deterministic, select_device
from faceage.sections import ModelParams, TrainParams
from faceage.training.augment import BatchAugmenter
from faceage.training.distributed import SINGLE, Workers
from faceage.training.features import Inputs, taught_distributions
from faceage.training.losses import total_loss
from faceage.training.resume import ResumeFile, TrainingState
from faceage.training.setup import Phase, TrainingSetup, autocast, plan_phases, precision
from faceage.training.stepper import Stepper

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """The trained network with its best epoch's weights, one row per epoch, and a summary of the training."""

    network: AgeNet
    history: list[dict]
    summary: dict


@dataclass(frozen=True)
class Targets:
    """The labels of every manifest id, on the training device, and how the loss weighs them."""

    ages: torch.Tensor
    genders: torch.Tensor
    model_params: ModelParams
    params: TrainParams

    def loss(self, model: AgeNet, outputs: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        return total_loss(model, outputs, self.ages[batch], self.genders[batch], self.model_params, self.params)


class Trainer:
    """One training run of a :class:`TrainingSetup`, in this process alone or as one of ``workers``: each
    process takes its share of every batch, DDP averages the gradients, and only the main process logs,
    shows progress and saves the state."""

    def __init__(
        self,
        setup: TrainingSetup,
        device: torch.device,
        workers: Workers,
        resume: ResumeFile | None,
        on_epoch_end: Callable[[dict], None] | None,
    ):
        self.setup, self.device, self.workers = setup, device, workers
        self.resume, self.on_epoch_end = resume, on_epoch_end
        params = setup.params
        make_deterministic(params.seed, params.threads)
        self.amp = autocast(device, params)
        self.precision = precision(device, params)
        if workers.is_main:
            log.info("training on %s in %s", device.type, self.precision)
        train_ages = setup.ages[setup.train_ids]
        age_stats = (float(train_ages.mean()), float(train_ages.std() or 1.0))
        model = build_network(setup.model_params, setup.age_range, age_stats)
        if params.sync_bn and workers.size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device, memory_format=torch.channels_last)
        self.anchors = {p: p.detach().clone() for p in self.model.trunk.parameters()} if params.l2sp > 0 else {}
        self.state = TrainingState(self.model, params.ema_decay, params.seed)
        self.targets = Targets(
            torch.from_numpy(np.asarray(setup.ages, dtype=np.float32)).to(device),
            torch.from_numpy(np.asarray(setup.genders, dtype=np.int64)).to(device),
            setup.model_params,
            params,
        )
        self.inputs = Inputs(
            self.model, setup.images, setup.model_params.input_size, params.batch_size, device, workers.is_main
        )
        if params.distill_weight > 0:
            teacher = setup.teacher if setup.teacher is not None else untouched_dlib(setup.age_range)
            taught = (teacher.to(device), setup.images, setup.train_ids, params.batch_size, device, self.amp)
            self.inputs.taught = taught_distributions(*taught, workers.is_main)
        self.seconds = dict.fromkeys(("head", "finetune"), 0.0)
        self.images_seen = dict.fromkeys(("head", "finetune"), 0)

    def fit(self) -> TrainResult:
        phases = plan_phases(self.setup.params, self.setup.augment_params)
        if self.resume is not None and self.resume.saved:
            self.state.load_state_dict(self.resume.saved)
            log.info("resuming from %s after epoch %d", self.resume.path, len(self.state.progress.history))
        started = time.perf_counter()
        for index in range(self.state.progress.phase, len(phases)):
            self.run_phase(index, phases[index])
        return self.result(time.perf_counter() - started)

    def run_phase(self, index: int, phase: Phase) -> None:
        """The epochs of ``phase`` still to run; the model is wrapped anew, as DDP averages the gradients only
        of the parameters trainable when it is built."""
        setup, progress = self.setup, self.state.progress
        freeze_trunk(self.model, phase.freeze, phase.freeze_bn)
        steps = math.ceil(len(setup.train_ids) / setup.params.batch_size)
        stepper = Stepper(self.model, phase, setup.params, steps, self.anchors)
        if self.state.stepper_state is not None:
            stepper.load_state_dict(self.state.stepper_state)
            self.state.stepper_state = None
        augmenter = BatchAugmenter(setup.augment_params, self.state.augment_rng) if phase.augment else None
        self.inputs.features = None
        if trunk_is_frozen(self.model) and augmenter is None:
            self.inputs.cache_features(np.concatenate([setup.train_ids, setup.val_ids]), self.amp)
        network = self.workers.wrap(self.model)
        for epoch in range(progress.epoch, phase.epochs):
            started = time.perf_counter()
            batches = list(index_batches(setup.train_ids, setup.params.batch_size, self.state.shuffle_rng))
            desc = f"epoch {len(progress.history) + 1} ({phase.name} {epoch + 1}/{phase.epochs})"
            self.inputs.train_size = phase.input_size(epoch, setup.model_params.input_size)
            if self.inputs.train_size != setup.model_params.input_size:
                desc += f" at {self.inputs.train_size} px"
            stats = self.train_one_epoch(network, batches, stepper, augmenter, desc)
            self.seconds[phase.name] += time.perf_counter() - started
            self.images_seen[phase.name] += stats["images"]
            val_mae = self.validate()
            stepper.schedule.after_epoch(val_mae)
            row = {"epoch": len(progress.history) + 1, "phase": phase.name, "train_loss": stats["train_loss"]}
            row |= {"train_mae": stats["train_mae"], "val_mae": val_mae, "lr": stepper.lr}
            stop = self.state.record(row, setup.params.patience)
            done = stop or epoch + 1 == phase.epochs
            progress.phase, progress.epoch = (index + 1, 0) if done else (index, epoch + 1)
            self.end_epoch(row, stepper)
            if stop:
                break
        progress.epoch = 0

    def train_one_epoch(
        self,
        network: nn.Module,
        batches: list[np.ndarray],
        stepper: Stepper,
        augmenter: BatchAugmenter | None,
        desc: str,
    ) -> dict[str, float]:
        """One pass over ``batches``, this process taking its share of each; the mean training loss and MAE
        (in years) over all processes, and the images they saw."""
        set_train_mode(self.model)
        workers, average = self.workers, self.state.average
        loss_sum, error_sum, seen = 0.0, 0.0, 0
        progress = tqdm(batches, desc=desc, unit="batch", disable=None if workers.is_main else True)
        for batch in progress:
            rows, weight = workers.share(len(batch))
            ids = torch.from_numpy(batch[rows]).to(self.device)
            with self.amp:
                outputs = self.inputs.outputs(network, batch[rows], augmenter, (rows, len(batch)))
                loss = self.targets.loss(self.model, outputs, ids)
            errors = (self.model.years(outputs["age_output"].detach()) - self.targets.ages[ids]).abs().sum().item()
            counted = len(ids) if weight > 0 else 0
            batch_loss, batch_errors, batch_seen = workers.sum(
                [loss.item() * counted if counted else 0.0, errors if counted else 0.0, counted]
            )
            if not math.isfinite(batch_loss):
                raise FaceageError(
                    f"training loss is {batch_loss / batch_seen} in {desc}: lower train.lr, "
                    "or train in float32 (train.cpu_bf16: false, train.amp: false)"
                )
            stepper.step(loss * weight)
            if average is not None:
                average.update_parameters(self.model)
            loss_sum, error_sum, seen = loss_sum + batch_loss, error_sum + batch_errors, seen + int(batch_seen)
            progress.set_postfix(loss=f"{loss_sum / seen:.3f}", mae=f"{error_sum / seen:.2f}")
        workers.average_buffers(self.model)
        if average is not None:
            workers.average_buffers(average.module)
        return {"train_loss": loss_sum / seen, "train_mae": error_sum / seen, "images": seen}

    def validate(self) -> float:
        """Validation MAE of the validated weights, each process predicting its share of the images."""
        val_ids = self.setup.val_ids
        rows, weight = self.workers.share(len(val_ids))
        errors, count = 0.0, 0
        if weight > 0:
            predicted = self.inputs.predict(self.state.validated, val_ids[rows], self.amp)
            errors, count = float(np.abs(predicted - self.setup.ages[val_ids[rows]]).sum()), len(predicted)
        total, count = self.workers.sum([errors, count])
        return total / count

    def end_epoch(self, row: dict, stepper: Stepper) -> None:
        """Save the state, report the epoch and hand it to ``on_epoch_end``."""
        if self.workers.is_main:
            if self.resume is not None:
                self.resume.save(self.state.state_dict(stepper))
            log.info(
                "epoch %d (%s): train MAE %.2f, val MAE %.2f",
                row["epoch"],
                row["phase"],
                row["train_mae"],
                row["val_mae"],
            )
        if self.on_epoch_end is not None:
            self.on_epoch_end(row)

    def result(self, seconds: float) -> TrainResult:
        """The network with the best epoch's weights, the history and the summary."""
        best, setup = self.state.progress.best, self.setup
        self.model.load_state_dict(best["model"])
        speeds = {
            f"{name}_images_per_second": round(self.images_seen[name] / self.seconds[name], 1)
            for name in self.seconds
            if self.seconds[name] > 0
        }
        summary = {
            "backbone": setup.model_params.backbone,
            "head": setup.model_params.head,
            "best_epoch": best["epoch"],
            "best_val_mae": round(best["val_mae"], 4),
            "epochs_run": len(self.state.progress.history),
            "parameters": count_parameters(self.model),
            "device": self.device.type,
            "precision": self.precision,
            **({"cpu": cpu_features()} if self.device.type == "cpu" else {}),
            "processes": self.workers.size,
            "seconds": round(seconds, 1),
            **speeds,
        }
        return TrainResult(self.model, self.state.progress.history, summary)


def train_network(
    setup: TrainingSetup,
    device: torch.device | None = None,
    resume: ResumeFile | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    workers: Workers = SINGLE,
) -> TrainResult:
    """Train on the ``train`` split and keep the epoch with the best validation MAE.

    With ``resume``, the state after each epoch is saved there and its saved state is resumed (a finished one
    gives its result without training); the caller removes it once the result is safely written. With several
    ``workers``, every process calls this with the same setup.
    """
    if len(setup.train_ids) == 0 or len(setup.val_ids) == 0:
        raise FaceageError(f"training needs train and val images, got {len(setup.train_ids)} and {len(setup.val_ids)}")
    if setup.params.sync_bn and workers.size > 1 and not torch.cuda.is_available():
        raise FaceageError("train.sync_bn needs CUDA: SyncBatchNorm runs only on GPUs")
    device = device or (workers.device() if workers.size > 1 else select_device())
    return Trainer(setup, device, workers, resume, on_epoch_end).fit()
