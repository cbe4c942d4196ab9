"""Levers that keep what pretraining knew: per-block learning rates, L2-SP, distillation from dlib's untouched
age model and blending with it; and progressive resizing."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_onnx_export_predicts_as_the_model, settings, synthetic_faces

from faceage.model.age_model import AgeModel, untouched_dlib
from faceage.model.batches import to_input
from faceage.model.checkpoint import checkpoint_of, load_model, save_checkpoint
from faceage.model.inference import predict
from faceage.model.networks import build_network, freeze_trunk
from faceage.params import MAIN_MEMBER
from faceage.sections import AugmentParams, ModelParams, TrainParams
from faceage.training import features, loop
from faceage.training.loop import train_network
from faceage.training.losses import total_loss
from faceage.training.members import assemble
from faceage.training.optim import parameter_groups, trunk_blocks
from faceage.training.setup import TrainingSetup, autocast

AGES = (1, 100)
CPU = torch.device("cpu")
DLIB = settings(ModelParams, backbone="dlib_age_resnet10", input_size=32, hidden=0, dropout=0.0, reference_blend=(0.0,))
TRAIN = settings(TrainParams, head_epochs=1, epochs=2, batch_size=16, seed=3, threads=1, lr=1e-3)


@pytest.fixture(scope="module")
def data():
    return synthetic_faces(48, 32, seed=1, train=32, val=16)


def train(data, model=DLIB, params=TRAIN):
    return train_network(TrainingSetup(*data, model, params, settings(AugmentParams), AGES), CPU)


@pytest.mark.parametrize("backbone", ["dlib_age_resnet10", "resnet18", "mobilenet_v2"])
def test_each_block_learns_at_the_decayed_rate_and_every_parameter_once(backbone):
    model = build_network(settings(ModelParams, backbone=backbone, pretrained=False, input_size=32), AGES)
    freeze_trunk(model, "none")
    groups = parameter_groups(model, 0.01, settings(TrainParams, layer_decay=0.5))
    assert groups[0]["lr"] == 0.01 and not groups[0].get("trunk")
    blocks = trunk_blocks(model.trunk)
    assert len(groups) == len(blocks) + 1 >= 5
    for depth, (group, block) in enumerate(zip(groups[1:], reversed(blocks), strict=True), start=1):
        assert group["lr"] == pytest.approx(0.01 * 0.5**depth)
        assert [id(p) for p in group["params"]] == [id(p) for p in block.parameters()]
    grouped = sorted(id(p) for group in groups for p in group["params"])
    assert grouped == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_frozen_blocks_are_left_out_of_the_groups():
    model = build_network(settings(ModelParams, backbone="dlib_age_resnet10", pretrained=False), AGES)
    freeze_trunk(model, "layer3")
    groups = parameter_groups(model, 0.01, settings(TrainParams, layer_decay=0.5))
    trainable = sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert sorted(id(p) for group in groups for p in group["params"]) == trainable and len(groups) == 3


def trunk_distance(state: dict, start: dict) -> float:
    return sum(float((state[f"trunk.{k}"] - v).pow(2).sum()) for k, v in start.items())


def test_l2sp_pulls_the_backbone_toward_its_pretrained_weights(data):
    start = build_network(DLIB, AGES).trunk.state_dict()
    free = train(data).network.state_dict()
    held = train(data, params=replace(TRAIN, l2sp=300.0)).network.state_dict()
    snapped = train(data, params=replace(TRAIN, l2sp=1 / TRAIN.lr, scheduler="none")).network.state_dict()
    assert 0 < trunk_distance(held, start) < trunk_distance(free, start) / 2
    assert trunk_distance(snapped, start) < 1e-6  # a pull of lr * strength = 1 puts it back after every step


def test_the_distillation_term_is_the_weighted_kl_divergence_from_the_teacher():
    model = build_network(DLIB, AGES)
    logits, teacher = torch.randn(4, 100), torch.softmax(torch.randn(4, 100), dim=1)
    ages, genders = torch.tensor([5.0, 20, 40, 70]), torch.zeros(4, dtype=torch.long)
    plain = total_loss(model, {"age_output": logits}, ages, genders, DLIB, TRAIN)
    taught = total_loss(
        model, {"age_output": logits, "teacher": teacher}, ages, genders, DLIB, replace(TRAIN, distill_weight=2)
    )
    kl = (teacher * (teacher.log() - logits.log_softmax(1))).sum(1).mean()
    torch.testing.assert_close(taught, plain + 2 * kl)


def test_without_a_teacher_dlibs_untouched_model_teaches_each_batch_its_distributions(data, monkeypatch):
    """The loss of every step sees dlib's untouched age distributions of that step's faces (un-augmented)."""
    seen, loss = [], loop.Targets.loss

    def recording(targets, model, outputs, batch):
        seen.append((batch.clone(), outputs["teacher"].detach().clone()))
        return loss(targets, model, outputs, batch)

    monkeypatch.setattr(loop.Targets, "loss", recording)
    train(data, params=replace(TRAIN, distill_weight=5.0, epochs=1))
    dlib = untouched_dlib(AGES)
    with torch.no_grad(), autocast(CPU, TRAIN):  # as training computes them
        expected = dlib.age_distribution(to_input(data[0], dlib.input_size, CPU)).float()
    assert len(seen) == 2 * 2  # a head epoch and a fine-tuning epoch of 2 batches each
    for ids, taught in seen:
        torch.testing.assert_close(taught, expected[ids], atol=1e-5, rtol=0)


def blended_model(data, model, params, path):
    """One network trained with ``model`` and ``params``, kept as a model blended as validation chooses among
    ``model.reference_blend``, saved at ``path``; the network's result and the model's summary."""
    setup = TrainingSetup(*data, model, params, settings(AugmentParams), AGES)
    result = train_network(setup, CPU)
    kept, summary = assemble({MAIN_MEMBER: result}, {MAIN_MEMBER: setup}, model.reference_blend)
    save_checkpoint(checkpoint_of(kept, [model]), path)
    return result, summary


@pytest.mark.parametrize(("blend", "head"), [(0.5, "classification"), (1.0, "classification"), (0.5, "regression")])
def test_a_blended_model_predicts_the_weighted_mean_of_its_own_and_the_reference_age(data, tmp_path, blend, head):
    images, ids = data[0], np.arange(32, 48)
    path = tmp_path / "model.pt"
    weighted = replace(DLIB, reference_blend=(blend,), head=head)
    result, summary = blended_model(data, weighted, replace(TRAIN, epochs=1, cpu_bf16=False), path)
    model, _ = load_model(path, CPU)  # the reference is part of the saved model
    ages = predict(model, images, ids, 8, CPU)["age"]
    own = predict(AgeModel.of(result.network, 32), images, ids, 8, CPU)["age"]
    dlib = predict(untouched_dlib(AGES), images, ids, 8, CPU)["age"]
    np.testing.assert_allclose(ages, (1 - blend) * own + blend * dlib, atol=1e-3)
    assert summary["best_val_mae"] == pytest.approx(np.abs(ages - data[1][ids]).mean(), abs=1e-3)


def test_evaluation_scores_dlibs_untouched_model_on_the_same_images(data):
    from faceage.evaluation.evaluate import predict_source, split_report
    from faceage.report_sections import EvaluateParams

    images, ages = data[0], data[1]
    model = untouched_dlib(AGES)
    manifest = pd.DataFrame({"id": range(48), "age": ages, "gender": 0, "race": 0})
    params = settings(EvaluateParams, bootstrap_resamples=20, batch_size=16)
    rows = predict_source(model, images, manifest, "photos", params, CPU)
    assert (rows["split"] == "photos").all() and rows["id"].tolist() == list(range(48))
    # a model that is all reference predicts what the reference predicts, through the other code path
    np.testing.assert_allclose(rows["predicted_age"], rows["reference_age"], atol=1e-3)
    report = split_report(rows, params)
    assert report["reference"]["mae"]["value"] == pytest.approx(report["mae"]["value"], abs=1e-3)
    assert report["reference"]["age_group_accuracy"] == report["age_groups"]["accuracy"]


def test_a_blended_model_exports_as_one_graph_that_predicts_as_it_does(data, tmp_path):
    path = tmp_path / "model.pt"
    blended_model(data, replace(DLIB, reference_blend=(0.3,)), replace(TRAIN, epochs=0), path)
    assert_onnx_export_predicts_as_the_model(path, data[0][:3], tmp_path)


def test_training_keeps_the_blend_weight_with_the_lowest_validation_mae(data, tmp_path):
    from faceage.training.blend import blend_errors

    weights, path = (0.0, 0.25, 1.0), tmp_path / "model.pt"
    result, summary = blended_model(data, replace(DLIB, reference_blend=weights), replace(TRAIN, cpu_bf16=False), path)
    chosen = summary["reference_blend"]
    # recompute every weight's validation MAE from the kept network's own ages and the reference's
    ids, ages = np.arange(32, 48), data[1][32:]
    own = predict(AgeModel.of(result.network, 32), data[0], ids, 8, CPU)["age"]
    reference = predict(untouched_dlib(AGES), data[0], ids, 8, CPU)["age"]
    errors = blend_errors(own, reference, ages, weights)
    assert chosen == min(errors, key=errors.get)
    assert summary["best_val_mae"] == pytest.approx(errors[chosen], abs=1e-3)
    loaded, checkpoint = load_model(path, CPU)
    assert checkpoint.blend == chosen and any(k.startswith("reference.") for k in checkpoint.state_dict) == (chosen > 0)
    np.testing.assert_allclose(
        predict(loaded, data[0], ids, 8, CPU)["age"], (1 - chosen) * own + chosen * reference, atol=1e-3
    )


def test_blend_errors_are_the_mae_of_each_weighted_mean():
    from faceage.training.blend import blend_errors

    errors = blend_errors(np.array([10.0, 20.0]), np.array([60.0, 70.0]), np.array([10.0, 21.0]), (0.0, 0.5))
    assert errors == {0.0: 0.5, 0.5: 24.5}


def test_holding_the_reference_changes_nothing_else_in_training(data):
    """The reference's network is built without drawing from the random generator, so a model that may blend
    trains exactly as one that may not."""
    dropping = replace(DLIB, dropout=0.3)  # dropout draws from the generator in every step
    plain = train(data, model=dropping)
    may_blend = train(data, model=replace(dropping, reference_blend=(0.0, 1.0)))
    assert [row["val_mae"] for row in plain.history] == [row["val_mae"] for row in may_blend.history]


def test_progressive_resizing_grows_the_training_input_and_validates_at_full_size(data, monkeypatch):
    sizes = []

    def recording(pixels, size, *args):
        sizes.append(size)
        return to_input(pixels, size, *args)

    to_input = features.to_input
    monkeypatch.setattr(features, "to_input", recording)
    model, progressive = replace(DLIB, input_size=48), replace(TRAIN, epochs=4, start_size=32, resize_epochs=0.5)
    result = train(data, model, progressive)
    # head stage: features of train + val once at 48 px; then 2 batches an epoch at 32, 40, 48, 48 px
    assert sizes == [48] * 3 + [32, 32, 40, 40] + [48] * 4
    fixed = train(data, model, replace(progressive, start_size=0))
    assert [row["val_mae"] for row in result.history][:2] != [row["val_mae"] for row in fixed.history][:2]
