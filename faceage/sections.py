"""The sections of ``params.yaml`` as checked dataclasses: each setting's type, allowed range and the rules
across a section's settings. Their values are written in ``params.yaml`` only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from faceage.checked import (
    AT_LEAST_0,
    COUNT,
    FRACTION_BELOW_1,
    INCREASING,
    MAX_BATCH,
    OPEN_UNIT,
    POSITIVE,
    PROBABILITY,
    SEED,
    UP_TO_1,
    Checked,
    Range,
    between,
    check,
)
from faceage.errors import FaceageError

CpuBf16 = Literal["auto", True, False]  # train.cpu_bf16

# pixels: smaller inputs vanish in these networks (unpadded, strided convolutions) before their last convolution
MIN_INPUT = {"dlib_age_resnet10": 31, "dlib_face_resnet29": 97}
MAX_SIDE = 1024  # pixels: the largest stored image or network input
MAX_AGE = 150  # years
MAX_PROCESSES = 1024  # workers, threads or training processes
MAX_EPOCHS = 10_000
RESNET_BLOCKS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def numbered(name: str, count: int) -> tuple[str, ...]:
    """``name.0`` to ``name.{count - 1}``: the blocks of a sequential trunk."""
    return tuple(f"{name}.{index}" for index in range(count))


# Each backbone's trunk blocks (module paths): what train.freeze may name, at or below one of them.
BACKBONE_BLOCKS: dict[str, tuple[str, ...]] = {
    "resnet18": RESNET_BLOCKS,
    "resnet34": RESNET_BLOCKS,
    "resnet50": RESNET_BLOCKS,
    "resnet101": RESNET_BLOCKS,
    "mobilenet_v2": numbered("features", 19),
    "mobilenet_v3_small": numbered("features", 13),
    "mobilenet_v3_large": numbered("features", 17),
    "efficientnet_b0": numbered("features", 9),
    "efficientnet_b1": numbered("features", 9),
    "efficientnet_b2": numbered("features", 9),
    "dlib_age_resnet10": ("stem", "layer1", "layer2", "layer3"),
    "dlib_face_resnet29": ("stem", *numbered("blocks", 14)),
}


@dataclass(frozen=True)
class DemoParams(Checked):
    """The synthetic demo data set."""

    SECTION: ClassVar[str] = "demo"
    RANGES: ClassVar[dict[str, Range]] = {
        "num_images": between(1, COUNT),
        "restyled_images": between(1, COUNT),
        "image_size": between(16, MAX_SIDE),
        "jpeg_quality": between(1, 100),
        "seed": SEED,
    }

    num_images: int
    restyled_images: int  # the test source of faces drawn in another style
    image_size: int
    jpeg_quality: int
    seed: int


@dataclass(frozen=True)
class DataParams(Checked):
    """Where the images come from and how they are stored after ingest."""

    SECTION: ClassVar[str] = "data"
    RANGES: ClassVar[dict[str, Range]] = {
        "image_size": between(8, MAX_SIDE),
        "min_age": between(0, MAX_AGE),
        "max_age": between(0, MAX_AGE),  # one output per year of age
        "workers": between(0, MAX_PROCESSES),
    }

    source: str
    image_size: int
    min_age: int
    max_age: int
    workers: int  # 0: one per CPU core; does not change results
    align: bool  # detect and align the face of each image (for raw photos; UTKFace crops are aligned)
    multiple_faces: Literal["largest", "reject"]  # with align, an image with several faces: largest (keep it) | reject

    def check_together(self) -> None:
        check(self.max_age >= self.min_age, "data.max_age", self.max_age, f">= data.min_age ({self.min_age})")


@dataclass(frozen=True)
class FacesParams(Checked):
    """Face detection and alignment of photos, at ingest (``data.align``) and when predicting."""

    SECTION: ClassVar[str] = "faces"
    RANGES: ClassVar[dict[str, Range]] = {
        "upsample": (lambda v: 0 <= v <= 3, "0..3"),
        "padding": (lambda v: 0 <= v <= 2, "0..2"),
        "max_side": between(64, 16384),
        "max_megapixels": (lambda v: 0 < v <= 1000, "0 < value <= 1000"),
        "min_size": between(1, 16384),
        "rotations": (lambda v: all(-90 <= a <= 90 and a != 0 for a in v), "angles in -90..90, none 0"),
        "mtcnn_thresholds": (lambda v: len(v) == 3 and all(0 < t < 1 for t in v), "three values in 0 < t < 1"),
    }

    detector: Literal["hog", "mtcnn"]  # dlib's HOG detector | MTCNN (facenet-pytorch's weights)
    upsample: int  # times the detector doubles the photo first: 1 finds faces down to ~40 px, but ~4x slower
    padding: float  # margin around the landmarks' face, share of its size; UTKFace's crops use 0.2
    max_side: int  # photos whose longer side exceeds this are downscaled for detection only
    max_megapixels: float  # larger images are refused from their header, never decoded (bounds memory and time)
    min_size: int  # smallest face side kept, in pixels of the photo
    min_score: float  # HOG detection score a face must exceed (tilted faces score lower)
    mtcnn_thresholds: tuple[float, ...]  # MTCNN: face probability its three stages require
    rotations: tuple[float, ...]  # photo turns (degrees) searched when the upright one has no face

    @property
    def max_pixels(self) -> int:
        """``max_megapixels`` in pixels."""
        return round(self.max_megapixels * 1_000_000)


@dataclass(frozen=True)
class SplitParams(Checked):
    """Train/validation/test partition."""

    SECTION: ClassVar[str] = "split"
    RANGES: ClassVar[dict[str, Range]] = {
        "train": PROBABILITY,
        "val": PROBABILITY,
        "calibration": OPEN_UNIT,
        "test": PROBABILITY,
        "seed": SEED,
        "stratify_bins": between(1, 1000),
    }

    train: float
    val: float
    calibration: float  # faces that only calibrate the intervals
    test: float
    seed: int
    stratify_bins: int
    use_given: bool

    def check_together(self) -> None:
        total = self.train + self.val + self.calibration + self.test
        where = "split.train + split.val + split.calibration + split.test"
        check(math.isclose(total, 1.0, abs_tol=1e-6), where, round(total, 6), 1)


@dataclass(frozen=True)
class ModelParams(Checked):
    """The network: a backbone from the registry and an age head, optionally with auxiliary heads."""

    SECTION: ClassVar[str] = "model"
    RANGES: ClassVar[dict[str, Range]] = {
        "input_size": between(16, MAX_SIDE),
        "hidden": between(0, 65536),
        "backbone": (lambda v: v in BACKBONE_BLOCKS, f"one of {', '.join(BACKBONE_BLOCKS)}"),
        "dropout": FRACTION_BELOW_1,
        "gender_weight": AT_LEAST_0,
        "age_group_weight": AT_LEAST_0,
        "age_group_edges": INCREASING,
        "reference_blend": (
            lambda v: len(v) > 0 and all(0 <= b <= 1 for b in v) and list(v) == sorted(set(v)),
            "increasing weights in 0..1",
        ),
    }

    backbone: str
    pretrained: bool
    input_size: int
    head: Literal["regression", "classification"]  # regression | classification (softmax expectation over 1-year bins)
    hidden: int  # width of the head's hidden layer; 0 = one linear layer
    head_init: Literal[
        "random", "dlib"
    ]  # random | dlib (classification head starts as dlib's age classifier; hidden: 0)
    dropout: float
    gender_weight: float  # loss weight of an auxiliary gender head; 0 = no such head
    age_group_weight: float  # loss weight of an auxiliary age-group head; 0 = no such head
    age_group_edges: tuple[int, ...]  # lower edges of the groups after the first
    # weights of dlib's untouched age model in each predicted age: the one with the best validation MAE is kept
    reference_blend: tuple[float, ...]

    def check_together(self) -> None:
        dlib_head = (self.backbone, self.pretrained, self.head, self.hidden) == (
            "dlib_age_resnet10",
            True,
            "classification",
            0,
        )
        if self.input_size < MIN_INPUT.get(self.backbone, 1):
            raise FaceageError(f"model.input_size: {self.backbone} needs at least {MIN_INPUT[self.backbone]} px")
        if self.head_init == "dlib" and not dlib_head:
            raise FaceageError(
                "model.head_init: dlib needs backbone dlib_age_resnet10, pretrained: true, head: classification "
                "and hidden: 0"
            )


@dataclass(frozen=True)
class TrainParams(Checked):
    """Optimisation: an optional head-only stage on a frozen backbone, then fine-tuning."""

    SECTION: ClassVar[str] = "train"
    RANGES: ClassVar[dict[str, Range]] = {
        "head_epochs": between(0, MAX_EPOCHS),
        "head_lr": POSITIVE,
        "epochs": between(0, MAX_EPOCHS),
        "lr": POSITIVE,
        "batch_size": between(1, MAX_BATCH),
        "momentum": FRACTION_BELOW_1,
        "weight_decay": AT_LEAST_0,
        "warmup_epochs": AT_LEAST_0,
        "plateau_factor": OPEN_UNIT,
        "plateau_patience": between(0, MAX_EPOCHS),
        "patience": between(0, MAX_EPOCHS),
        "grad_clip": AT_LEAST_0,
        "ema_decay": FRACTION_BELOW_1,
        "label_smoothing": FRACTION_BELOW_1,
        "label_sigma": AT_LEAST_0,
        "seed": SEED,
        "threads": between(0, MAX_PROCESSES),
        "nproc": between(1, MAX_PROCESSES),
        "max_restarts": between(0, 100),
        "layer_decay": UP_TO_1,
        "l2sp": AT_LEAST_0,
        "distill_weight": AT_LEAST_0,
        "start_size": (lambda v: v == 0 or 16 <= v <= MAX_SIDE, f"0 or 16..{MAX_SIDE}"),
        "resize_epochs": UP_TO_1,
    }

    head_epochs: int
    head_lr: float
    epochs: int
    lr: float
    freeze: str  # fine-tuning: none | backbone | first trainable block (e.g. layer4)
    freeze_bn: bool
    batch_size: int
    optimizer: Literal["adamw", "adam", "sgd"]
    momentum: float
    weight_decay: float
    scheduler: Literal["cosine", "plateau", "none"]  # cosine: after a linear warm-up
    warmup_epochs: float
    plateau_factor: float
    plateau_patience: int
    patience: int  # early stopping after this many epochs without a better validation MAE; 0 = off
    grad_clip: float  # max gradient norm; 0 = off
    ema_decay: float  # per-step exponential moving average of the weights, validated and kept; 0 = off
    loss: Literal["l1", "mse", "smooth_l1"]  # regression head
    label_smoothing: float  # classification head
    label_sigma: float  # classification head: Gaussian label distribution width (years); 0 = one-hot
    amp: bool  # float16 autocast with gradient scaling on CUDA
    cpu_bf16: CpuBf16  # bfloat16 autocast on the CPU; auto: only where the CPU computes it natively
    seed: int
    threads: int  # CPU threads; 0 = torch's default
    nproc: int  # training processes on this machine (torchrun, DDP): one per GPU, or share the CPU cores
    max_restarts: int  # times torchrun restarts all processes when one fails (they resume the last epoch)
    sync_bn: bool  # with several GPU processes: BatchNorm statistics over the whole batch
    layer_decay: float  # fine-tuning: each backbone block's lr is this times the next one's; 1 = one lr
    l2sp: float  # fine-tuning: pull of the backbone toward its pretrained weights (L2-SP); 0 = off
    distill_weight: float  # loss weight of agreeing with dlib's untouched age model (classification); 0 = off
    start_size: int  # fine-tuning: input size (px) of the first epoch, growing to model.input_size; 0 = off
    resize_epochs: float  # with start_size: share of the fine-tuning epochs over which the input grows


@dataclass(frozen=True)
class StudentParams(Checked):
    """One network of the model section's kind, trained after the model on the labels and on the model's age
    distributions, and kept in the model's place when it is nearly as accurate on validation."""

    SECTION: ClassVar[str] = "student"
    RANGES: ClassVar[dict[str, Range]] = {"distill_weight": AT_LEAST_0, "tolerance": between(0, MAX_AGE)}

    distill_weight: float  # loss weight of the KL divergence from the model's age distribution; 0 = no student
    tolerance: float  # years of validation MAE the student may be behind the model and still replace it


