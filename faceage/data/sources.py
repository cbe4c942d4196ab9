"""Read the files of a folder or an archive in a fixed order, without extracting to disk.

Listing a source accounts for every entry: regular files are read, and anything else (a link, a FIFO,
a device, a second member of the same name, an encrypted or oversized member) is an :class:`Entry`
with an outcome of its own. An archive must be readable to its end with its checksums intact, else
listing it stops with a one-line :class:`~faceage.errors.FaceageError` saying where it broke.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from faceage.data.demo import SYNTHETIC_MARK
from faceage.data.images import TOO_LARGE
from faceage.errors import FaceageError

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
ZIP_SUFFIXES = (".zip",)
MAX_FILE_BYTES = 256 * 2**20  # larger members are not read (no face photo is that large; guards zip bombs)
READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)

NOT_A_FILE = "not_a_file"
DUPLICATE_NAME = "duplicate_name"
ENCRYPTED = "encrypted"
LINK_OUTSIDE = "link_outside_source"
LISTING_OUTCOMES = (NOT_A_FILE, DUPLICATE_NAME, TOO_LARGE, ENCRYPTED, LINK_OUTSIDE)


@dataclass(frozen=True)
class Entry:
    """A listed entry that is not read, and why (one of :data:`LISTING_OUTCOMES`)."""

    name: str
    reason: str
    detail: str


class Source(ABC):
    """A collection of files addressed by their POSIX path relative to the source's root; ``synthetic`` when
    it says its faces were drawn by faceage's demo (known once listed)."""

    def __init__(self, path: Path):
        self.path = path
        self.skipped: list[Entry] = []
        self.synthetic = False
        self._names: list[str] | None = None

    def names(self) -> list[str]:
        """Paths of the regular files to read, in reading order; :attr:`skipped` lists everything else.

        The source is listed once; later calls return the same list.
        """
        if self._names is not None:
            return self._names
        names, self.skipped = [], []
        seen: set[str] = set()
        for name, problem in self._list():
            if problem is None and name in seen:
                problem = (DUPLICATE_NAME, "a second entry of this name; the first is read")
            if problem is not None:
                self.skipped.append(Entry(name, *problem))
            else:
                seen.add(name)
                names.append(name)
        self._names = names
        return names

    @abstractmethod
    def _list(self) -> Iterator[tuple[str, tuple[str, str] | None]]:
        """Every entry but folders, in order, with ``(reason, detail)`` when it is not a readable file."""

    @abstractmethod
    def read(self, names: Collection[str] | None = None) -> Iterator[tuple[str, bytes]]:
        """Yield ``(path, content)`` for every file (or only ``names``), first entry of a name only."""

    def broken(self, error: Exception, where: str) -> FaceageError:
        """The one-line error for an archive that cannot be read to its end."""
        reason = " ".join(str(error).split()) or type(error).__name__
        return FaceageError(f"archive {self.path} is damaged {where}: {reason}")


def too_large(size: int) -> tuple[str, str] | None:
    if size > MAX_FILE_BYTES:
        return TOO_LARGE, f"{size} bytes, more than {MAX_FILE_BYTES}"
    return None


class FolderSource(Source):
    """A directory tree, read in sorted path order; symbolic links to files inside it are followed, to files
    outside it or to folders not."""

    def _list(self) -> Iterator[tuple[str, tuple[str, str] | None]]:
        found, inside = [], self.path.resolve()
        for folder, subfolders, files in os.walk(self.path):
            for name in subfolders:
                if os.path.islink(os.path.join(folder, name)):
                    link = (NOT_A_FILE, "a symbolic link to a folder, not followed")
                    found.append((os.path.join(folder, name), link))
            for name in files:
                full = os.path.join(folder, name)
                target = Path(full).resolve()
                outside = os.path.islink(full) and not target.is_relative_to(inside)
                found.append((full, (LINK_OUTSIDE, f"a symbolic link to {target}, not followed") if outside else None))
        for full, outcome in sorted(found):
            relative = Path(full).relative_to(self.path).as_posix()
            yield relative, outcome or self._check(Path(full))

    @staticmethod
    def _check(path: Path) -> tuple[str, str] | None:
        try:
            info = path.stat()
        except OSError as error:
            return NOT_A_FILE, f"cannot be opened: {error.strerror or error}"
        if not stat.S_ISREG(info.st_mode):
            return NOT_A_FILE, f"not a regular file ({stat.filemode(info.st_mode)[0]})"
        return too_large(info.st_size)

    def read(self, names: Collection[str] | None = None) -> Iterator[tuple[str, bytes]]:
        for name in self.names() if names is None else sorted(names):
            yield name, (self.path / name).read_bytes()


