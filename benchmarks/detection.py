"""Face-finding levers, in one run: for each detector (``faces.detector``), detection side (``faces.max_side``)
and smallest face (``faces.min_size``), with and without the turned search (``faces.rotations``), the share of
photos whose face is found and the ms per photo (one process, one thread), on UTKFace crops pasted into photos as
the photo benchmark makes them (:func:`benchmarks.photos.make_photo`).

    python -m benchmarks.detection [--source ../shared/datasets/UTKFace.tar.gz] [--photos 200] [--sides 1280 640]
        [--detectors hog mtcnn] [--min-sizes 32 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Sequence

import torch
from tqdm import tqdm

from benchmarks.dataset import add_source_argument
from benchmarks.photos import first_photos
from faceage.data.detectors import DETECTORS
from faceage.data.faces import FaceFinder
from faceage.data.images import decode_photo
from faceage.params import PROJECT_PARAMS, load_params
from faceage.sections import FacesParams

SIDES = (1280, 960, 800, 640, 576, 512)
CHIP_SIZE = 128


def detection_levers(
    photos: list[bytes],
    faces: FacesParams,
    detectors: Sequence[str],
    sides: Sequence[int],
    min_sizes: Sequence[int],
) -> list[dict]:
    """One row per detector, detection side, smallest face and turned search (on or off): photos with a face
    found, and ms per photo."""
    decoded = [decode_photo(photo, faces.max_pixels) for photo in photos]
    rows = []
    for detector, side, min_size in itertools.product(detectors, sides, min_sizes):
        for rotations in (faces.rotations, ()):
            setting = {"detector": detector, "max_side": side, "min_size": min_size, "rotations": rotations}
            finder = FaceFinder(dataclasses.replace(faces, **setting))
            started = time.perf_counter()
            found = sum(bool(finder.find(photo, CHIP_SIZE)) for photo in tqdm(decoded, desc=f"{detector} {side}"))
            seconds = time.perf_counter() - started
            rows.append(
                setting
                | {
                    "rotations": list(rotations),
                    "detection_rate": round(found / len(photos), 4),
                    "ms_per_photo": round(seconds / len(photos) * 1000, 1),
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_argument(parser)
    parser.add_argument("--photos", type=int, default=200, help="crops made into photos (the archive's first)")
    parser.add_argument("--sides", type=int, nargs="+", default=SIDES, help="detection sides to try")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=list(DETECTORS))
    parser.add_argument("--min-sizes", type=int, nargs="+", help="smallest faces to try (default: faces.min_size)")
    args = parser.parse_args(argv)
    photos = first_photos(args.source, args.photos)
    faces = load_params(PROJECT_PARAMS).faces
    torch.set_num_threads(1)
    rows = detection_levers(photos, faces, args.detectors, args.sides, args.min_sizes or [faces.min_size])
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
