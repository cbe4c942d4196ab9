"""Test faces as ordinary photos: each crop pasted, turned by up to ``MAX_ANGLE`` degrees and scaled, at a random
place of a larger random background. The pipeline re-finds and re-aligns the faces (decode, detect, align,
predict, end to end); its ages there are compared with its ages on the crops themselves, and its photos/s
with the peer's, which runs its own dlib detection, on the same photos in the same run.

Its speeds alone (each engine end to end, the per-step profile, the decode-only limit, the peer), on photos made
from the archive's first crops:

    python -m benchmarks.photos --model models/model.pt [--source ../shared/datasets/UTKFace.tar.gz] [--photos 200]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from benchmarks.dataset import add_source_argument, first_images
from benchmarks.peer import peer_predictions
from benchmarks.profile import time_engines
from benchmarks.workspace import set_params
from faceage.data.ingest import worker_count
from faceage.evaluation.metrics import bootstrap_interval, with_interval
from faceage.serving.export import export_model

PHOTO_SIZE = (1024, 768)
MAX_ANGLE = 20.0
SCALES = (0.6, 1.6)  # of the 200 px crop
RESAMPLES, CONFIDENCE = 1000, 0.95


def coarse_background(rng: np.random.Generator) -> Image.Image:
    """A blurred random-colour field with sensor noise."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    background = Image.fromarray(coarse).resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3))
    background = Image.fromarray(np.clip(np.asarray(background) + noise, 0, 255).astype(np.uint8))
    return background.filter(ImageFilter.GaussianBlur(1))


def textured_background(rng: np.random.Generator) -> Image.Image:
    """Stripes or checks of two random colours at a random scale and angle, over a brightness gradient."""
    height, width = PHOTO_SIZE[1], PHOTO_SIZE[0]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(8, 80)
    u = (cols * np.cos(angle) + rows * np.sin(angle)) / period
    v = (rows * np.cos(angle) - cols * np.sin(angle)) / period
    pattern = (np.floor(u) % 2) if rng.random() < 0.5 else (np.floor(u) + np.floor(v)) % 2
    colours = rng.integers(0, 256, (2, 3)).astype(np.float32)
    pixels = colours[0] + pattern[..., None] * (colours[1] - colours[0])
    pixels *= np.linspace(rng.uniform(0.5, 1), rng.uniform(0.8, 1.2), width)[None, :, None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def paste_face(background: Image.Image, crop: bytes, rng: np.random.Generator) -> Image.Image:
    """``crop`` scaled, turned and pasted at a random place of ``background``."""
    with Image.open(io.BytesIO(crop)) as opened:
        face = opened.convert("RGBA")
    side = round(face.width * rng.uniform(*SCALES))
    face = face.resize((side, side), Image.Resampling.BICUBIC)
    face = face.rotate(rng.uniform(-MAX_ANGLE, MAX_ANGLE), Image.Resampling.BICUBIC, expand=True)
    at = (int(rng.integers(0, PHOTO_SIZE[0] - face.width)), int(rng.integers(0, PHOTO_SIZE[1] - face.height)))
    background.paste(face, at, face)
    return background


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_photo(crop: bytes, rng: np.random.Generator) -> bytes:
    """A JPEG photo with ``crop`` turned, scaled and pasted into a blurred random-colour background."""
    return jpeg(paste_face(coarse_background(rng), crop, rng), 92)


def make_harsh_photo(crop: bytes, rng: np.random.Generator) -> bytes:
    """A photo less like the training crops than :func:`make_photo`'s: a textured or coloured background, then
    the whole photo blurred (sigma 0-2 px), noised (standard deviation 0-10 levels) and saved as JPEG at
    quality 30-90."""
    background = textured_background(rng) if rng.random() < 0.5 else coarse_background(rng)
    photo = paste_face(background, crop, rng).filter(ImageFilter.GaussianBlur(rng.uniform(0, 2)))
    pixels = np.asarray(photo, dtype=np.float32) + rng.normal(0, rng.uniform(0, 10), (PHOTO_SIZE[1], PHOTO_SIZE[0], 3))
    return jpeg(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), int(rng.integers(30, 91)))


def write_photo_source(path: Path, names: list[str], crops: list[bytes], seed: int) -> Path:
    """A ``.tar`` of :func:`make_harsh_photo` photos of ``crops``, each under its crop's (UTKFace) file name, so
    that ingest reads the labels as it does the crops'."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w") as tar:
        for name, crop in zip(names, crops, strict=True):
            photo = make_harsh_photo(crop, rng)
            member = tarfile.TarInfo(f"photos/{PurePosixPath(name).name}")
            member.size = len(photo)
            tar.addfile(member, io.BytesIO(photo))
    return path


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


def written(photos: list[bytes], folder: Path) -> list[Path]:
    """The photos written into ``folder`` as numbered JPEG files, in order."""
    paths = [folder / f"{index:05d}.jpg" for index in range(len(photos))]
    for path, photo in zip(paths, photos, strict=True):
        path.write_bytes(photo)
    return paths


def against_peer(engines: dict[str, dict], peer_seconds: float) -> None:
    """Replace each engine's ``seconds`` by its ``speed_ratio``: how many times faster than the peer it was."""
    for engine in engines.values():
        engine["speed_ratio"] = round(peer_seconds / engine.pop("seconds"), 2)


