"""Decode every image of a data source once into one uint8 array, and account for every file."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from faceage.data.chunks import blocks
from faceage.data.detectors import no_face_reason
from faceage.data.faces import face_finder, largest
from faceage.data.images import (
    NOT_AN_IMAGE,
    UNREADABLE_IMAGE,
    ImageDecodeError,
    decode_image,
    decode_photo,
)
from faceage.data.layouts import (
    CONFLICTING_LABELS,
    MALFORMED_LABEL,
    MALFORMED_NAME,
    NO_LABEL,
    Label,
    LabelError,
    Layout,
    detect_layout,
)
from faceage.data.manifest import (
    DATASET_FILE,
    IMAGES_FILE,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    describe_dataset,
)
from faceage.data.sources import LISTING_OUTCOMES, Entry, Source, open_source
from faceage.errors import FaceageError
from faceage.runtime import worker_pool
from faceage.sections import DataParams, FacesParams

log = logging.getLogger(__name__)

KEPT = "kept"
LABEL_FILE = "label_file"
AGE_OUT_OF_RANGE = "age_out_of_range"
DUPLICATE = "duplicate"
NO_FACE = "no_face"
MULTIPLE_FACES = "multiple_faces"
OUTCOMES = (
    KEPT,
    LABEL_FILE,
    MALFORMED_NAME,
    MALFORMED_LABEL,
    CONFLICTING_LABELS,
    NO_LABEL,
    AGE_OUT_OF_RANGE,
    NOT_AN_IMAGE,
    UNREADABLE_IMAGE,
    NO_FACE,
    MULTIPLE_FACES,
    DUPLICATE,
    *LISTING_OUTCOMES,
)

REJECTED_FILE = "rejected.csv"
UNMATCHED_FILE = "label_rows_without_image.csv"  # label rows that name no file, or several
LOGGED_PER_REASON = 10  # rejected files logged one by one per reason; rejected.csv lists them all
BLOCK_SIZE = 1024  # files held in memory at once while decoding; does not change results
COPY_BYTES = 16 * 2**20  # read and written at a time when the rows become the .npy


@dataclass(frozen=True)
class Decoded:
    """A worker's answer for one file."""

    name: str
    content_hash: str
    pixels: np.ndarray | None
    reason: str | None = None  # why it could not be decoded; plain strings cross process boundaries
    detail: str = ""
    faces: int = 1  # faces found, when aligning


def _decode(job: tuple[str, bytes, DataParams, FacesParams]) -> Decoded:
    """Decode one file; with ``data.align``, find its faces and keep the aligned chip of one."""
    name, content, data, faces = job
    content_hash = hashlib.sha256(content).hexdigest()
    try:
        if not data.align:
            return Decoded(name, content_hash, decode_image(content, data.image_size, faces.max_pixels))
        found = face_finder(faces).find(decode_photo(content, faces.max_pixels), data.image_size)
    except ImageDecodeError as error:
        return Decoded(name, content_hash, None, error.reason, error.detail)
    if not found:
        return Decoded(name, content_hash, None, NO_FACE, no_face_reason(faces))
    if len(found) > 1 and data.multiple_faces == "reject":
        return Decoded(name, content_hash, None, MULTIPLE_FACES, f"{len(found)} faces (data.multiple_faces: reject)")
    return Decoded(name, content_hash, largest(found).chip, faces=len(found))


def worker_count(requested: int) -> int:
    """``requested`` processes, or one per usable core when it is 0."""
    return requested if requested > 0 else len(os.sched_getaffinity(0))


