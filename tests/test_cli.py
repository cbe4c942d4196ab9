import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ASTRONAUT, ASTRONAUT_BOX, box_in, encode, huge_png, is_her_box
from PIL import Image

from faceage.cli import main
from faceage.data.faces import Face
from faceage.model.age_model import UNTOUCHED_DLIB_DATASET
from faceage.model.batches import to_input
from faceage.model.reference import ReferenceAgeModel
from faceage.serving.photos import AgeEstimator, PhotoFaces, find_faces, years_and_months


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder with the astronaut (one face), a nested copy mirrored, a photo without a face and a broken file."""
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    (folder / "astronaut.jpg").write_bytes(ASTRONAUT.read_bytes())
    Image.open(ASTRONAUT).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "nested" / "mirrored.png")
    (folder / "wall.jpg").write_bytes(encode(np.full((200, 300, 3), 90, np.uint8)))
    (folder / "broken.jpg").write_bytes(ASTRONAUT.read_bytes()[:400])
    (folder / "notes.txt").write_text("not a photo, and not named like one: skipped by the folder walk")
    return folder


def test_years_and_months():
    assert years_and_months(34.2) == "34 years 2 months"
    assert years_and_months(0.96) == "1 year 0 months"  # 11.5 months round up to a whole year
    assert years_and_months(2.08) == "2 years 1 month"


def test_predict_a_folder_reports_each_face_a_photo_without_one_and_a_broken_file(tiny_model, photos, capsys):
    code = main(["predict", str(photos), "--model", str(tiny_model)])
    out, err = capsys.readouterr()
    assert code == 1  # the broken file; the others are still predicted
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines[f"{photos / 'wall.jpg'}"] == "no face found"
    (her,) = [key for key in lines if key.startswith(f"{photos / 'astronaut.jpg'} face 1 at")]
    assert is_her_box(box_in(her)) and her.endswith("(score 1.00)")
    face_line = lines[her]
    assert re.fullmatch(r"\d+ years? \d+ months? \(90 %: \d+-\d+\), female 0\.\d\d", face_line), face_line
    mirrored = [key for key in lines if key.startswith(f"{photos / 'nested' / 'mirrored.png'} face 1 at")]
    assert len(mirrored) == 1
    assert len(lines) == 3 and "notes.txt" not in out
    assert err.strip().splitlines()[-1].startswith(f"{photos / 'broken.jpg'}: error: unreadable image")


def test_json_is_one_document_and_each_age_belongs_to_its_own_file(tiny_model, tmp_path, capsys):
    crops = []
    for index, value in enumerate((0, 60, 120, 180, 250)):
        crops.append(tmp_path / f"crop{index}.png")
        crops[-1].write_bytes(encode(np.full((40, 40, 3), (value, 255 - value, value // 2), np.uint8), "PNG"))
    alone = {}
    for crop in crops:
        assert main(["predict", str(crop), "--aligned", "--model", str(tiny_model), "--json"]) == 0
        (result,) = json.loads(capsys.readouterr().out)["results"]
        alone[result["file"]] = result["faces"][0]["age_years"]
    assert len(set(alone.values())) == 5  # distinct inputs give distinct ages, so a mix-up would show
    reversed_order = [str(c) for c in reversed(crops)]
    assert main(["predict", *reversed_order, "--aligned", "--block", "2", "--model", str(tiny_model), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["photos"] == 5 and document["faces"] == 5
    assert [r["file"] for r in document["results"]] == reversed_order
    for result in document["results"]:
        (face,) = result["faces"]
        assert face["age_years"] == pytest.approx(alone[result["file"]], abs=0.01)
        assert face["box"] is None and face["score"] is None and 0 <= face["female_probability"] <= 1


def test_blocks_do_not_change_results(tiny_model, photos, capsys):
    main(["predict", str(photos), "--model", str(tiny_model), "--json"])
    whole = json.loads(capsys.readouterr().out)
    main(["predict", str(photos), "--model", str(tiny_model), "--json", "--block", "1", "--workers", "1"])
    assert json.loads(capsys.readouterr().out) == whole


def test_annotate_draws_the_box_on_a_copy(tiny_model, photos, tmp_path, capsys):
    out = tmp_path / "annotated"
    main(["predict", str(photos / "astronaut.jpg"), "--model", str(tiny_model), "--annotate", str(out)])
    copy = out / "astronaut.jpg"
    drawn = np.asarray(Image.open(copy)).astype(int)
    original = np.asarray(Image.open(ASTRONAUT)).astype(int)
    left, top, _, bottom = ASTRONAUT_BOX
    assert np.abs(drawn[top + 20 : bottom - 1, left] - original[top + 20 : bottom - 1, left]).mean() > 40  # box edge
    assert np.abs(drawn[300:, 300:] - original[300:, 300:]).mean() < 3  # elsewhere only JPEG noise


def test_estimator_results_keep_photos_and_faces_apart(tiny_model):
    estimator = AgeEstimator(tiny_model)
    chips = [np.asarray(Image.open(ASTRONAUT).resize((32, 32))), np.zeros((32, 32, 3), np.uint8)]
    photos = [
        PhotoFaces("two", [Face((0, 0, 9, 9), 1.0, chips[0]), Face((10, 0, 19, 9), 0.7, chips[1])]),
        PhotoFaces("none"),
        PhotoFaces("bad", error="unreadable image: truncated"),
        PhotoFaces("second", [Face((0, 0, 9, 9), 2.0, chips[1])]),
    ]
    two, none, bad, second = estimator.results(photos)
    assert [f["box"] for f in two["faces"]] == [[0, 0, 9, 9], [10, 0, 19, 9]]
    assert none == {"file": "none", "faces": []} and bad == {"file": "bad", "error": "unreadable image: truncated"}
    assert second["faces"][0]["age_years"] == two["faces"][1]["age_years"] != two["faces"][0]["age_years"]


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["predict", str(ASTRONAUT), "--model", str(tmp_path / "none.pt")]) == 1
    assert capsys.readouterr().err.strip() == f"error: no model at {tmp_path / 'none.pt'}: run the train stage first"


def test_help_and_usage_errors_answer_without_importing_torch():
    script = (
        "import sys\nfrom faceage.cli import main\n"
        "for argv in (['--help'], ['predict', '--help'], ['export', '--format', 'pdf'], ['--version']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")
    assert "Folders are walked recursively" in result.stdout and "faceage 0.1.0" in result.stdout
    assert "invalid choice: 'pdf'" in result.stderr


def test_console_script_is_installed(tiny_model):
    command = [str(Path(sys.executable).parent / "faceage"), "predict", str(ASTRONAUT), "--model", str(tiny_model)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and is_her_box(box_in(result.stdout.split("face 1 at")[1]))


def damaged_checkpoints(model: Path, folder: Path) -> list[Path]:
    """The checkpoint cut at many points, random bytes, a key missing, and another backbone's weights."""
    import torch

    data = model.read_bytes()
    paths = []
    for cut in np.linspace(0, len(data) - 1, 25).astype(int):
        paths.append(folder / f"cut-{cut}.pt")
        paths[-1].write_bytes(data[:cut])
    paths.append(folder / "random.pt")
    paths[-1].write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    checkpoint = torch.load(model, weights_only=True)
    for name, changed in {
        "no-state": {k: v for k, v in checkpoint.items() if k != "state_dict"},
        "other-backbone": {**checkpoint, "networks": [{**checkpoint["networks"][0], "backbone": "mobilenet_v2"}]},
        "missing-weight": {**checkpoint, "state_dict": dict(list(checkpoint["state_dict"].items())[1:])},
    }.items():
        paths.append(folder / f"{name}.pt")
        torch.save(changed, paths[-1])
    return paths


