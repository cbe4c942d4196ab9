"""Batches of network inputs cut straight from the ingested uint8 array: no decoding per epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def index_batches(indices: np.ndarray, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    """Consecutive slices of ``indices`` (shuffled first when ``rng`` is given), each sorted for fast reads."""
    order = rng.permutation(indices) if rng is not None else np.asarray(indices)
    for start in range(0, len(order), batch_size):
        yield np.sort(order[start : start + batch_size])


def resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, C, H, W)`` images resized to ``size`` x ``size`` (bilinear, antialiased), or as they are at that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def to_input(
    pixels: np.ndarray,
    size: int,
    device: torch.device,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 pixels to a normalised ``(B, 3, size, size)`` float tensor on ``device``.

    ``augment``, if given, changes the resized batch while its values are still in ``[0, 1]``.
    """
    pixels = np.ascontiguousarray(pixels)  # from_numpy warns on a read-only array (a decoded image's)
    x = torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy()).to(device).permute(0, 3, 1, 2)
    x = resized(x.float().div_(255), size)
    if augment is not None:
        x = augment(x)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std
