"""The saved model: a typed checkpoint, written once by the train stage and read by :func:`read_checkpoint`.

On disk it is a dict of plain values and tensors, loadable with ``torch.load(..., weights_only=True)``:
``format`` (:data:`FORMAT`), ``networks`` (each network's model params), ``blend``, ``age_range``,
``image_size``, ``state_dict`` (of :class:`~faceage.model.age_model.AgeModel`), ``calibration`` (its intervals,
see :class:`~faceage.model.intervals.Calibration`; ``None`` for a model without), what it learnt from, and for
a student the ``teacher``'s networks and blend.
Checkpoints of the earlier layout (no ``format``; the first network's params under ``model`` with the blend
as a one-tuple ``reference_blend``, the others under ``members``) are read too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from faceage.checked import from_dict
from faceage.errors import FaceageError
from faceage.model.age_model import AgeModel
from faceage.model.intervals import Calibration
from faceage.model.networks import build_network
from faceage.params import saved_faces
from faceage.sections import FacesParams, ModelParams

FORMAT = 2


@dataclass(frozen=True)
class Teacher:
    """What a student network was taught by: the model's networks and its blend with dlib's untouched model."""

    networks: tuple[ModelParams, ...]
    blend: float

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> Teacher:
        return cls(checkpoint.networks, checkpoint.blend)


@dataclass(frozen=True)
class Checkpoint:
    """A trained :class:`AgeModel`: its networks' params, the chosen blend with dlib's untouched model, the
    age range of its bins, the size faces are stored at, its weights, its intervals' calibration, and where it
    comes from."""

    networks: tuple[ModelParams, ...]
    blend: float
    age_range: tuple[int, int]
    image_size: int
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    calibration: Calibration | None = None  # how its ages are corrected and given intervals
    faces: FacesParams | None = None  # the face settings it was trained with, used when predicting on photos
    dataset: dict[str, str] | None = None  # what it learnt from: name, kind (synthetic or real)
    run_id: str | None = None  # its MLflow run
    epoch: int = 0  # the kept epoch of the first network
    val_mae: float | None = None  # validation MAE of the blended model
    teacher: Teacher | None = None  # the model a student learnt from; None for a model trained on labels alone

    def build(self) -> AgeModel:
        """The model, untrained: its networks built as the params say, without pretrained weights."""
        networks = [build_network(untrained(params), self.age_range) for params in self.networks]
        sizes = [params.input_size for params in self.networks]
        model = AgeModel(networks, sizes, self.blend, self.age_range, self.image_size)
        model.calibrate(self.calibration)
        return model

    def to_dict(self) -> dict:
        """The on-disk form."""
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        values["networks"] = [dataclasses.asdict(params) for params in self.networks]
        values["faces"] = dataclasses.asdict(self.faces) if self.faces else None
        values["calibration"] = self.calibration.to_dict() if self.calibration else None
        values["age_range"] = list(self.age_range)
        values["teacher"] = dataclasses.asdict(self.teacher) if self.teacher else None
        return {"format": FORMAT, **values}


def untrained(params: ModelParams) -> ModelParams:
    """``params`` for building a network that saved weights are then loaded into."""
    return dataclasses.replace(params, pretrained=False, head_init="random")


def checkpoint_of(model: AgeModel, networks: list[ModelParams], **info: object) -> Checkpoint:
    """The checkpoint of a trained ``model`` whose networks were built with ``networks``."""
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    calibration = model.calibration
    return Checkpoint(tuple(networks), model.blend, model.age_range, model.image_size, state, calibration, **info)


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> None:
    """Write ``checkpoint`` to ``path``, its folder created if need be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint.to_dict(), path)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint saved at ``path``, of this layout or the earlier one; one line when it is none."""
    path = Path(path)
    if not path.is_file():
        raise FaceageError(f"no model at {path}: run the train stage first")
    try:
        values = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on damaged files; each means "not a checkpoint"
        raise not_a_checkpoint(path, describe(error)) from None
    if not isinstance(values, dict):
        raise not_a_checkpoint(path, f"it holds a {type(values).__name__}")
    if "format" not in values:
        values = from_earlier_layout(values, path)
    elif values["format"] != FORMAT:
        raise FaceageError(f"{path}: checkpoint format {values['format']!r} is not {FORMAT}: update faceage")
    missing = sorted({"networks", "blend", "age_range", "image_size", "state_dict"} - set(values))
    if missing:
        raise not_a_checkpoint(path, f"it has no {', '.join(missing)}")
    try:
        return typed(values, str(path))
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise not_a_checkpoint(path, describe(error)) from None


def typed(values: dict, where: str) -> Checkpoint:
    """A checkpoint's on-disk values as a :class:`Checkpoint`, each checked."""
    faces, calibration, teacher = values.get("faces"), values.get("calibration"), values.get("teacher")
    return Checkpoint(
        networks=networks_of(values["networks"], f"{where}: networks"),
        blend=float(values["blend"]),
        age_range=tuple(values["age_range"]),
        image_size=int(values["image_size"]),
        state_dict=values["state_dict"],
        calibration=Calibration.from_dict(calibration) if calibration else None,
        faces=saved_faces(faces, f"{where}: faces") if faces else None,
        dataset=values.get("dataset"),
        run_id=values.get("run_id"),
        epoch=int(values.get("epoch", 0)),
        val_mae=values.get("val_mae"),
        teacher=Teacher(networks_of(teacher["networks"], f"{where}: teacher"), float(teacher["blend"]))
        if teacher
        else None,
    )


