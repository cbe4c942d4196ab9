"""Models of several networks: members' params, one model from networks trained apart, its blend, loading and
export."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import assert_onnx_export_predicts_as_the_model, project_params_with, synthetic_faces, train_members

from faceage.errors import FaceageError
from faceage.model.age_model import AgeModel, untouched_dlib
from faceage.model.checkpoint import checkpoint_of, load_model, save_checkpoint
from faceage.model.inference import predict
from faceage.params import MAIN_MEMBER, Params
from faceage.training.blend import blend_errors
from faceage.training.members import assemble, member_params

AGES = (1, 100)
CPU = torch.device("cpu")
MEMBERS = {
    "wide": {"model": {"backbone": "mobilenet_v2", "pretrained": False, "input_size": 40}, "train": {"seed": 9}},
    "small": {"model": {"input_size": 32}, "augment": {"hflip": 0.0}},
}
BASE = {
    "model": {
        "backbone": "dlib_age_resnet10",
        "input_size": 48,
        "hidden": 0,
        "dropout": 0.0,
        "reference_blend": [0.0, 0.5, 1.0],
    },
    "train": {"head_epochs": 1, "epochs": 1, "batch_size": 16, "seed": 3, "threads": 1, "cpu_bf16": False},
}


def params(members=MEMBERS, **sections) -> Params:
    """The project's settings with :data:`BASE` and ``sections`` changed, and ``members``."""
    return project_params_with({**BASE, **sections}, members=members)


@pytest.fixture(scope="module")
def data():
    return synthetic_faces(48, 56, seed=2, train=32, val=16)


@pytest.fixture(scope="module")
def trained(data):
    """The members of :func:`params` trained, their setups, and the model made of them with its summary."""
    results, setups = train_members(params(), data, AGES)
    return results, setups, assemble(results, setups, params().model.reference_blend)


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    """The trained model's checkpoint, saved."""
    _, setups, (model, _) = trained
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(checkpoint_of(model, [setup.model_params for setup in setups.values()]), path)
    return path


def test_a_member_trains_with_its_changes_on_top_of_the_sections():
    configs = member_params(params())
    assert list(configs) == [MAIN_MEMBER, "wide", "small"]
    wide, small = configs["wide"].model, configs["small"]
    assert (wide.backbone, wide.pretrained, wide.input_size, wide.hidden) == ("mobilenet_v2", False, 40, 0)
    assert configs["wide"].train.seed == 9 and configs["wide"].train.head_epochs == 1
    assert small.model.input_size == 32 and small.augment.hflip == 0.0 and small.train.seed == 3
    blend = params().model.reference_blend
    assert all(config.model.reference_blend == blend and not config.members for config in configs.values())
    assert configs[MAIN_MEMBER] == replace(params(), members={})
    assert member_params(params(members={})) == {MAIN_MEMBER: params(members={})}


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"x": {"model": {"depth": 3}}}, "members.x.model: unknown key(s) depth"),
        ({"x": {"model": {"input_size": 8}}}, "members.x: model.input_size: 8 is not allowed"),
        ({"x": {"model": {"backbone": "dlib_age_resnet10", "input_size": 24}}}, "members.x: model.input_size"),
        ({"x": {"train": {"start_size": 64}}}, "members.x: train.start_size: 64 is above model.input_size"),
        ({"x": {"model": {"reference_blend": [0.5]}}}, "members.x.model: reference_blend cannot differ"),
        ({"x": {"train": {"nproc": 2}}}, "members.x.train: nproc cannot differ"),
        ({"x": {"optimiser": {}}}, "members.x: unknown key(s) optimiser"),
        ({"x": {"train": "fast"}}, "members.x.train: expected a mapping"),
        ({MAIN_MEMBER: {}}, "members: 'main' is not allowed"),
        ({"a b": {}}, "members: 'a b' is not allowed"),
    ],
)
def test_bad_members_are_refused_in_one_line_naming_the_member(members, message):
    with pytest.raises(FaceageError, match=r"^[^\n]*$") as error:
        params(members=members)
    assert str(error.value).startswith(message), str(error.value)


def test_the_model_predicts_the_mean_of_its_networks_blended_as_validation_chose(trained, saved, data):
    results, setups, (model, summary) = trained
    images, ages = data[0], data[1]
    val_ids = np.arange(32, 48)
    own = [
        predict(AgeModel.of(result.network, setups[name].model_params.input_size), images, val_ids, 8, CPU)["age"]
        for name, result in results.items()
    ]
    mean = np.mean(own, axis=0)
    # dlib's model sees the faces as stored, resized straight to its 64 px, as evaluate scores it
    reference = predict(untouched_dlib(AGES), images, val_ids, 8, CPU)["age"]
    errors = blend_errors(mean, reference, ages[val_ids], (0.0, 0.5, 1.0))
    chosen = summary["reference_blend"]
    assert chosen == model.blend == min(errors, key=errors.get)
    assert summary["best_val_mae"] == pytest.approx(errors[chosen], abs=1e-3)
    assert {name: s["best_val_mae"] for name, s in summary["members"].items()} == {
        name: r.summary["best_val_mae"] for name, r in results.items()
    }
    loaded, checkpoint = load_model(saved, CPU)
    assert isinstance(loaded, AgeModel) and loaded.input_sizes == (48, 40, 32)
    assert loaded.input_size == 56 and checkpoint.blend == chosen  # faces as stored: each network resizes them
    ages_loaded = predict(loaded, images, val_ids, 8, CPU)["age"]
    np.testing.assert_allclose(ages_loaded, (1 - chosen) * mean + chosen * reference, atol=1e-3)


@pytest.mark.slow
def test_the_model_exports_as_one_graph_that_predicts_as_it_does(saved, data, tmp_path):
    assert_onnx_export_predicts_as_the_model(saved, data[0][:3], tmp_path)


def test_a_checkpoint_whose_networks_do_not_fit_its_weights_is_refused_in_one_line(saved, tmp_path):
    values = torch.load(saved, weights_only=True)
    values["networks"][1] = {**values["networks"][1], "backbone": "resnet18"}
    torch.save(values, tmp_path / "model.pt")
    with pytest.raises(
        FaceageError, match=r"model.pt: its weights do not fit a dlib_age_resnet10\+resnet18\+"
    ) as error:
        load_model(tmp_path / "model.pt", CPU)
    assert "\n" not in str(error.value)
