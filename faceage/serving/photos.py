"""Photos in, one age per face out: read and decode each photo, find and align its faces, predict in batches.

Finding faces is the slow part and runs in worker processes; the network then predicts every chip of a
block of photos at once. Only two blocks are in memory at a time, however many photos there are.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from faceage.data.chunks import mapped_ahead
from faceage.data.faces import Face, face_finder
from faceage.data.images import ImageDecodeError, decode_image, decode_photo
from faceage.errors import FaceageError
from faceage.model.age_model import UNTOUCHED_DLIB, UNTOUCHED_DLIB_DATASET, untouched_dlib
from faceage.model.checkpoint import load_model
from faceage.model.intervals import interval_text, over_decisions
from faceage.params import PROJECT_PARAMS, load_params, saved_faces
from faceage.runtime import select_device, worker_pool
from faceage.sections import MAX_AGE, FacesParams
from faceage.serving.engines import OnnxEngine, TorchEngine, check_flip

SPECIAL_FILES = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


@dataclass(frozen=True)
class PhotoFaces:
    """What one photo holds: its faces (aligned chips), or why it could not be read."""

    name: str
    faces: list[Face] = field(default_factory=list)
    error: str | None = None


def find_faces(
    name: str, data: bytes, chip_size: int, faces: FacesParams, aligned: bool = False, landmarks: Path | None = None
) -> PhotoFaces:
    """Decode ``data`` and cut out every face; an ``aligned`` image is taken as one ready crop. Images over
    ``faces.max_megapixels`` are refused from their header."""
    try:
        if aligned:
            return PhotoFaces(name, [Face(None, None, decode_image(data, chip_size, faces.max_pixels))])
        photo = decode_photo(data, faces.max_pixels)
        return PhotoFaces(name, face_finder(faces, landmarks).find(photo, chip_size))
    except ImageDecodeError as error:
        return PhotoFaces(name, error=f"{error.reason.replace('_', ' ')}: {error.detail}")


def read_and_find_faces(job: tuple[str, int, FacesParams, bool]) -> PhotoFaces:
    """:func:`find_faces` on a file; a file that cannot be read, or is not a regular file (a FIFO or a device
    would block or never end), is reported, not raised."""
    path, chip_size, faces, aligned = job
    try:
        kind = os.stat(path).st_mode
        if not stat.S_ISREG(kind):
            return PhotoFaces(path, error=f"not a regular file ({SPECIAL_FILES.get(stat.S_IFMT(kind), 'special')})")
        data = Path(path).read_bytes()
    except OSError as error:
        return PhotoFaces(path, error=f"cannot read file: {error.strerror or error}")
    return find_faces(path, data, chip_size, faces, aligned)


def years_and_months(age: float) -> str:
    """``34 years 2 months`` for 34.2."""
    years, months = divmod(round(age * 12), 12)
    return f"{years} year{'s' * (years != 1)} {months} month{'s' * (months != 1)}"


class AgeEstimator:
    """A trained model (a checkpoint's path, an ONNX graph written by ``faceage export``, run by ONNX Runtime, or
    ``dlib`` for dlib's untouched age model), the face settings to use with it (by default those saved with
    it) and whether each age is averaged with its mirror image's (``flip``; by default as the model's intervals
    were calibrated, :attr:`~faceage.model.age_model.AgeModel.calibrated_flip`); ``bf16`` as
    :class:`~faceage.serving.engines.TorchEngine` takes it (an ONNX graph runs as it was exported)."""

    def __init__(
        self,
        model_path: str | Path,
        faces: FacesParams | None = None,
        flip: bool | None = None,
        device: torch.device | None = None,
        bf16: bool | None = None,
    ):
        device = device or select_device()
        self.engine: TorchEngine | OnnxEngine
        if str(model_path) == UNTOUCHED_DLIB:
            self.engine = TorchEngine(untouched_dlib().to(device), device, bf16)
            self.dataset = UNTOUCHED_DLIB_DATASET
            self.faces = faces or load_params(PROJECT_PARAMS).faces  # no checkpoint: the project's settings
            self.run_id = None
        elif Path(model_path).suffix == ".onnx":
            self.engine = OnnxEngine(model_path)
            info = self.engine.info
            if flip is not None:
                check_flip(info.flip, flip)
            if bf16:
                raise FaceageError(f"{model_path}: an ONNX graph runs as it was exported: drop --bf16")
            self.faces = faces or (saved_faces(info.faces, f"{model_path}: faces") if info.faces else None)
            self.dataset, self.run_id = info.dataset, info.run_id
        else:
            model, checkpoint = load_model(model_path, device)
            self.engine = TorchEngine(model, device, bf16)
            self.dataset = checkpoint.dataset  # None for a checkpoint that predates the record
            self.faces = faces or checkpoint.faces
            self.run_id = checkpoint.run_id  # the MLflow run that trained it
        if self.faces is None:
            raise FaceageError(f"{model_path} holds no face settings: give them (the faces section of params.yaml)")
        self.flip = self.engine.flip if flip is None else flip

    @property
    def synthetic(self) -> bool:
        """Whether the model learnt only from faces the demo drew: its ages of real photos mean nothing."""
        return (self.dataset or {}).get("kind") == "synthetic"

    @property
    def chip_size(self) -> int:
        """Side of the face chips the model was trained on (``data.image_size`` at training)."""
        return self.engine.chip_size

    @property
    def level(self) -> float | None:
        """The level of the model's intervals; ``None`` for a model without (dlib's untouched model, or one
        trained before intervals)."""
        return self.engine.level

    def check_over(self, over: float | None) -> None:
        """One line when ``over`` is not an age, or is asked of a model without intervals."""
        if over is not None and not (isinstance(over, int | float) and 0 <= over <= MAX_AGE):
            raise FaceageError(f"over: {over!r} is not an age; expected a number of years in 0..{MAX_AGE}")
        if over is not None and self.level is None:
            raise FaceageError("--over needs a model with calibrated intervals; this one has none")

    def results(self, photos: Sequence[PhotoFaces], batch_size: int = 64, over: float | None = None) -> list[dict]:
        """One result per photo: ``file``, ``faces`` (``face``, ``box``, ``score``, ``age_years``, ``age`` and,
        with intervals, ``age_low``, ``age_high`` and ``interval`` (the text), with ``over`` the decision
        whether the face is at least ``over`` years old, and with a gender head, ``female_probability``) or
        ``error``."""
        self.check_over(over)
        results = []
        for photo, outputs in zip(
            photos, self.face_outputs([photo.faces for photo in photos], batch_size), strict=True
        ):
            if photo.error is not None:
                results.append({"file": photo.name, "error": photo.error})
                continue
            faces = [
                face_result(index, face, values, self.level, over)
                for index, (face, values) in enumerate(zip(photo.faces, outputs, strict=True))
            ]
            results.append({"file": photo.name, "faces": faces})
        return results

    def face_outputs(self, groups: Sequence[Sequence[Face]], batch_size: int = 64) -> list[list[dict[str, float]]]:
        """The model's outputs for each face of each group (a photo's faces, a frame's), all predicted at once."""
        chips = [face.chip for faces in groups for face in faces]
        outputs = self.engine.outputs(np.stack(chips), self.flip, batch_size) if chips else {}
        grouped, row = [], 0
        for faces in groups:
            grouped.append(
                [{key: float(column[row + i]) for key, column in outputs.items()} for i in range(len(faces))]
            )
            row += len(faces)
        return grouped

    def predict_files(
        self, paths: Iterable[str], aligned: bool, workers: int, block_size: int, over: float | None = None
    ) -> Iterator[dict]:
        """:meth:`results` for each file in ``paths``, in order; faces are found by ``workers`` processes."""
        self.check_over(over)
        jobs = ((str(path), self.chip_size, self.faces, aligned) for path in paths)
        with worker_pool(workers) as pool:
            for _, found in mapped_ahead(pool, read_and_find_faces, jobs, block_size):
                yield from self.results(found, over=over)


