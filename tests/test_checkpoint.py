"""Checkpoints: the typed layout round-trips, and models saved by the earlier layout load and predict the ages
they predicted then."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from faceage.errors import FaceageError
from faceage.model.age_model import AgeModel
from faceage.model.checkpoint import FORMAT, checkpoint_of, load_model, read_checkpoint, save_checkpoint
from faceage.model.inference import predict

LEGACY = Path(__file__).parent / "data" / "legacy"
CPU = torch.device("cpu")


def legacy_writer():
    spec = importlib.util.spec_from_file_location("make_checkpoints", LEGACY / "make_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    writer = legacy_writer()
    return writer.write(tmp_path_factory.mktemp("legacy")), writer.faces()


@pytest.mark.parametrize("name", ["single", "ensemble"])
@pytest.mark.parametrize("view", ["plain", "flip"])
def test_a_model_saved_in_the_earlier_layout_predicts_the_ages_it_did(legacy, name, view):
    paths, faces = legacy
    expected = json.loads((LEGACY / "ages.json").read_text())[name]
    model, checkpoint = load_model(paths[name], CPU)
    assert model.input_size == expected["input_size"]
    outputs = predict(model, faces, np.arange(len(faces)), 4, CPU, flip=view == "flip")
    np.testing.assert_allclose(outputs["age"], expected[view]["age"], atol=1e-3)
    if "gender" in expected[view]:
        np.testing.assert_allclose(outputs["female_probability"], expected[view]["gender"], atol=1e-4)
    assert checkpoint.blend == {"single": 0.25, "ensemble": 0.125}[name]
    assert len(checkpoint.networks) == {"single": 1, "ensemble": 2}[name]


def test_an_earlier_checkpoint_resaved_in_this_layout_reads_back_the_same(legacy, tmp_path):
    paths, faces = legacy
    model, checkpoint = load_model(paths["ensemble"], CPU)
    resaved = tmp_path / "model.pt"
    save_checkpoint(checkpoint_of(model, list(checkpoint.networks), faces=checkpoint.faces, run_id="r1"), resaved)
    assert torch.load(resaved, weights_only=True)["format"] == FORMAT
    again = read_checkpoint(resaved)
    assert (again.networks, again.blend, again.age_range, again.image_size) == (
        checkpoint.networks,
        checkpoint.blend,
        checkpoint.age_range,
        checkpoint.image_size,
    )
    assert again.faces == checkpoint.faces and again.run_id == "r1"
    reloaded, _ = load_model(resaved, CPU)
    assert isinstance(reloaded, AgeModel)
    ids = np.arange(len(faces))
    np.testing.assert_allclose(predict(reloaded, faces, ids, 4, CPU)["age"], predict(model, faces, ids, 4, CPU)["age"])


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"format": 99}, "checkpoint format 99 is not 2"),
        ({"format": 2, "blend": 0.0}, "it has no age_range, image_size, networks, state_dict"),
        (
            {"format": 2, "networks": 3, "blend": 0, "age_range": [1, 9], "image_size": 8, "state_dict": {}},
            "not a faceage",
        ),
        (
            {"format": 2, "networks": [{"x": 1}], "blend": 0, "age_range": [1, 9], "image_size": 8, "state_dict": {}},
            "unknown key",
        ),
        ({"model": {}}, "it has no age_range, image_size, state_dict"),
        ([1, 2], "it holds a list"),
    ],
)
def test_a_checkpoint_of_another_shape_is_refused_in_one_line(values, reason, tmp_path):
    torch.save(values, tmp_path / "model.pt")
    with pytest.raises(FaceageError, match=r"^[^\n]*$") as error:
        read_checkpoint(tmp_path / "model.pt")
    assert reason in str(error.value)
