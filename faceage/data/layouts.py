"""Recognise how a data set stores its labels, and read the label of each file.

Three layouts are understood:

* ``utkface``: labels in file names, ``<age>_<gender>_<race>_<datetime>.jpg.chip.jpg``;
* ``age_folders``: ``<root>/[train|val|test/]<age>/<image>``;
* ``csv``: a CSV with columns ``file_name,real_age`` (optionally ``gender``, ``race``, ``split``)
  beside a folder of images. A file listed more than once keeps a label only if every row gives the same
  one; rows that disagree reject it as ``conflicting_labels``.
"""

from __future__ import annotations

import io
import math
import re
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import pandas as pd

from faceage.data.sources import Source
from faceage.errors import FaceageError

MALFORMED_NAME = "malformed_name"
NO_LABEL = "no_label"
MALFORMED_LABEL = "malformed_label"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
UTKFACE_NAME = re.compile(
    r"^(?P<age>\d+)_(?P<gender>[01])_(?P<race>[0-4])_(?P<stamp>\d+)(?:\.jpg\.chip)?\.(?:jpe?g|png)$", re.IGNORECASE
)
CSV_COLUMNS = ("file_name", "real_age")
AGE_FOLDER = re.compile(r"^[0-9]+$")  # ASCII digits only: "²".isdigit() is true, but it is no age
CONFLICTING_LABELS = "conflicting_labels"


@dataclass(frozen=True)
class Label:
    """What is known about the face in one file."""

    age: int
    gender: int | None = None
    race: int | None = None
    given_split: str | None = None


class LabelError(ValueError):
    """A file's label cannot be read; ``reason`` is a short outcome code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_image_name(name: str) -> bool:
    """Whether the file name has a common image extension."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def split_folder(path: PurePosixPath) -> str | None:
    """The split named by the nearest ``train``/``val``/``test`` folder above ``path``, if any."""
    for part in reversed(path.parent.parts):
        if part.lower() in SPLIT_FOLDERS:
            return SPLIT_FOLDERS[part.lower()]
    return None


class Layout(ABC):
    """How labels are stored."""

    name: str
    label_files: frozenset[str] = frozenset()
    unmatched_rows: Sequence[str] = ()

    @abstractmethod
    def label(self, path: str) -> Label:
        """The label of the file at ``path``; raises :class:`LabelError` when there is none."""


class UTKFaceLayout(Layout):
    """Labels in UTKFace file names."""

    name = "utkface"

    def label(self, path: str) -> Label:
        base = PurePosixPath(path).name
        match = UTKFACE_NAME.match(base)
        if not match:
            raise LabelError(MALFORMED_NAME, f"{base!r} is not <age>_<gender>_<race>_<datetime>.jpg.chip.jpg")
        return Label(age=int(match["age"]), gender=int(match["gender"]), race=int(match["race"]))


class AgeFolderLayout(Layout):
    """One folder per age, optionally under ``train``/``val``/``test`` folders."""

    name = "age_folders"

    def label(self, path: str) -> Label:
        pure = PurePosixPath(path)
        if not AGE_FOLDER.match(pure.parent.name):
            raise LabelError(NO_LABEL, f"folder {pure.parent.name!r} is not an age")
        return Label(age=int(pure.parent.name), given_split=split_folder(pure))


class CsvLayout(Layout):
    """Labels in CSV files with ``file_name`` and ``real_age`` columns."""

    name = "csv"

    def __init__(self, tables: dict[str, pd.DataFrame], names: list[str]):
        self.label_files = frozenset(tables)
        self.labels: dict[str, Label | LabelError] = {}
        self.unmatched_rows: list[str] = []
        images = [n for n in names if n not in tables]
        rows: dict[str, list[Label | LabelError]] = {}
        for csv_name, table in tables.items():
            index = _index_by_file_name(images, PurePosixPath(csv_name).parent)
            for row in table.itertuples(index=False):
                matches = _pick(index.get(str(row.file_name).strip(), []), PurePosixPath(csv_name).stem)
                if len(matches) != 1:
                    self.unmatched_rows.append(f"{csv_name}: {row.file_name} ({len(matches)} matching files)")
                    continue
                rows.setdefault(matches[0], []).append(_row_label(row, matches[0], csv_name))
        self.labels = {path: _agree(labels) for path, labels in rows.items()}

    def label(self, path: str) -> Label:
        label = self.labels.get(path)
        if label is None:
            raise LabelError(NO_LABEL, "not listed in any label CSV")
        if isinstance(label, LabelError):
            raise label
        return label