class Ledger:
    """The outcome of every entry of a source; rejected entries are listed with their reason and the first
    :data:`LOGGED_PER_REASON` of each reason are logged."""

    def __init__(self, skipped: list[Entry]):
        self.outcomes: dict[str, str] = {}
        self.rejected: list[dict] = []
        self.rejections: Counter[str] = Counter()
        self.skipped = Counter(entry.reason for entry in skipped)
        for entry in skipped:  # not read: links, FIFOs, repeated names, encrypted or oversized members
            self._list(entry.name, entry.reason, entry.detail)

    def keep(self, name: str, outcome: str = KEPT) -> None:
        self.outcomes[name] = outcome

    def reject(self, name: str, reason: str, detail: str) -> None:
        self.outcomes[name] = reason
        self._list(name, reason, detail)

    def _list(self, name: str, reason: str, detail: str) -> None:
        self.rejected.append({"path": name, "reason": reason, "detail": detail})
        self.rejections[reason] += 1
        if self.rejections[reason] <= LOGGED_PER_REASON:
            log.warning("skipped %s: %s (%s)", name, reason, detail)

    def counts(self) -> Counter[str]:
        """Entries per outcome."""
        return Counter(self.outcomes.values()) + self.skipped

    def write(self, path: Path) -> None:
        """Write ``rejected.csv`` and log how many of each reason were not logged one by one."""
        for reason, count in self.rejections.items():
            if count > LOGGED_PER_REASON:
                log.warning("skipped %d more files as %s: see %s", count - LOGGED_PER_REASON, reason, path)
        pd.DataFrame(self.rejected, columns=["path", "reason", "detail"]).to_csv(path, index=False)