class TarSource(Source):
    """A (compressed) tar archive, read in archive order in one streaming pass."""

    def _list(self) -> Iterator[tuple[str, tuple[str, str] | None]]:
        where = "at its start"
        try:
            with tarfile.open(self.path, "r:*") as tar:
                for member in tar:
                    tar.members = []  # tarfile keeps every member it has seen: memory would grow with the archive
                    where = f"after member {member.name!r}"
                    if not member.isdir():
                        yield member.name, self._problem(member)
                self._check_end(tar, where)
                self.synthetic = SYNTHETIC_MARK in tar.pax_headers
        except FaceageError:
            raise
        except READ_ERRORS as error:
            raise self.broken(error, where) from None

    @staticmethod
    def _problem(member: tarfile.TarInfo) -> tuple[str, str] | None:
        if member.issym():
            return NOT_A_FILE, f"a symbolic link to {member.linkname}"
        if member.islnk():
            return NOT_A_FILE, f"a hard link to {member.linkname}"
        if not member.isfile():
            return NOT_A_FILE, "a FIFO or device" if (member.isfifo() or member.isdev()) else "not a regular file"
        return too_large(member.size)

    def _check_end(self, tar: tarfile.TarFile, where: str) -> None:
        """tarfile stops quietly at a damaged header: only zeros may follow the last member, up to a stream
        that ends with its checksum intact (read to its end, a gzip, bzip2 or xz stream checks its own)."""
        tar.fileobj.seek(tar.offset)
        rest = 0
        while block := tar.fileobj.read(1 << 20):
            if block.count(0) != len(block):
                raise self.broken(ValueError("data follows where tar's listing ended"), f"{where}, byte {tar.offset}")
            rest += len(block)
        if rest < tarfile.BLOCKSIZE:
            raise self.broken(
                EOFError("no end-of-archive marker: the archive is cut short"), f"{where}, byte {tar.offset}"
            )

    def read(self, names: Collection[str] | None = None) -> Iterator[tuple[str, bytes]]:
        wanted = set(self.names()) if names is None else set(names)
        try:
            with tarfile.open(self.path, "r|*") as tar:
                for member in tar:
                    tar.members = []
                    if member.name in wanted and member.isfile():
                        wanted.discard(member.name)
                        yield member.name, tar.extractfile(member).read()
        except READ_ERRORS as error:
            raise self.broken(error, "while reading") from None


class ZipSource(Source):
    """A zip archive, read in archive order; each member's CRC is checked as it is read."""

    def _list(self) -> Iterator[tuple[str, tuple[str, str] | None]]:
        try:
            with zipfile.ZipFile(self.path) as archive:
                infos = archive.infolist()
        except READ_ERRORS as error:
            raise self.broken(error, "in its directory") from None
        for info in infos:
            if not info.is_dir():
                yield info.filename, self._problem(info)

    @staticmethod
    def _problem(info: zipfile.ZipInfo) -> tuple[str, str] | None:
        if info.flag_bits & 0x1:
            return ENCRYPTED, "an encrypted member"
        if stat.S_ISLNK(info.external_attr >> 16):
            return NOT_A_FILE, "a symbolic link"
        return too_large(info.file_size)

    def read(self, names: Collection[str] | None = None) -> Iterator[tuple[str, bytes]]:
        wanted = set(self.names()) if names is None else set(names)
        with zipfile.ZipFile(self.path) as archive:
            for info in archive.infolist():
                if info.filename in wanted:
                    wanted.discard(info.filename)
                    try:
                        with archive.open(info) as member:
                            data = member.read(MAX_FILE_BYTES + 1)
                    except READ_ERRORS as error:
                        raise self.broken(error, f"in member {info.filename!r}") from None
                    if len(data) > MAX_FILE_BYTES:
                        raise self.broken(ValueError("more data than its directory declares"), f"in {info.filename!r}")
                    yield info.filename, data


def open_source(path: str | Path) -> Source:
    """Open a folder or an archive, checking that it can be listed to its end and holds files."""
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
        raise FaceageError(
            f"data source {path} is neither a folder nor a {', '.join(TAR_SUFFIXES + ZIP_SUFFIXES)} archive"
        )
    if not source.names() and not source.skipped:
        raise FaceageError(f"data source is empty: {path}")
    return source
