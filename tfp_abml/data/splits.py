"""Class splits of Omniglot: which classes meta-train, meta-validate and meta-test.

Three schemes:

* ``vinyals`` -- Vinyals et al. (2016), as published with Prototypical Networks
  (Snell et al., 2017): 1028 / 172 / 423 characters, each at rotations
  0/90/180/270 as separate classes (4112 / 688 / 1692 classes). The split that
  the published few-shot numbers use. Lists are read from
  ``<data_dir>/omniglot/splits/vinyals/{train,val,test}.txt``; without a data
  directory they are fetched from the Prototypical Networks repository.
* ``lake`` -- Lake et al. (2015): the background alphabets meta-train, the
  evaluation alphabets meta-test; the last five background alphabets (sorted by
  name) are held out for validation. No rotations.
* ``lake-rotated`` -- the Lake split with the Vinyals recipe on its training side
  only: each training character at rotations 0/90/180/270 as separate classes
  (4 x 813 classes), to regularise models that overfit the 813 characters.
  Validation and test are those of ``lake``, unrotated, so results compare with
  it directly.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from tfp_abml.choices import SPLIT_SCHEMES
from tfp_abml.data import omniglot
from tfp_abml.errors import UserInputError

SCHEMES = SPLIT_SCHEMES
SPLITS = ("train", "val", "test")
LAKE_VALIDATION_ALPHABETS = 5
_VINYALS_URL = ("https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/"
                "data/omniglot/splits/vinyals/{split}.txt")


@dataclasses.dataclass(frozen=True)
class ClassImages:
    """The images of one split: uint8 ``[classes, examples, size, size]`` and a name per class."""

    names: tuple
    images: np.ndarray

    @property
    def num_classes(self):
        return self.images.shape[0]

    @property
    def examples_per_class(self):
        return self.images.shape[1]


def vinyals_list_path(data_dir, split):
    """Where the Vinyals list for ``split`` lives: the data dir if given, else a downloaded copy."""
    path = omniglot.resolve_data_dir(data_dir)
    if path is not None:
        found = path / "omniglot" / "splits" / "vinyals" / f"{split}.txt"
        if not found.is_file():
            raise UserInputError(
                f"Vinyals split list {found} not found: put the Prototypical Networks split lists "
                f"(train.txt, val.txt, test.txt) in {found.parent}/, or use --split-scheme lake")
        return found
    import keras

    return pathlib.Path(keras.utils.get_file(f"omniglot_vinyals_{split}.txt", _VINYALS_URL.format(split=split),
                                             cache_subdir="tfp_abml"))


def read_vinyals_list(path):
    """Parse ``Alphabet/characterNN/rotDDD`` lines into (character, quarter turns) pairs."""
    entries = []
    for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("/")
        if len(parts) != 3 or parts[2] not in ("rot000", "rot090", "rot180", "rot270"):
            raise UserInputError(f"{path}:{number}: expected 'Alphabet/characterNN/rotDDD', got {line!r}")
        entries.append((f"{parts[0]}/{parts[1]}", int(parts[2][3:]) // 90))
    return entries


def _vinyals(chars, data_dir, split):
    path = vinyals_list_path(data_dir, split)
    entries = read_vinyals_list(path)
    index = chars.index()
    unknown = [name for name, _ in entries if name not in index]
    if unknown:
        raise UserInputError(f"{path} names {len(unknown)} characters that are not in the Omniglot archives "
                             f"(first: {unknown[0]}); check that the list matches Lake's archives")
    images = np.stack([np.rot90(chars.images[index[name]], k=turns, axes=(-2, -1)) for name, turns in entries])
    names = tuple(f"{name}/rot{turns * 90:03d}" for name, turns in entries)
    return ClassImages(names, np.ascontiguousarray(images))


def _rotated_classes(classes):
    """Each class at 0/90/180/270 degrees as four classes named ``<name>/rotDDD`` (Vinyals et al., 2016)."""
    images = np.concatenate([np.rot90(classes.images, k=turns, axes=(-2, -1)) for turns in range(4)])
    names = tuple(f"{name}/rot{turns * 90:03d}" for turns in range(4) for name in classes.names)
    return ClassImages(names, np.ascontiguousarray(images))


def _lake(chars, split):
    alphabet = np.array([name.split("/")[0] for name in chars.names])
    background = sorted(set(alphabet[chars.background]))
    held_out = set(background[-LAKE_VALIDATION_ALPHABETS:])
    if split == "test":
        keep = ~chars.background
    else:
        in_val = np.array([a in held_out for a in alphabet])
        keep = chars.background & (in_val if split == "val" else ~in_val)
    return ClassImages(tuple(np.array(chars.names)[keep]), chars.images[keep])


def omniglot_split(split="train", scheme="vinyals", data_dir=None, image_size=28) -> ClassImages:
    """The classes of one Omniglot split at ``image_size``."""
    if scheme not in SCHEMES:
        raise UserInputError(f"unknown split scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    if split not in SPLITS:
        raise UserInputError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    chars = omniglot.load_omniglot(data_dir, image_size)
    if scheme == "vinyals":
        return _vinyals(chars, data_dir, split)
    classes = _lake(chars, split)
    return _rotated_classes(classes) if scheme == "lake-rotated" and split == "train" else classes


def num_classes(split="train", scheme="vinyals", data_dir=None):
    """How many classes a split has, read from the split lists without decoding any image."""
    if scheme == "vinyals":
        return len(read_vinyals_list(vinyals_list_path(data_dir, split)))
    return omniglot_split(split, scheme, data_dir).num_classes
