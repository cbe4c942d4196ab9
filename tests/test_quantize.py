"""int8 graphs: calibrated on validation faces, checked against the float32 graph on the other validation faces,
written only within the tolerance, and run by ONNX Runtime as any exported graph."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, pipeline_folder

from faceage.cli import main
from faceage.model.checkpoint import load_model
from faceage.model.inference import predict
from faceage.serving import quantize
from faceage.serving.export import export_model
from faceage.serving.photos import AgeEstimator
from faceage.serving.quantize import QuantisationCheck, chosen_networks, conv_networks, graph_ages, quantise

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


def fake_check(moves: dict[str, float], tried: list) -> callable:
    """A check whose MAE change is the sum of each quantised network's ``moves``, recording what was tried."""

    def check(networks: tuple[str, ...]) -> QuantisationCheck:
        tried.append(networks)
        change = sum(moves[network] for network in networks)
        return QuantisationCheck(8, 8, 5.0, 5.0 + change, change, change, 0.02, networks, len(moves))

    return check


@pytest.mark.parametrize(
    ("moves", "chosen", "tries"),
    [
        ({"a": 0.01, "b": 0.005}, ("a", "b"), 1),  # all within the tolerance: one check
        ({"a": 0.01, "b": 0.3}, ("a",), 3),  # b alone moves too much: a is kept alone
        ({"a": 0.01, "b": 0.015, "c": 0.5}, ("a", "b"), 5),  # the two that keep it, checked together
        ({"a": 0.015, "b": 0.015}, ("a", "b"), 3),  # each keeps it alone, not together: refused
        ({"a": 0.3, "b": 0.3}, ("a", "b"), 3),  # none keeps it: the check of all, refused
        ({"": 0.3}, ("",), 1),  # one network: nothing else to try
    ],
)
def test_the_networks_quantised_are_those_that_keep_the_mae_alone_and_together(moves, chosen, tries):
    tried = []
    check = chosen_networks(list(moves), fake_check(moves, tried))
    assert check.networks == chosen and len(set(tried)) == tries  # quantise() checks each choice once
    assert check.kept == (abs(sum(moves[n] for n in chosen)) < 0.02)


@pytest.fixture(scope="module")
def two_networks(tmp_path_factory) -> tuple[Path, list[int]]:
    """A checkpoint of two untrained networks of different kinds, and each one's number of convolutions."""
    from conftest import settings

    from faceage.model.age_model import AgeModel
    from faceage.model.checkpoint import checkpoint_of, save_checkpoint
    from faceage.model.networks import build_network
    from faceage.sections import FacesParams, ModelParams

    networks = [
        settings(ModelParams, backbone=name, pretrained=False, input_size=CHIP, reference_blend=(0.0,))
        for name in ("resnet18", "mobilenet_v3_small")
    ]
    torch.manual_seed(0)
    model = AgeModel([build_network(p, (1, 100)) for p in networks], [CHIP, CHIP], 0.0, (1, 100), CHIP).eval()
    path = tmp_path_factory.mktemp("two") / "model.pt"
    save_checkpoint(checkpoint_of(model, networks, faces=settings(FacesParams)), path)
    counts = [sum(isinstance(m, torch.nn.Conv2d) for m in network.modules()) for network in model.networks]
    return path, counts


def test_only_the_chosen_networks_convolutions_are_quantised(two_networks, tmp_path, monkeypatch):
    import onnx

    path, counts = two_networks
    graph = tmp_path / "model.onnx"
    export_model(path, graph, "onnx")
    networks = conv_networks(onnx.load_model(str(graph)))
    assert {name: len(nodes) for name, nodes in networks.items()} == {
        "model.networks.0": counts[0],
        "model.networks.1": counts[1],
    }

    faces = graph_input(uint8_faces(40, 7))
    monkeypatch.setattr(quantize, "chosen_networks", lambda names, check: check((names[1],)))
    output = tmp_path / "model.int8.onnx"
    check = quantise(graph, output, faces[:16], faces[16:], np.full(24, 30.0), tolerance=150)
    assert check.kept and check.networks == ("model.networks.1",) and check.of_networks == 2
    written = onnx.load_model(str(output))
    made_by = {out: node.op_type for node in written.graph.node for out in node.output}
    int8 = {
        node.name: made_by.get(node.input[1]) == "DequantizeLinear"
        for node in written.graph.node
        if node.op_type == "Conv"
    }
    assert [int8[name] for name in networks["model.networks.0"]] == [False] * counts[0]
    assert [int8[name] for name in networks["model.networks.1"]] == [True] * counts[1]
    assert check.mean_age_change == pytest.approx(
        np.abs(graph_ages(output, faces[16:]) - graph_ages(graph, faces[16:])).mean(), abs=1e-6
    )


def test_export_int8_calibrates_on_the_first_validation_faces_and_says_what_it_changed(
    tiny_model, tmp_path, monkeypatch, capsys
):
    faces = uint8_faces(80, 5)  # 40 validation faces: every other one
    ages = np.random.default_rng(6).integers(1, 90, len(faces))
    monkeypatch.chdir(pipeline_folder(tmp_path, faces, ages))
    command = ["export", "--format", "onnx", "--model", str(tiny_model), "--output", "out/model.onnx", "--int8"]
    assert main([*command, "--calibration-faces", "16", "--int8-tolerance", "150"]) == 0
    out = capsys.readouterr().out
    assert (
        "wrote out/model.int8.onnx: int8 (convolutions) on 24 validation faces (calibrated on 16 others): MAE " in out
    )
    checking = graph_input(faces[1::2][16:])
    mae = np.abs(graph_ages(tmp_path / "out" / "model.int8.onnx", checking) - ages[1::2][16:]).mean()
    assert f"-> {mae:.3f} years" in out

    assert main([*command, "--calibration-faces", "16", "--int8-tolerance", "1e-9"]) == 1
    err = capsys.readouterr().err
    assert "over the limit, out/model.int8.onnx not written; keep the float32 graph" in err
    assert len(err.strip().splitlines()) == 1
    assert main(command) == 0  # params.yaml's 256 calibration faces: half of the 40, the others check
    assert "on 20 validation faces (calibrated on 20 others)" in capsys.readouterr().out


def test_export_int8_without_two_validation_faces_is_one_line(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(pipeline_folder(tmp_path, uint8_faces(2, 5), np.array([20, 30])))
    assert main(["export", "--format", "onnx", "--model", str(tiny_model), "--int8"]) == 1
    err = capsys.readouterr().err
    assert "calibrated and checked on validation faces: the split has 1" in err and len(err.strip().splitlines()) == 1


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
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", str(tiny_model), "--output", "model.onnx", *options]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
