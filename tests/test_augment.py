import torch
from conftest import settings

from faceage.model.batches import IMAGENET_MEAN
from faceage.sections import AugmentParams
from faceage.training.augment import BatchAugmenter, is_active

GEOMETRY_AND_COLOUR = ("hflip", "shift", "rotate", "brightness", "contrast", "saturation", "hue", "grayscale")
OFF = settings(
    AugmentParams, crop_scale=1, **dict.fromkeys((*GEOMETRY_AND_COLOUR, "erasing", "blur", "noise", "jpeg"), 0)
)


def batch(seed=0):
    return torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(seed))


def augmenter(seed=1, **changes):
    return BatchAugmenter(settings(AugmentParams, **{**OFF.__dict__, **changes}), torch.Generator().manual_seed(seed))


def test_all_off_is_inactive_and_defaults_are_active():
    assert not is_active(OFF)
    assert is_active(settings(AugmentParams))


def test_certain_flip_mirrors_every_image():
    x = batch()
    torch.testing.assert_close(augmenter(hflip=1.0)(x), x.flip(-1), atol=1e-5, rtol=0)


def test_each_image_draws_its_own_parameters_reproducibly():
    x = batch().repeat(1, 1, 1, 1)
    x[:] = x[0]  # six copies of one image
    y = augmenter(**settings(AugmentParams).__dict__)(x)
    assert not torch.allclose(y[0], y[1])
    torch.testing.assert_close(y, augmenter(**settings(AugmentParams).__dict__)(x))
    assert not torch.allclose(y, augmenter(seed=2, **settings(AugmentParams).__dict__)(x))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_grayscale_makes_channels_equal():
    y = augmenter(grayscale=1.0)(batch())
    torch.testing.assert_close(y[:, 0], y[:, 1])
    torch.testing.assert_close(y[:, 1], y[:, 2])


def test_brightness_scales_pixel_values():
    x = torch.full((4, 3, 8, 8), 0.5)
    y = augmenter(brightness=0.3)(x)
    factors = y[:, 0, 0, 0] / 0.5
    assert ((factors >= 0.7) & (factors <= 1.3)).all() and factors.std() > 0
    torch.testing.assert_close(y, factors.view(4, 1, 1, 1) * x)


def test_erasing_fills_a_rectangle_with_the_mean_colour():
    x = torch.zeros(4, 3, 16, 16)
    y = augmenter(erasing=1.0)(x)
    erased = (y[:, 0] == IMAGENET_MEAN[0]).flatten(1).sum(1)
    assert (erased > 0).all() and (erased < 16 * 16).all()


def test_a_batch_split_in_shares_is_augmented_as_it_would_be_whole():
    x = batch()
    everything = {**settings(AugmentParams).__dict__, "blur": 0.5, "noise": 0.05, "jpeg": 0.5}
    whole = augmenter(**everything)(x)
    parts = [augmenter(**everything)(x[rows], (rows, len(x))) for rows in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(torch.cat(parts), whole)


def sharpness(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of horizontally neighbouring pixels, per image."""
    return (x[..., 1:] - x[..., :-1]).pow(2).flatten(1).mean(1)


def test_blur_smooths_every_image_and_wider_blur_smooths_more():
    x = batch()
    narrow, wide = augmenter(blur=1.0, blur_sigma=0.5)(x), augmenter(blur=1.0, blur_sigma=3.0)(x)
    assert (sharpness(narrow) < sharpness(x)).all() and (sharpness(wide) < sharpness(narrow)).all()
    torch.testing.assert_close(narrow.mean((2, 3)), x.mean((2, 3)), atol=0.02, rtol=0)  # the light stays


def test_noise_is_zero_mean_and_bounded_by_its_largest_deviation():
    x = torch.full((64, 3, 20, 20), 0.5)
    y = augmenter(noise=0.1)(x)
    deviation = (y - x).flatten(1).std(1)
    assert abs(float((y - x).mean())) < 0.005 and (deviation <= 0.1 * 1.05).all() and (deviation > 0).any()


def test_jpeg_reencodes_chosen_images_at_a_quality_in_range():
    x = batch()
    low, high = augmenter(jpeg=1.0, jpeg_quality=5)(x), augmenter(jpeg=1.0, jpeg_quality=94)(x)
    assert ((low * 255 - (low * 255).round()).abs() < 1e-3).all()  # decoded 8-bit pixels
    assert ((low - x).abs().mean() > (high - x).abs().mean()) and not torch.equal(high, x)
    assert torch.equal(augmenter(jpeg=0.0, blur=0.0)(x), x)
