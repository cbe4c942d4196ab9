import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import settings, synthetic_faces

from faceage.errors import FaceageError
from faceage.model.age_model import AgeModel
from faceage.model.checkpoint import checkpoint_of, load_model, save_checkpoint
from faceage.model.inference import predict
from faceage.model.networks import build_network
from faceage.sections import AugmentParams, ModelParams, TrainParams
from faceage.training.features import Inputs
from faceage.training.loop import train_network
from faceage.training.resume import ResumeFile
from faceage.training.setup import TrainingSetup, autocast, plan_phases, split_ids

MODEL = settings(ModelParams, backbone="resnet18", pretrained=False, input_size=32, hidden=16, reference_blend=(0.0,))
TRAIN = settings(TrainParams, head_epochs=2, epochs=2, batch_size=16, patience=0, seed=5, threads=1)
AUGMENT = settings(AugmentParams)
AGES = (1, 100)
CPU = torch.device("cpu")


@pytest.fixture
def data():
    return synthetic_faces(60, 16, seed=0, train=40, val=10)


def train(data, model=MODEL, params=TRAIN, augment=AUGMENT, state=None, **kwargs):
    """Train on ``data``; with ``state`` (a path), save and resume the training state there."""
    setup = TrainingSetup(*data, model, params, augment, AGES)
    resume = ResumeFile(state, setup.fingerprint()) if state else None
    return train_network(setup, CPU, resume=resume, **kwargs)


def test_two_stages_report_every_epoch_and_keep_the_best(data):
    result = train(data)
    assert [(row["epoch"], row["phase"]) for row in result.history] == [
        (1, "head"),
        (2, "head"),
        (3, "finetune"),
        (4, "finetune"),
    ]
    best = min(result.history, key=lambda row: row["val_mae"])
    assert result.summary["best_epoch"] == best["epoch"]
    assert result.summary["best_val_mae"] == round(best["val_mae"], 4)
    assert result.summary["head_images_per_second"] > 0 and result.summary["finetune_images_per_second"] > 0


def test_the_head_stage_leaves_the_backbone_untouched(data):
    torch.manual_seed(5)  # train_network seeds the same way before building the model
    initial = build_network(MODEL, AGES).trunk.state_dict()
    result = train(data, params=settings(TrainParams, head_epochs=2, epochs=0, batch_size=16, seed=5, threads=1))
    trained = result.network.state_dict()
    for name, value in initial.items():
        assert torch.equal(trained[f"trunk.{name}"], value), name
    assert not torch.equal(trained["age.weight"], build_network(MODEL, AGES).state_dict()["age.weight"])


def test_training_is_deterministic(data):
    first, second = train(data), train(data)
    assert first.history == second.history
    for key, value in first.network.state_dict().items():
        assert torch.equal(value, second.network.state_dict()[key]), key


def test_cached_features_train_the_head_like_the_backbone_does(data, monkeypatch):
    params = settings(TrainParams, head_epochs=3, epochs=0, batch_size=16, seed=5, threads=1)
    cached = train(data, params=params)
    monkeypatch.setattr(Inputs, "cache_features", lambda self, ids, amp: None)
    uncached = train(data, params=params)
    for key, value in cached.network.state_dict().items():
        torch.testing.assert_close(value, uncached.network.state_dict()[key], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        [row["val_mae"] for row in cached.history], [row["val_mae"] for row in uncached.history], rtol=1e-4
    )


@pytest.mark.parametrize("interrupt_after, ema_decay", [(2, 0.0), (3, 0.0), (3, 0.5)])
def test_an_interrupted_run_resumes_to_the_same_weights(data, tmp_path, interrupt_after, ema_decay):
    state = tmp_path / "state.pt"
    params = replace(TRAIN, ema_decay=ema_decay)
    uninterrupted = train(data, params=params)

    def interrupt(row):
        if row["epoch"] == interrupt_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, params=params, state=state, on_epoch_end=interrupt)
    assert state.is_file()
    resumed_rows = []
    resumed = train(data, params=params, state=state, on_epoch_end=resumed_rows.append)
    assert [row["epoch"] for row in resumed_rows] == list(range(interrupt_after + 1, 5))
    assert resumed.history == uninterrupted.history
    for key, value in uninterrupted.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key
    # The state outlives the training until its caller has written every output: run again, nothing is trained.
    again_rows = []
    again = train(data, params=params, state=state, on_epoch_end=again_rows.append)
    assert again_rows == [] and again.history == uninterrupted.history
    for key, value in uninterrupted.network.state_dict().items():
        assert torch.equal(value, again.network.state_dict()[key]), key


