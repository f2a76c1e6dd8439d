"""Omniglot reader: Lake's official archives (or TFDS) -> one array of character images.

Lake et al. (2015), "Human-level concept learning through probabilistic program
induction". The official archives ``images_background.zip`` (30 alphabets, 964
characters) and ``images_evaluation.zip`` (20 alphabets, 659 characters) hold
``images_<set>/<Alphabet>/characterNN/<id>_<drawer>.png``: 105x105 1-bit PNGs,
20 drawers per character, black ink (0) on white (1).

Where the data comes from, first match wins:

1. ``data_dir`` (the ``--data-dir`` flag), else the ``TFP_ABML_DATA_DIR``
   environment variable: the two zips, or their extracted folders, in
   ``<data_dir>/omniglot/`` or directly in ``<data_dir>/``. They are prepared
   once through the local TFDS builder ``omniglot_local`` (``manual_dir``; see
   ``tfp_abml.data.tfds_builders``) and read back through TFDS.
2. Neither given: TFDS's ``omniglot`` builder, which downloads the same archives.

Images are decoded once per process and per size, resized with area averaging
(anti-aliased) and kept as uint8, background 255, ink 0.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re

import numpy as np

# Where Lake's archives are and the PNGs they hold, shared with the TFDS builder omniglot_local;
# ARCHIVES and _read_pngs stay importable from here.
from tfp_abml.data.omniglot_sources import ARCHIVES, DRAWERS, find_sources  # noqa: F401
from tfp_abml.data.omniglot_sources import read_pngs as _read_pngs  # noqa: F401
from tfp_abml.errors import UserInputError

DATA_DIR_ENV = "TFP_ABML_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class OmniglotCharacters:
    """All characters of Omniglot at one image size.

    Attributes:
      names: ``"Alphabet/characterNN"`` per character, sorted.
      images: uint8 ``[characters, 20, size, size]``, background 255, ink 0;
        drawers in file-name order.
      background: bool ``[characters]``, True for Lake's background set.
    """

    names: tuple
    images: np.ndarray
    background: np.ndarray

    def index(self):
        return {name: i for i, name in enumerate(self.names)}


def resolve_data_dir(data_dir=None):
    """The data directory from the argument or ``TFP_ABML_DATA_DIR``; None if neither is set."""
    value = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if value is None:
        return None
    path = pathlib.Path(value).expanduser()
    if not path.is_dir():
        raise UserInputError(
            f"data directory {path} does not exist: pass --data-dir (or set {DATA_DIR_ENV}) "
            "to the folder that holds omniglot/images_background.zip and omniglot/images_evaluation.zip")
    return path


def _decode_resize(blobs, size, names=None):
    """Decode PNG bytes and resize to ``size`` x ``size`` uint8, in parallel through tf.data.

    A PNG that cannot be decoded is a UserInputError naming it (``names[i]`` describes ``blobs[i]``).
    """
    import tensorflow as tf

    def decode(blob):
        image = tf.image.convert_image_dtype(tf.io.decode_png(blob, channels=1), tf.float32)
        image = tf.image.resize(image, (size, size), method="area")
        return tf.cast(tf.round(image[..., 0] * 255.0), tf.uint8)

    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(blobs, dtype=tf.string))
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(2048)
    try:
        return np.concatenate([batch.numpy() for batch in dataset]) if blobs else np.zeros((0, size, size), np.uint8)
    except tf.errors.InvalidArgumentError as err:
        bad = _undecodable(blobs)
        if not bad:  # not a PNG's fault after all
            raise
        what = names[bad[0]] if names else f"image {bad[0]}"
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserInputError(f"{what} is not a readable PNG ({_decode_error(blobs[bad[0]])}){more}; "
                             "download the archive again") from err


def _undecodable(blobs):
    """Indices of the blobs that are not decodable PNGs: the slow path, run only after a failure."""
    import tensorflow as tf

    def ok(index, blob):
        return index, tf.shape(tf.io.decode_png(blob, channels=1))[0]

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(blobs)), tf.constant(blobs, dtype=tf.string)))
    dataset = dataset.map(ok, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    decoded = {int(index) for index, _ in dataset.as_numpy_iterator()}
    return [i for i in range(len(blobs)) if i not in decoded]


def _decode_error(blob):
    """TensorFlow's reason for refusing ``blob``, without its ``{{function_node ...}}`` and ``[Op:...]`` parts."""
    import tensorflow as tf

    try:
        tf.io.decode_png(blob, channels=1)
    except tf.errors.InvalidArgumentError as err:
        text = err.message.strip().splitlines()[0] if err.message.strip() else "invalid data"
        return re.sub(r"\s*\[Op:\w+\]", "", re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text))
    return "invalid data"


