"""Typed view of ``params.yaml``: the one place where the pipeline's settings are read."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from faceage.errors import FaceageError

T = TypeVar("T")


@dataclass(frozen=True)
class DemoParams:
    """The synthetic demo data set."""

    num_images: int = 2000
    image_size: int = 200
    jpeg_quality: int = 90
    seed: int = 0


@dataclass(frozen=True)
class DataParams:
    """Where the images come from and how they are stored after ingest."""

    source: str = "data/demo/UTKFace.tar.gz"
    image_size: int = 128
    min_age: int = 1
    max_age: int = 116
    workers: int = 0  # 0: one per CPU core; does not change results


@dataclass(frozen=True)
class SplitParams:
    """Train/validation/test partition."""

    train: float = 0.70
    val: float = 0.15
    test: float = 0.15
    seed: int = 42
    stratify_bins: int = 10
    use_given: bool = True


@dataclass(frozen=True)
class ModelParams:
    """The network."""

    backbone: str = "mobilenet_v2"
    pretrained: bool = True
    input_size: int = 64


@dataclass(frozen=True)
class TrainParams:
    """Optimisation."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 42
    threads: int = 0  # 0: torch's default


@dataclass(frozen=True)
class EvaluateParams:
    """Metrics."""

    batch_size: int = 128
    bucket_edges: tuple[int, ...] = (1, 6, 13, 19, 31, 46, 61, 101)


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``."""

    demo: DemoParams = field(default_factory=DemoParams)
    data: DataParams = field(default_factory=DataParams)
    split: SplitParams = field(default_factory=SplitParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)


def from_dict(cls: type[T], values: dict[str, Any], where: str = "params") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise FaceageError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise FaceageError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in values.items()}
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise FaceageError(f"{where}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_convert(item, v, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise FaceageError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; keys left out take their defaults."""
    path = Path(path)
    if not path.is_file():
        raise FaceageError(f"no parameter file at {path}")
    with path.open() as f:
        values = yaml.safe_load(f) or {}
    return from_dict(Params, values, str(path))
