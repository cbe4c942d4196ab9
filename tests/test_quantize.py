"""int8 graphs: calibrated on validation faces, checked against the float32 graph on the other validation faces,
written only within the tolerance, and run by ONNX Runtime as any exported graph."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from faceage.cli import main
from faceage.data.manifest import IMAGES_FILE, MANIFEST_FILE
from faceage.model.checkpoint import load_model
from faceage.model.inference import predict
from faceage.serving.export import export_model
from faceage.serving.photos import AgeEstimator
from faceage.serving.quantize import graph_ages, quantise

CHIP = 32  # the tiny model's chip size


def uint8_faces(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, CHIP, CHIP, 3), dtype=np.uint8)


def graph_input(faces: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32) / 255


@pytest.fixture(scope="module")
def graph(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("graph") / "model.onnx"
    export_model(tiny_model, path, "onnx")
    return path


def test_an_int8_graph_is_checked_against_the_float32_one_and_runs_as_pytorch_does(tiny_model, graph, tmp_path):
    checking = uint8_faces(48, 2)
    ages = np.random.default_rng(3).uniform(1, 90, len(checking))
    output = tmp_path / "model.int8.onnx"
    check = quantise(graph, output, graph_input(uint8_faces(64, 1)), graph_input(checking), ages, tolerance=150)
    exact, approximate = graph_ages(graph, graph_input(checking)), graph_ages(output, graph_input(checking))
    assert check.kept and (check.calibration_faces, check.checked_faces) == (64, 48)
    assert check.mae_float32 == pytest.approx(np.abs(exact - ages).mean(), abs=1e-6)
    assert check.mae_int8 == pytest.approx(np.abs(approximate - ages).mean(), abs=1e-6)
    assert check.mean_age_change == pytest.approx(np.abs(approximate - exact).mean(), abs=1e-6)
    assert check.worst_age_change == pytest.approx(np.abs(approximate - exact).max(), abs=1e-6)
    assert check.mean_age_change > 0  # int8 moved the ages: the convolutions were quantised

    # Parity on a batch through `faceage predict`'s engine: the int8 graph against PyTorch's ages
    estimator = AgeEstimator(output)
    assert estimator.engine.info.int8 and estimator.chip_size == CHIP
    model, _ = load_model(tiny_model, torch.device("cpu"))
    pytorch = predict(model, checking, np.arange(len(checking)), 16, torch.device("cpu"), flip=True)["age"]
    int8 = estimator.engine.outputs(checking, True, 16)["age"]
    np.testing.assert_allclose(int8, approximate, atol=1e-4)
    change = np.abs(int8 - pytorch)
    assert change.mean() == pytest.approx(check.mean_age_change, abs=1e-3)
    assert change.max() == pytest.approx(check.worst_age_change, abs=1e-3)


def test_an_int8_graph_that_moves_the_mae_past_the_tolerance_is_not_written(graph, tmp_path):
    faces = graph_input(uint8_faces(40, 4))
    output = tmp_path / "model.int8.onnx"
    check = quantise(graph, output, faces[:16], faces[16:], np.full(24, 30.0), tolerance=1e-9)
    assert not check.kept and not output.exists() and check.mae_change != 0


def pipeline_folder(root: Path, faces: np.ndarray, ages: np.ndarray) -> Path:
    """A folder as the pipeline leaves it, as far as --int8 reads it: dvc.yaml, the ingested faces, the split."""
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "data" / "ingested").mkdir(parents=True)
    np.save(root / "data" / "ingested" / IMAGES_FILE, faces)
    pd.DataFrame({"age": ages}).to_csv(root / "data" / "ingested" / MANIFEST_FILE, index=False)
    splits = ["train", "val"] * (len(faces) // 2)
    pd.DataFrame({"id": range(len(faces)), "split": splits}).to_csv(root / "data" / "split.csv", index=False)
    return root


def test_export_int8_calibrates_on_the_first_validation_faces_and_says_what_it_changed(
    tiny_model, tmp_path, monkeypatch, capsys
):
    faces = uint8_faces(80, 5)  # 40 validation faces: every other one
    ages = np.random.default_rng(6).integers(1, 90, len(faces))
    monkeypatch.chdir(pipeline_folder(tmp_path, faces, ages))
    command = ["export", "--format", "onnx", "--model", str(tiny_model), "--output", "out/model.onnx", "--int8"]
    assert main([*command, "--calibration-faces", "16", "--int8-tolerance", "150"]) == 0
    out = capsys.readouterr().out
    assert "wrote out/model.int8.onnx: int8 on 24 validation faces (calibrated on 16 others): MAE " in out
    checking = graph_input(faces[1::2][16:])
    mae = np.abs(graph_ages(tmp_path / "out" / "model.int8.onnx", checking) - ages[1::2][16:]).mean()
    assert f"-> {mae:.3f} years" in out

    assert main([*command, "--calibration-faces", "16", "--int8-tolerance", "1e-9"]) == 1
    err = capsys.readouterr().err
    assert "over the limit, out/model.int8.onnx not written; keep the float32 graph" in err
    assert len(err.strip().splitlines()) == 1
    assert main([*command, "--calibration-faces", "40"]) == 1
    assert "needs more than --calibration-faces (40) validation faces, has 40" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--format", "torchscript", "--int8"], "--int8 quantises ONNX graphs"),
        (["--format", "onnx", "--int8", "--calibration-faces", "0"], "--calibration-faces must be at least 1"),
        (["--format", "onnx", "--int8", "--int8-tolerance", "-1"], "--int8-tolerance a number of years above 0"),
        (["--format", "onnx", "--int8"], "calibrates on the pipeline's validation faces: no data/split.csv here"),
    ],
)
def test_export_int8_without_what_it_needs_is_one_line(tiny_model, tmp_path, monkeypatch, capsys, options, message):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", str(tiny_model), "--output", "model.onnx", *options]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
