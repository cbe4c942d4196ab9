"""Typed view of ``params.yaml``, the one place where every setting's value is written: types, allowed ranges and
rules across settings live here, values and their defaults only there."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from faceage.errors import FaceageError

T = TypeVar("T")
CpuBf16 = Literal["auto", True, False]  # train.cpu_bf16
Range = tuple[typing.Callable[[Any], bool], str]

AT_LEAST_0: Range = (lambda v: v >= 0, ">= 0")
AT_LEAST_1: Range = (lambda v: v >= 1, ">= 1")
POSITIVE: Range = (lambda v: v > 0, "> 0")
PROBABILITY: Range = (lambda v: 0 <= v <= 1, "0..1")
FRACTION_BELOW_1: Range = (lambda v: 0 <= v < 1, "0 <= value < 1")
OPEN_UNIT: Range = (lambda v: 0 < v < 1, "0 < value < 1")
UP_TO_1: Range = (lambda v: 0 < v <= 1, "0 < value <= 1")
PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the settings of faceage's own pipeline
MAIN_MEMBER = "main"  # the ensemble's name for the network the model section describes
DLIB_MIN_INPUT = 32  # pixels: smaller inputs vanish in dlib's age network before its last convolution
INCREASING: Range = (lambda v: len(v) > 0 and all(a < b for a, b in itertools.pairwise(v)), "increasing values")


def check(condition: bool, key: str, value: Any, allowed: object) -> None:
    """Raise a one-line :class:`FaceageError` naming ``key``, ``value`` and what is ``allowed`` unless ``condition``."""
    if not condition:
        raise FaceageError(f"{key}: {value!r} is not allowed; expected {allowed}")


def is_choice(value: Any, allowed: tuple) -> bool:
    """Whether ``value`` is one of ``allowed`` and of its type: ``1`` is not ``true``."""
    return any(value == choice and type(value) is type(choice) for choice in allowed)


def choices(allowed: tuple) -> str:
    """``allowed`` as params.yaml spells them."""
    return ", ".join(str(choice).lower() if isinstance(choice, bool) else choice for choice in allowed)


class Checked:
    """Checks every field when an instance is made: choices (``Literal`` types), finite floats, and the
    ranges in ``RANGES``; ``check_together`` adds rules that span several fields."""

    SECTION: ClassVar[str] = ""
    RANGES: ClassVar[dict[str, Range]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            key, value, hint = f"{self.SECTION}.{item.name}", getattr(self, item.name), hints[item.name]
            if typing.get_origin(hint) is Literal:
                check(is_choice(value, typing.get_args(hint)), key, value, f"one of {choices(typing.get_args(hint))}")
            numbers = value if isinstance(value, tuple) else (value,)
            check(all(not isinstance(v, float) or math.isfinite(v) for v in numbers), key, value, "finite numbers")
            if item.name in self.RANGES:
                allowed, description = self.RANGES[item.name]
                check(allowed(value), key, value, description)
        self.check_together()

    def check_together(self) -> None:
        """Rules over several fields; none by default."""


@dataclass(frozen=True)
class DemoParams(Checked):
    """The synthetic demo data set."""

    SECTION: ClassVar[str] = "demo"
    RANGES: ClassVar[dict[str, Range]] = {
        "num_images": AT_LEAST_1,
        "restyled_images": AT_LEAST_1,
        "image_size": (lambda v: v >= 16, ">= 16"),
        "jpeg_quality": (lambda v: 1 <= v <= 100, "1..100"),
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
        "image_size": (lambda v: v >= 8, ">= 8"),
        "min_age": AT_LEAST_0,
        "workers": AT_LEAST_0,
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
        "max_side": (lambda v: v >= 64, ">= 64"),
        "min_size": AT_LEAST_1,
        "rotations": (lambda v: all(-90 <= a <= 90 and a != 0 for a in v), "angles in -90..90, none 0"),
    }

    upsample: int  # times the detector doubles the photo first: 1 finds faces down to ~40 px, but ~4x slower
    padding: float  # margin around the landmarks' face, share of its size; UTKFace's crops use 0.2
    max_side: int  # photos whose longer side exceeds this are downscaled for detection only
    min_size: int  # smallest face side kept, in pixels of the photo
    min_score: float  # HOG detection score a face must exceed (tilted faces score lower)
    rotations: tuple[float, ...]  # photo turns (degrees) searched when the upright one has no face


@dataclass(frozen=True)
class SplitParams(Checked):
    """Train/validation/test partition."""

    SECTION: ClassVar[str] = "split"
    RANGES: ClassVar[dict[str, Range]] = {
        "train": PROBABILITY,
        "val": PROBABILITY,
        "test": PROBABILITY,
        "stratify_bins": AT_LEAST_1,
    }

    train: float
    val: float
    test: float
    seed: int
    stratify_bins: int
    use_given: bool

    def check_together(self) -> None:
        total = self.train + self.val + self.test
        check(math.isclose(total, 1.0, abs_tol=1e-6), "split.train + split.val + split.test", round(total, 6), 1)


@dataclass(frozen=True)
class ModelParams(Checked):
    """The network: a backbone from the registry and an age head, optionally with auxiliary heads."""

    SECTION: ClassVar[str] = "model"
    RANGES: ClassVar[dict[str, Range]] = {
        "input_size": (lambda v: v >= 16, ">= 16"),
        "hidden": AT_LEAST_0,
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
        if self.backbone == "dlib_age_resnet10" and self.input_size < DLIB_MIN_INPUT:
            raise FaceageError(f"model.input_size: dlib_age_resnet10 needs at least {DLIB_MIN_INPUT} px")
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
        "head_epochs": AT_LEAST_0,
        "head_lr": POSITIVE,
        "epochs": AT_LEAST_0,
        "lr": POSITIVE,
        "batch_size": AT_LEAST_1,
        "momentum": FRACTION_BELOW_1,
        "weight_decay": AT_LEAST_0,
        "warmup_epochs": AT_LEAST_0,
        "plateau_factor": OPEN_UNIT,
        "plateau_patience": AT_LEAST_0,
        "patience": AT_LEAST_0,
        "grad_clip": AT_LEAST_0,
        "ema_decay": FRACTION_BELOW_1,
        "label_smoothing": FRACTION_BELOW_1,
        "label_sigma": AT_LEAST_0,
        "threads": AT_LEAST_0,
        "nproc": AT_LEAST_1,
        "max_restarts": AT_LEAST_0,
        "layer_decay": UP_TO_1,
        "l2sp": AT_LEAST_0,
        "distill_weight": AT_LEAST_0,
        "start_size": (lambda v: v == 0 or v >= 16, "0 or >= 16"),
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
        "blur_sigma": POSITIVE,
        "noise": (lambda v: 0 <= v <= 0.5, "0..0.5"),
        "jpeg": PROBABILITY,
        "jpeg_quality": (lambda v: 1 <= v <= 100, "1..100"),
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
    RANGES: ClassVar[dict[str, Range]] = {"experiment": (lambda v: bool(v.strip()), "a name")}

    experiment: str


@dataclass(frozen=True)
class EvaluateParams(Checked):
    """Metrics, their confidence intervals, and the galleries."""

    SECTION: ClassVar[str] = "evaluate"
    RANGES: ClassVar[dict[str, Range]] = {
        "batch_size": AT_LEAST_1,
        "bootstrap_resamples": AT_LEAST_1,
        "confidence": OPEN_UNIT,
        "cs_threshold": POSITIVE,
        "bucket_edges": INCREASING,
        "worst_errors": AT_LEAST_0,
        "gradcam_per_bucket": AT_LEAST_0,
        "age_groups": INCREASING,
    }

    batch_size: int
    flip_tta: bool  # average the predictions of each image and its mirror image
    bootstrap_resamples: int
    bootstrap_seed: int
    confidence: float
    cs_threshold: float  # CS@k: share of predictions within k years
    bucket_edges: tuple[int, ...]
    worst_errors: int  # faces in the worst-errors gallery
    gradcam_per_bucket: int  # test faces per age bucket in the Grad-CAM gallery
    age_groups: tuple[int, ...]  # first ages of the groups after the first: <30, 30-59, 60+


@dataclass(frozen=True)
class CompareParams(Checked):
    """The paired test of the current run against the best other run on the same data."""

    SECTION: ClassVar[str] = "compare"
    RANGES: ClassVar[dict[str, Range]] = {
        "bootstrap_resamples": AT_LEAST_1,
        "confidence": OPEN_UNIT,
        "model_name": (lambda v: bool(v.strip()), "a name"),
    }

    bootstrap_resamples: int
    seed: int
    confidence: float
    promote: bool  # register the model, and make it the champion if significantly better on val
    model_name: str  # name in the MLflow Model Registry


@dataclass(frozen=True)
class TestSource(Checked):
    """A data set the model is tested on beside the split's test images, e.g. photos of another origin."""

    SECTION: ClassVar[str] = "test_sources"
    RANGES: ClassVar[dict[str, Range]] = {"source": (lambda v: bool(v.strip()), "a path")}
    RESERVED: ClassVar[tuple[str, ...]] = ("train", "val", "test")  # the split's names

    source: str
    align: bool  # detect and align each image's face first (raw photos)


