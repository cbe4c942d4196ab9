import io

import numpy as np
import pytest
from conftest import huge_png, image_bytes, noise_jpeg
from PIL import Image

from faceage.data.images import (
    NOT_AN_IMAGE,
    TOO_LARGE,
    UNREADABLE_IMAGE,
    ImageDecodeError,
    decode_image,
    decode_photo,
)

LIMIT = 50_000_000  # pixels


def test_rgb_jpeg_is_resized_to_a_square_uint8_array():
    pixels = decode_image(image_bytes((200, 100, 50), size=(40, 40)), 16, LIMIT)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - (200, 100, 50)).max() <= 3


def test_non_square_image_is_centre_cropped():
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # blue centre third
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    pixels = decode_image(buffer.getvalue(), 10, LIMIT)
    assert (pixels[..., 2] > 200).all() and (pixels[..., 0] < 50).all()


def test_grayscale_becomes_three_equal_channels():
    pixels = decode_image(image_bytes(128, mode="L"), 8, LIMIT)
    assert pixels.shape == (8, 8, 3)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert abs(int(pixels[0, 0, 0]) - 128) <= 2


def test_transparent_png_is_composited_on_black():
    pixels = decode_image(image_bytes((255, 255, 255, 0), fmt="PNG", mode="RGBA"), 8, LIMIT)
    assert pixels.max() == 0
    opaque = decode_image(image_bytes((10, 200, 30, 255), fmt="PNG", mode="RGBA"), 8, LIMIT)
    assert tuple(opaque[0, 0]) == (10, 200, 30)


def test_palette_image_becomes_rgb():
    image = Image.new("RGB", (8, 8), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert tuple(decode_image(buffer.getvalue(), 8, LIMIT)[0, 0]) == (0, 128, 255)


def test_cmyk_jpeg_becomes_rgb():
    pixels = decode_image(image_bytes((0, 255, 255, 0), mode="CMYK"), 8, LIMIT)  # pure red in CMYK
    assert pixels.shape == (8, 8, 3)
    assert pixels[..., 0].mean() > 200 and pixels[..., 1].mean() < 60 and pixels[..., 2].mean() < 60


def test_16_bit_png_is_rescaled_not_clipped():
    image = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode.startswith("I")
    assert abs(int(decode_image(buffer.getvalue(), 8, LIMIT)[0, 0, 0]) - 128) <= 1


def test_exif_orientation_is_applied():
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: left half goes to the top
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    pixels = decode_image(buffer.getvalue(), 20, LIMIT).astype(int)
    assert pixels[2, 10, 0] > 200 and pixels[2, 10, 2] < 60  # top is red
    assert pixels[17, 10, 2] > 200 and pixels[17, 10, 0] < 60  # bottom is blue


def test_truncated_jpeg_is_unreadable():
    data = noise_jpeg(0, size=64)
    with pytest.raises(ImageDecodeError) as error:
        decode_image(data[: len(data) // 2], 8, LIMIT)
    assert error.value.reason == UNREADABLE_IMAGE


def test_text_file_is_not_an_image():
    with pytest.raises(ImageDecodeError) as error:
        decode_image(b"hello, I am a text file\n", 8, LIMIT)
    assert error.value.reason == NOT_AN_IMAGE


FORMATS = ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM", "TGA", "QOI", "DDS"]


def mutants(seed: int, count: int):
    """Images of many formats, each cut short, bytes flipped, or chunks overwritten: the class of damage."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        fmt = FORMATS[index % len(FORMATS)]
        buffer = io.BytesIO()
        try:
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buffer, format=fmt)
        except (KeyError, OSError, ValueError):
            continue  # a format this Pillow cannot write
        data = bytearray(buffer.getvalue())
        kind = index % 3
        if kind == 0:
            data = data[: rng.integers(1, len(data))]
        elif kind == 1:
            for position in rng.integers(0, len(data), rng.integers(1, 8)):
                data[position] = rng.integers(0, 256)
        else:
            start = rng.integers(0, len(data))
            data[start : start + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        yield fmt, bytes(data)


@pytest.mark.parametrize(
    "decode", [lambda data: decode_image(data, 8, LIMIT), lambda data: np.asarray(decode_photo(data, LIMIT))]
)
def test_damaged_images_of_every_format_decode_or_raise_one_error_type(decode):
    outcomes = {"decoded": 0, "refused": 0}
    for _fmt, data in mutants(0, 330):
        try:
            pixels = decode(data)
        except ImageDecodeError as error:
            assert error.reason in (NOT_AN_IMAGE, UNREADABLE_IMAGE, TOO_LARGE) and "\n" not in error.detail
            outcomes["refused"] += 1
        else:
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
            outcomes["decoded"] += 1
    assert outcomes["refused"] > 50 and outcomes["decoded"] > 20  # both paths were exercised


SIZES = [(100, 100), (10, 1000), (1000, 10), (1, 10_000)]  # 10,000 pixels each, of many shapes


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA", "QOI"])
@pytest.mark.parametrize("size", SIZES)
def test_images_over_the_pixel_limit_are_refused_from_their_header_whatever_their_format(fmt, size):
    limit = size[0] * size[1]
    exact, over = image_bytes(size=size, fmt=fmt), image_bytes(size=(size[0] + 1, size[1]), fmt=fmt)
    assert np.asarray(decode_photo(exact, limit)).shape == (size[1], size[0], 3)
    for decode in (lambda data: decode_image(data, 8, limit), lambda data: decode_photo(data, limit)):
        with pytest.raises(ImageDecodeError) as error:
            decode(over)
        assert error.value.reason == TOO_LARGE
        assert error.value.detail == f"{size[0] + 1}x{size[1]} pixels is over the limit of 0.01 megapixels " + (
            "(faces.max_megapixels)"
        )


def test_a_decompression_bomb_is_refused_before_decoding(monkeypatch):
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size))
    bomb = huge_png(12000, 12000)  # 144 megapixels in a few hundred KB, under Pillow's own limit
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageDecodeError, match="12000x12000 pixels is over the limit of 50 megapixels"):
        decode_photo(bomb, LIMIT)
    assert decoded == []
