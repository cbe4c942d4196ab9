"""Train an age model: an optional head-only stage on a frozen backbone, then fine-tuning.

The epoch with the best validation MAE is kept; with ``train.ema_decay``, an exponential moving average
of the weights is what is validated and kept. After every epoch the full training state is saved, so an
interrupted run resumes where it stopped and ends with the same weights as an uninterrupted one. With several
processes (``faceage.training.distributed``), each takes its share of every batch and DistributedDataParallel averages
their gradients.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from faceage.errors import FaceageError
from faceage.model.batches import index_batches, to_input
from faceage.model.inference import make_checkpoint, predict
from faceage.model.networks import AgeNet, build_model, count_parameters, freeze_trunk, set_train_mode, trunk_is_frozen
from faceage.model.reference import ReferenceAgeModel
from faceage.params import AugmentParams, ModelParams, TrainParams
from faceage.runtime import cpu_features, cpu_precision_reason, make_deterministic, select_device, use_cpu_bf16
from faceage.training.augment import BatchAugmenter, is_active
from faceage.training.distributed import SINGLE, Workers
from faceage.training.losses import total_loss
from faceage.training.optim import AnchorPull, Schedule, build_optimizer, parameter_groups

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
    start_size: int = 0  # input size of the first epoch, 0 = always the model's
    growing_epochs: int = 0  # epochs over which the input grows from start_size

    def input_size(self, epoch: int, final: int) -> int:
        """Training input size of ``epoch`` (0-based): from ``start_size`` up in even steps, ``final`` once
        ``growing_epochs`` are done."""
        if self.start_size == 0 or epoch >= self.growing_epochs:
            return final
        return round(self.start_size + (final - self.start_size) * epoch / self.growing_epochs)


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
        growing = round(params.resize_epochs * params.epochs)
        finetune = (params.freeze, params.freeze_bn, is_active(augment), params.start_size, growing)
        phases.append(Phase("finetune", params.epochs, params.lr, *finetune))
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
    if device.type == "cpu" and use_cpu_bf16(params.cpu_bf16):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision(device: torch.device, params: TrainParams) -> str:
    """The precision :func:`autocast` trains in on ``device``, and why."""
    if device.type == "cpu":
        return cpu_precision_reason(params.cpu_bf16)
    return "float16 autocast (train.amp)" if device.type == "cuda" and params.amp else "float32"


class Inputs:
    """Turns manifest ids into model outputs, from images or from backbone features computed once; with a
    ``teacher``, the outputs hold its age distribution on the same input as ``reference``."""

    def __init__(
        self,
        model: AgeNet,
        images: np.ndarray,
        input_size: int,
        batch_size: int,
        device: torch.device,
        show_progress: bool = True,
        teacher: ReferenceAgeModel | None = None,
    ):
        self.model = model
        self.teacher = teacher
        self.images = images
        self.input_size = input_size
        self.train_size = input_size  # of training batches from images; validation is always at input_size
        self.batch_size = batch_size
        self.device = device
        self.show_progress = show_progress  # a bar on terminals; never in the processes besides the main one
        self.features: torch.Tensor | None = None
        self.taught: torch.Tensor | None = None  # the teacher's outputs for the cached features
        self.referenced: torch.Tensor | None = None  # the model's reference's, to blend with
        self.rows: dict[int, int] = {}

    @torch.no_grad()
    def cache_features(self, ids: np.ndarray, amp: contextlib.AbstractContextManager) -> None:
        """Run the frozen backbone once over ``ids`` and keep the pooled features."""
        self.model.trunk.eval()
        ids = np.sort(ids)
        parts, taught, referenced = [], [], []
        batches = list(index_batches(ids, self.batch_size))
        disable = None if self.show_progress else True  # None: a bar on terminals only
        for batch in tqdm(batches, desc="backbone features", unit="batch", disable=disable):
            x = to_input(self.images[batch], self.input_size, self.device)
            with amp:
                parts.append(self.model.trunk(x).float())
                for model, outputs in ((self.teacher, taught), (self.model.reference, referenced)):
                    if model is not None:
                        outputs.append(model(x))
        self.features = torch.cat(parts)
        self.taught = torch.cat(taught) if taught else None
        self.referenced = torch.cat(referenced) if referenced else None
        self.rows = {int(i): row for row, i in enumerate(ids)}

    def outputs(
        self,
        network: nn.Module,
        ids: np.ndarray,
        augmenter: BatchAugmenter | None = None,
        share: tuple[slice, int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """What ``network`` (the model, or the model under DDP) outputs for ``ids``; ``share`` as for
        :class:`BatchAugmenter` when ``ids`` are this process's rows of a batch."""
        if self.features is not None:
            rows = torch.tensor([self.rows[int(i)] for i in ids], device=self.device)
            outputs = network(self.features[rows], pooled=True)
            if self.taught is not None:
                outputs["reference"] = self.taught[rows]
            return outputs
        augment = functools.partial(augmenter, share=share) if augmenter is not None else None
        x = to_input(self.images[ids], self.train_size, self.device, augment)
        outputs = network(x)
        if self.teacher is not None:
            outputs["reference"] = self.teacher(x)
        return outputs

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
        if self.referenced is not None and model.blend > 0:
            age_output = model.blended(age_output, self.referenced[rows])
        years = model.years(age_output)  # in float32: autocast would run the read-out in low precision
        model.train(was_training)
        return years.cpu().numpy()


