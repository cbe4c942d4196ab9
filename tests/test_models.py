import pytest
import torch
from conftest import SHARED, settings
from torchvision.models import MobileNet_V2_Weights

from faceage.errors import FaceageError
from faceage.model.networks import BACKBONES, build_network, freeze_trunk, set_train_mode, weights_file
from faceage.sections import BACKBONE_BLOCKS, MIN_INPUT, ModelParams

AGES = (1, 100)


def smallest_input(backbone: str) -> int:
    """A small input size the backbone takes."""
    return max(32, MIN_INPUT.get(backbone, 1))


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_each_backbone_takes_a_training_step(backbone):
    torch.manual_seed(0)
    size = smallest_input(backbone)
    model = build_network(settings(ModelParams, backbone=backbone, pretrained=False, input_size=size), AGES)
    x = torch.randn(4, 3, size, size)
    outputs = model(x)
    assert outputs["age_output"].shape == (4, 100)
    first_conv = next(p for p in model.trunk.parameters()).detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(outputs["age_output"], torch.tensor([0, 10, 50, 99])).backward()
    optimizer.step()
    assert not torch.equal(first_conv, next(p for p in model.trunk.parameters()))


def test_dex_expectation_reads_the_softmax_as_an_expected_age():
    model = build_network(settings(ModelParams, backbone="resnet18", pretrained=False, head="classification"), (1, 5))
    certain = torch.full((1, 5), -1e4)
    certain[0, 2] = 1e4  # all mass on age 3
    assert model.years(certain).item() == pytest.approx(3.0)
    assert model.years(torch.zeros(1, 5)).item() == pytest.approx(3.0)  # uniform over 1..5
    two = torch.tensor([[0.0, 0.0, -1e4, -1e4, 0.0]])  # ages 1, 2 and 5 equally likely
    assert model.years(two).item() == pytest.approx((1 + 2 + 5) / 3)


def test_regression_output_is_denormalised():
    model = build_network(
        settings(ModelParams, backbone="resnet18", pretrained=False, head="regression"), AGES, (40.0, 10.0)
    )
    assert model.years(torch.tensor([[0.0], [1.5]])).tolist() == pytest.approx([40.0, 55.0])


def test_auxiliary_heads_exist_only_with_a_weight():
    plain = build_network(settings(ModelParams, backbone="resnet18", pretrained=False), AGES)
    assert set(plain(torch.randn(2, 3, 32, 32))) == {"age_output"}
    params = settings(ModelParams, backbone="resnet18", pretrained=False, gender_weight=0.5, age_group_weight=0.5)
    outputs = build_network(params, AGES)(torch.randn(2, 3, 32, 32))
    assert outputs["gender"].shape == (2,) and outputs["age_group"].shape == (2, 4)


def test_freezing_up_to_a_block_trains_only_that_block_and_the_head():
    torch.manual_seed(0)
    model = build_network(settings(ModelParams, backbone="resnet18", pretrained=False, head="regression"), AGES)
    freeze_trunk(model, "layer4")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    set_train_mode(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, 32, 32))["age_output"].sum().backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter)
        trainable = not name.startswith(("trunk.", "reference.")) or name.startswith("trunk.layer4.")
        assert changed == trainable, name
    frozen_bn = model.trunk.layer1[0].bn1
    assert not frozen_bn.training and model.trunk.layer4[0].bn1.training


def test_freezing_the_backbone_keeps_it_in_evaluation_mode():
    model = build_network(settings(ModelParams, backbone="mobilenet_v2", pretrained=False), AGES)
    freeze_trunk(model, "backbone")
    set_train_mode(model)
    assert not model.trunk.training and model.neck.training
    assert all(not p.requires_grad for p in model.trunk.parameters())


def test_unknown_block_lists_the_blocks():
    model = build_network(settings(ModelParams, backbone="resnet18", pretrained=False), AGES)
    with pytest.raises(FaceageError, match=r"no block 'layer9'.*layer4"):
        freeze_trunk(model, "layer9")


def test_the_blocks_params_check_freeze_against_are_each_backbones_own():
    assert set(BACKBONE_BLOCKS) == set(BACKBONES)
    for name, blocks in BACKBONE_BLOCKS.items():
        params = settings(ModelParams, backbone=name, pretrained=False, input_size=smallest_input(name))
        trunk = build_network(params, AGES).trunk
        children = [(path, block) for path, block in trunk.named_children() if list(block.parameters())]
        paths = []
        for path, block in children:  # a sequential part of a trunk is frozen by its numbered blocks
            paths += [f"{path}.{index}" for index in range(len(block))] if f"{path}.0" in blocks else [path]
        assert blocks == tuple(paths), name


def test_weights_that_cannot_be_downloaded_are_one_line_naming_file_and_folder(tmp_path, monkeypatch):
    from urllib.error import URLError

    def offline(url, destination, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torch.hub.download_url_to_file", offline)
    expected = tmp_path / "hub" / "checkpoints"
    with pytest.raises(FaceageError) as error:
        build_network(settings(ModelParams, backbone="mobilenet_v2", pretrained=True), AGES)
    message = str(error.value)
    assert f"mobilenet_v2-b0353104.pth are not in {expected} and could not be downloaded" in message
    assert "name resolution" in message and "model.pretrained: false" in message and "\n" not in message
    assert not expected.exists() or not any(expected.iterdir())  # no partial file left behind


@pytest.mark.skipif(not (SHARED / "torch").is_dir(), reason="no ../shared/torch with ImageNet weights")
def test_weights_are_downloaded_into_torch_home_once(tmp_path, monkeypatch):
    import shutil

    downloads = []

    def download(url, destination, *args, **kwargs):  # stands in for the network: the file torchvision names
        downloads.append(url)
        shutil.copy(SHARED / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1], destination)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torch.hub.download_url_to_file", download)
    first = build_network(settings(ModelParams, backbone="mobilenet_v2", pretrained=True), AGES)
    second = build_network(settings(ModelParams, backbone="mobilenet_v2", pretrained=True), AGES)
    assert downloads == [MobileNet_V2_Weights.IMAGENET1K_V1.url]  # the second build read the cached file
    assert (tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth").is_file()
    assert torch.equal(
        first.trunk.state_dict()["features.0.0.weight"], second.trunk.state_dict()["features.0.0.weight"]
    )


@pytest.mark.skipif(not (SHARED / "torch").is_dir(), reason="no ../shared/torch with ImageNet weights")
def test_imagenet_weights_load_from_torch_home(monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(SHARED / "torch"))
    path = weights_file(MobileNet_V2_Weights.IMAGENET1K_V1)
    model = build_network(settings(ModelParams, backbone="mobilenet_v2", pretrained=True), AGES)
    reference = torch.load(path, weights_only=True)["features.0.0.weight"]
    assert torch.equal(model.trunk.state_dict()["features.0.0.weight"], reference)
