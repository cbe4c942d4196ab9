import torch

from faceage.augment import BatchAugmenter, is_active
from faceage.batches import IMAGENET_MEAN
from faceage.params import AugmentParams

OFF = AugmentParams(
    hflip=0, crop_scale=1, shift=0, rotate=0, brightness=0, contrast=0, saturation=0, hue=0, grayscale=0, erasing=0
)


def batch(seed=0):
    return torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(seed))


def augmenter(seed=1, **changes):
    return BatchAugmenter(AugmentParams(**{**OFF.__dict__, **changes}), torch.Generator().manual_seed(seed))


def test_all_off_is_inactive_and_defaults_are_active():
    assert not is_active(OFF)
    assert is_active(AugmentParams())


def test_certain_flip_mirrors_every_image():
    x = batch()
    torch.testing.assert_close(augmenter(hflip=1.0)(x), x.flip(-1), atol=1e-5, rtol=0)


def test_each_image_draws_its_own_parameters_reproducibly():
    x = batch().repeat(1, 1, 1, 1)
    x[:] = x[0]  # six copies of one image
    y = augmenter(**AugmentParams().__dict__)(x)
    assert not torch.allclose(y[0], y[1])
    torch.testing.assert_close(y, augmenter(**AugmentParams().__dict__)(x))
    assert not torch.allclose(y, augmenter(seed=2, **AugmentParams().__dict__)(x))
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
    whole = augmenter(**AugmentParams().__dict__)(x)
    parts = [augmenter(**AugmentParams().__dict__)(x[rows], (rows, len(x))) for rows in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(torch.cat(parts), whole)
