"""Omniglot-C corruptions: shapes, determinism, growing damage with severity, and the sampler wrapper."""

import numpy as np
import pytest

from tfp_abml.data.corruptions import CORRUPTIONS, CorruptedSampler, corrupt
from tfp_abml.data.sampling import EpisodeSampler
from tfp_abml.errors import UserInputError


def _characters(count=24, size=28, seed=0):
    """White images with a few black strokes two pixels wide: generated Omniglot-like characters."""
    rng = np.random.default_rng(seed)
    images = np.full((count, size, size), 255, np.uint8)
    for image in images:
        for _ in range(3):
            row, col = rng.integers(4, size - 6, 2)
            if rng.random() < 0.5:
                image[row:row + 2, col:col + rng.integers(6, 14)] = 0
            else:
                image[row:row + rng.integers(6, 14), col:col + 2] = 0
    return images


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_damage_grows_with_severity(name):
    clean = _characters()
    damage = [np.abs(corrupt(clean, name, s, np.random.default_rng(s)).astype(float) - clean).mean()
              for s in range(1, 6)]
    assert damage[0] > 0, "severity 1 must change the images"
    assert all(b > a for a, b in zip(damage, damage[1:])), damage


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_and_seeding(name):
    clean = _characters(4)
    colour = np.repeat(clean[..., None], 3, axis=-1)
    for images in (clean, colour):
        out = corrupt(images, name, 3, np.random.default_rng(7))
        assert out.shape == images.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, corrupt(images, name, 3, np.random.default_rng(7)))


def test_bad_names_and_severities_are_one_line_errors():
    with pytest.raises(UserInputError, match="unknown corruption 'fog'"):
        corrupt(_characters(1), "fog", 1, np.random.default_rng(0))
    for severity in (0, 6, 2.5, True):
        with pytest.raises(UserInputError, match="severity must be an integer 1..5"):
            corrupt(_characters(1), "contrast", severity, np.random.default_rng(0))


def test_corrupted_sampler_keeps_the_tasks_and_is_a_function_of_the_index():
    images = _characters(10 * 6).reshape(10, 6, 28, 28)
    base = EpisodeSampler(images, ways=3, shots=1, queries=2, seed=5)
    shifted = CorruptedSampler(base, "gaussian_noise", 4, seed=0)
    clean, noisy = base.sample(3), shifted.sample(np.int64(3))
    np.testing.assert_array_equal(clean[1], noisy[1])
    np.testing.assert_array_equal(clean[3], noisy[3])
    assert not np.array_equal(clean[0], noisy[0]) and not np.array_equal(clean[2], noisy[2])
    for a, b in zip(noisy, shifted.sample(3)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(shifted.sample(4)[0], CorruptedSampler(base, "gaussian_noise", 4, seed=0).sample(3)[0])
    assert (shifted.ways, shifted.shots, shifted.queries) == (3, 1, 2)
