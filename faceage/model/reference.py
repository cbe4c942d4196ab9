"""dlib's age model as it was trained, untouched: the reference a fine-tuned model should not fall behind on
images unlike its training data, a teacher to distil from, and a member to blend with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from faceage.model.batches import resized
from faceage.model.dlib_resnet import AGE_CLASSES, DlibAgeResNet10, onnx_state_dict

REFERENCE_INPUT = 64  # pixels: dlib's age model was trained on 64x64 face chips


class ReferenceAgeModel(nn.Module):
    """dlib's age ResNet-10 with its own classifier, frozen and always in evaluation mode: ImageNet-normalised
    faces of any size in, probabilities over the 1-year bins ``bin_ages`` out (each of dlib's ages goes to its
    nearest bin; ages outside the bins to the end bins)."""

    def __init__(self, bin_ages: torch.Tensor):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # its random initial weights are replaced: draw nothing for them
            self.network = DlibAgeResNet10()
            self.network.load_state_dict(onnx_state_dict())
        self.network.requires_grad_(False)
        classes = (torch.tensor(AGE_CLASSES).round() - bin_ages[0]).clamp(0, len(bin_ages) - 1).long()
        self.register_buffer("to_bins", F.one_hot(classes, len(bin_ages)).float())  # dlib's classes x bins
        self.train(False)

    def train(self, mode: bool = True) -> ReferenceAgeModel:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(resized(x, REFERENCE_INPUT)).float().softmax(dim=1) @ self.to_bins
