"""What a training run is given: its data and settings, the phases of its schedule, and its precision."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from faceage.errors import FaceageError
from faceage.model.age_model import AgeModel
from faceage.runtime import cpu_autocast, cpu_precision_reason, use_cpu_bf16
from faceage.sections import AugmentParams, ModelParams, TrainParams
from faceage.training.augment import is_active

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


@dataclass(frozen=True, eq=False)
class TrainingSetup:
    """What decides a training run: the data (image rows are manifest ids, genders 0/1 or
    ``UNKNOWN_GENDER``, the split's ``train`` and ``val`` rows), the settings, and the model that teaches the
    network when ``params.distill_weight`` > 0 (``None``: dlib's untouched age model)."""

    images: np.ndarray
    ages: np.ndarray
    genders: np.ndarray
    split: pd.DataFrame
    model_params: ModelParams
    params: TrainParams
    augment_params: AugmentParams
    age_range: tuple[int, int]
    teacher: AgeModel | None = None

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
        settings.append(None if self.teacher is None else self.teacher.blend)
        digest.update(json.dumps(settings, sort_keys=True).encode())
        arrays = [self.train_ids, self.val_ids, np.asarray(self.ages), np.asarray(self.genders), self.images]
        if self.teacher is not None:
            arrays += [value.detach().cpu().float().reshape(-1).numpy() for value in self.teacher.state_dict().values()]
        for array in arrays:
            digest.update(json.dumps([array.shape, str(array.dtype)]).encode())
            for start in range(0, len(array), FINGERPRINT_BLOCK):
                digest.update(np.ascontiguousarray(array[start : start + FINGERPRINT_BLOCK]).tobytes())
        return digest.hexdigest()


def autocast(device: torch.device, params: TrainParams) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA (``amp``), bfloat16 on the CPU (``cpu_bf16``), else nothing."""
    if device.type == "cuda" and params.amp:
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and use_cpu_bf16(params.cpu_bf16):
        return cpu_autocast()
    return contextlib.nullcontext()


def precision(device: torch.device, params: TrainParams) -> str:
    """The precision :func:`autocast` trains in on ``device``, and why."""
    if device.type == "cpu":
        return cpu_precision_reason(params.cpu_bf16)
    return "float16 autocast (train.amp)" if device.type == "cuda" and params.amp else "float32"
