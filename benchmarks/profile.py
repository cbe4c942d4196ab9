"""Where a photo's time goes: read, decode, detect, landmarks and chip, network, in ms per photo (one process, one
photo at a time), beside each engine's photos/s end to end and the limit decoding alone sets (photos/s of
reading and decoding with one process per core)."""

from __future__ import annotations

import functools
import multiprocessing
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from faceage.data.faces import face_finder
from faceage.data.images import decode_photo
from faceage.serving.photos import AgeEstimator

STEPS = ("read", "decode", "detect", "landmarks_and_chip", "network")


def photo_profile(estimator: AgeEstimator, paths: list[Path]) -> dict:
    """Mean ms per photo of each of :data:`STEPS` for ``estimator`` on the photos at ``paths``, and their total."""
    finder = face_finder(estimator.faces)
    spent = dict.fromkeys(STEPS, 0.0)
    for path in tqdm(paths, desc="profile", unit="photo"):
        marks = [time.perf_counter()]
        data = path.read_bytes()
        marks.append(time.perf_counter())
        photo = decode_photo(data, estimator.faces.max_pixels)
        marks.append(time.perf_counter())
        detections = finder.detect(photo)
        marks.append(time.perf_counter())
        faces = finder.align(photo, detections, estimator.chip_size) if detections else []
        marks.append(time.perf_counter())
        if faces:
            estimator.engine.outputs(np.stack([face.chip for face in faces]), estimator.flip, len(faces))
        marks.append(time.perf_counter())
        for step, seconds in zip(STEPS, np.diff(marks), strict=True):
            spent[step] += seconds
    per_photo = {step: round(seconds / len(paths) * 1000, 2) for step, seconds in spent.items()}
    return {"ms_per_photo": per_photo, "total_ms_per_photo": round(sum(per_photo.values()), 2)}


def read_and_decode(path: Path, max_pixels: int) -> None:
    decode_photo(path.read_bytes(), max_pixels)


def decode_limit(paths: list[Path], max_pixels: int, workers: int) -> float:
    """Photos per second of reading and decoding ``paths`` alone in ``workers`` processes: what no end-to-end
    speed can pass."""
    with multiprocessing.Pool(workers) as pool:
        pool.map(functools.partial(read_and_decode, max_pixels=max_pixels), paths[:workers])  # workers started
        started = time.perf_counter()
        pool.map(functools.partial(read_and_decode, max_pixels=max_pixels), paths, chunksize=8)
        return round(len(paths) / (time.perf_counter() - started), 1)


def time_engines(
    models: dict[str, Path], paths: list[Path], workers: int, profile_photos: int
) -> tuple[dict[str, dict], dict[str, list[dict]], float]:
    """For each model (name -> checkpoint or exported graph): ``faceage predict``'s photos/s on ``paths`` end to
    end (with the seconds it took) and :func:`photo_profile` of the first ``profile_photos``; each one's results;
    and the :func:`decode_limit`."""
    engines, results = {}, {}
    for name, model in models.items():
        estimator = AgeEstimator(model)
        started = time.perf_counter()
        results[name] = list(estimator.predict_files(paths, aligned=False, workers=workers, block_size=64))
        seconds = time.perf_counter() - started
        engines[name] = {"photos_per_second": round(len(paths) / seconds, 2), "seconds": seconds}
        engines[name]["profile"] = photo_profile(estimator, paths[:profile_photos])
    return engines, results, decode_limit(paths, estimator.faces.max_pixels, workers)