def weight_average(model: AgeNet, decay: float) -> AveragedModel | None:
    """Exponential moving average of ``model``'s weights and buffers, updated after every step; None for 0."""
    if decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@dataclass(frozen=True, eq=False)
class TrainingSetup:
    """What decides a training run: the data (image rows are manifest ids, genders 0/1 or
    ``UNKNOWN_GENDER``, the split's ``train`` and ``val`` rows) and the settings."""

    images: np.ndarray
    ages: np.ndarray
    genders: np.ndarray
    split: pd.DataFrame
    model_params: ModelParams
    params: TrainParams
    augment_params: AugmentParams
    age_range: tuple[int, int]

    @property
    def train_ids(self) -> np.ndarray:
        return split_ids(self.split, "train")

    @property
    def val_ids(self) -> np.ndarray:
        return split_ids(self.split, "val")

    def fingerprint(self) -> str:
        """Hash of the whole setup, so a saved state is resumed only by the same run. Arrays are hashed by
        content in blocks, so a memory-mapped image array is never read whole into memory."""
        digest = hashlib.blake2b()
        settings = [asdict(self.model_params), asdict(self.params), asdict(self.augment_params), list(self.age_range)]
        digest.update(json.dumps(settings, sort_keys=True).encode())
        arrays = (self.train_ids, self.val_ids, np.asarray(self.ages), np.asarray(self.genders), self.images)
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
        """Forget the state once the training's outputs are written."""
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
    """Updates one phase's trainable weights from a loss: optimiser (per-block learning rates with
    ``layer_decay``), gradient scaling and clipping, the pull toward ``anchors`` (L2-SP) and the
    learning-rate schedule."""

    def __init__(
        self,
        model: AgeNet,
        phase: Phase,
        params: TrainParams,
        steps_per_epoch: int,
        anchors: dict[nn.Parameter, torch.Tensor],
    ):
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.grad_clip = params.grad_clip
        self.optimizer = build_optimizer(parameter_groups(model, phase.lr, params), params)
        self.pull = AnchorPull(self.optimizer, anchors, params.l2sp)
        self.schedule = Schedule(self.optimizer, params, phase.epochs, steps_per_epoch)
        device = self.trainable[0].device
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and params.amp)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.pull.after_step()
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


