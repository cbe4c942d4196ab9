"""Device choice, threads and seeds."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def select_device() -> torch.device:
    """The fastest available device: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def make_deterministic(seed: int, threads: int = 0) -> None:
    """Seed every generator and ask torch for deterministic kernels; ``threads`` > 0 sets CPU threads."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if threads > 0:
        torch.set_num_threads(threads)
