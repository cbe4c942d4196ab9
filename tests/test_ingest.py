import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ASTRONAUT, REPO, SHARED, encode, noise_jpeg, overlay, pack, paste, settings, write_files

from faceage.data.faces import FaceFinder
from faceage.data.ingest import OUTCOMES, REJECTED_FILE, UNMATCHED_FILE, ingest
from faceage.data.manifest import IMAGES_FILE, load_images, load_manifest
from faceage.errors import FaceageError
from faceage.sections import DataParams, FacesParams

EXPECTED_UTKFACE_OUTCOMES = {
    "kept": 30,
    "duplicate": 1,
    "malformed_name": 2,
    "age_out_of_range": 2,
    "unreadable_image": 1,
    "not_an_image": 1,
}


def run_ingest(source, out_dir, **overrides):
    params = settings(DataParams, source=str(source), image_size=16, workers=overrides.pop("workers", 1), **overrides)
    return ingest(params, out_dir, settings(FacesParams))


def assert_every_file_accounted(report, out_dir):
    assert set(report["outcomes"]) == set(OUTCOMES)
    assert sum(report["outcomes"].values()) == report["files"]
    rejected = pd.read_csv(out_dir / REJECTED_FILE)
    kept_or_labels = report["outcomes"]["kept"] + report["outcomes"]["label_file"]
    assert len(rejected) == report["files"] - kept_or_labels
    assert rejected["reason"].value_counts().to_dict() == {
        reason: n for reason, n in report["outcomes"].items() if n and reason not in ("kept", "label_file")
    }


@pytest.mark.parametrize("container", ["folder", "data.tar.gz", "data.zip"])
def test_utkface_layout_accounts_for_every_file(tmp_path, utkface_files, container):
    if container == "folder":
        source = write_files(tmp_path / "src", utkface_files)
    else:
        source = pack(utkface_files, tmp_path / container)
    out = tmp_path / "out"
    report = run_ingest(source, out, workers=2)
    assert report["layout"] == "utkface"
    assert report["files"] == len(utkface_files)
    assert {k: v for k, v in report["outcomes"].items() if v} == EXPECTED_UTKFACE_OUTCOMES
    assert_every_file_accounted(report, out)

    manifest = load_manifest(out)
    images = load_images(out)
    assert images.shape == (30, 16, 16, 3) and images.dtype == np.uint8
    assert manifest["id"].tolist() == list(range(30))
    assert sorted(manifest["age"]) == list(range(1, 31))
    first = manifest.loc[manifest["age"] == 7].iloc[0]
    assert (first["gender"], first["race"]) == (1, 2)
    assert manifest["content_hash"].is_unique
    rejected = pd.read_csv(out / REJECTED_FILE).set_index("path")
    assert "same bytes as UTKFace/1_1_1" in rejected.loc["UTKFace/40_0_1_20170101120000999.jpg.chip.jpg", "detail"]


def test_folder_and_archive_give_the_same_pixels(tmp_path, utkface_files):
    run_ingest(write_files(tmp_path / "src", utkface_files), tmp_path / "a")
    run_ingest(pack(utkface_files, tmp_path / "data.tar.gz"), tmp_path / "b", workers=2)
    pixels = {}
    for name in ("a", "b"):
        manifest, images = load_manifest(tmp_path / name), load_images(tmp_path / name)
        pixels[name] = {
            path: images[i].tobytes() for path, i in zip(manifest["source_path"], manifest["id"], strict=True)
        }
    assert len(pixels["a"]) == 30 and pixels["a"] == pixels["b"]