def _index_by_file_name(images: list[str], folder: PurePosixPath) -> dict[str, list[str]]:
    """Map each way a CSV may name an image below ``folder`` (relative path, base name) to its paths."""
    index: dict[str, list[str]] = defaultdict(list)
    for name in images:
        pure = PurePosixPath(name)
        if folder != PurePosixPath(".") and folder not in pure.parents:
            continue
        relative = pure.relative_to(folder)
        index[relative.as_posix()].append(name)
        if len(relative.parts) > 1:
            index[relative.name].append(name)
    return index


def _pick(candidates: list[str], csv_stem: str) -> list[str]:
    """Among several images with one base name, prefer those whose folder the CSV's name mentions."""
    if len(candidates) <= 1:
        return candidates
    return [c for c in candidates if PurePosixPath(c).parent.name.lower() in csv_stem.lower()]


def _agree(labels: list[Label | LabelError]) -> Label | LabelError:
    """The one label that every row of a file gives, or a ``conflicting_labels`` error naming what they gave."""
    distinct = list(dict.fromkeys(label if isinstance(label, Label) else str(label) for label in labels))
    if len(distinct) == 1:
        return labels[0]
    given = ", ".join(f"age {x.age}" if isinstance(x, Label) else x for x in distinct)
    return LabelError(CONFLICTING_LABELS, f"{len(labels)} label rows disagree: {given}")


def _row_label(row: tuple, path: str, csv_name: str) -> Label | LabelError:
    try:
        age = float(row.real_age)
    except (TypeError, ValueError):
        return LabelError(MALFORMED_LABEL, f"real_age {row.real_age!r} in {csv_name} is not a number")
    if age != age:  # NaN
        return LabelError(MALFORMED_LABEL, f"real_age is empty in {csv_name}")
    if not math.isfinite(age):
        return LabelError(MALFORMED_LABEL, f"real_age {row.real_age!r} in {csv_name} is not a finite number")
    given = getattr(row, "split", None)
    given = SPLIT_FOLDERS.get(str(given).lower()) if isinstance(given, str) else split_folder(PurePosixPath(path))
    return Label(
        age=round(age),
        gender=_optional_int(getattr(row, "gender", None)),
        race=_optional_int(getattr(row, "race", None)),
        given_split=given,
    )


def _optional_int(value: object) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) else None


def detect_layout(source: Source, names: list[str]) -> Layout:
    """Recognise the layout of ``source`` from its file names (and label CSVs, if any)."""
    csv_names = [n for n in names if n.lower().endswith(".csv")]
    tables = {}
    for name, content in source.read(csv_names):
        try:
            table = pd.read_csv(io.BytesIO(content), encoding="utf-8-sig")
        except (pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        except UnicodeDecodeError as error:
            where = f"byte 0x{error.object[error.start]:02x} at position {error.start}"
            raise FaceageError(f"{source.path}: {name} is not UTF-8 text ({where}): save it as UTF-8") from None
        if set(CSV_COLUMNS) <= set(table.columns):
            tables[name] = table
    if tables:
        return CsvLayout(tables, names)
    images = [PurePosixPath(n) for n in names if is_image_name(n)]
    if images and sum(bool(AGE_FOLDER.match(p.parent.name)) for p in images) >= len(images) / 2:
        return AgeFolderLayout()
    if any(re.match(r"^\d+_", p.name) for p in images):
        return UTKFaceLayout()
    raise FaceageError(
        f"cannot tell how {source.path} stores ages: expected UTKFace file names "
        "(<age>_<gender>_<race>_<datetime>.jpg.chip.jpg), <age>/ folders, or a CSV with columns file_name,real_age"
    )