class TrainingState:
    """What changes as training goes: the model and its weight average, the random generators and the
    progress. A :meth:`state_dict` taken after an epoch and loaded into a fresh state goes on as if
    training had not stopped."""

    def __init__(self, model: AgeNet, ema_decay: float, seed: int):
        self.model = model
        self.average = weight_average(model, ema_decay)
        self.shuffle_rng = np.random.default_rng(seed)
        self.augment_rng = torch.Generator().manual_seed(seed)
        self.progress = Progress()
        self.stepper_state: dict | None = None  # the optimiser state of a phase resumed part-way

    @property
    def validated(self) -> AgeNet:
        """The weights that are validated and kept: the average's when there is one."""
        return self.average.module if self.average is not None else self.model

    def record(self, row: dict, patience: int) -> bool:
        """Add an epoch's ``row`` to the history and keep the weights if they are the best so far; whether
        ``patience`` epochs have passed without improvement."""
        progress = self.progress
        progress.history.append(row)
        if progress.best is None or row["val_mae"] < progress.best["val_mae"]:
            weights = _cpu_copy(self.validated.state_dict())
            progress.best = {"epoch": row["epoch"], "val_mae": row["val_mae"], "model": weights}
            progress.stale = 0
        else:
            progress.stale += 1
        return patience > 0 and progress.stale >= patience

    def state_dict(self, stepper: Stepper) -> dict:
        return {
            **asdict(self.progress),
            "model": _cpu_copy(self.model.state_dict()),
            "average": self.average.state_dict() if self.average is not None else None,
            "stepper": stepper.state_dict(),
            "shuffle_rng": self.shuffle_rng.bit_generator.state,
            "augment_rng": self.augment_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.shuffle_rng.bit_generator.state = state["shuffle_rng"]
        self.augment_rng.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.progress = Progress(**{name: state[name] for name in ("history", "best", "stale", "phase", "epoch")})
        self.stepper_state = state["stepper"] if self.progress.epoch > 0 else None


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
        model = build_model(setup.model_params, setup.age_range, age_stats)
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
        teacher = ReferenceAgeModel(self.model.bin_ages).to(device) if params.distill_weight > 0 else None
        self.inputs = Inputs(
            self.model, setup.images, setup.model_params.input_size, params.batch_size, device, workers.is_main, teacher
        )
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
            errors = (self.model.years(outputs["age"].detach()) - self.targets.ages[ids]).abs().sum().item()
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

    def choose_blend(self, val_mae: float) -> tuple[float, float]:
        """The weight of dlib's untouched model (``model.reference_blend``) with the lowest validation MAE for the
        kept weights, and that MAE; the model is left blended so, and without the reference at weight 0."""
        weights, model = self.setup.model_params.reference_blend, self.model
        if len(weights) == 1:
            return weights[0], val_mae
        val_ids = self.setup.val_ids
        predicted = {}
        for b in (0.0, 1.0):  # the model's own ages, then the reference's
            model.blend = b
            predicted[b] = self.inputs.predict(model, val_ids, self.amp)
        errors = blend_errors(predicted[0.0], predicted[1.0], self.setup.ages[val_ids], weights)
        model.blend = min(weights, key=errors.get)
        if model.blend == 0:
            model.reference = None
        log.info("validation MAE blended with dlib's untouched model: %s", {b: round(e, 3) for b, e in errors.items()})
        return model.blend, errors[model.blend]

    def result(self, seconds: float) -> TrainResult:
        """The best epoch's weights, blended as validation chooses, as a checkpoint, the history and the summary."""
        best, setup = self.state.progress.best, self.setup
        self.model.load_state_dict(best["model"])
        blend, val_mae = self.choose_blend(best["val_mae"])
        checkpoint = make_checkpoint(
            self.model,
            replace(setup.model_params, reference_blend=(blend,)),
            setup.age_range,
            image_size=setup.images.shape[1],
            epoch=best["epoch"],
            val_mae=val_mae,
        )
        speeds = {
            f"{name}_images_per_second": round(self.images_seen[name] / self.seconds[name], 1)
            for name in self.seconds
            if self.seconds[name] > 0
        }
        summary = {
            "backbone": setup.model_params.backbone,
            "head": setup.model_params.head,
            "best_epoch": best["epoch"],
            "best_val_mae": round(val_mae, 4),  # the kept model's: its epoch's, blended as chosen
            "epoch_val_mae": round(best["val_mae"], 4),
            "reference_blend": blend,
            "epochs_run": len(self.state.progress.history),
            "parameters": count_parameters(self.model),
            "device": self.device.type,
            "precision": self.precision,
            **({"cpu": cpu_features()} if self.device.type == "cpu" else {}),
            "processes": self.workers.size,
            "seconds": round(seconds, 1),
            **speeds,
        }
        return TrainResult(checkpoint, self.state.progress.history, summary)


def blend_errors(own: np.ndarray, reference: np.ndarray, ages: np.ndarray, weights: tuple[float, ...]) -> dict:
    """Validation MAE of (1 - b) x ``own`` + b x ``reference`` ages for each weight b."""
    return {b: float(np.abs((1 - b) * own + b * reference - ages).mean()) for b in weights}


def train_model(
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


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}
