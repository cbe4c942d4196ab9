"""Decode any common image file into a square uint8 RGB array."""

from __future__ import annotations

import io
import warnings

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
STRIP_ROWS = 256  # rows copied at once by rgb_array; does not change results
TOO_LARGE = "too_large"  # more pixels than the limit, read from the header: never decoded


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
    return image if image.mode == "RGB" else image.convert("RGB")


def rgb_array(image: Image.Image) -> np.ndarray:
    """An RGB image as an ``(H, W, 3)`` uint8 array, copied in strips of rows: converting it whole would hold
    a second full-size copy of its bytes on the way."""
    pixels = np.empty((image.height, image.width, 3), np.uint8)
    for top in range(0, image.height, STRIP_ROWS):
        bottom = min(top + STRIP_ROWS, image.height)
        pixels[top:bottom] = np.asarray(image.crop((0, top, image.width, bottom)))
    return pixels


def center_square(image: Image.Image) -> Image.Image:
    """Crop the largest centred square."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def decode_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Decode image bytes, apply EXIF orientation, centre-crop a square and return a ``(size, size, 3)`` uint8 array.

    Raises:
        ImageDecodeError: with reason ``not_an_image``, ``unreadable_image`` or ``too_large`` (over
            ``max_pixels``, counted from the header before anything is decoded).
    """
    image = _decode(data, size, max_pixels)
    return np.asarray(center_square(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def decode_photo(data: bytes, max_pixels: int) -> Image.Image:
    """Decode image bytes at full size, EXIF orientation applied, as an RGB image (Pillow's: a face finder
    downscales it for detection without another full-size copy).

    Raises:
        ImageDecodeError: as :func:`decode_image`.
    """
    return _decode(data, None, max_pixels)


def _decode(data: bytes, size: int | None, max_pixels: int) -> Image.Image:
    """The loaded RGB image, EXIF orientation applied; JPEGs decoded reduced (at least ``size`` per side) when
    ``size`` is given."""
    try:
        with warnings.catch_warnings():  # the size is checked below, against faces.max_megapixels
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(NOT_AN_IMAGE, "not a recognised image format") from None
    except Image.DecompressionBombError as error:  # Pillow's own limit, far above any sensible max_pixels
        raise ImageDecodeError(TOO_LARGE, _describe(error)) from None
    except Exception as error:  # Pillow's decoders raise many types on damaged data; each is one bad file
        raise ImageDecodeError(UNREADABLE_IMAGE, _describe(error)) from None
    width, height = image.size
    if width * height > max_pixels:
        limit = f"the limit of {max_pixels / 1e6:g} megapixels (faces.max_megapixels)"
        raise ImageDecodeError(TOO_LARGE, f"{width}x{height} pixels is over {limit}")
    try:
        if image.format == "JPEG" and size is not None:
            image.draft("RGB", (size, size))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image)
    except Exception as error:  # as above: any decoder failure is this file's outcome, not the run's
        raise ImageDecodeError(UNREADABLE_IMAGE, _describe(error)) from None


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__
