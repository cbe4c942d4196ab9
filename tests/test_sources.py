"""Archives and folders: every entry accounted for, and damage anywhere stops ingest with one line."""

import io
import os
import tarfile
import zipfile

import numpy as np
import pytest
from conftest import noise_jpeg, pack, settings, write_files

from faceage.data import sources
from faceage.data.ingest import ingest
from faceage.data.sources import open_source
from faceage.errors import FaceageError
from faceage.sections import DataParams, FacesParams

FILES = {f"faces/{age}/{age}.jpg": noise_jpeg(age, size=16) for age in range(1, 31)}


def read_all(path) -> dict[str, bytes]:
    source = open_source(path)
    return dict(source.read())


def assert_whole_or_refused(path) -> None:
    """Either every file comes back byte for byte, or a one-line error names the archive."""
    try:
        contents = read_all(path)
    except FaceageError as error:
        assert str(path) in str(error) and "\n" not in str(error)
        return
    assert contents == FILES


@pytest.mark.parametrize("suffix", ["data.tar.gz", "data.tar", "data.zip"])
def test_truncated_archives_are_refused_at_every_cut(tmp_path, suffix):
    whole = pack(FILES, tmp_path / suffix).read_bytes()
    if suffix == "data.tar":
        whole = tar_bytes(FILES)
    cuts = np.unique(np.linspace(1, len(whole) - 1, 60).astype(int))
    for cut in cuts:
        damaged = tmp_path / f"cut-{cut}-{suffix}"
        damaged.write_bytes(whole[:cut])
        assert_whole_or_refused(damaged)


@pytest.mark.parametrize("suffix", ["data.tar.gz", "data.zip", "data.tar"])
def test_flipped_bytes_never_pass_as_a_smaller_or_different_data_set(tmp_path, suffix):
    whole = tar_bytes(FILES) if suffix == "data.tar" else pack(FILES, tmp_path / suffix).read_bytes()
    rng = np.random.default_rng(0)
    for position in rng.choice(len(whole), 60, replace=False):
        damaged = bytearray(whole)
        damaged[position] ^= 0xFF
        path = tmp_path / f"flip-{position}-{suffix}"
        path.write_bytes(bytes(damaged))
        if suffix == "data.tar":
            # A plain tar has no checksum over file data: a flip there changes one image, which decoding judges.
            try:
                contents = read_all(path)
            except FaceageError as error:
                assert str(path) in str(error) and "\n" not in str(error)
                continue
            assert set(contents) == set(FILES)
        else:
            assert_whole_or_refused(path)


def test_a_damaged_header_in_the_middle_says_where_the_listing_stopped(tmp_path):
    data = bytearray(tar_bytes(FILES))
    header = data.index(b"faces/16/16.jpg")
    data[header + 148 : header + 156] = b"garbage!"  # the header's checksum field
    path = tmp_path / "data.tar"
    path.write_bytes(bytes(data))
    with pytest.raises(FaceageError, match=r"data\.tar is damaged after member 'faces/15/15\.jpg'.*data follows"):
        open_source(path)