@dataclass(frozen=True)
class AugmentParams(Checked):
    """Random changes to training images, applied per image on uint8 batches from the array."""

    SECTION: ClassVar[str] = "augment"
    RANGES: ClassVar[dict[str, Range]] = {
        "hflip": PROBABILITY,
        "crop_scale": UP_TO_1,
        "shift": (lambda v: 0 <= v <= 0.5, "0..0.5"),
        "rotate": (lambda v: 0 <= v <= 180, "0..180"),
        "brightness": AT_LEAST_0,
        "contrast": AT_LEAST_0,
        "saturation": AT_LEAST_0,
        "hue": (lambda v: 0 <= v <= 0.5, "0..0.5"),
        "grayscale": PROBABILITY,
        "erasing": PROBABILITY,
        "blur": PROBABILITY,
        "blur_sigma": (lambda v: 0 < v <= 16, "0 < value <= 16"),  # the kernel grows with it
        "noise": (lambda v: 0 <= v <= 0.5, "0..0.5"),
        "jpeg": PROBABILITY,
        "jpeg_quality": between(1, 100),
    }

    hflip: float  # probability
    crop_scale: float  # random resized crop: smallest share of the area kept; 1 = off
    shift: float  # largest shift, as a share of the side
    rotate: float  # largest rotation in degrees
    brightness: float
    contrast: float
    saturation: float
    hue: float  # largest hue rotation, as a share of the colour circle
    grayscale: float  # probability
    erasing: float  # probability of erasing a random rectangle
    blur: float  # probability of a Gaussian blur
    blur_sigma: float  # largest blur width, pixels of the network input
    noise: float  # largest standard deviation of added Gaussian noise (pixel values 0..1)
    jpeg: float  # probability of re-encoding as JPEG
    jpeg_quality: int  # lowest JPEG quality drawn (up to 95)
    in_head_stage: bool  # augment in the head-only stage too (disables its feature cache)


@dataclass(frozen=True)
class MlflowParams(Checked):
    """Experiment tracking; the store is $MLFLOW_TRACKING_URI, else mlflow.db at the repository root."""

    SECTION: ClassVar[str] = "mlflow"
    RANGES: ClassVar[dict[str, Range]] = {
        "experiment": (lambda v: bool(v.strip()), "a name"),
        "system_metrics_seconds": (lambda v: v == 0 or 1 <= v <= 3600, "0 (off) or 1..3600"),
    }

    experiment: str
    system_metrics_seconds: float  # between samples of CPU, memory and GPU use in training runs; 0: off
