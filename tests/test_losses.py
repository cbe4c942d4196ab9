import pytest
import torch
from conftest import settings

from faceage.model.networks import build_network
from faceage.sections import ModelParams, TrainParams
from faceage.training.losses import UNKNOWN_GENDER, age_groups, age_loss, gaussian_label_distribution, total_loss


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
    model = build_network(settings(ModelParams, backbone="resnet18", pretrained=False), (1, 10))
    logits = torch.full((1, 10), -10.0)
    right, wrong = logits.clone(), logits.clone()
    right[0, 4], wrong[0, 8] = 10.0, 10.0  # bins of ages 5 and 9
    params = settings(TrainParams, label_sigma=1.0)
    assert age_loss(model, right, torch.tensor([5.0]), params) < age_loss(model, wrong, torch.tensor([5.0]), params)


def test_unknown_genders_add_no_loss():
    params = settings(ModelParams, backbone="resnet18", pretrained=False, gender_weight=1.0)
    model = build_network(params, (1, 10))
    outputs = {"age_output": torch.zeros(2, 10), "gender": torch.tensor([5.0, -5.0])}
    ages = torch.tensor([3.0, 4.0])
    unknown = torch.full((2,), UNKNOWN_GENDER)
    age_only = age_loss(model, outputs["age_output"], ages, settings(TrainParams))
    assert total_loss(model, outputs, ages, unknown, params, settings(TrainParams)) == age_only
    wrong = total_loss(model, outputs, ages, torch.tensor([0, 1]), params, settings(TrainParams))
    right = total_loss(model, outputs, ages, torch.tensor([1, 0]), params, settings(TrainParams))
    assert wrong > right > age_only


def regression_model():
    return build_network(
        settings(ModelParams, backbone="resnet18", pretrained=False, head="regression"), (1, 100), (40.0, 10.0)
    )


@pytest.mark.parametrize(
    "loss, output, age, expected",
    [
        ("l1", 0.0, 50.0, 1.0),  # target (50 - 40) / 10 = 1
        ("l1", 1.0, 50.0, 0.0),
        ("mse", 0.0, 60.0, 4.0),  # target 2
        ("mse", -1.0, 40.0, 1.0),  # target 0
        ("smooth_l1", 0.0, 45.0, 0.125),  # |0.5| < 1: 0.5 * 0.5 ** 2
        ("smooth_l1", 0.0, 70.0, 2.5),  # |3| >= 1: 3 - 0.5
    ],
)
def test_regression_losses_compare_normalised_targets(loss, output, age, expected):
    model = regression_model()
    value = age_loss(model, torch.tensor([[output]]), torch.tensor([age]), settings(TrainParams, loss=loss))
    assert value.item() == pytest.approx(expected)


def test_regression_read_out_undoes_the_normalisation():
    assert regression_model().years(torch.tensor([[1.0], [-0.5]])).tolist() == pytest.approx([50.0, 35.0])


def classification_model():
    return build_network(settings(ModelParams, backbone="resnet18", pretrained=False), (1, 10))


@pytest.mark.parametrize("age, target_bin", [(5.0, 4), (5.4, 4), (5.6, 5), (1.0, 0), (0.0, 0), (10.0, 9), (37.0, 9)])
def test_hard_labels_are_the_nearest_bin_clamped_to_the_range(age, target_bin):
    logits = torch.linspace(-2.0, 3.0, 10)[None, :]
    value = age_loss(classification_model(), logits, torch.tensor([age]), settings(TrainParams, label_sigma=0.0))
    assert value.item() == pytest.approx(-torch.log_softmax(logits, 1)[0, target_bin].item(), rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_label_smoothing_mixes_the_target_with_a_uniform_distribution(smoothing):
    logits = torch.linspace(-2.0, 3.0, 10)[None, :]
    log_p = torch.log_softmax(logits, 1)[0]
    params = settings(TrainParams, label_sigma=0.0, label_smoothing=smoothing)
    value = age_loss(classification_model(), logits, torch.tensor([3.0]), params)
    expected = -(1 - smoothing) * log_p[2] - smoothing * log_p.mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_labels_are_scored_against_the_gaussian_distribution():
    logits = torch.linspace(-2.0, 3.0, 10)[None, :]
    model = classification_model()
    value = age_loss(model, logits, torch.tensor([4.0]), settings(TrainParams, label_sigma=1.5))
    weights = torch.exp(-0.5 * ((torch.arange(1.0, 11.0) - 4.0) / 1.5) ** 2)
    expected = -(weights / weights.sum() * torch.log_softmax(logits, 1)[0]).sum()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
