import pytest
import torch

from faceage.losses import UNKNOWN_GENDER, age_groups, age_loss, gaussian_label_distribution, total_loss
from faceage.models import build_model
from faceage.params import ModelParams, TrainParams


def test_age_groups_follow_the_edges():
    ages = torch.tensor([1.0, 25, 26, 50, 51, 75, 76, 100])
    assert age_groups(ages, (26, 51, 76)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_gaussian_label_distribution_is_centred_and_normalised():
    bins = torch.arange(1, 101, dtype=torch.float32)
    target = gaussian_label_distribution(torch.tensor([30.0, 2.0]), bins, sigma=3.0)
    assert torch.allclose(target.sum(1), torch.ones(2))
    assert target.argmax(1).tolist() == [29, 1]
    assert target[0, 26] == pytest.approx(target[0, 32].item())  # symmetric around 30


def test_classification_loss_is_lowest_at_the_true_bin():
    model = build_model(ModelParams(backbone="resnet18", pretrained=False), (1, 10))
    logits = torch.full((1, 10), -10.0)
    right, wrong = logits.clone(), logits.clone()
    right[0, 4], wrong[0, 8] = 10.0, 10.0  # bins of ages 5 and 9
    params = TrainParams(label_sigma=1.0)
    assert age_loss(model, right, torch.tensor([5.0]), params) < age_loss(model, wrong, torch.tensor([5.0]), params)


def test_unknown_genders_add_no_loss():
    params = ModelParams(backbone="resnet18", pretrained=False, gender_weight=1.0)
    model = build_model(params, (1, 10))
    outputs = {"age": torch.zeros(2, 10), "gender": torch.tensor([5.0, -5.0])}
    ages = torch.tensor([3.0, 4.0])
    unknown = torch.full((2,), UNKNOWN_GENDER)
    age_only = age_loss(model, outputs["age"], ages, TrainParams())
    assert total_loss(model, outputs, ages, unknown, params, TrainParams()) == age_only
    wrong = total_loss(model, outputs, ages, torch.tensor([0, 1]), params, TrainParams())
    right = total_loss(model, outputs, ages, torch.tensor([1, 0]), params, TrainParams())
    assert wrong > right > age_only