def _assemble(records, size, sources=None):
    """Group (archive, alphabet, character, filename, bytes) records into OmniglotCharacters.

    ``sources`` (archive name -> zip or folder) lets errors name the file to replace.
    """
    by_char = {}
    for archive, alphabet, character, filename, blob in records:
        by_char.setdefault((f"{alphabet}/{character}", archive), []).append((filename, blob))
    if not by_char:
        raise UserInputError("the Omniglot archives hold no character images; download them again")
    names, background, blobs, files_read = [], [], [], []
    for (name, archive), files in sorted(by_char.items()):
        if len(files) != DRAWERS:
            raise UserInputError(f"Omniglot character {archive}/{name} has {len(files)} images, expected {DRAWERS}; "
                                 "the archive is incomplete, download it again")
        names.append(name)
        background.append(archive == "images_background")
        blobs.extend(blob for _, blob in sorted(files))
        files_read.extend(_describe(sources, archive, name, filename) for filename, _ in sorted(files))
    images = _decode_resize(blobs, size, files_read).reshape(len(names), DRAWERS, size, size)
    return OmniglotCharacters(tuple(names), images, np.asarray(background))


def _describe(sources, archive, name, filename):
    """Where one image came from, as a user would look for it: the file, or the zip and its member."""
    source = (sources or {}).get(archive)
    if source is None:
        return f"Omniglot image {archive}/{name}/{filename}"
    if source.suffix == ".zip":
        return f"{source} (member {archive}/{name}/{filename})"
    return str(source / name / filename)


@functools.lru_cache(maxsize=4)
def _load_local(data_dir: pathlib.Path, size: int):
    from tfp_abml.data.tfds_builders import omniglot_local  # imports TFDS: only when images are needed

    return _assemble(omniglot_local.records(data_dir), size, find_sources(data_dir))


@functools.lru_cache(maxsize=4)
def _load_tfds(size: int):
    """Omniglot through TFDS (downloads Lake's archives on first use)."""
    import tensorflow_datasets as tfds

    records = []
    for split, archive in (("train", "images_background"), ("test", "images_evaluation")):
        dataset, info = tfds.load("omniglot", split=split, with_info=True)
        alphabets = info.features["alphabet"].names
        drawer_count = {}
        for example in tfds.as_numpy(dataset):
            # TFDS numbers characters within an alphabet from 0; Lake's folders from 01.
            character = f"character{int(example['alphabet_char_id']) + 1:02d}"
            key = (alphabets[int(example["alphabet"])], character)
            drawer_count[key] = drawer_count.get(key, 0) + 1
            png = _encode_png(example["image"])
            records.append((archive, key[0], character, f"{drawer_count[key]:02d}.png", png))
    return _assemble(records, size)


def _encode_png(image):
    import tensorflow as tf

    return tf.io.encode_png(image[..., :1]).numpy()


def load_omniglot(data_dir=None, image_size=28) -> OmniglotCharacters:
    """Every Omniglot character at ``image_size``, from ``data_dir``/env, else TFDS. Cached per process."""
    if image_size < 8:
        raise UserInputError(f"image size {image_size} is too small: use at least 8 (28 is the standard)")
    path = resolve_data_dir(data_dir)
    if path is None:
        return _load_tfds(int(image_size))
    return _load_local(path.resolve(), int(image_size))
