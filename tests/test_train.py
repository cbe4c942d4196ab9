import numpy as np
import pandas as pd
import pytest
import torch

from faceage.errors import FaceageError
from faceage.inference import predict_ages
from faceage.models import build_model
from faceage.params import ModelParams, TrainParams
from faceage.train import train_model

MODEL = ModelParams(backbone="resnet18", pretrained=False, input_size=16)
TRAIN = TrainParams(epochs=2, batch_size=16, lr=1e-3, seed=5, threads=1)


@pytest.fixture
def tiny_data():
    rng = np.random.default_rng(0)
    ages = rng.integers(1, 90, 60)
    images = np.clip(ages[:, None, None, None] * 2.5 + rng.normal(0, 20, (60, 16, 16, 3)), 0, 255).astype(np.uint8)
    split = pd.DataFrame({"id": range(60), "split": ["train"] * 40 + ["val"] * 10 + ["test"] * 10})
    return images, ages, split


def test_training_reports_each_epoch_and_keeps_the_best(tiny_data):
    result = train_model(*tiny_data, MODEL, TRAIN, torch.device("cpu"))
    assert [row["epoch"] for row in result.history] == [1, 2]
    best = min(result.history, key=lambda row: row["val_mae"])
    assert result.summary["best_epoch"] == best["epoch"]
    assert result.summary["best_val_mae"] == round(best["val_mae"], 4)
    assert result.checkpoint["model"]["backbone"] == "resnet18"


def test_training_is_deterministic(tiny_data):
    first = train_model(*tiny_data, MODEL, TRAIN, torch.device("cpu"))
    second = train_model(*tiny_data, MODEL, TRAIN, torch.device("cpu"))
    assert first.history == second.history
    for key, value in first.checkpoint["state_dict"].items():
        assert torch.equal(value, second.checkpoint["state_dict"][key]), key


def test_training_needs_a_validation_split(tiny_data):
    images, ages, split = tiny_data
    with pytest.raises(FaceageError, match="train and val"):
        train_model(images, ages, split.assign(split="train"), MODEL, TRAIN, torch.device("cpu"))


def test_predictions_follow_the_order_of_the_indices(tiny_data):
    images, _, _ = tiny_data
    torch.manual_seed(0)
    model = build_model(MODEL)
    indices = np.array([7, 3, 55, 0, 12])
    forward = predict_ages(model, images, indices, 16, 40.0, 20.0, 2, torch.device("cpu"))
    backward = predict_ages(model, images, indices[::-1], 16, 40.0, 20.0, 3, torch.device("cpu"))
    np.testing.assert_allclose(forward, backward[::-1], rtol=1e-5)
