"""Optimisers, their parameter groups, and learning-rate schedules by name."""

from __future__ import annotations

import math

import torch
from torch import nn

from faceage.sections import TrainParams


def trunk_blocks(trunk: nn.Module) -> list[nn.Module]:
    """The backbone's blocks from input to output: its top-level children with parameters, a sequence
    among them taken apart one level (ResNet's ``layer1.0``, MobileNet's ``features.3``)."""
    blocks = []
    for child in trunk.children():
        parts = list(child.children()) if isinstance(child, nn.Sequential) else [child]
        blocks += [part for part in parts if any(True for _ in part.parameters())]
    return blocks


def parameter_groups(model: nn.Module, lr: float, params: TrainParams) -> list[dict]:
    """The trainable parameters of ``model`` (an AgeNet) in groups: the head at ``lr`` first, then each backbone
    block, last first, at ``lr`` times ``layer_decay`` once more per block. With ``l2sp`` the backbone groups
    have no weight decay: :class:`AnchorPull` pulls them toward their starting weights instead."""
    head = [p for name, p in model.named_parameters() if not name.startswith("trunk.") and p.requires_grad]
    groups = [{"params": head, "lr": lr}]
    decay = 0.0 if params.l2sp > 0 else params.weight_decay
    for depth, block in enumerate(reversed(trunk_blocks(model.trunk)), start=1):
        trainable = [p for p in block.parameters() if p.requires_grad]
        if trainable:
            block_lr = lr * params.layer_decay**depth
            groups.append({"params": trainable, "lr": block_lr, "weight_decay": decay, "trunk": True})
    return groups


def build_optimizer(groups: list[dict], params: TrainParams) -> torch.optim.Optimizer:
    """The optimiser named by ``params.optimizer`` (checked when params are loaded) over parameter ``groups``."""
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=params.momentum, weight_decay=params.weight_decay)
    optimizer = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    return optimizer(groups, weight_decay=params.weight_decay)


class AnchorPull:
    """L2-SP, decoupled as AdamW decouples weight decay: after each step, every backbone parameter moves toward
    its starting value by ``strength`` times its group's learning rate times the distance."""

    def __init__(self, optimizer: torch.optim.Optimizer, anchors: dict[nn.Parameter, torch.Tensor], strength: float):
        self.optimizer, self.anchors, self.strength = optimizer, anchors, strength

    @torch.no_grad()
    def after_step(self) -> None:
        if self.strength == 0:
            return
        for group in self.optimizer.param_groups:
            if group.get("trunk"):
                for parameter in group["params"]:
                    parameter.sub_(parameter - self.anchors[parameter], alpha=group["lr"] * self.strength)


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
