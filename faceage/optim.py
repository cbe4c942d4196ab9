"""Optimisers and learning-rate schedules by name."""

from __future__ import annotations

import math

import torch

from faceage.params import TrainParams


def build_optimizer(parameters: list[torch.nn.Parameter], lr: float, params: TrainParams) -> torch.optim.Optimizer:
    """The optimiser named by ``params.optimizer`` (checked when params are loaded) over ``parameters``."""
    if params.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=params.momentum, weight_decay=params.weight_decay)
    optimizer = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    return optimizer(parameters, lr=lr, weight_decay=params.weight_decay)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Schedule:
    """Steps the learning rate per batch (cosine) or per epoch on validation MAE (plateau)."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: TrainParams, epochs: int, steps_per_epoch: int):
        self.kind = params.scheduler
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None
        if self.kind == "cosine":
            warmup = round(params.warmup_epochs * steps_per_epoch)
            total = epochs * steps_per_epoch
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: warmup_cosine(step, warmup, total)
            )
        elif self.kind == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=params.plateau_factor, patience=params.plateau_patience
            )
        else:
            self.scheduler = None

    def after_batch(self) -> None:
        if self.kind == "cosine":
            self.scheduler.step()

    def after_epoch(self, val_mae: float) -> None:
        if self.kind == "plateau":
            self.scheduler.step(val_mae)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
