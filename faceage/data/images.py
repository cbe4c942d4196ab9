"""Decode any common image file into a square uint8 RGB array."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageDecodeError(ValueError):
    """The bytes are not an image, or the image is damaged; ``reason`` is a short outcome code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


NOT_AN_IMAGE = "not_an_image"
UNREADABLE_IMAGE = "unreadable_image"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha is composited on black, 16-bit is rescaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" else max(float(pixels.max()), 1.0)
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(canvas, image)
    return image.convert("RGB")


def center_square(image: Image.Image) -> Image.Image:
    """Crop the largest centred square."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes, apply EXIF orientation, centre-crop a square and return a ``(size, size, 3)`` uint8 array.

    Raises:
        ImageDecodeError: with reason ``not_an_image`` or ``unreadable_image``.
    """
    return _decode(data, size)


def decode_photo(data: bytes) -> np.ndarray:
    """Decode image bytes at full size, EXIF orientation applied, as an ``(H, W, 3)`` uint8 RGB array.

    Raises:
        ImageDecodeError: with reason ``not_an_image`` or ``unreadable_image``.
    """
    return _decode(data, None)


def _decode(data: bytes, size: int | None) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(NOT_AN_IMAGE, "not a recognised image format") from None
    except Exception as error:  # Pillow's decoders raise many types on damaged data; each is one bad file
        raise ImageDecodeError(UNREADABLE_IMAGE, _describe(error)) from None
    try:
        with image:
            if image.format == "JPEG" and size is not None:
                image.draft("RGB", (size, size))
            image.load()
            image = to_rgb(ImageOps.exif_transpose(image))
            if size is not None:
                image = center_square(image).resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except Exception as error:  # as above: any decoder failure is this file's outcome, not the run's
        raise ImageDecodeError(UNREADABLE_IMAGE, _describe(error)) from None


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__
