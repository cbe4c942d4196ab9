import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ASTRONAUT
from PIL import Image

from faceage.cli import main
from faceage.model.checkpoint import load_model
from faceage.model.inference import predict
from faceage.serving.engines import OnnxEngine, TorchEngine


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """A batch of 3 chips (the export traced a batch of 2, so this checks the dynamic batch size)."""
    return np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


def reference(model_path, chips: np.ndarray, flip: bool) -> dict[str, np.ndarray]:
    model, _ = load_model(model_path, torch.device("cpu"))
    return predict(model, chips, np.arange(len(chips)), 8, torch.device("cpu"), flip=flip)


def export_onnx(model: Path, output: Path, *options: str) -> None:
    """``faceage export`` of ``model`` to the ONNX graph ``output``, with ``options``."""
    assert main(["export", "--format", "onnx", "--model", str(model), "--output", str(output), *options]) == 0


def as_graph_input(chips: np.ndarray) -> np.ndarray:
    """Chips as the exported graph takes them: float32 RGB in [0, 1], channels first (here already at input size)."""
    return np.ascontiguousarray(chips.transpose(0, 3, 1, 2), dtype=np.float32) / 255


@pytest.mark.parametrize("flip", [True, False])
def test_onnx_matches_pytorch(tiny_model, chips, tmp_path, flip, capsys):
    import onnxruntime as ort

    output = tmp_path / "model.onnx"
    export_onnx(tiny_model, output, "--flip" if flip else "--no-flip")
    assert "input (batch, 3, 32, 32)" in capsys.readouterr().out
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    names = ["age", "age_low", "age_high", "female_probability"]
    assert [o.name for o in session.get_outputs()] == names
    expected = reference(tiny_model, chips, flip)
    for batch in (chips, chips[:1]):
        for name, values in zip(names, session.run(None, {"chips": as_graph_input(batch)}), strict=True):
            np.testing.assert_allclose(values, expected[name][: len(batch)], atol=1e-3, err_msg=name)
    assert (expected["age_low"] < expected["age"]).all() and (expected["age"] < expected["age_high"]).all()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_matches_pytorch(tiny_model, chips, tmp_path):
    output = tmp_path / "model.ts"
    assert main(["export", "--format", "torchscript", "--model", str(tiny_model), "--output", str(output)]) == 0
    loaded = torch.jit.load(str(output))
    result = loaded(torch.from_numpy(as_graph_input(chips)))
    expected = reference(tiny_model, chips, flip=True)
    assert set(result) == {"age", "age_low", "age_high", "female_probability"}
    for name, values in result.items():
        np.testing.assert_allclose(values.numpy(), expected[name], atol=1e-3, err_msg=name)


@pytest.fixture(scope="module")
def graphs(tiny_model, tmp_path_factory) -> dict[bool, Path]:
    """The tiny model exported to ONNX with mirror-image averaging (True) and without (False)."""
    folder = tmp_path_factory.mktemp("graphs")
    paths = {flip: folder / f"flip{flip}.onnx" for flip in (True, False)}
    for flip, path in paths.items():
        export_onnx(tiny_model, path, "--flip" if flip else "--no-flip")
    return paths


