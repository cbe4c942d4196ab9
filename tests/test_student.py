"""The student: one network taught by the whole model's age distributions, kept in its place when close enough on
validation."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import project_params_with, settings, synthetic_faces, train_members

from faceage.errors import FaceageError
from faceage.evaluation.model_card import describe_model, licences
from faceage.model.age_model import AgeModel, untouched_dlib
from faceage.model.batches import to_input
from faceage.model.checkpoint import Checkpoint, Teacher, read_checkpoint, save_checkpoint
from faceage.model.networks import BACKBONES, DLIB_AGE_LICENCE
from faceage.params import MAIN_MEMBER, Params
from faceage.sections import AugmentParams, ModelParams, TrainParams
from faceage.training.features import taught_distributions
from faceage.training.loop import TrainResult, train_network
from faceage.training.members import assemble
from faceage.training.setup import TrainingSetup
from faceage.training.student import student_model, student_setup, student_summary

AGES = (1, 100)
CPU = torch.device("cpu")
NULL = torch.autocast("cpu", enabled=False)
BASE = {
    "model": {"backbone": "dlib_age_resnet10", "input_size": 32, "hidden": 0, "dropout": 0.0, "reference_blend": [0.5]},
    "train": {"head_epochs": 1, "epochs": 2, "batch_size": 16, "seed": 3, "threads": 1, "cpu_bf16": False},
}
TINY_TRAINING = (settings(TrainParams, head_epochs=1, epochs=0, batch_size=16, threads=1), settings(AugmentParams))
ON = {"distill_weight": 1.0}  # a student trained
WIDE = {"wide": {"model": {"backbone": "mobilenet_v2", "pretrained": False, "input_size": 40}}}


def params(members=WIDE, student=None, **sections) -> Params:
    """The project's settings with :data:`BASE`, ``sections`` and ``student`` changed, and ``members``."""
    return project_params_with({**BASE, **sections, "student": student or {}}, members=members)


@pytest.fixture(scope="module")
def data():
    return synthetic_faces(80, 48, seed=4, train=40, val=24)


@pytest.fixture(scope="module")
def networks(data):
    """Two networks trained apart (main and ``wide``) and their setups."""
    return train_members(params(), data, AGES)


def teacher(networks, blend: float) -> tuple[AgeModel, TrainingSetup]:
    """The networks as one model blended with dlib's untouched model by ``blend``, and the main network's setup."""
    results, setups = networks
    return assemble(results, setups, (blend,))[0], setups[MAIN_MEMBER]


def test_the_age_distribution_is_the_networks_mean_blended_with_dlibs(networks, data):
    model, _ = teacher(networks, 0.5)
    x = to_input(data[0][:6], model.input_size, CPU)
    with torch.no_grad():
        networks = [
            net(torch.nn.functional.interpolate(x, size=s, mode="bilinear", antialias=True, align_corners=False))
            for net, s in zip(model.networks, model.input_sizes, strict=True)
        ]
        mean = torch.stack([out["age_output"].softmax(1) for out in networks]).mean(0)
        expected = 0.5 * mean + 0.5 * model.reference_distribution(x)
        distribution = model.age_distribution(x)
        age = model.estimate(x)["age"]
    torch.testing.assert_close(distribution, expected, atol=2e-3, rtol=0)
    torch.testing.assert_close(distribution.sum(1), torch.ones(6))
    torch.testing.assert_close(distribution @ model.bin_ages, age, atol=1e-3, rtol=0)  # the age it gives


def test_a_model_with_a_regression_network_has_no_distribution_to_teach(data):
    network = TrainingSetup(
        *data,
        settings(ModelParams, backbone="dlib_age_resnet10", head="regression", input_size=32),
        *TINY_TRAINING,
        AGES,
    )
    model = AgeModel.of(train_network(network, CPU).network, 32)
    with pytest.raises(ValueError, match="no age distribution"):
        model.age_distribution(to_input(data[0][:2], 32, CPU))


def test_taught_distributions_are_the_teachers_on_the_train_faces_and_zero_elsewhere(networks, data):
    model, main = teacher(networks, 0.5)
    table = taught_distributions(model, data[0], main.train_ids[::-1], 7, CPU, NULL, show_progress=False)
    with torch.no_grad():
        expected = model.age_distribution(to_input(data[0][main.train_ids], model.input_size, CPU))
    torch.testing.assert_close(table[main.train_ids], expected, atol=1e-5, rtol=0)
    others = np.setdiff1d(np.arange(len(data[0])), main.train_ids)
    assert len(others) > 0 and table[others].abs().sum() == 0