def test_a_damaged_or_mismatched_model_is_one_line(tiny_model, tmp_path, capsys):
    for path in damaged_checkpoints(tiny_model, tmp_path):
        assert main(["predict", str(ASTRONAUT), "--model", str(path)]) == 1, path
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {path}") and "\n" not in err, err


def test_annotated_copies_keep_their_path_below_the_folder_named(tiny_model, photos, tmp_path, capsys):
    out = tmp_path / "annotated"
    main(["predict", str(photos), str(ASTRONAUT), "--model", str(tiny_model), "--annotate", str(out)])
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    # a photo without a face is copied too; the astronaut named itself lands on the folder's copy
    assert written == ["astronaut.jpg", "nested/mirrored.png", "wall.jpg"]


def test_dlib_is_its_untouched_age_model_on_the_aligned_face(photos, capsys):
    args = [str(photos / "astronaut.jpg"), "--model", "dlib", "--no-flip", "--no-bf16", "--json"]  # float32, as below
    assert main(["predict", *args]) == 0
    out, err = capsys.readouterr()
    document = json.loads(out)
    (face,) = document["results"][0]["faces"]
    assert document["dataset"] == UNTOUCHED_DLIB_DATASET and "warning" not in err
    estimator = AgeEstimator("dlib")
    (found,) = find_faces("astronaut", ASTRONAUT.read_bytes(), estimator.chip_size, estimator.faces).faces
    bins = estimator.engine.model.bin_ages
    distribution = ReferenceAgeModel(bins)(to_input(found.chip[None], estimator.chip_size, torch.device("cpu")))
    expected = distribution @ bins
    assert face["age_years"] == pytest.approx(float(expected[0]), abs=0.05)
    assert 25 < face["age_years"] < 50  # a woman in her late thirties; the synthetic demo's model says about 70


