"""Face detectors: each takes an RGB image and the smallest face side wanted (pixels) and returns the faces' boxes,
framed as dlib's HOG detector frames them, with the detector's scores."""

from __future__ import annotations

import numpy as np
import torch

from faceage.errors import FaceageError
from faceage.sections import FacesParams

Boxes = list[tuple[np.ndarray, float]]  # (left, top, right, bottom) in pixels, and the detector's score


class HogDetector:
    """dlib's HOG frontal face detector: boxes scoring above ``faces.min_score``. It finds faces of about 80 px
    and up (40 px with ``faces.upsample`` 1), whatever the smallest side asked for."""

    LICENCE = "dlib's HOG face detector (part of dlib): Boost Software License 1.0"

    def __init__(self, params: FacesParams):
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.upsample = params.upsample
        self.min_score = params.min_score

    def __call__(self, image: np.ndarray, min_side: float) -> Boxes:
        boxes, scores, _ = self.detector.run(image, self.upsample, self.min_score)
        return [
            (np.array([box.left(), box.top(), box.right(), box.bottom()], dtype=float), float(score))
            for box, score in zip(boxes, scores, strict=True)
        ]


class MtcnnDetector:
    """MTCNN (Zhang et al. 2016) with facenet-pytorch's weights (MIT, inside its wheel): faces whose probability
    passes ``faces.mtcnn_thresholds`` at its three stages, down to ``min_side`` pixels (12 at least, its smallest
    window). Its boxes, brow to chin, are reframed as dlib's HOG detector frames faces, the boxes dlib's landmark
    model was trained on: square, ``SIDE`` times as wide, centred ``DROP`` of the height lower. Fitted on the
    detection benchmark's first 200 photos, on photos 200-400 this brings the landmarks to 0.5 % of the eye
    distance from those placed on HOG's boxes (median; 1.7 % from MTCNN's own boxes)."""

    LICENCE = "MTCNN face detector: code and weights from the facenet-pytorch 2.5.3 wheel, MIT"
    PYRAMID_STEP = 0.709  # the image pyramid's scale step the networks were trained with
    SIDE, DROP = 1.04, 0.05

    def __init__(self, params: FacesParams):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as error:
            raise FaceageError(
                "faces.detector: mtcnn needs the facenet-pytorch package (pip install facenet-pytorch==2.5.3)"
            ) from error
        # channels-last: torch's CPU max pooling runs 5-15x faster on it, which was a third of the detection time
        self.networks = MTCNN(device=torch.device("cpu")).to(memory_format=torch.channels_last)
        self.thresholds = list(params.mtcnn_thresholds)

    def __call__(self, image: np.ndarray, min_side: float) -> Boxes:
        from facenet_pytorch.models.utils.detect_face import detect_face

        min_side = max(12.0, min_side)
        if min(image.shape[:2]) < min_side:
            return []  # no window fits: MTCNN's pyramid would be empty
        networks = self.networks
        with torch.inference_mode():
            (boxes,), _ = detect_face(
                image[None],
                min_side,
                networks.pnet,
                networks.rnet,
                networks.onet,
                self.thresholds,
                self.PYRAMID_STEP,
                torch.device("cpu"),
            )
        return [(self.reframed(box[:4]), float(box[4])) for box in np.asarray(boxes, dtype=float).reshape(-1, 5)]

    @classmethod
    def reframed(cls, box: np.ndarray) -> np.ndarray:
        """MTCNN's box (left, top, right, bottom) as HOG would frame the face."""
        width, height = box[2] - box[0], box[3] - box[1]
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2 + cls.DROP * height])
        half = cls.SIDE * width / 2
        return np.concatenate([centre - half, centre + half])


DETECTORS = {"hog": HogDetector, "mtcnn": MtcnnDetector}


def no_face_reason(params: FacesParams) -> str:
    """Why a photo gave no face: what was searched for."""
    hog = params.detector == "hog"
    passing = f"min_score {params.min_score}" if hog else f"mtcnn_thresholds {list(params.mtcnn_thresholds)}"
    return f"no face of faces.min_size {params.min_size} px or more passing faces.{passing} ({params.detector})"