@dataclass(frozen=True)
class MemberParams:
    """One more network of the ensemble: changes to the ``model``, ``train`` and ``augment`` sections."""

    FIXED: ClassVar[dict[str, tuple[str, ...]]] = {  # the same for every member: set in the sections themselves
        "model": ("reference_blend",),  # the ensemble is blended as a whole
        "train": ("nproc", "max_restarts"),  # the stage's processes train every member
    }

    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``."""

    demo: DemoParams
    data: DataParams
    faces: FacesParams
    split: SplitParams
    model: ModelParams
    train: TrainParams
    augment: AugmentParams
    mlflow: MlflowParams
    evaluate: EvaluateParams
    compare: CompareParams
    test_sources: dict[str, TestSource]  # the demo's other style
    members: dict[str, MemberParams]  # more networks, averaged with the model's as one model

    def __post_init__(self) -> None:
        for name in self.test_sources:
            allowed = f"a name of letters, digits and _, none of {', '.join(TestSource.RESERVED)}"
            check(re.fullmatch(r"\w+", name) and name not in TestSource.RESERVED, "test_sources", name, allowed)
        for name in self.members:
            allowed = f"a name of letters, digits and _ but {MAIN_MEMBER}"
            check(re.fullmatch(r"\w+", name) is not None and name != MAIN_MEMBER, "members", name, allowed)
            try:
                self.member(name)
            except FaceageError as error:
                where = f"members.{name}"
                raise FaceageError(str(error) if str(error).startswith(where) else f"{where}: {error}") from None
        self.check_training()

    def member(self, name: str) -> Params:
        """These params as member ``name`` of the ensemble trains with: its changes applied, and no members."""
        member, changed = self.members[name], {}
        for section in ("model", "train", "augment"):
            changes, where = getattr(member, section), f"members.{name}.{section}"
            fixed = sorted(set(changes) & set(MemberParams.FIXED.get(section, ())))
            if fixed:
                raise FaceageError(f"{where}: {', '.join(fixed)} cannot differ between members; set it in {section}")
            current = dataclasses.asdict(getattr(self, section))
            changed[section] = from_dict(type(getattr(self, section)), {**current, **changes}, where)
        return dataclasses.replace(self, members={}, **changed)

    def check_training(self) -> None:
        """Rules across the model and train sections."""
        if self.train.distill_weight > 0 and self.model.head != "classification":
            raise FaceageError("train.distill_weight needs model.head: classification (it compares distributions)")
        start = self.train.start_size
        if start > self.model.input_size:
            raise FaceageError(f"train.start_size: {start} is above model.input_size ({self.model.input_size})")
        if 0 < start < DLIB_MIN_INPUT and self.model.backbone == "dlib_age_resnet10":
            raise FaceageError(f"train.start_size: dlib_age_resnet10 needs at least {DLIB_MIN_INPUT} px")


def from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown and missing keys and wrong types: every setting's
    value is written in ``params.yaml`` only, so no key has a default here."""
    if not isinstance(values, dict):
        raise FaceageError(f"{where or 'top level'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise FaceageError(
            f"{where or 'top level'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    required = {f.name for f in dataclasses.fields(cls) if f.default is f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(values))
    if missing:
        raise FaceageError(f"{where or 'top level'}: missing key(s) {', '.join(missing)}")
    kwargs = {
        name: _convert(hints[name], value, f"{where}.{name}" if where else name) for name, value in values.items()
    }
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise FaceageError(f"{where}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(key): _convert(item, v, f"{where}.{key}") for key, v in value.items()}
    if origin is tuple:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # one value stands for a list of one, as `dvc exp run -S key=0.25` sets it
        if not isinstance(value, list | tuple):
            raise FaceageError(f"{where}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_convert(item, v, where) for v in value)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if not is_choice(value, allowed):
            raise FaceageError(f"{where}: {value!r} is not allowed; expected one of {choices(allowed)}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise FaceageError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


class ParamsLoader(yaml.SafeLoader):
    """YAML as DVC reads ``params.yaml`` (YAML 1.2): ``1e-4`` is a number, not the string PyYAML makes it."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``, which holds every setting's value (there are no defaults elsewhere)."""
    path = Path(path)
    if not path.is_file():
        raise FaceageError(f"no parameter file at {path}")
    with path.open() as f:
        values = yaml.load(f, ParamsLoader) or {}
    try:
        return from_dict(Params, values)
    except FaceageError as error:
        raise FaceageError(f"{path}: {error}") from None
