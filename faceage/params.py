"""Typed view of ``params.yaml``, the one place where every setting's value is written: types, allowed ranges and
rules across settings live here, values and their defaults only there."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from faceage.checked import (
    Checked,
    ParamsLoader,
    Range,
    check,
    from_dict,
)
from faceage.errors import FaceageError
from faceage.report_sections import CompareParams, EvaluateParams, ExportParams, IntervalParams
from faceage.sections import (
    BACKBONE_BLOCKS,
    MIN_INPUT,
    AugmentParams,
    DataParams,
    DemoParams,
    FacesParams,
    MlflowParams,
    ModelParams,
    SplitParams,
    StudentParams,
    TrainParams,
)

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the settings of faceage's own pipeline
MAIN_MEMBER = "main"  # the ensemble's name for the network the model section describes
STUDENT = "student"  # the name of the network the whole model teaches (resume files, MLflow runs)


@dataclass(frozen=True)
class TestSource(Checked):
    """A data set the model is tested on beside the split's test images, e.g. photos of another origin."""

    SECTION: ClassVar[str] = "test_sources"
    RANGES: ClassVar[dict[str, Range]] = {"source": (lambda v: bool(v.strip()), "a path")}
    RESERVED: ClassVar[tuple[str, ...]] = ("train", "val", "calibration", "test")  # the split's names

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
    student: StudentParams
    intervals: IntervalParams
    mlflow: MlflowParams
    export: ExportParams
    evaluate: EvaluateParams
    compare: CompareParams
    test_sources: dict[str, TestSource]  # the demo's other style
    members: dict[str, MemberParams]  # more networks, averaged with the model's as one model

    def __post_init__(self) -> None:
        for name in self.test_sources:
            allowed = f"a name of letters, digits and _, none of {', '.join(TestSource.RESERVED)}"
            check(re.fullmatch(r"\w+", name) and name not in TestSource.RESERVED, "test_sources", name, allowed)
        for name in self.members:
            allowed = f"a name of letters, digits and _ but {MAIN_MEMBER} and {STUDENT}"
            check(
                re.fullmatch(r"\w+", name) is not None and name not in (MAIN_MEMBER, STUDENT), "members", name, allowed
            )
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

    def student_params(self) -> Params:
        """These params as the student trains with: the model section's network, taught by the whole model."""
        train = dataclasses.replace(self.train, distill_weight=self.student.distill_weight)
        return dataclasses.replace(self, members={}, train=train)

    def check_training(self) -> None:
        """Rules across the model and train sections."""
        blocks = BACKBONE_BLOCKS[self.model.backbone]
        freeze = self.train.freeze
        if freeze not in ("none", "backbone") and not any(
            freeze == block or block.startswith(f"{freeze}.") or freeze.startswith(f"{block}.") for block in blocks
        ):
            allowed = f"none, backbone or a block of {self.model.backbone} ({', '.join(blocks)})"
            raise FaceageError(f"train.freeze: {freeze!r} is not allowed; expected {allowed}")
        if self.train.distill_weight > 0 and self.model.head != "classification":
            raise FaceageError("train.distill_weight needs model.head: classification (it compares distributions)")
        if self.student.distill_weight > 0 and self.model.head != "classification":  # members: checked as theirs
            raise FaceageError(
                "student.distill_weight needs model.head: classification in every network (the student learns "
                "the model's age distribution); set student.distill_weight: 0"
            )
        start = self.train.start_size
        if start > self.model.input_size:
            raise FaceageError(f"train.start_size: {start} is above model.input_size ({self.model.input_size})")
        if 0 < start < MIN_INPUT.get(self.model.backbone, 1):
            raise FaceageError(
                f"train.start_size: {self.model.backbone} needs at least {MIN_INPUT[self.model.backbone]} px"
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


SAVED_BEFORE = {"detector": "hog"}  # face settings that models saved before the setting existed used


def saved_faces(values: dict[str, Any], where: str) -> FacesParams:
    """Face settings saved with a model (its checkpoint, its MLflow ``model_config``); a setting added since it
    was saved takes the value it had before (:data:`SAVED_BEFORE`), else the one in faceage's own ``params.yaml``."""
    values = SAVED_BEFORE | values
    missing = {item.name for item in dataclasses.fields(FacesParams)} - set(values)
    if missing and PROJECT_PARAMS.is_file():
        project = dataclasses.asdict(load_params(PROJECT_PARAMS).faces)
        values = {**{name: project[name] for name in missing}, **values}
    return from_dict(FacesParams, values, where)
