"""miniImageNet from a folder of images the user supplies, read through TFDS, as class splits.

miniImageNet (Vinyals et al., 2016) is 100 ImageNet classes x 600 images at
84x84; the split every few-shot paper uses is Ravi & Larochelle's (2017): 64
train, 16 validation and 20 test classes, given as ``train.csv``, ``val.csv``
and ``test.csv`` with ``filename,label`` rows (``n0153282900000005.jpg,
n01532829``; https://github.com/twitter/meta-learning-lstm/tree/master/data/miniImagenet).
ImageNet's terms keep the images from being downloaded automatically: users
make them from ImageNet's ILSVRC-2012 training set with a published script
(e.g. https://github.com/yaoyao-liu/mini-imagenet-tools, which writes layout 3
below) and point ``--data-dir`` at them. Layouts found, in
``<data_dir>/miniimagenet/`` or ``<data_dir>/``:

1. Ravi's: ``images/<filename>`` with the three CSVs beside it, or in
   ``splits/ravi/`` (where this project's shared data folder keeps them).
2. The CSVs with per-class folders: ``images/<label>/<filename>`` or
   ``<split>/<label>/<filename>``.
3. No CSVs, per-class folders per split: ``train/<class>/*.jpg``,
   ``val/<class>/*.jpg``, ``test/<class>/*.jpg`` (JPEG or PNG).

The images are prepared once, resized to 84x84x3, by the TFDS builder
``miniimagenet_local`` (see ``tfp_abml.data.tfds_builders``), then decoded
into memory per split and size: uint8 ``[classes, images, size, size, 3]``,
classes sorted by name and images by file name.
"""

from __future__ import annotations

import functools
import os
import pathlib

# Where the images of each split are, shared with the TFDS builder miniimagenet_local; these
# names stay importable from here.
from tfp_abml.data.miniimagenet_sources import (HOW_TO_GET, IMAGE_SIZE, IMAGE_SUFFIXES,  # noqa: F401
                                                IMAGES_PER_CLASS, SPLITS, Sources, find_sources, read_list)
from tfp_abml.errors import UserInputError


def resolve_data_dir(data_dir=None):
    """The data directory from the argument or ``TFP_ABML_DATA_DIR``; miniImageNet has no download."""
    from tfp_abml.data.omniglot import DATA_DIR_ENV

    value = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if value is None:
        raise UserInputError(f"miniImageNet cannot be downloaded automatically: {HOW_TO_GET}, then pass "
                             f"--data-dir (or set {DATA_DIR_ENV}) to the folder that holds miniimagenet/")
    path = pathlib.Path(value).expanduser()
    if not path.is_dir():
        raise UserInputError(f"data directory {path} does not exist: pass --data-dir (or set {DATA_DIR_ENV}) "
                             "to the folder that holds miniimagenet/images/ and the Ravi split CSVs")
    return path.resolve()


def class_counts(data_dir):
    """How many classes each split has, from the listing alone (no image is read)."""
    sources = find_sources(resolve_data_dir(data_dir))
    return {split: len({label for label, _, _ in rows}) for split, rows in sources.files.items()}


def check_ways(ways, data_dir):
    """Before TensorFlow loads: the folder is complete and the meta-training splits have ``ways`` classes."""
    counts = class_counts(data_dir)
    for split in ("train", "val"):
        if ways > counts[split]:
            raise UserInputError(f"--ways {ways} is larger than the {counts[split]} classes of the miniImageNet "
                                 f"{split} split: use --ways {counts[split]} or fewer")


@functools.lru_cache(maxsize=3)
def _load(root: pathlib.Path, split: str, size: int):
    from tfp_abml.data.tfds_builders import miniimagenet_local  # imports TFDS: only when images are needed

    return miniimagenet_local.class_images(miniimagenet_local.prepare(root), split, size)


def miniimagenet_split(split="train", data_dir=None, image_size=IMAGE_SIZE):
    """The classes of one split of Ravi & Larochelle's miniImageNet, ``image_size`` pixels square, RGB."""
    if split not in SPLITS:
        raise UserInputError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if image_size < 8:
        raise UserInputError(f"image size {image_size} is too small: use at least 8 ({IMAGE_SIZE} is the standard)")
    return _load(resolve_data_dir(data_dir), split, int(image_size))