def test_the_weight_average_is_validated_and_kept_without_changing_training(data):
    averaged = train(data, params=replace(TRAIN, ema_decay=0.5))
    plain = train(data)
    # The average follows training without steering it: same losses, other validated weights.
    assert [row["train_loss"] for row in averaged.history] == [row["train_loss"] for row in plain.history]
    assert [row["val_mae"] for row in averaged.history] != [row["val_mae"] for row in plain.history]
    # What was validated is what is kept.
    model = AgeModel.of(averaged.network, MODEL.input_size)
    images, ages, _, split = data
    val_ids = split_ids(split, "val")
    predicted = predict(model, images, val_ids, TRAIN.batch_size, CPU, autocast(CPU, TRAIN))["age"]
    assert np.abs(predicted - ages[val_ids]).mean() == pytest.approx(averaged.summary["best_val_mae"], rel=1e-3)


def test_an_ema_decay_outside_0_to_1_is_refused(data):
    with pytest.raises(FaceageError, match=r"train.ema_decay: 1.0 is not allowed; expected 0 <= value < 1"):
        train(data, params=replace(TRAIN, ema_decay=1.0))


def test_a_saved_state_of_other_parameters_is_not_resumed(data, tmp_path):
    state = tmp_path / "state.pt"

    def interrupt(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, state=state, on_epoch_end=interrupt)
    rows = []
    train(
        data,
        params=settings(TrainParams, head_epochs=1, epochs=1, batch_size=16, seed=6),
        state=state,
        on_epoch_end=rows.append,
    )
    assert [row["epoch"] for row in rows] == [1, 2]


@pytest.mark.parametrize(
    "change",
    [
        lambda images, ages: (np.ascontiguousarray(images[:, ::-1]), ages),  # other pixels under the same ids
        lambda images, ages: (images[:, :12, :12].copy(), ages),  # another data.image_size
        lambda images, ages: (images, np.roll(ages, 1)),  # other labels
    ],
)
def test_a_saved_state_of_other_data_is_not_resumed(data, tmp_path, change):
    state = tmp_path / "state.pt"

    def interrupt(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, state=state, on_epoch_end=interrupt)
    images, ages, genders, split = data
    rows = []
    train((*change(images, ages), genders, split), state=state, on_epoch_end=rows.append)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]  # started over, not resumed after epoch 1
    resumed = []
    with pytest.raises(KeyboardInterrupt):
        train(data, state=state, on_epoch_end=interrupt)
    train(data, state=state, on_epoch_end=resumed.append)
    assert [row["epoch"] for row in resumed] == [2, 3, 4]  # the same data does resume


def test_early_stopping_ends_a_stage_after_patience_epochs(data):
    params = settings(
        TrainParams, head_epochs=0, epochs=8, lr=10.0, optimizer="sgd", scheduler="none", patience=2, batch_size=16
    )
    result = train(data, params=params)
    maes = [row["val_mae"] for row in result.history]
    best = int(np.argmin(maes))
    assert len(maes) == best + 3 < 8


def mean_predictor_mae(data):
    """Validation MAE of always predicting the mean training age: what a model that learnt nothing scores."""
    _, ages, _, split = data
    return np.abs(ages[split_ids(split, "val")] - ages[split_ids(split, "train")].mean()).mean()


@pytest.mark.parametrize(
    "model, params",
    [
        pytest.param(
            replace(MODEL, head="regression"),
            settings(TrainParams, loss="smooth_l1", head_lr=0.01, scheduler="none"),
            id="regression",
        ),
        pytest.param(
            MODEL,
            settings(
                TrainParams,
                label_sigma=2.0,
                label_smoothing=0.1,
                optimizer="sgd",
                head_lr=0.5,
                scheduler="plateau",
                plateau_patience=0,
            ),
            id="label-smoothing-sgd-plateau",
        ),
        pytest.param(
            replace(MODEL, gender_weight=0.5, age_group_weight=0.5),
            settings(TrainParams, optimizer="adam", head_lr=0.01, scheduler="none"),
            id="auxiliary-heads-adam",
        ),
        pytest.param(MODEL, settings(TrainParams, cpu_bf16=False, head_lr=0.01, scheduler="none"), id="float32"),
    ],
)
def test_heads_losses_and_optimisers_learn(data, model, params):
    params = replace(params, head_epochs=12, epochs=0, batch_size=16, seed=5, threads=1)
    history = train(data, model=model, params=params).history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert min(row["val_mae"] for row in history) < mean_predictor_mae(data) / 2


