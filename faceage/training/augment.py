"""Per-image random augmentation of whole batches on the device, from a seeded generator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.io import decode_jpeg, encode_jpeg

from faceage.model.batches import IMAGENET_MEAN
from faceage.sections import AugmentParams

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
ERASE_AREA = (0.02, 0.33)  # share of the image, as torchvision's RandomErasing
ERASE_ASPECT = (0.3, 3.3)


def is_active(params: AugmentParams) -> bool:
    """Whether ``params`` change images at all."""
    return any(
        (
            params.hflip > 0,
            params.crop_scale < 1,
            params.shift > 0,
            params.rotate > 0,
            params.brightness > 0,
            params.contrast > 0,
            params.saturation > 0,
            params.hue > 0,
            params.grayscale > 0,
            params.erasing > 0,
            params.blur > 0,
            params.noise > 0,
            params.jpeg > 0,
        )
    )


class BatchAugmenter:
    """Augments ``(B, 3, H, W)`` float batches in ``[0, 1]``; each image draws its own random parameters."""

    def __init__(self, params: AugmentParams, generator: torch.Generator):
        self.params = params
        self.generator = generator
        self._rows, self._drawn = slice(None), 0

    def _uniform(self, low: float, high: float, device: torch.device) -> torch.Tensor:
        draws = low + (high - low) * torch.rand(self._drawn, generator=self.generator)
        return draws[self._rows].to(device)

    def _chance(self, probability: float, device: torch.device) -> torch.Tensor:
        return self._uniform(0, 1, device) < probability

    def __call__(self, x: torch.Tensor, share: tuple[slice, int] | None = None) -> torch.Tensor:
        """Augment ``x``. With ``share`` = (rows, batch size), ``x`` holds those rows of a larger batch: the
        parameters are drawn for the whole batch and these rows take theirs, so a batch split across
        processes is augmented as it would be whole."""
        self._rows, self._drawn = share if share is not None else (slice(None), x.shape[0])
        x = self.geometry(x)
        x = self.colour(x)
        x = self.degrade(x)
        if self.params.erasing > 0:
            x = self.erase(x)
        return x

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        """Flip, random resized crop, shift and rotation as one affine resampling."""
        p, device = self.params, x.device
        if not (p.hflip > 0 or p.crop_scale < 1 or p.shift > 0 or p.rotate > 0):
            return x
        scale = self._uniform(p.crop_scale, 1.0, device).sqrt()
        angle = self._uniform(-p.rotate, p.rotate, device) * math.pi / 180
        shift = torch.stack([self._uniform(-p.shift, p.shift, device) * 2 for _ in range(2)], dim=1)
        flip = torch.where(self._chance(p.hflip, device), -1.0, 1.0)
        cos, sin = angle.cos() * scale, angle.sin() * scale
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], dim=1), torch.stack([sin * flip, cos, shift[:, 1]], dim=1)],
            dim=1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation, hue and random grayscale."""
        p, n, device = self.params, x.shape[0], x.device
        weights = torch.tensor(GRAY_WEIGHTS, device=device).view(1, 3, 1, 1)
        if p.brightness > 0:
            x = x * self._uniform(1 - p.brightness, 1 + p.brightness, device).view(n, 1, 1, 1)
        if p.contrast > 0:
            mean = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
            factor = self._uniform(1 - p.contrast, 1 + p.contrast, device).view(n, 1, 1, 1)
            x = (x - mean) * factor + mean
        if p.saturation > 0:
            gray = (x * weights).sum(1, keepdim=True)
            factor = self._uniform(1 - p.saturation, 1 + p.saturation, device).view(n, 1, 1, 1)
            x = (x - gray) * factor + gray
        if p.hue > 0:
            x = self._rotate_hue(x, self._uniform(-p.hue, p.hue, device) * 2 * math.pi)
        x = x.clamp(0, 1)
        if p.grayscale > 0:
            gray = (x * weights).sum(1, keepdim=True).expand_as(x)
            x = torch.where(self._chance(p.grayscale, device).view(n, 1, 1, 1), gray, x)
        return x

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        """What other cameras and uploads do to a face: Gaussian blur, sensor noise and JPEG re-encoding."""
        p, n, device = self.params, x.shape[0], x.device
        if p.blur > 0:
            sigma = self._uniform(0.3, p.blur_sigma, device)
            blurred = gaussian_blur(x, sigma)
            x = torch.where(self._chance(p.blur, device).view(n, 1, 1, 1), blurred, x)
        if p.noise > 0:
            scale = self._uniform(0, p.noise, device).view(n, 1, 1, 1)
            noise = torch.randn(self._drawn, *x.shape[1:], generator=self.generator)[self._rows].to(device)
            x = (x + noise * scale).clamp(0, 1)
        if p.jpeg > 0:
            quality = self._uniform(p.jpeg_quality, 95, device).round().int().tolist()
            chosen = self._chance(p.jpeg, device).tolist()
            images = zip(x, quality, chosen, strict=True)
            x = torch.stack([jpeg_round_trip(image, q) if pick else image for image, q, pick in images])
        return x

    @staticmethod
    def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        to_yiq = torch.tensor(RGB_TO_YIQ, device=x.device)
        rotation = torch.zeros(len(angle), 3, 3, device=x.device)
        rotation[:, 0, 0] = 1
        rotation[:, 1, 1], rotation[:, 1, 2] = angle.cos(), -angle.sin()
        rotation[:, 2, 1], rotation[:, 2, 2] = angle.sin(), angle.cos()
        matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
        return torch.einsum("bij,bjhw->bihw", matrix, x)

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        """Fill a random rectangle of some images with the mean colour."""
        n, _, height, width = x.shape
        device = x.device
        area = self._uniform(*ERASE_AREA, device) * height * width
        aspect = torch.exp(self._uniform(math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]), device))
        box_h = (area * aspect).sqrt().clamp(max=height)
        box_w = (area / aspect).sqrt().clamp(max=width)
        top = self._uniform(0, 1, device) * (height - box_h)
        left = self._uniform(0, 1, device) * (width - box_w)
        rows = torch.arange(height, device=device).view(1, height, 1)
        cols = torch.arange(width, device=device).view(1, 1, width)
        inside = (
            (rows >= top.view(n, 1, 1))
            & (rows < (top + box_h).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1))
            & (cols < (left + box_w).view(n, 1, 1))
        )
        mask = (inside & self._chance(self.params.erasing, device).view(n, 1, 1)).unsqueeze(1)
        fill = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        return torch.where(mask, fill, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` blurred by a Gaussian of its own width ``sigma`` (pixels), edges reflected."""
    n, channels, height, width = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    planes = F.pad(x.reshape(1, n * channels, height, width), (radius, radius, radius, radius), mode="reflect")
    planes = F.conv2d(planes, kernel.view(n * channels, 1, 1, -1), groups=n * channels)
    planes = F.conv2d(planes, kernel.view(n * channels, 1, -1, 1), groups=n * channels)
    return planes.view(n, channels, height, width)


def jpeg_round_trip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """``(3, H, W)`` image in ``[0, 1]`` encoded as JPEG at ``quality`` and decoded again."""
    pixels = (image * 255).round().to(torch.uint8).cpu()
    decoded = decode_jpeg(encode_jpeg(pixels, quality=quality))
    return decoded.to(image.device, image.dtype) / 255
