"""Test faces as ordinary photos: each crop pasted, turned by up to ``MAX_ANGLE`` degrees and scaled, at a random
place of a larger random background. The pipeline re-finds and re-aligns the faces (decode, detect, align,
predict, end to end); its ages there are compared with its ages on the crops themselves, and its photos/s
with the peer's, which runs its own dlib detection, on the same photos in the same run."""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from benchmarks.peer import peer_predictions
from faceage.ingest import worker_count
from faceage.metrics import bootstrap_interval, with_interval
from faceage.photos import AgeEstimator

PHOTO_SIZE = (1024, 768)
MAX_ANGLE = 20.0
SCALES = (0.6, 1.6)  # of the 200 px crop
RESAMPLES, CONFIDENCE = 1000, 0.95


def make_photo(crop: bytes, rng: np.random.Generator) -> bytes:
    """A JPEG photo with ``crop`` turned, scaled and pasted into a blurred random-colour background."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    background = Image.fromarray(coarse).resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3))
    background = Image.fromarray(np.clip(np.asarray(background) + noise, 0, 255).astype(np.uint8))
    background = background.filter(ImageFilter.GaussianBlur(1))
    with Image.open(io.BytesIO(crop)) as opened:
        face = opened.convert("RGBA")
    side = round(face.width * rng.uniform(*SCALES))
    face = face.resize((side, side), Image.Resampling.BICUBIC)
    face = face.rotate(rng.uniform(-MAX_ANGLE, MAX_ANGLE), Image.Resampling.BICUBIC, expand=True)
    at = (int(rng.integers(0, PHOTO_SIZE[0] - face.width)), int(rng.integers(0, PHOTO_SIZE[1] - face.height)))
    background.paste(face, at, face)
    buffer = io.BytesIO()
    background.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def largest_face_ages(results: list[dict]) -> np.ndarray:
    """The age of each photo's largest face, NaN where none was found."""
    ages = np.full(len(results), np.nan)
    for index, result in enumerate(results):
        faces = result.get("faces") or []
        if faces:
            box_area = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in faces]
            ages[index] = faces[int(np.argmax(box_area))]["age_years"]
    return ages


def mae(true: np.ndarray, predicted: np.ndarray) -> np.ndarray | float:
    return np.abs(predicted - true).mean(axis=-1)


def paired_maes(true: np.ndarray, on_photos: np.ndarray, on_crops: np.ndarray, seed: int) -> dict:
    """MAE on the photos and on the same faces' crops, and their paired difference, with bootstrap intervals."""
    difference = np.abs(on_photos - true) - np.abs(on_crops - true)
    low, high = bootstrap_interval(lambda d, _: d.mean(axis=-1), difference, difference, RESAMPLES, seed, CONFIDENCE)
    return {
        "mae_photos": with_interval(mae, true, on_photos, RESAMPLES, seed, CONFIDENCE),
        "mae_crops_same_faces": with_interval(mae, true, on_crops, RESAMPLES, seed, CONFIDENCE),
        "mae_difference": {
            "value": round(float(difference.mean()), 4),
            "ci_low": round(low, 4),
            "ci_high": round(high, 4),
        },
    }


def photo_benchmark(
    model: Path, test: pd.DataFrame, crops: list[bytes], limit: int | None = None, seed: int = 0
) -> dict:
    """Compare the pipeline on photos made from the test ``crops`` with its own ``test["predicted_age"]`` on
    the crops (``test["true_age"]`` the labels), and time it end to end against the peer (first ``limit`` only)."""
    test, crops = test.iloc[:limit], crops[:limit]
    rng = np.random.default_rng(seed)
    photos = [make_photo(crop, rng) for crop in crops]
    estimator = AgeEstimator(model)
    workers = worker_count(0)
    with tempfile.TemporaryDirectory(prefix="faceage-photos-") as folder:
        paths = [Path(folder) / f"{index:05d}.jpg" for index in range(len(photos))]
        for path, photo in zip(paths, photos, strict=True):
            path.write_bytes(photo)
        started = time.perf_counter()
        results = list(estimator.predict_files(paths, aligned=False, workers=workers, block_size=64))
        seconds = time.perf_counter() - started
    on_photos = largest_face_ages(results)
    found = ~np.isnan(on_photos)
    true, on_crops = test["true_age"].to_numpy(float), test["predicted_age"].to_numpy(float)
    accuracy = paired_maes(true[found], on_photos[found], on_crops[found], seed) if found.any() else {}
    peer = peer_predictions(photos)
    return {
        "photos": len(photos),
        "photo_size": list(PHOTO_SIZE),
        "max_angle": MAX_ANGLE,
        "scales": list(SCALES),
        "detected": int(found.sum()),
        "detection_rate": round(float(found.mean()), 4),
        **accuracy,
        "mae_crops_all": with_interval(mae, true, on_crops, RESAMPLES, seed, CONFIDENCE),
        "photos_per_second": round(len(photos) / seconds, 2),
        "workers": workers,
        "peer_photos_per_second": round(len(photos) / peer["seconds"], 2),
        "peer_faces_detected": peer["faces_detected"],
        "peer_mae_photos": round(float(mae(true, peer["ages"])), 4),
        "speed_ratio": round(peer["seconds"] / seconds, 2),
    }