def photo_benchmark(
    models: dict[str, Path],
    test: pd.DataFrame,
    crops: list[bytes],
    limit: int | None = None,
    seed: int = 0,
    profile_photos: int = 200,
) -> dict:
    """Compare the pipeline on photos made from the test ``crops`` with its own ``test["predicted_age"]`` on
    the crops (``test["true_age"]`` the labels), and time it end to end against the peer (first ``limit`` only)
    under each engine of ``models`` (name -> checkpoint or exported graph; the first's ages are scored), with a
    per-step profile of the first ``profile_photos`` photos under each and the limit decoding alone sets."""
    test, crops = test.iloc[:limit], crops[:limit]
    rng = np.random.default_rng(seed)
    photos = [make_photo(crop, rng) for crop in crops]
    workers = worker_count(0)
    with tempfile.TemporaryDirectory(prefix="faceage-photos-") as folder:
        paths = written(photos, Path(folder))
        engines, results, decode_only = time_engines(models, paths, workers, profile_photos)
    on_photos = largest_face_ages(next(iter(results.values())))
    found = ~np.isnan(on_photos)
    true, on_crops = test["true_age"].to_numpy(float), test["predicted_age"].to_numpy(float)
    accuracy = paired_maes(true[found], on_photos[found], on_crops[found], seed) if found.any() else {}
    peer = peer_predictions(photos)
    against_peer(engines, peer["seconds"])
    first = next(iter(engines.values()))
    return {
        "photos": len(photos),
        "photo_size": list(PHOTO_SIZE),
        "max_angle": MAX_ANGLE,
        "scales": list(SCALES),
        "detected": int(found.sum()),
        "detection_rate": round(float(found.mean()), 4),
        **accuracy,
        "mae_crops_all": with_interval(mae, true, on_crops, RESAMPLES, seed, CONFIDENCE),
        "photos_per_second": first["photos_per_second"],
        "workers": workers,
        "peer_photos_per_second": round(len(photos) / peer["seconds"], 2),
        "peer_faces_detected": peer["faces_detected"],
        "peer_mae_photos": round(float(mae(true, peer["ages"])), 4),
        "speed_ratio": first["speed_ratio"],
        "engines": engines,
        "decode_only_photos_per_second": decode_only,
        "profile_photos": min(profile_photos, len(photos)),
    }


PHOTO_SOURCES = {"photos_val": "val", "photos_test": "test"}  # test source name -> the split its faces come from


def add_photo_sources(
    repo: Path,
    files: dict[str, bytes],
    rows: pd.DataFrame,
    limit: int,
    seed: int = 0,
    kinds: dict[str, str] = PHOTO_SOURCES,
) -> dict:
    """Make the first ``limit`` validation and test faces of ``rows`` (manifest and split, by ``source_path``)
    into :func:`make_harsh_photo` photos, one archive per split beside ``repo``, and make them ``repo``'s
    test sources (``kinds``: name -> split), found and aligned at ingest. Choose on ``photos_val``;
    ``photos_test`` is reported."""
    sources = {}
    for name, split in kinds.items():
        names = rows.loc[rows["split"] == split, "source_path"].iloc[:limit].tolist()
        path = write_photo_source(repo.parent / f"{name}.tar", names, [files[n] for n in names], seed)
        sources[name] = {"source": str(path), "align": True}
    set_params(repo, {"test_sources": sources})
    return sources


def first_photos(source: Path, count: int, seed: int = 0) -> list[bytes]:
    """:func:`make_photo` photos of the first ``count`` crops of the data set at ``source``."""
    rng = np.random.default_rng(seed)
    return [make_photo(crop, rng) for crop in first_images(source, count)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The photo benchmark's speeds alone, on the archive's first crops.")
    parser.add_argument("--model", type=Path, required=True, help="trained checkpoint")
    add_source_argument(parser)
    parser.add_argument("--photos", type=int, default=200, help="crops made into photos (the archive's first)")
    args = parser.parse_args(argv)
    photos = first_photos(args.source, args.photos)
    with tempfile.TemporaryDirectory(prefix="faceage-profile-") as folder:
        graph = Path(folder) / "model.onnx"
        export_model(args.model, graph, "onnx")
        paths = written(photos, Path(folder))
        models = {"pytorch": args.model, "onnxruntime": graph}
        engines, results, decode_only = time_engines(models, paths, worker_count(0), len(paths))
    peer = peer_predictions(photos)
    against_peer(engines, peer["seconds"])
    for name, engine in engines.items():
        engine["faces_found"] = sum(bool(result.get("faces")) for result in results[name])
    report = {"photos": len(photos), "engines": engines, "decode_only_photos_per_second": decode_only}
    report["peer_photos_per_second"] = round(len(photos) / peer["seconds"], 2)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