def test_a_model_of_synthetic_faces_warns_once_that_its_ages_of_real_photos_mean_nothing(tiny_model, tmp_path, capsys):
    synthetic = tmp_path / "synthetic.pt"
    torch.save(
        {**torch.load(tiny_model, weights_only=True), "dataset": {"name": "demo", "kind": "synthetic"}}, synthetic
    )
    for model, warned in ((synthetic, True), (tiny_model, False)):
        main(["predict", str(ASTRONAUT), "--model", str(model)])
        warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
        assert len(warnings) == warned and ("--model dlib" in warnings[0] if warned else True)


def test_over_answers_each_face_from_its_interval(tiny_model, photos, capsys):
    main(["predict", str(photos), "--model", str(tiny_model), "--json"])
    faces = [face for result in json.loads(capsys.readouterr().out)["results"] for face in result.get("faces", ())]
    ages = sorted(age for face in faces for age in (face["age_low"], face["age_high"]))
    thresholds = (ages[0] - 1, (ages[0] + ages[-1]) / 2, ages[-1] + 1)  # under every interval, inside, above
    for threshold, answer in zip(thresholds, ("yes", None, "no"), strict=True):
        assert main(["predict", str(photos), "--model", str(tiny_model), "--over", f"{threshold:g}", "--json"]) == 1
        document = json.loads(capsys.readouterr().out)
        decided = [face for result in document["results"] for face in result.get("faces", ())]
        assert document["over"] == pytest.approx(threshold, abs=1e-3) and document["interval_level"] == 0.9
        for face in decided:
            inside = face["age_low"] < threshold <= face["age_high"]
            assert face["over"] == (
                answer or ("uncertain" if inside else "yes" if face["age_low"] >= threshold else "no")
            )
    main(["predict", str(photos / "astronaut.jpg"), "--model", str(tiny_model), "--over", "18"])
    line = capsys.readouterr().out.strip()
    assert re.search(r"\(90 %: \d+-\d+\), over 18: (yes|no|uncertain), female", line), line