def test_ingest_is_deterministic(tmp_path, utkface_files):
    source = pack(utkface_files, tmp_path / "data.tar.gz")
    run_ingest(source, tmp_path / "a", workers=2)
    run_ingest(source, tmp_path / "b", workers=2)
    for name in (IMAGES_FILE, "manifest.csv", REJECTED_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_age_limits_are_parameters(tmp_path, utkface_files):
    report = run_ingest(write_files(tmp_path / "src", utkface_files), tmp_path / "out", min_age=0, max_age=150)
    assert report["outcomes"]["age_out_of_range"] == 1  # 200 years; 0 is kept now
    assert report["outcomes"]["kept"] == 31


def test_age_folder_layout_keeps_the_given_split(tmp_path):
    files = {
        f"{part}/{age}/face{age}.jpg": noise_jpeg(age + 100 * (part == "test"))
        for part in ("train", "test")
        for age in (3, 30, 60)
    }
    files["train/notes.txt"] = b"not an image"
    files["train/unknown/face.jpg"] = noise_jpeg(999)
    out = tmp_path / "out"
    report = run_ingest(write_files(tmp_path / "src", files), out)
    assert report["layout"] == "age_folders"
    assert report["outcomes"]["kept"] == 6 and report["outcomes"]["no_label"] == 2
    assert_every_file_accounted(report, out)
    manifest = load_manifest(out)
    assert manifest.groupby("given_split")["age"].apply(sorted).to_dict() == {"test": [3, 30, 60], "train": [3, 30, 60]}


def test_age_folders_without_split_folders(tmp_path):
    files = {f"faces/{age}/{i}.png": noise_jpeg(age * 10 + i) for age in (5, 50) for i in range(2)}
    report = run_ingest(write_files(tmp_path / "src", files), tmp_path / "out")
    assert report["layout"] == "age_folders" and report["outcomes"]["kept"] == 4
    assert load_manifest(tmp_path / "out")["given_split"].isna().all()


def test_csv_layout(tmp_path):
    files = {f"images/{name}.jpg": noise_jpeg(i) for i, name in enumerate(["a", "b", "c", "d"])}
    files["labels.csv"] = b"file_name,real_age,gender\na.jpg,25,1\nb.jpg,31.6,0\nc.jpg,unknown,0\nmissing.jpg,40,1\n"
    out = tmp_path / "out"
    report = run_ingest(write_files(tmp_path / "src", files), out)
    assert report["layout"] == "csv"
    assert {k: v for k, v in report["outcomes"].items() if v} == {
        "kept": 2,
        "label_file": 1,
        "malformed_label": 1,
        "no_label": 1,
    }
    assert report["label_rows_without_image"] == 1
    assert_every_file_accounted(report, out)
    manifest = load_manifest(out).set_index("source_path")
    assert manifest.loc["images/a.jpg", "age"] == 25 and manifest.loc["images/b.jpg", "age"] == 32
    assert manifest.loc["images/a.jpg", "gender"] == 1


def test_csv_conflicts_infinite_ages_and_unmatched_rows_are_reported(tmp_path):
    files = {f"images/{name}.jpg": noise_jpeg(i) for i, name in enumerate("abcde")}
    files["labels.csv"] = (
        b"file_name,real_age,gender\n"
        b"a.jpg,20,1\na.jpg,70,1\n"  # one file, two ages: neither is kept
        b"b.jpg,33,0\nb.jpg,33,0\n"  # the same row twice: no conflict
        b"c.jpg,inf,0\nd.jpg,-inf,1\ne.jpg,44,inf\n"
        b"gone.jpg,50,1\nlost.jpg,51,0\n"
    )
    out = tmp_path / "out"
    report = run_ingest(write_files(tmp_path / "src", files), out)
    assert {k: v for k, v in report["outcomes"].items() if v} == {
        "kept": 2,
        "label_file": 1,
        "malformed_label": 2,
        "conflicting_labels": 1,
    }
    assert_every_file_accounted(report, out)
    rejected = pd.read_csv(out / REJECTED_FILE).set_index("path")
    assert "age 20, age 70" in rejected.loc["images/a.jpg", "detail"]
    manifest = load_manifest(out).set_index("source_path")
    assert manifest.loc["images/b.jpg", "age"] == 33 and pd.isna(manifest.loc["images/e.jpg", "gender"])
    unmatched = pd.read_csv(out / UNMATCHED_FILE)["label_row"].tolist()
    assert report["label_rows_without_image"] == 2 and [row.split(": ")[1].split()[0] for row in unmatched] == [
        "gone.jpg",
        "lost.jpg",
    ]


def test_non_ascii_digit_folders_are_not_ages(tmp_path):
    files = {f"faces/{age}/{i}.jpg": noise_jpeg(age * 10 + i) for age in (5, 50) for i in range(2)}
    files["faces/²/x.jpg"] = noise_jpeg(99)
    files["faces/٣/y.jpg"] = noise_jpeg(98)  # an Arabic-Indic digit: int() would read it, but it is no folder age
    report = run_ingest(write_files(tmp_path / "src", files), tmp_path / "out")
    assert report["outcomes"]["kept"] == 4 and report["outcomes"]["no_label"] == 2


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FaceageError, match=r"data source not found: .*nowhere"):
        run_ingest(tmp_path / "nowhere", tmp_path / "out")


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FaceageError, match="data source is empty"):
        run_ingest(tmp_path / "empty", tmp_path / "out")