def ingest(params: DataParams, out_dir: str | Path, faces: FacesParams, allow_empty: bool = False) -> dict:
    """Ingest ``params.source`` into ``out_dir`` (images, manifest, rejected files); return the report. A
    source with no usable image is an error unless ``allow_empty`` (a test source, which may then be empty).

    Every entry of the source gets exactly one outcome from :data:`OUTCOMES`; all but ``kept`` and
    ``label_file`` are listed with their reason in ``rejected.csv``. With ``params.align`` each image's
    faces are found with ``faces`` settings and the aligned chip of the largest is kept (or the image is
    rejected as ``multiple_faces``, by ``params.multiple_faces``).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = open_source(params.source)
    names = source.names()
    layout = detect_layout(source, names)
    files = len(names) + len(source.skipped)
    log.info("%s: %d entries, layout %s", params.source, files, layout.name)
    ledger = Ledger(source.skipped)
    labels = _labels(names, layout, params, ledger)
    kept, several_faces = _decode_all(source, labels, params, faces, out_dir, ledger)

    counts = ledger.counts()
    if sum(counts.values()) != files:
        raise RuntimeError(f"ingest accounted for {sum(counts.values())} of {files} entries")
    ledger.write(out_dir / REJECTED_FILE)
    _write_unmatched(layout.unmatched_rows, out_dir / UNMATCHED_FILE)
    dataset = describe_dataset(params.source, source.synthetic)
    (out_dir / DATASET_FILE).write_text(json.dumps(dataset) + "\n")
    seconds = time.perf_counter() - started
    log.info("kept %d of %d entries in %.1f s", kept, files, seconds)
    if not kept and not allow_empty:
        raise FaceageError(f"no usable image in {params.source}: see {out_dir / REJECTED_FILE} for each file's reason")
    return {
        "source": str(params.source),
        "dataset": dataset,
        "layout": layout.name,
        "files": files,
        "outcomes": {outcome: counts.get(outcome, 0) for outcome in OUTCOMES},
        "label_rows_without_image": len(layout.unmatched_rows),
        "aligned": params.align,
        "multiple_faces_kept_largest": several_faces,
        "image_size": params.image_size,
        "array_megabytes": round((out_dir / IMAGES_FILE).stat().st_size / 2**20, 1),
        "seconds": round(seconds, 2),
        "images_per_second": round(kept / seconds, 1) if seconds > 0 else 0.0,
        "workers": worker_count(params.workers),
    }


def _labels(names: list[str], layout: Layout, params: DataParams, ledger: Ledger) -> dict[str, Label]:
    """The label of each file that has one within the age range; the others get their outcome."""
    labels: dict[str, Label] = {}
    for name in names:
        if name in layout.label_files:
            ledger.keep(name, LABEL_FILE)
            continue
        try:
            label = layout.label(name)
        except LabelError as error:
            ledger.reject(name, error.reason, error.detail)
            continue
        if params.min_age <= label.age <= params.max_age:
            labels[name] = label
        else:
            ledger.reject(name, AGE_OUT_OF_RANGE, f"age {label.age} outside {params.min_age}..{params.max_age}")
    return labels


def _decode_all(
    source: Source, labels: dict[str, Label], params: DataParams, faces: FacesParams, out_dir: Path, ledger: Ledger
) -> tuple[int, int]:
    """Decode the labelled files in worker processes, a block at a time, into the image array and the
    manifest in ``out_dir``, both written as they come; return how many images were kept and how many of
    them had several faces."""
    kept, several_faces = 0, 0
    first_with_hash: dict[str, str] = {}
    jobs = ((name, content, params, faces) for name, content in source.read(labels))
    with (
        ArrayWriter(out_dir / IMAGES_FILE, (params.image_size, params.image_size, 3)) as images,
        (out_dir / MANIFEST_FILE).open("w", newline="") as manifest_file,
        worker_pool(worker_count(params.workers)) as pool,
        tqdm(total=len(labels), desc="ingest", unit="img", disable=None) as progress,
    ):
        manifest = csv.writer(manifest_file, lineterminator="\n")
        manifest.writerow(MANIFEST_COLUMNS)
        for block in blocks(jobs, BLOCK_SIZE):
            for result in pool.imap(_decode, block, chunksize=16):
                progress.update()
                if result.reason is not None:
                    ledger.reject(result.name, result.reason, result.detail)
                elif result.content_hash in first_with_hash:
                    first = first_with_hash[result.content_hash]
                    ledger.reject(result.name, DUPLICATE, f"same bytes as {first} (age {labels[first].age})")
                else:
                    first_with_hash[result.content_hash] = result.name
                    several_faces += result.faces > 1
                    ledger.keep(result.name)
                    images.append(result.pixels)
                    manifest.writerow(_manifest_row(kept, result, labels[result.name]))
                    kept += 1
    return kept, several_faces


class ArrayWriter:
    """Writes a ``.npy`` array of uint8 rows of ``shape`` one row at a time, with plain sequential writes:
    the rows go to a raw file beside ``path`` and become the ``.npy`` (header, then the rows copied across)
    when the block ends. Unlike a memory map, written rows never stay resident in this process, so its
    memory does not grow with the number of images."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path = path
        self.shape = shape
        self.raw = path.with_suffix(".raw")
        self.count = 0

    def __enter__(self) -> ArrayWriter:
        self.path.unlink(missing_ok=True)  # a failed ingest leaves no array of earlier data behind
        self.file = self.raw.open("wb")
        return self

    def append(self, row: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(row, dtype=np.uint8).tobytes())
        self.count += 1

    def __exit__(self, *exc_info) -> None:
        self.file.close()
        if exc_info[0] is None:
            header = {"descr": "|u1", "fortran_order": False, "shape": (self.count, *self.shape)}
            with self.path.open("wb") as out, self.raw.open("rb") as rows:
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(rows, out, COPY_BYTES)
        self.raw.unlink()


def _write_unmatched(rows: Sequence[str], path: Path) -> None:
    """Name every label row that matched no single file."""
    pd.DataFrame({"label_row": rows}).to_csv(path, index=False)
    if rows:
        log.warning("%d label rows name no single file, e.g. %s: see %s", len(rows), rows[0], path)


def _manifest_row(index: int, result: Decoded, label: Label) -> list:
    """One manifest line, in :data:`MANIFEST_COLUMNS` order; unknown values are empty."""
    optional = ["" if value is None else value for value in (label.gender, label.race, label.given_split)]
    pixel_hash = hashlib.sha256(result.pixels.tobytes()).hexdigest()
    return [index, label.age, *optional, result.name, result.content_hash, pixel_hash]
