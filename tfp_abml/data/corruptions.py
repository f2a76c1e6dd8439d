"""Omniglot-C: seeded corruptions of task images at five severities, for measuring uncertainty under shift.

In the manner of ImageNet-C (Hendrycks & Dietterich, 2019) and of Ovadia et al. (2019, "Can you
trust your model's uncertainty?"): the test distribution shifts, the model does not change, and a
model that knows its limits grows less confident as its accuracy falls. Every corruption works on
``uint8`` images ``[n, H, W]`` or ``[n, H, W, C]`` at the model's resolution (Omniglot: white
background 255, black ink 0) through ``scipy.ndimage``; its parameters per severity 1..5 are in
:data:`SEVERITIES`, chosen for 28-pixel characters (strokes one to two pixels wide):

=================  ==========================================================================
gaussian_noise     additive N(0, sigma) on [0, 1] intensities, sigma 0.08 .. 0.38 (ImageNet-C's)
gaussian_blur      Gaussian filter, sigma 0.4 .. 1.2 pixels
elastic            Simard et al. (2003) displacement: uniform noise smoothed by a Gaussian of 3
                   pixels, scaled to alpha 6 .. 22 pixels
stroke_thinning    grey dilation of the (bright) background by a 2x2 window, blended in at
                   20% .. 100%: strokes fade and break
stroke_thickening  grey erosion (ink grows) by a 2x2 window blended in at 25% .. 100%, then 3x3
rotation           rotation by 5 .. 30 degrees, the sign drawn per image, border pixels repeated
occlusion          a square of side 15% .. 55% of the image, filled with the image's median
                   (the background: part of the character is erased), at a random place
contrast           ``(x - mean) * c + mean`` with c 0.4 .. 0.05 (ImageNet-C's)
=================  ==========================================================================

:class:`CorruptedSampler` applies one corruption at one severity to every image of every task
(support and queries: the task comes from the shifted domain), each image with its own random
draw, a pure function of ``(seed, episode index, corruption, severity)``.
"""

from __future__ import annotations

import numpy as np

from tfp_abml.choices import CORRUPTIONS
from tfp_abml.errors import UserInputError

SEVERITIES = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (0.4, 0.6, 0.8, 1.0, 1.2),
    "elastic": (6.0, 10.0, 14.0, 18.0, 22.0),
    "stroke_thinning": ((2, 0.2), (2, 0.4), (2, 0.6), (2, 0.8), (2, 1.0)),
    "stroke_thickening": ((2, 0.25), (2, 0.5), (2, 0.75), (2, 1.0), (3, 1.0)),
    "rotation": (5.0, 10.0, 15.0, 20.0, 30.0),
    "occlusion": (0.15, 0.25, 0.35, 0.45, 0.55),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
}
assert tuple(SEVERITIES) == CORRUPTIONS
ELASTIC_SMOOTHING = 3.0  # pixels: the Gaussian that smooths the displacement noise


def _spatial(image, function):
    """``function`` applied to each channel of an ``[H, W]`` or ``[H, W, C]`` float image."""
    if image.ndim == 2:
        return function(image)
    return np.stack([function(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def _corrupt_one(image, name, parameter, rng):
    from scipy import ndimage

    if name == "gaussian_noise":
        return image + rng.normal(0.0, parameter, image.shape)
    if name == "gaussian_blur":
        return _spatial(image, lambda x: ndimage.gaussian_filter(x, parameter, mode="nearest"))
    if name == "elastic":
        h, w = image.shape[:2]
        dy, dx = (ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), ELASTIC_SMOOTHING) * parameter for _ in range(2))
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        coordinates = [rows + dy, cols + dx]
        return _spatial(image, lambda x: ndimage.map_coordinates(x, coordinates, order=1, mode="nearest"))
    if name in ("stroke_thinning", "stroke_thickening"):
        size, blend = parameter
        morph = ndimage.grey_dilation if name == "stroke_thinning" else ndimage.grey_erosion
        return (1 - blend) * image + blend * _spatial(image, lambda x: morph(x, size=(size, size)))
    if name == "rotation":
        angle = parameter * rng.choice([-1.0, 1.0])
        return _spatial(image, lambda x: ndimage.rotate(x, angle, reshape=False, order=1, mode="nearest"))
    if name == "occlusion":
        h, w = image.shape[:2]
        side = max(int(round(parameter * min(h, w))), 1)
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out = image.copy()
        out[top:top + side, left:left + side] = np.median(image, axis=(0, 1))
        return out
    if name == "contrast":
        mean = image.mean(axis=(0, 1), keepdims=True)
        return (image - mean) * parameter + mean
    raise AssertionError(name)


def check_corruption(name, severity):
    """One-line errors for an unknown corruption or a severity outside 1..5."""
    if name not in SEVERITIES:
        raise UserInputError(f"unknown corruption {name!r}: use one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise UserInputError(f"corruption severity must be an integer 1..5, got {severity!r}")


def corrupt(images, name, severity, rng):
    """``images`` (uint8 ``[n, H, W]`` or ``[n, H, W, C]``) under corruption ``name`` at ``severity``."""
    check_corruption(name, severity)
    parameter = SEVERITIES[name][severity - 1]
    floats = np.asarray(images, np.float64) / 255.0
    out = np.stack([_corrupt_one(image, name, parameter, rng) for image in floats]) if len(floats) else floats
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


class CorruptedSampler:
    """An :class:`~tfp_abml.data.sampling.EpisodeSampler`'s tasks with every image corrupted.

    Same tasks as ``sampler`` (same classes, examples and labels for the same index), so a
    corrupted evaluation compares with the clean one task for task.
    """

    def __init__(self, sampler, name, severity, seed=0):
        check_corruption(name, severity)
        self.sampler, self.name, self.severity, self.seed = sampler, name, int(severity), int(seed)
        self.ways, self.shots, self.queries, self.images = sampler.ways, sampler.shots, sampler.queries, sampler.images
        self.image_shape = sampler.image_shape

    def sample(self, index):
        support, support_labels, query, query_labels = self.sampler.sample(index)
        index = int(np.asarray(index).item())
        rng = np.random.default_rng([self.seed, index, CORRUPTIONS.index(self.name), self.severity])
        return (corrupt(support, self.name, self.severity, rng), support_labels,
                corrupt(query, self.name, self.severity, rng), query_labels)
