"""CUDA paths: float16 autocast with gradient scaling, on a GPU (skipped without one). The multi-GPU
paths (nccl, SyncBatchNorm) are in test_distributed.py."""

import numpy as np
import pytest
import torch
from distributed_training import tiny_setup

from faceage.training.loop import train_network
from faceage.training.setup import autocast

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_float16_training_with_gradient_scaling_learns_on_the_gpu():
    setup = tiny_setup(exact=False)
    device = torch.device("cuda")
    with autocast(device, setup.params):
        assert torch.get_autocast_dtype("cuda") == torch.float16
    result = train_network(setup, device)
    assert result.summary["device"] == "cuda"
    losses = [row["train_loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    mean_predictor = np.abs(setup.ages[setup.val_ids] - setup.ages[setup.train_ids].mean()).mean()
    assert result.summary["best_val_mae"] < mean_predictor
