"""Read the files of a folder or an archive in a fixed order, without extracting to disk."""

from __future__ import annotations

import tarfile
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from pathlib import Path

from faceage.errors import FaceageError

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
ZIP_SUFFIXES = (".zip",)


class Source(ABC):
    """A collection of files addressed by their POSIX path relative to the source's root."""

    def __init__(self, path: Path):
        self.path = path

    @abstractmethod
    def names(self) -> list[str]:
        """Paths of all regular files, in reading order."""

    @abstractmethod
    def read(self, names: Collection[str] | None = None) -> Iterator[tuple[str, bytes]]:
        """Yield ``(path, content)`` for every file (or only ``names``), in reading order."""


class FolderSource(Source):
    """A directory tree, read in sorted path order."""

    def names(self) -> list[str]:
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())

    def read(self, names: Collection[str] | None = None) -> Iterator[tuple[str, bytes]]:
        for name in self.names() if names is None else sorted(names):
            yield name, (self.path / name).read_bytes()


class TarSource(Source):
    """A (compressed) tar archive, read in archive order in one streaming pass."""

    def names(self) -> list[str]:
        with tarfile.open(self.path, "r:*") as tar:
            return [m.name for m in tar if m.isfile()]

    def read(self, names: Collection[str] | None = None) -> Iterator[tuple[str, bytes]]:
        wanted = None if names is None else set(names)
        with tarfile.open(self.path, "r|*") as tar:
            for member in tar:
                if member.isfile() and (wanted is None or member.name in wanted):
                    yield member.name, tar.extractfile(member).read()


class ZipSource(Source):
    """A zip archive, read in archive order."""

    def names(self) -> list[str]:
        with zipfile.ZipFile(self.path) as archive:
            return [info.filename for info in archive.infolist() if not info.is_dir()]

    def read(self, names: Collection[str] | None = None) -> Iterator[tuple[str, bytes]]:
        wanted = None if names is None else set(names)
        with zipfile.ZipFile(self.path) as archive:
            for info in archive.infolist():
                if not info.is_dir() and (wanted is None or info.filename in wanted):
                    yield info.filename, archive.read(info)


def open_source(path: str | Path) -> Source:
    """Open a folder or a ``.tar.gz``/``.tgz``/``.tar``/``.zip`` archive, checking that it holds files."""
    path = Path(path)
    if not path.exists():
        raise FaceageError(f"data source not found: {path}")
    if path.is_dir():
        source: Source = FolderSource(path)
    elif path.name.lower().endswith(TAR_SUFFIXES):
        source = TarSource(path)
    elif path.name.lower().endswith(ZIP_SUFFIXES):
        source = ZipSource(path)
    else:
        raise FaceageError(f"data source {path} is neither a folder nor a .tar.gz, .tgz, .tar or .zip archive")
    try:
        names = source.names()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise FaceageError(f"cannot read archive {path}: {error}") from None
    if not names:
        raise FaceageError(f"data source is empty: {path}")
    return source