def gap(network_model: AgeModel, teacher: AgeModel, images: np.ndarray) -> float:
    """Mean KL divergence of a model's age distributions from the teacher's."""
    with torch.no_grad():
        target = teacher.age_distribution(to_input(images, teacher.input_size, CPU))
        own = network_model.age_distribution(to_input(images, network_model.input_size, CPU))
    return float((target * (target.clamp(min=1e-12).log() - own.clamp(min=1e-12).log())).sum(1).mean())


def test_a_student_learns_the_teachers_distributions(networks, data):
    model, main = teacher(networks, 0.0)  # dlib's untouched model is no teacher of these synthetic faces' ages
    student = student_setup(main, params(student={"distill_weight": 2.0}), model)
    assert student.params.distill_weight == 2.0 and student.model_params == main.model_params
    taught = student_model(train_network(student, CPU), student)
    plain = student_model(train_network(replace(student, teacher=None, params=main.params), CPU), student)
    assert taught.blend == 0 and len(taught.networks) == 1
    images = data[0][main.val_ids]
    assert gap(taught, model, images) < gap(plain, model, images) * 0.5


def test_the_teacher_decides_the_student_setups_fingerprint(networks):
    model, main = teacher(networks, 0.5)
    taught = student_setup(main, params(), model)
    assert taught.fingerprint() == student_setup(main, params(), model).fingerprint()
    assert taught.fingerprint() != replace(taught, teacher=untouched_dlib(AGES)).fingerprint()
    assert taught.fingerprint() != student_setup(main, params(), teacher(networks, 0.0)[0]).fingerprint()


@pytest.mark.parametrize(
    ("student_mae", "model_mae", "tolerance", "kept"),
    [(5.04, 5.0, 0.05, True), (5.05, 5.0, 0.05, True), (5.06, 5.0, 0.05, False), (4.9, 5.0, 0.0, True)],
)
def test_the_student_is_kept_within_the_tolerance_of_the_models_validation_mae(student_mae, model_mae, tolerance, kept):
    result = TrainResult(torch.nn.Linear(1, 1), [], {"best_val_mae": student_mae, "seconds": 1.0})
    summary = student_summary(result, model_mae, tolerance)
    assert summary["kept"] is kept
    assert summary["val_mae_behind"] == pytest.approx(student_mae - model_mae, abs=1e-9)
    assert (summary["best_val_mae"], summary["model_val_mae"], summary["tolerance"]) == (
        student_mae,
        model_mae,
        tolerance,
    )


@pytest.mark.parametrize(
    ("members", "student", "head", "message"),
    [
        ({"student": {}}, None, "classification", "members: 'student' is not allowed"),
        (
            {"flat": {"model": {"head": "regression"}}},
            ON,
            "classification",
            "members.flat: student.distill_weight needs model.head: classification",
        ),
        ({}, ON, "regression", "^student.distill_weight needs model.head: classification"),
        ({}, {"distill_weight": -1}, "classification", "student.distill_weight"),
        ({}, {"tolerance": 200}, "classification", "student.tolerance"),
    ],
)
def test_bad_student_settings_are_one_line(members, student, head, message):
    with pytest.raises(FaceageError, match=message) as raised:
        params(members, student, model={**BASE["model"], "head": head})
    assert "\n" not in str(raised.value)


def test_a_students_checkpoint_and_card_name_its_teacher_and_the_licences_of_what_taught_it(tmp_path):
    main = settings(ModelParams)
    wide = replace(main, backbone="mobilenet_v2", input_size=112)
    dataset = {"name": "UTKFace.tar.gz", "kind": "real"}
    saved = Checkpoint((main,), 0.0, (1, 116), 128, {}, dataset=dataset, teacher=Teacher((main, wide), 0.25))
    save_checkpoint(saved, tmp_path / "student.pt")
    student = read_checkpoint(tmp_path / "student.pt")
    assert student.teacher == saved.teacher and student.networks == (main,)
    text = describe_model(student)
    assert text.startswith(f"A student: 1 network(s) whose ages are averaged: {main.backbone} (classification head")
    assert "teacher model, 2 network(s)" in text and "mobilenet_v2 (classification head, 112 px)" in text
    assert "at weight 0.25" in text
    found = licences(student)
    assert f"teacher's mobilenet_v2 starting weights: {BACKBONES['mobilenet_v2'].licence}" in found
    assert f"teacher's blended reference model: {DLIB_AGE_LICENCE}" in found
    assert not any(line.startswith("blended reference model") for line in found)  # the student itself blends none
