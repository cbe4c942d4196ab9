import numpy as np
import pandas as pd
import pytest
import torch
from conftest import settings
from PIL import Image

from faceage.evaluation.evaluate import gradcam_examples, gradcam_maps, split_report, worst_errors
from faceage.evaluation.gradcam import grad_cam
from faceage.model.age_model import AgeModel
from faceage.model.inference import predict
from faceage.model.networks import build_network
from faceage.plots import face_gallery
from faceage.report_sections import EvaluateParams
from faceage.sections import ModelParams

CPU = torch.device("cpu")


@pytest.fixture
def model():
    torch.manual_seed(0)
    network = build_network(settings(ModelParams, backbone="resnet18", pretrained=False, gender_weight=1.0), (1, 100))
    return AgeModel.of(network, 24).eval()


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)


def test_flip_tta_averages_an_image_and_its_mirror_image(model, images):
    plain = predict(model, images, np.arange(6), 4, CPU)
    mirrored = predict(model, images[:, :, ::-1].copy(), np.arange(6), 4, CPU)
    tta = predict(model, images, np.arange(6), 4, CPU, flip=True)
    np.testing.assert_allclose(tta["age"], (plain["age"] + mirrored["age"]) / 2, rtol=1e-5)
    np.testing.assert_allclose(
        tta["female_probability"], (plain["female_probability"] + mirrored["female_probability"]) / 2, rtol=1e-5
    )
    assert not np.allclose(plain["age"], mirrored["age"])


def test_grad_cam_has_the_input_shape_and_responds_to_the_input(model):
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    maps = grad_cam(model, x)
    assert maps.shape == (3, 96, 96)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert not torch.allclose(maps[0], maps[1])
    assert not torch.allclose(maps, grad_cam(model, x.flip(-1)))
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_maps_come_at_the_stored_image_size(model, images):
    maps = gradcam_maps(model, images, np.array([4, 1]), CPU)
    assert maps.shape == (2, 24, 24)
    np.testing.assert_allclose(maps[1], gradcam_maps(model, images, np.array([1]), CPU)[0], atol=1e-5)


def test_galleries_are_valid_pngs(tmp_path, images):
    maps = np.random.default_rng(1).random((6, 24, 24))
    face_gallery(images, [f"face {i}" for i in range(6)], tmp_path / "plain.png", columns=4)
    face_gallery(images, [f"face {i}" for i in range(6)], tmp_path / "heat.png", heat_maps=maps)
    for name in ("plain.png", "heat.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 200
            image.verify()


def predictions_table():
    true = np.array([3, 8, 20, 40, 70, 2, 9, 25, 50, 80], dtype=float)
    error = np.array([1, -2, 9, 0.5, -12, 0, 1, -1, 3, -4])
    return pd.DataFrame(
        {
            "id": range(10),
            "split": ["test"] * 5 + ["val"] * 5,
            "true_age": true,
            "predicted_age": true + error,
            "error": error,
            "gender": pd.Series([0, 1, 0, 1, pd.NA] * 2, dtype="Int64"),
            "race": pd.Series([0, 1, 2, 3, 4] * 2, dtype="Int64"),
            "female_probability": [0.1, 0.9, 0.8, 0.7, 0.5] * 2,
        }
    )


def test_worst_errors_are_the_largest_test_errors_first():
    assert worst_errors(predictions_table(), 3)["id"].tolist() == [4, 2, 1]


def test_gradcam_examples_take_a_few_test_faces_per_bucket():
    chosen = gradcam_examples(
        predictions_table(), settings(EvaluateParams, bucket_edges=(1, 10, 50), gradcam_per_bucket=1)
    )
    assert chosen["id"].tolist() == [0, 2, 4]


def test_split_report_holds_every_metric():
    table = predictions_table()
    report = split_report(table[table["split"] == "test"], settings(EvaluateParams, bootstrap_resamples=100))
    assert report["count"] == 5
    assert report["mae"]["value"] == pytest.approx(np.mean([1, 2, 9, 0.5, 12]))
    assert set(report) >= {"rmse", "r2", "bias", "cs5", "buckets", "age_groups", "by_gender", "by_race"}
    assert report["by_gender"]["groups"]["unknown"]["count"] == 1
    assert report["gender_accuracy"] == pytest.approx(3 / 4)  # ids 0, 1, 3 right; id 2 wrong
