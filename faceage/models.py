"""Backbones by name, with an age-regression head, and ImageNet weights loaded only from disk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

from faceage.errors import FaceageError
from faceage.params import ModelParams


@dataclass(frozen=True)
class Backbone:
    """How to build one torchvision classifier and where its final layer lives."""

    build: Callable[..., nn.Module]
    weights: WeightsEnum
    head: str  # attribute path of the final linear layer, e.g. "classifier.1"


BACKBONES: dict[str, Backbone] = {
    "mobilenet_v2": Backbone(models.mobilenet_v2, models.MobileNet_V2_Weights.IMAGENET1K_V1, "classifier.1"),
    "resnet18": Backbone(models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, "fc"),
    "resnet34": Backbone(models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, "fc"),
    "resnet50": Backbone(models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2, "fc"),
    "efficientnet_b0": Backbone(models.efficientnet_b0, models.EfficientNet_B0_Weights.IMAGENET1K_V1, "classifier.1"),
}


def weights_file(weights: WeightsEnum) -> Path:
    """Where torchvision looks for ``weights``: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def imagenet_state_dict(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """Load ImageNet weights from the local cache; never download."""
    path = weights_file(weights)
    if not path.is_file():
        raise FaceageError(
            f"pretrained weights not found: place {path.name} in {path.parent} (or point TORCH_HOME at a folder "
            "whose hub/checkpoints/ holds it), or set model.pretrained: false"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def build_model(params: ModelParams) -> nn.Module:
    """The backbone named by ``params.backbone`` with a single-output regression head."""
    if params.backbone not in BACKBONES:
        raise FaceageError(f"unknown model.backbone {params.backbone!r}; choose one of {', '.join(BACKBONES)}")
    spec = BACKBONES[params.backbone]
    model = spec.build(weights=None)
    if params.pretrained:
        model.load_state_dict(imagenet_state_dict(spec.weights))
    parent_path, _, name = spec.head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old_head: nn.Linear = getattr(parent, name)
    setattr(parent, name, nn.Linear(old_head.in_features, 1))
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