def test_unrecognised_layout_is_a_clear_error(tmp_path):
    with pytest.raises(FaceageError, match="cannot tell how"):
        run_ingest(write_files(tmp_path / "src", {"holiday.jpg": noise_jpeg(1)}), tmp_path / "out")


def test_no_usable_image_is_a_clear_error(tmp_path):
    files = {"UTKFace/30_0_0_1.jpg.chip.jpg": b"text", "UTKFace/31_0_0_2.jpg.chip.jpg": b"more text"}
    with pytest.raises(FaceageError, match="no usable image"):
        run_ingest(write_files(tmp_path / "src", files), tmp_path / "out")
    assert len(pd.read_csv(tmp_path / "out" / REJECTED_FILE)) == 2


def test_a_test_source_may_end_up_empty_with_every_file_accounted_for(tmp_path):
    files = {"UTKFace/30_0_0_1.jpg.chip.jpg": b"text", "UTKFace/31_0_0_2.jpg.chip.jpg": noise_jpeg(3)[:40]}
    source = write_files(tmp_path / "src", files)
    report = ingest(
        settings(DataParams, source=str(source), image_size=16, workers=1),
        tmp_path / "out",
        settings(FacesParams),
        allow_empty=True,
    )
    assert report["files"] == 2 and report["outcomes"]["kept"] == 0
    assert report["outcomes"]["not_an_image"] + report["outcomes"]["unreadable_image"] == 2
    assert load_manifest(tmp_path / "out").empty and load_images(tmp_path / "out").shape == (0, 16, 16, 3)


def test_stage_reports_a_bad_source_in_one_line(tmp_path):
    overlay(tmp_path / "params.yaml", "data:\n  source: no/such/folder\n")
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "ingest.py")], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: data source not found: no/such/folder"


UTKFACE_ARCHIVE = SHARED / "datasets" / "UTKFace.tar.gz"


@pytest.mark.slow  # reads all 23,708 files of UTKFace
@pytest.mark.skipif(not UTKFACE_ARCHIVE.is_file(), reason=f"real UTKFace archive not found at {UTKFACE_ARCHIVE}")
def test_real_utkface_archive_is_fully_accounted_for(tmp_path):
    report = run_ingest(UTKFACE_ARCHIVE, tmp_path, workers=0)
    assert report["files"] == 23708
    assert report["outcomes"]["malformed_name"] == 5
    assert sum(report["outcomes"].values()) == 23708
    assert report["outcomes"]["kept"] + report["outcomes"]["duplicate"] == 23703
    assert_every_file_accounted(report, tmp_path)
    assert len(load_images(tmp_path)) == report["outcomes"]["kept"]


