"""One phase's weight updates: optimiser, gradient scaling and clipping, L2-SP pull and schedule."""

from __future__ import annotations

import copy

import torch
from torch import nn

from faceage.model.networks import AgeNet
from faceage.sections import TrainParams
from faceage.training.optim import AnchorPull, Schedule, build_optimizer, parameter_groups
from faceage.training.setup import Phase


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