def test_the_plateau_schedule_lowers_the_lr_after_each_epoch_without_progress(data):
    params = settings(
        TrainParams,
        head_epochs=12,
        epochs=0,
        optimizer="sgd",
        head_lr=0.5,
        scheduler="plateau",
        plateau_patience=0,
        batch_size=16,
    )
    history = train(data, params=params).history
    lr, best, expected = params.head_lr, math.inf, []
    for row in history:  # ReduceLROnPlateau's rule: progress is a relative improvement of more than 1e-4
        if row["val_mae"] < best * (1 - 1e-4):
            best = row["val_mae"]
        else:
            lr *= params.plateau_factor
        expected.append(lr)
    assert [row["lr"] for row in history] == pytest.approx(expected)
    assert expected[-1] < params.head_lr  # the data does make it lower the lr


def test_augmentation_only_in_the_fine_tuning_stage_by_default():
    phases = plan_phases(settings(TrainParams), settings(AugmentParams))
    assert [(p.name, p.augment) for p in phases] == [("head", False), ("finetune", True)]
    assert plan_phases(settings(TrainParams), settings(AugmentParams, in_head_stage=True))[0].augment


def test_training_needs_a_validation_split(data):
    images, ages, genders, split = data
    with pytest.raises(FaceageError, match="train and val"):
        train((images, ages, genders, split.assign(split="train")))


def test_checkpoint_round_trips_with_weights_only_loading(data, tmp_path):
    params = settings(TrainParams, head_epochs=1, epochs=1, batch_size=16, seed=5, threads=1)
    result = train(data, params=params)
    trained = AgeModel([result.network], [MODEL.input_size], 0.0, AGES, 16)
    save_checkpoint(checkpoint_of(trained, [MODEL], epoch=result.summary["best_epoch"]), tmp_path / "model.pt")
    model, checkpoint = load_model(tmp_path / "model.pt", CPU)
    assert checkpoint.epoch == result.summary["best_epoch"] and checkpoint.image_size == 16
    # The loaded model predicts what the trained one did when it was validated.
    images, ages, _, split = data
    val_ids = split_ids(split, "val")
    loaded = predict(model, images, val_ids, 4, CPU, autocast(CPU, params))["age"]
    assert np.abs(loaded - ages[val_ids]).mean() == pytest.approx(result.summary["best_val_mae"], abs=1e-3)
    # Predictions do not depend on the order or batching of the ids.
    backward = predict(model, images, val_ids[::-1], 3, CPU)["age"]
    forward = predict(model, images, val_ids, 8, CPU)["age"]
    np.testing.assert_allclose(forward, backward[::-1], rtol=1e-5)


def test_a_non_finite_loss_stops_training_with_advice(data, monkeypatch):
    monkeypatch.setattr(
        "faceage.training.loop.total_loss", lambda *args: torch.tensor(float("nan"), requires_grad=True)
    )
    with pytest.raises(FaceageError, match=r"training loss is nan in epoch 1 \(head 1/2\): lower train\.lr"):
        train(data)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("setting", ["auto", True, False])
def test_cpu_precision_follows_the_setting_and_for_auto_the_cpu(data, monkeypatch, native, setting):
    """auto: bfloat16 autocast only where the CPU computes bfloat16 natively (it is emulated, several times
    slower, elsewhere); the choice and its reason are in the training summary."""
    monkeypatch.setattr("faceage.runtime.native_cpu_bf16", lambda: native)
    params = replace(TRAIN, cpu_bf16=setting, head_epochs=1, epochs=0)
    bf16 = native if setting == "auto" else setting
    with autocast(CPU, params):
        assert torch.is_autocast_enabled("cpu") == bf16
    summary = train(data, params=params).summary
    assert summary["precision"].startswith("bfloat16:" if bf16 else "float32:")
    reason = "auto and this CPU" if setting == "auto" else f"is {str(setting).lower()}"
    assert reason in summary["precision"] and summary["cpu"]["native_bf16"] == native
    assert ("computes bfloat16 natively" in summary["precision"]) == (setting == "auto" and native)
