import numpy as np
import pytest
import torch

from faceage.cli import main
from faceage.model.checkpoint import load_model
from faceage.model.inference import predict


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """A batch of 3 chips (the export traced a batch of 2, so this checks the dynamic batch size)."""
    return np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


def reference(model_path, chips: np.ndarray, flip: bool) -> dict[str, np.ndarray]:
    model, _ = load_model(model_path, torch.device("cpu"))
    return predict(model, chips, np.arange(len(chips)), 8, torch.device("cpu"), flip=flip)


def as_graph_input(chips: np.ndarray) -> np.ndarray:
    """Chips as the exported graph takes them: float32 RGB in [0, 1], channels first (here already at input size)."""
    return np.ascontiguousarray(chips.transpose(0, 3, 1, 2), dtype=np.float32) / 255


@pytest.mark.parametrize("flip", [True, False])
def test_onnx_matches_pytorch(tiny_model, chips, tmp_path, flip, capsys):
    import onnxruntime as ort

    output = tmp_path / "model.onnx"
    assert (
        main(
            ["export", "--format", "onnx", "--model", str(tiny_model), "--output", str(output)]
            + ["--no-flip"] * (not flip)
        )
        == 0
    )
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