def networks_of(values: list[dict], where: str) -> tuple[ModelParams, ...]:
    """Saved networks' model params, each checked."""
    return tuple(from_dict(ModelParams, params, where) for params in values)


def from_earlier_layout(values: dict, path: Path) -> dict:
    """An earlier checkpoint's values in this layout: the blend out of ``model.reference_blend``, the first
    network's weights under ``networks.0.``, an ensemble's under ``networks.N.``."""
    missing = sorted({"state_dict", "model", "age_range", "image_size"} - set(values))
    if missing:
        raise not_a_checkpoint(path, f"it has no {', '.join(missing)}")
    first, others = values["model"], values.get("members", [])
    blend = float(first.get("reference_blend", (0.0,))[0])
    state = {}
    for key, tensor in values["state_dict"].items():
        if key.startswith("reference."):
            state[key] = tensor
        elif key.startswith("members."):
            state[f"networks.{key.removeprefix('members.')}"] = tensor
        else:
            state[f"networks.0.{key}"] = tensor
    return {
        **{key: value for key, value in values.items() if key not in ("model", "members", "mlflow_run_id")},
        "networks": [first, *others],
        "blend": blend,
        "state_dict": state,
        "run_id": values.get("mlflow_run_id"),
    }


def load_model(path: str | Path, device: torch.device) -> tuple[AgeModel, Checkpoint]:
    """The model saved at ``path``, in eval mode on ``device``, and its checkpoint."""
    checkpoint = read_checkpoint(path)
    model = checkpoint.build()
    try:
        model.load_state_dict(checkpoint.state_dict)
    except (RuntimeError, TypeError) as error:
        mismatch = describe(error).split(". ")[0]
        backbones = "+".join(params.backbone for params in checkpoint.networks)
        raise FaceageError(f"{path}: its weights do not fit a {backbones} model ({mismatch})") from None
    return model.to(device, memory_format=torch.channels_last).eval(), checkpoint


def not_a_checkpoint(path: Path, reason: str) -> FaceageError:
    return FaceageError(f"{path} is not a faceage checkpoint ({reason}): run the train stage again")


def describe(error: Exception) -> str:
    """An exception as one short line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else f"{text[:200]}..."
