"""Grad-CAM: where in the face the last convolutional block's evidence for the predicted age lies."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from faceage.model.age_model import AgeModel


def grad_cam(model: AgeModel, x: torch.Tensor) -> torch.Tensor:
    """Heat maps in ``[0, 1]`` of shape ``(B, H, W)`` for the predicted age of each input of ``x``.

    The activations of the first network's last convolutional block are weighted by the spatial mean of
    the gradient of the predicted age (in years) with respect to them (Selvaraju et al., 2017).
    """
    layer = model.trunk.get_submodule(model.last_conv)
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        output.retain_grad()
        captured["activations"] = output

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            years = model.estimate(x.detach().requires_grad_(True))["age"]  # before the monotone correction
            model.zero_grad(set_to_none=True)
            years.sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    activations = captured["activations"]
    weights = activations.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    peak = cam.flatten(1).max(dim=1).values.clamp(min=1e-12).view(-1, 1, 1)
    return cam / peak