def tar_bytes(files: dict[str, bytes], extra=()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
        for member in extra:
            archive.addfile(member)
    return buffer.getvalue()


def special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    return member


def test_links_fifos_and_repeated_names_in_a_tar_are_accounted_for(tmp_path):
    extra = [
        special("faces/40/link.jpg", tarfile.SYMTYPE, "../1/1.jpg"),
        special("faces/41/hard.jpg", tarfile.LNKTYPE, "faces/2/2.jpg"),
        special("faces/42/pipe.jpg", tarfile.FIFOTYPE),
    ]
    path = tmp_path / "data.tar"
    path.write_bytes(tar_bytes(FILES, extra) + b"")
    again = tarfile.TarInfo("faces/3/3.jpg")
    again.size = 5
    with tarfile.open(path, "a") as archive:
        archive.addfile(again, io.BytesIO(b"other"))
    report = ingest(
        settings(DataParams, source=str(path), image_size=16, workers=1), tmp_path / "out", settings(FacesParams)
    )
    assert report["files"] == 34 and sum(report["outcomes"].values()) == 34
    assert report["outcomes"]["not_a_file"] == 3 and report["outcomes"]["duplicate_name"] == 1
    assert report["outcomes"]["kept"] == 30
    assert read_all(path)["faces/3/3.jpg"] == FILES["faces/3/3.jpg"]  # the first of the two is the one read


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_repeated_encrypted_and_oversized_members(tmp_path, monkeypatch):
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in FILES.items():
            archive.writestr(name, content)
        archive.writestr("faces/5/5.jpg", b"a second member of the same name")
        archive.writestr("faces/50/big.jpg", noise_jpeg(50, size=64))
        archive.writestr("faces/51/secret.jpg", b"ciphertext")
    set_encrypted_flag(path, b"faces/51/secret.jpg")
    monkeypatch.setattr(sources, "MAX_FILE_BYTES", len(noise_jpeg(50, size=64)) - 1)
    report = ingest(
        settings(DataParams, source=str(path), image_size=16, workers=1), tmp_path / "out", settings(FacesParams)
    )
    outcomes = {k: v for k, v in report["outcomes"].items() if v}
    assert outcomes == {"kept": 30, "duplicate_name": 1, "too_large": 1, "encrypted": 1}
    assert report["files"] == 33


def set_encrypted_flag(path, name: bytes) -> None:
    """Mark a member as encrypted in its local header and in the central directory (as zip tools do)."""
    data = bytearray(path.read_bytes())
    for signature, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if data[start + name_at : start + name_at + len(name)] == name:
                data[start + flag_at] |= 0x1
            start += 4
    path.write_bytes(bytes(data))


def test_folder_symlinks_and_fifos_are_accounted_for(tmp_path):
    root = write_files(tmp_path / "src", FILES)
    os.symlink(root / "faces" / "1", root / "faces" / "60")  # a folder link: not followed
    os.symlink(root / "faces" / "2" / "2.jpg", root / "faces" / "61.jpg")  # a file link: read
    os.symlink(root / "nowhere.jpg", root / "faces" / "62.jpg")  # a broken link
    os.mkfifo(root / "faces" / "63.jpg")
    source = open_source(root)
    assert len(source.names()) == 31 and source.read(["faces/61.jpg"]).__next__()[1] == FILES["faces/2/2.jpg"]
    skipped = {entry.name: entry.detail for entry in source.skipped}
    assert set(skipped) == {"faces/60", "faces/62.jpg", "faces/63.jpg"}
    assert "folder" in skipped["faces/60"] and "not a regular file" in skipped["faces/63.jpg"]


def test_links_that_leave_the_folder_are_an_outcome_of_their_own_and_never_read(tmp_path):
    root = write_files(tmp_path / "src", FILES)
    secret = tmp_path / "elsewhere" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(noise_jpeg(99))
    os.symlink(secret, root / "faces" / "70.jpg")  # absolute
    os.symlink(os.path.relpath(secret, root / "faces"), root / "faces" / "71.jpg")  # relative, through ..
    os.symlink(root / "faces" / "70.jpg", root / "faces" / "72.jpg")  # inside, to a link that leaves
    os.symlink(root / "faces" / "2" / "2.jpg", root / "faces" / "73.jpg")  # inside: read
    source = open_source(root)
    outcomes = {entry.name: (entry.reason, entry.detail) for entry in source.skipped}
    detail = f"a symbolic link to {secret}, not followed"
    leaving = {f"faces/{n}.jpg": ("link_outside_source", detail) for n in (70, 71, 72)}
    assert outcomes == leaving and "faces/73.jpg" in source.names()
    assert all(content != secret.read_bytes() for _, content in source.read())
