"""dlib's face-recognition ResNet-29 (Davis King, CC0) as a PyTorch module, weights read from dlib's model file.

The file ``dlib_face_recognition_resnet_model_v1.dat`` ships in the ``face-recognition-models`` package. dlib
trained the network on about 3 million faces to tell people apart: it maps a 150-px face chip (cut with padding
0.25 around dlib's 5 landmarks), taken as ``(pixel - DLIB_MEANS) / 256``, to a 128-number descriptor. Here its
trunk learns age. As with :mod:`faceage.model.dlib_resnet`, each ``affine`` layer is folded into the convolution
before it and the change to ImageNet-normalised input into the first one.

The pipeline's chips are cut with padding 0.2 (UTKFace's); the network adds the missing margin itself, as black
pixels around its input (1/28 of the side each way), so that 140-px inputs become dlib's 150-px chips.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceage.errors import FaceageError
from faceage.model.batches import IMAGENET_MEAN, IMAGENET_STD
from faceage.model.dlib_resnet import ResidualBlock, fold_affine, fold_input_conversion
from faceage.weights import FACE_RECOGNITION_MODELS, file_sha256, packaged_file

DAT_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
CHIP_PADDING, STORED_PADDING = 0.25, 0.2  # dlib's face-recognition chip; the pipeline's (UTKFace's) chips
# (in, out, downsample) of each residual block, input to output: dlib's alevel4 to alevel0
BLOCKS = (
    *[(32, 32, False)] * 3,
    (32, 64, True),
    *[(64, 64, False)] * 3,
    (64, 128, True),
    *[(128, 128, False)] * 2,
    (128, 256, True),
    *[(256, 256, False)] * 2,
    (256, 256, True),
)
DESCRIPTOR_SIZE = 128


def chip_border(side: int) -> int:
    """Black pixels added on each side of a ``side``-px chip cut with :data:`STORED_PADDING` to make it one cut
    with :data:`CHIP_PADDING`."""
    return round(side * ((1 + 2 * CHIP_PADDING) / (1 + 2 * STORED_PADDING) - 1) / 2)


class DlibFaceResNet29(nn.Module):
    """The ResNet-29 of dlib's face recognition on ImageNet-normalised chips; ``fc`` gives the descriptor."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.blocks = nn.Sequential(*(ResidualBlock(*block) for block in BLOCKS))
        self.fc = nn.Linear(BLOCKS[-1][1], DESCRIPTOR_SIZE, bias=False)
        black = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]  # pixel 0, ImageNet-normalised
        self.register_buffer("black", torch.tensor(black).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        border = chip_border(x.shape[-1])
        x = F.pad(x - self.black, (border,) * 4) + self.black
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def dat_path() -> Path:
    """The model file from ``$TORCH_HOME/hub/checkpoints`` or the installed face-recognition-models package."""
    return packaged_file(
        DAT_FILE, DAT_SHA256, "dlib_face_resnet29 weights", FACE_RECOGNITION_MODELS, ", or set model.pretrained: false"
    )


def dat_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """Weights of :class:`DlibFaceResNet29` read from dlib's model file, layer by layer in the file's order."""
    path = path or dat_path()
    if file_sha256(path) != DAT_SHA256:
        raise FaceageError(f"{path}: not the expected {DAT_FILE} (its SHA-256 differs from {DAT_SHA256[:12]}...)")
    convs, affines, descriptor = dat_layers(path.read_bytes())
    values = [v for conv, affine in zip(convs, affines, strict=True) for v in fold_affine(*conv, *affine)]
    values[:2] = fold_input_conversion(*values[:2])
    network = DlibFaceResNet29()
    names = [n for n, m in network.named_modules() if isinstance(m, nn.Conv2d) for n in (f"{n}.weight", f"{n}.bias")]
    state = dict(zip(names, values, strict=True)) | {"fc.weight": descriptor}
    expected = network.state_dict()
    if state.keys() != expected.keys() or any(expected[n].shape != v.shape for n, v in state.items()):
        raise FaceageError(f"{path}: its layers do not match dlib's face-recognition ResNet-29")
    return state


# The records of dlib's serialisation that hold weights, by their version strings.
CONV, AFFINE, FC = (b"con_4", b"con_5", b"con_6"), (b"affine_", b"affine_2"), (b"fc_2", b"fc_3")


class DatReader:
    """dlib's serialisation (``dlib/serialize.h``, ``dlib/dnn``): integers as a length byte (the sign in its top
    bit) and that many little-endian bytes, strings as their length and bytes, tensors as a version, four sizes and
    little-endian float32 values. A network is written input layer first, each layer's record starting with its
    version string."""

    def __init__(self, data: bytes, position: int):
        self.data, self.position = data, position

    def integer(self) -> int:
        control = self.data[self.position]
        size = control & 0x0F
        value = int.from_bytes(self.data[self.position + 1 : self.position + 1 + size], "little")
        self.position += 1 + size
        return -value if control & 0x80 else value

    def shape(self, version: int) -> tuple[int, ...]:
        if self.integer() != version:
            raise ValueError("unexpected tensor version")
        return tuple(self.integer() for _ in range(4))

    def tensor(self) -> torch.Tensor:
        shape = self.shape(2)
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, "<f4", count, self.position)
        self.position += 4 * count
        return torch.from_numpy(values.copy()).reshape(shape)


def check(condition: bool) -> None:
    """A record that does not add up."""
    if not condition:
        raise ValueError("inconsistent record")


Pairs = list[tuple[torch.Tensor, torch.Tensor]]


def dat_layers(data: bytes) -> tuple[Pairs, Pairs, torch.Tensor]:
    """The convolutions' ``(weight, bias)``, the affine layers' ``(scale, offset)`` and the descriptor layer's
    weight (``out x in``), read from a network file's bytes."""
    convs: Pairs = []
    affines: Pairs = []
    descriptor = None
    records = re.compile(b"|".join(re.escape(b"\x01" + bytes([len(v)]) + v) for v in CONV + AFFINE + FC))
    try:
        for record in records.finditer(data):
            reader, version = DatReader(data, record.end()), record.group()[2:]
            if version in CONV:
                params = reader.tensor().reshape(-1)
                for _ in range(7):  # filters, rows, columns, strides and paddings: the network's shape says them
                    reader.integer()
                weight_shape, bias_shape = reader.shape(1), reader.shape(1)
                weights, biases = int(np.prod(weight_shape)), int(np.prod(bias_shape))
                check(params.numel() == weights + biases)
                convs.append((params[:weights].reshape(weight_shape), params[weights : weights + biases]))
            elif version in AFFINE:
                params = reader.tensor().reshape(-1)
                channels = int(np.prod(reader.shape(1)))
                check(params.numel() == 2 * channels)
                affines.append((params[:channels], params[channels : 2 * channels]))
            else:
                outputs, inputs = reader.integer(), reader.integer()
                params = reader.tensor()
                check(params.shape == (inputs, outputs, 1, 1))  # no bias row
                descriptor = params.reshape(inputs, outputs).T.contiguous()
    except (ValueError, IndexError, RuntimeError):
        convs = []
    if descriptor is None or not convs or len(convs) != len(affines):
        raise FaceageError("not a dlib face-recognition network file, or a damaged one")
    return convs, affines, descriptor
