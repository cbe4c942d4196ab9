"""Ensembles: members' params, one model from networks trained apart, its blend, loading and export."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_onnx_export_predicts_as_the_model

from faceage.errors import FaceageError
from faceage.evaluation.evaluate import reference_ages
from faceage.model.inference import checkpoint_input_size, load_checkpoint, predict
from faceage.model.networks import AgeEnsemble, build_model
from faceage.params import MAIN_MEMBER, EvaluateParams, Params, from_dict
from faceage.training.loop import TrainingSetup, blend_errors, train_model
from faceage.training.members import combine, member_params

AGES = (1, 100)
CPU = torch.device("cpu")
MEMBERS = {
    "wide": {"model": {"backbone": "mobilenet_v2", "pretrained": False, "input_size": 40}, "train": {"seed": 9}},
    "small": {"model": {"input_size": 32}, "augment": {"hflip": 0.0}},
}
BASE = {
    "model": {"input_size": 48, "hidden": 0, "dropout": 0.0, "reference_blend": [0.0, 0.5, 1.0]},
    "train": {"head_epochs": 1, "epochs": 1, "batch_size": 16, "seed": 3, "threads": 1, "cpu_bf16": False},
}


def params(members=MEMBERS, **sections) -> Params:
    return from_dict(Params, {**BASE, **sections, "members": members})


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    ages = rng.integers(1, 80, 48)
    images = np.clip(ages[:, None, None, None] * 3 + rng.normal(0, 20, (48, 56, 56, 3)), 0, 255).astype(np.uint8)
    split = pd.DataFrame({"id": range(48), "split": ["train"] * 32 + ["val"] * 16})
    return images, ages, np.zeros(48, dtype=int), split


@pytest.fixture(scope="module")
def trained(data):
    """The members of :func:`params` trained, their setups, and the ensemble made of them."""
    setups = {
        name: TrainingSetup(*data, member.model, member.train, member.augment, AGES)
        for name, member in member_params(params()).items()
    }
    results = {name: train_model(setup, CPU) for name, setup in setups.items()}
    return results, setups, combine(results, setups, params().model.reference_blend)


def test_a_member_trains_with_its_changes_on_top_of_the_sections_and_without_a_blend():
    configs = member_params(params())
    assert list(configs) == [MAIN_MEMBER, "wide", "small"]
    wide, small = configs["wide"].model, configs["small"]
    assert (wide.backbone, wide.pretrained, wide.input_size, wide.hidden) == ("mobilenet_v2", False, 40, 0)
    assert configs["wide"].train.seed == 9 and configs["wide"].train.head_epochs == 1
    assert small.model.input_size == 32 and small.augment.hflip == 0.0 and small.train.seed == 3
    assert all(config.model.reference_blend == (0.0,) and not config.members for config in configs.values())
    assert configs[MAIN_MEMBER].model == replace(params().model, reference_blend=(0.0,))
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


def test_the_ensemble_predicts_the_mean_of_its_members_blended_as_validation_chose(trained, data, tmp_path):
    results, setups, ensemble_result = trained
    images, ages = data[0], data[1]
    val_ids = np.arange(32, 48)
    own = []
    for name, result in results.items():
        network = build_model(setups[name].model_params, AGES)
        network.load_state_dict(result.checkpoint["state_dict"])
        own.append(predict(network, images, val_ids, setups[name].model_params.input_size, 8, CPU)["age"])
    mean = np.mean(own, axis=0)
    # dlib's model sees the faces as stored, resized straight to its 64 px, as evaluate scores it
    bins = torch.arange(AGES[0], AGES[1] + 1, dtype=torch.float32)
    reference = reference_ages(images, val_ids, bins, EvaluateParams(flip_tta=False), CPU)
    errors = blend_errors(mean, reference, ages[val_ids], (0.0, 0.5, 1.0))
    chosen = ensemble_result.summary["reference_blend"]
    assert chosen == min(errors, key=errors.get)
    assert ensemble_result.summary["best_val_mae"] == pytest.approx(errors[chosen], abs=1e-3)
    assert {name: s["best_val_mae"] for name, s in ensemble_result.summary["members"].items()} == {
        name: r.summary["best_val_mae"] for name, r in results.items()
    }
    torch.save(ensemble_result.checkpoint, tmp_path / "model.pt")
    loaded, checkpoint = load_checkpoint(tmp_path / "model.pt", CPU)
    assert isinstance(loaded, AgeEnsemble) and loaded.input_sizes == (48, 40, 32)
    assert checkpoint_input_size(checkpoint) == 56  # faces as stored: each member resizes them
    ages_loaded = predict(loaded, images, val_ids, 56, 8, CPU)["age"]
    np.testing.assert_allclose(ages_loaded, (1 - chosen) * mean + chosen * reference, atol=1e-3)


def test_the_ensemble_exports_as_one_graph_that_predicts_as_it_does(trained, data, tmp_path):
    assert_onnx_export_predicts_as_the_model(trained[2].checkpoint, data[0][:3], tmp_path)


def test_a_checkpoint_whose_members_do_not_fit_its_weights_is_refused_in_one_line(trained, tmp_path):
    checkpoint = trained[2].checkpoint
    members = [{**checkpoint["members"][0], "backbone": "resnet18"}, checkpoint["members"][1]]
    torch.save({**checkpoint, "members": members}, tmp_path / "model.pt")
    with pytest.raises(FaceageError, match=r"model.pt: its weights do not fit an ensemble \(") as error:
        load_checkpoint(tmp_path / "model.pt", CPU)
    assert "\n" not in str(error.value)