def test_over_needs_a_model_with_intervals(photos, capsys):
    assert main(["predict", str(photos / "astronaut.jpg"), "--model", "dlib", "--over", "18"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "error: --over needs a model with calibrated intervals; this one has none"


NAMES = [b"caf\xe9.jpg", "zoë.jpg".encode(), b"\xff\xfe\x80.jpg", b"plain.jpg"]  # not UTF-8, UTF-8, bytes, ASCII


@pytest.mark.parametrize("encoding", ["utf-8", "ascii", "latin-1"])
def test_names_the_output_cannot_encode_are_escaped_and_every_photo_is_reported(tiny_model, tmp_path, encoding):
    folder = tmp_path / "named"
    folder.mkdir()
    for name in NAMES:
        (folder / os.fsdecode(name)).write_bytes(ASTRONAUT.read_bytes())
    command = [str(Path(sys.executable).parent / "faceage"), "predict", str(folder), "--model", str(tiny_model)]
    env = {**os.environ, "PYTHONIOENCODING": f"{encoding}:strict"}
    result = subprocess.run(command, capture_output=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    lines = result.stdout.decode(encoding).splitlines()
    assert len(lines) == len(NAMES) and all(is_her_box(box_in(line.split("face 1 at")[1])) for line in lines)
    assert any("plain.jpg" in line for line in lines) and any("\\udce9" in line or "\\xe9" in line for line in lines)


def test_special_files_named_on_the_command_line_are_refused_without_opening(tiny_model, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    named = [str(fifo), "/dev/zero", str(tmp_path), str(ASTRONAUT)]  # a FIFO blocks, /dev/zero never ends
    command = [str(Path(sys.executable).parent / "faceage"), "predict", *named, "--model", str(tiny_model)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    errors = dict(line.split(": error: ", 1) for line in result.stderr.splitlines() if ": error: " in line)
    assert result.returncode == 1 and is_her_box(box_in(result.stdout.split("face 1 at")[1]))
    assert errors == {str(fifo): "not a regular file (a FIFO)", "/dev/zero": "not a regular file (a character device)"}


@pytest.mark.parametrize("target", ["a file", "below a file"])
def test_annotate_where_no_folder_can_be_is_one_line(tiny_model, tmp_path, capsys, target):
    occupied = tmp_path / "occupied"
    occupied.write_text("a file")
    out = occupied if target == "a file" else occupied / "annotated"
    assert main(["predict", str(ASTRONAUT), "--model", str(tiny_model), "--annotate", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --annotate: ") and str(out) in err and "\n" not in err


PEAK_MEMORY = """
import resource, sys
from faceage.cli import main
main(sys.argv[1:])
print("peak", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, file=sys.stderr)
"""


def finding_peak_mib(photo: Path, model: Path) -> tuple[int, str]:
    """The peak resident memory (MiB) of the process in which ``faceage predict`` reads one photo and finds its
    faces (the main process holds the model and the faces' chips only), and what it printed."""
    command = [sys.executable, "-c", PEAK_MEMORY, "predict", str(photo), "--model", str(model), "--workers", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    return int(result.stderr.split()[-1]), result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_one_large_photo_costs_predict_memory_bounded_by_its_pixels(tiny_model, tmp_path, fmt):
    baseline, _ = finding_peak_mib(ASTRONAUT, tiny_model)
    large = Image.new("RGB", (8000, 6000), (90, 90, 90))  # 48 megapixels, under faces.max_megapixels
    large.paste(Image.open(ASTRONAUT).resize((4096, 4096)), (2000, 1000))
    large.save(tmp_path / f"large.{fmt.lower()}", format=fmt)
    peak, printed = finding_peak_mib(tmp_path / f"large.{fmt.lower()}", tiny_model)
    # under 8 bytes a pixel: the decoded photo (Pillow's 4 bytes a pixel) and its array (3), and under one byte a
    # pixel for the rest (the detector's working memory and the allocator's; 20 to 32 MiB over the 7 bytes in
    # five runs): no further full-size colour copy
    assert "face 1 at" in printed and peak - baseline < 8 * large.width * large.height / 2**20, (peak, baseline)
    (tmp_path / "bomb.png").write_bytes(huge_png(12000, 12000))
    peak, printed = finding_peak_mib(tmp_path / "bomb.png", tiny_model)
    assert "too large: 12000x12000 pixels" in printed and peak - baseline < 20, (peak, baseline)


@pytest.mark.parametrize("over", ["nan", "inf", "-1", "1000"])
def test_an_over_that_is_not_an_age_is_one_line(tiny_model, capsys, over):
    assert main(["predict", str(ASTRONAUT), "--model", str(tiny_model), "--over", over]) == 1
    expected = f"error: over: {float(over)!r} is not an age; expected a number of years in 0..150"
    assert capsys.readouterr().err.strip() == expected


def test_detector_and_min_size_override_the_models_settings(tiny_model, photos, capsys):
    def astronaut_box(*options: str) -> list[int] | None:
        assert main(["predict", str(photos / "astronaut.jpg"), "--model", str(tiny_model), "--json", *options]) == 0
        faces = json.loads(capsys.readouterr().out)["results"][0]["faces"]
        return faces[0]["box"] if faces else None

    hog, mtcnn = astronaut_box("--detector", "hog", "--max-side", "1280"), astronaut_box("--detector", "mtcnn")
    assert hog != mtcnn and max(abs(a - b) for a, b in zip(hog, mtcnn, strict=True)) < 6  # reframed as HOG frames
    assert astronaut_box("--detector", "mtcnn", "--min-size", "300") is None
    assert main(["predict", str(photos), "--model", str(tiny_model), "--detector", "cnn"]) == 1
    assert "faces.detector: 'cnn' is not allowed; expected one of hog, mtcnn" in capsys.readouterr().err
