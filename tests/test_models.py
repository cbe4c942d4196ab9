import pytest
import torch
from conftest import SHARED

from faceage.errors import FaceageError
from faceage.models import BACKBONES, build_model, weights_file
from faceage.params import ModelParams


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet_b0"])
def test_each_backbone_takes_a_training_step(backbone):
    torch.manual_seed(0)
    model = build_model(ModelParams(backbone=backbone, pretrained=False, input_size=32))
    x, y = torch.randn(4, 3, 32, 32), torch.randn(4)
    assert model(x).shape == (4, 1)
    head = [p for p in model.parameters()][-2].detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.l1_loss(model(x).squeeze(1), y).backward()
    optimizer.step()
    assert not torch.equal(head, [p for p in model.parameters()][-2])


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(FaceageError, match=r"unknown model\.backbone 'vgg99'; choose one of .*efficientnet_b0"):
        build_model(ModelParams(backbone="vgg99", pretrained=False))


def test_missing_weights_say_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints"
    with pytest.raises(FaceageError, match=f"place mobilenet_v2-b0353104.pth in {expected}"):
        build_model(ModelParams(backbone="mobilenet_v2", pretrained=True))
    assert not expected.exists() or not any(expected.iterdir())  # nothing was downloaded


@pytest.mark.skipif(not (SHARED / "torch").is_dir(), reason="no ../shared/torch with ImageNet weights")
def test_imagenet_weights_load_from_torch_home(monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(SHARED / "torch"))
    path = weights_file(BACKBONES["mobilenet_v2"].weights)
    model = build_model(ModelParams(backbone="mobilenet_v2", pretrained=True))
    reference = torch.load(path, weights_only=True)["features.0.0.weight"]
    assert torch.equal(model.state_dict()["features.0.0.weight"], reference)