@pytest.fixture(scope="module")
def raw_photos() -> dict[str, bytes]:
    """Seed-style ``<age>/photo.jpg`` raw photos: a face in a larger photo, two faces, no face, a broken file."""
    from PIL import Image

    astronaut = np.asarray(Image.open(ASTRONAUT))
    chip = FaceFinder(settings(FacesParams)).find(astronaut, 200)[0].chip
    pair = np.full((512, 896, 3), 128, np.uint8)
    pair[:, :512], pair[:384, 512:] = astronaut, np.asarray(Image.fromarray(astronaut).resize((384, 384)))
    return {
        "30/in_a_photo.jpg": encode(paste(chip, 10)),
        "41/two_faces.jpg": encode(pair),
        "52/wall.jpg": encode(np.full((300, 400, 3), 100, np.uint8)),
        "63/broken.jpg": ASTRONAUT.read_bytes()[:500],
    }


@pytest.mark.parametrize("rule, kept", [("largest", 2), ("reject", 1)])
def test_align_finds_the_face_of_each_raw_photo(tmp_path, raw_photos, rule, kept):
    source = write_files(tmp_path / "src", raw_photos)
    out = tmp_path / "out"
    report = ingest(
        settings(DataParams, source=str(source), image_size=64, align=True, multiple_faces=rule, workers=2),
        out,
        settings(FacesParams, min_size=32),  # the smaller of the two faces is about 65 px
    )
    assert_every_file_accounted(report, out)
    expected = {"kept": kept, "no_face": 1, "unreadable_image": 1, "multiple_faces": 2 - kept}
    assert {k: v for k, v in report["outcomes"].items() if v} == {k: v for k, v in expected.items() if v}
    assert report["aligned"] and report["multiple_faces_kept_largest"] == kept - 1
    rejected = pd.read_csv(out / REJECTED_FILE).set_index("path")
    assert (
        rejected.loc["52/wall.jpg", "reason"] == "no_face"
        and rejected.loc["52/wall.jpg", "detail"]
        == "no face of faces.min_size 32 px or more passing faces.mtcnn_thresholds [0.6, 0.7, 0.7] (mtcnn)"
    )
    manifest, images = load_manifest(out), load_images(out)
    assert images.shape == (kept, 64, 64, 3)
    first = int(manifest.index[manifest["source_path"] == "30/in_a_photo.jpg"][0])
    from PIL import Image

    direct = FaceFinder(settings(FacesParams)).find(np.asarray(Image.open(ASTRONAUT)), 64)[0].chip
    assert np.abs(images[first].astype(int) - direct).mean() < 8  # the same framing as a chip of the original
    if rule == "largest":
        largest = images[int(manifest.index[manifest["source_path"] == "41/two_faces.jpg"][0])]
        assert np.abs(largest.astype(int) - direct).mean() < 8  # the full-size face, not the small copy


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16", "shift_jis"])
def test_a_csv_in_another_encoding_is_refused_in_one_line_naming_the_one_it_needs(tmp_path, encoding):
    files = {"images/zoë.jpg": noise_jpeg(0), "images/b.jpg": noise_jpeg(1)}
    text = "file_name,real_age,note\nzoë.jpg,25,café ½\nb.jpg,31,日本\n" if encoding == "shift_jis" else None
    text = text or "file_name,real_age,note\nzoë.jpg,25,café ½\nb.jpg,31,x\n"
    files["labels.csv"] = text.encode(encoding, errors="ignore")
    with pytest.raises(FaceageError, match=r"labels\.csv is not UTF-8 text \(byte 0x[0-9a-f]{2} at position \d+\)"):
        run_ingest(write_files(tmp_path / "src", files), tmp_path / "out")


def test_a_utf8_csv_with_a_byte_order_mark_is_read(tmp_path):
    files = {"images/zoë.jpg": noise_jpeg(0), "images/b.jpg": noise_jpeg(1)}
    files["labels.csv"] = "file_name,real_age\nzoë.jpg,25\nb.jpg,31\n".encode("utf-8-sig")
    report = run_ingest(write_files(tmp_path / "src", files), tmp_path / "out")
    assert report["layout"] == "csv" and report["outcomes"]["kept"] == 2