def face_result(index: int, face: Face, outputs: dict[str, float], level: float | None, over: float | None) -> dict:
    """The JSON-ready result for one face: its box and score, and its :func:`age_fields`."""
    result: dict = {"face": index, "box": list(face.box) if face.box else None, "score": face.score}
    return result | age_fields(outputs, level, over)


def age_fields(outputs: dict[str, float], level: float | None, over: float | None) -> dict:
    """A face's age in years and in words; with a ``level``, its interval (and with ``over``, the decision);
    with a gender head, the probability of female."""
    result: dict = {"age_years": round(outputs["age"], 2)}
    result["age"] = years_and_months(outputs["age"])
    if level is not None:
        low, high = outputs["age_low"], outputs["age_high"]
        result.update(age_low=round(low, 2), age_high=round(high, 2))
        result["interval"] = f"{level * 100:g} %: {interval_text(low, high)}"
        if over is not None:
            result["over"] = str(over_decisions(low, high, over))
    if "female_probability" in outputs:
        result["female_probability"] = round(outputs["female_probability"], 4)
    return result


def input_files(paths: Sequence[Path], media: Callable[[str], bool]) -> list[Path]:
    """Files named directly, and the files below named folders whose names ``media`` accepts (recursively,
    sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and media(p.name))
        else:
            found.append(path)
    return found