def predicted(args: list[str], capsys) -> dict:
    assert main(["predict", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("flip", [True, False])
def test_predict_runs_the_exported_graph_as_it_runs_the_checkpoint(tiny_model, graphs, tmp_path, flip, capsys):
    crops = []  # ready crops of several sizes (cut to the chip size as the checkpoint's), and a photo to find a face in
    for index, side in enumerate((20, 32, 47, 128)):
        crops.append(tmp_path / f"crop{index}.png")
        Image.open(ASTRONAUT).resize((side, side)).save(crops[-1])
    flip_option = ["--flip" if flip else "--no-flip"]
    for args in ([*map(str, crops), "--aligned"], [str(ASTRONAUT)]):
        by_checkpoint = predicted(
            [*args, "--model", str(tiny_model), *flip_option, "--over", "18", "--no-bf16"], capsys
        )
        by_graph = predicted([*args, "--model", str(graphs[flip]), *flip_option, "--over", "18"], capsys)
        assert by_graph["interval_level"] == by_checkpoint["interval_level"] == 0.9
        for ours, theirs in zip(by_graph["results"], by_checkpoint["results"], strict=True):
            assert [face["box"] for face in ours["faces"]] == [face["box"] for face in theirs["faces"]]
            for face, reference in zip(ours["faces"], theirs["faces"], strict=True):
                for key in ("age_years", "age_low", "age_high", "female_probability"):
                    assert face[key] == pytest.approx(reference[key], abs=0.011), key
                assert face["over"] == reference["over"]


@pytest.mark.parametrize("calibrated_flip", [True, False])
def test_mirror_images_are_averaged_by_default_as_the_intervals_were_calibrated(
    tiny_model, tmp_path, calibrated_flip, capsys
):
    checkpoint = torch.load(tiny_model, weights_only=False)
    checkpoint["calibration"]["flip"] = calibrated_flip
    model, graph, crop = tmp_path / "model.pt", tmp_path / "model.onnx", tmp_path / "crop.png"
    torch.save(checkpoint, model)
    export_onnx(model, graph)
    assert OnnxEngine(graph).flip is calibrated_flip and "wrote" in capsys.readouterr().out
    Image.open(ASTRONAUT).resize((32, 32)).save(crop)
    flag, other = ("--flip", "--no-flip") if calibrated_flip else ("--no-flip", "--flip")

    def age(path: Path, *options: str) -> float:
        document = predicted([str(crop), "--aligned", "--model", str(path), *options], capsys)
        return document["results"][0]["faces"][0]["age_years"]

    calibrated = age(model, flag, "--no-bf16")  # the graph runs in float32
    for path, options in ((model, ("--no-bf16",)), (graph, ()), (graph, (flag,))):
        assert age(path, *options) == pytest.approx(calibrated, abs=0.011)
    assert abs(age(model, other, "--no-bf16") - calibrated) > 0.011  # the mirror image changes this network's age


def test_a_graph_exported_the_other_way_for_flip_is_one_line(graphs, capsys):
    for flip, advice in ((True, "drop --no-flip"), (False, "drop --flip")):
        assert main(["predict", str(ASTRONAUT), "--model", str(graphs[flip]), "--no-flip" if flip else "--flip"]) == 1
        err = capsys.readouterr().err
        assert advice in err and len(err.strip().splitlines()) == 1
    assert main(["predict", str(ASTRONAUT), "--model", str(graphs[False]), "--bf16"]) == 1
    err = capsys.readouterr().err
    assert "an ONNX graph runs as it was exported: drop --bf16" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("native", [True, False])
def test_pytorch_runs_under_bfloat16_by_default_only_where_the_cpu_computes_it_natively(
    tiny_model, monkeypatch, native
):
    monkeypatch.setattr("faceage.serving.engines.native_cpu_bf16", lambda: native)
    model, _ = load_model(tiny_model, torch.device("cpu"))
    assert TorchEngine(model, torch.device("cpu")).bf16 is native
    assert TorchEngine(model, torch.device("cpu"), bf16=not native).bf16 is not native
    assert TorchEngine(model, torch.device("cuda"), bf16=True).bf16 is False  # bfloat16 autocast is the CPU's only
    engine = TorchEngine(model, torch.device("cpu"))
    engine.set_precision(not native)
    assert engine.precision == ("float32" if native else "bfloat16 autocast")


def test_bfloat16_ages_are_near_the_float32_ones(tiny_model):
    model, _ = load_model(tiny_model, torch.device("cpu"))
    chips = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    float32, bf16 = (TorchEngine(model, torch.device("cpu"), bf16).outputs(chips, False, 16) for bf16 in (False, True))
    for key in ("age", "age_low", "age_high"):
        gap = np.abs(bf16[key] - float32[key])
        assert 0 < gap.max() < 0.5 and gap.mean() < 0.1, key  # computed in bfloat16, within a fraction of a year


@pytest.mark.parametrize(
    ("description", "message"),
    [
        (None, "has no faceage description"),
        ("{not json", "description is damaged"),
        ("[1, 2]", "description is damaged"),
        ('{"chip_size": 32}', "description is damaged"),  # keys missing
        ('{"chip_size": "32", "flip": true, "level": null, "faces": null, "dataset": null, "run_id": null}', "damaged"),
        (
            '{"chip_size": 32, "flip": 1, "level": null, "faces": null, "dataset": null, "run_id": null, "x": 1}',
            "damaged",
        ),
    ],
)
def test_a_graph_without_a_sound_faceage_description_is_one_line(tmp_path, description, message, capsys):
    import onnx
    from onnx import TensorProto, helper

    path = tmp_path / "plain.onnx"  # a valid graph, not written by faceage export
    tensor = helper.make_tensor_value_info("chips", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["chips"], ["age"])], "g", [tensor], [tensor])
    graph.output[0].name = "age"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    if description is not None:
        helper.set_model_props(model, {"faceage": description})
    onnx.save_model(model, path)
    assert main(["predict", str(ASTRONAUT), "--model", str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_file_onnx_runtime_cannot_load_is_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage" * 50)
    assert main(["predict", str(ASTRONAUT), "--model", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "is not an ONNX graph" in err and len(err.strip().splitlines()) == 1, err
