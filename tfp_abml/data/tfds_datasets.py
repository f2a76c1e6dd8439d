"""CIFAR-FS, FC100 and any image-classification dataset of the TFDS catalogue, as class splits.

* ``--dataset cifar_fs``: CIFAR-FS (Bertinetto et al., 2019, "Meta-learning with differentiable
  closed-form solvers"), 64 / 16 / 20 of CIFAR-100's 100 fine classes.
* ``--dataset fc100``: FC100 (Oreshkin et al., 2018, TADAM), CIFAR-100's 20 superclasses split
  12 / 4 / 4, so 60 / 20 / 20 fine classes, no superclass in two splits.
* ``--dataset tfds:NAME[:LABEL_KEY]``: any image-classification dataset TFDS has (``NAME`` as TFDS
  writes it, ``name[/config][:version]``; ``LABEL_KEY`` the ClassLabel feature, default
  ``label``), its classes divided by ``--class-split`` exactly as :mod:`tfp_abml.data.folder`
  divides class folders (the same fixed seed, the same rounding, recorded in ``classes.json``).

All three read TFDS's own prepared data (CIFAR-FS and FC100: TFDS's ``cifar100`` builder) from the
TFDS data dir: ``--data-dir``, else ``$TFP_ABML_TFDS_DIR``, else TFDS's default
(``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``). Training never downloads: a dataset is
prepared once on a machine online (``tfds build NAME --data_dir DIR``) and read offline after;
one that is not prepared is refused with the command that prepares it. Every TFDS split of the
dataset is pooled (CIFAR-100: train and test, 600 images per class) before the classes are split.

The published split lists are package data, each naming its source:
``tfp_abml/data/split_lists/cifar_fs.json`` (fine class names per split) and ``fc100.json``
(superclass names per split; a split's classes are the fine classes of its superclasses, the
fine-to-superclass mapping read from the data, where every example carries both labels).

Images are resized to ``--image-size`` square (bilinear, antialiased when shrinking; CIFAR's 32 px
are kept as they are at the default 32) and kept in memory, one split after the other, each class's
images in TFDS's order, ragged like a folder's classes (a class of a TFDS dataset may have fewer
images than another). 1-channel images stay grey, RGBA loses its alpha. What can be checked from
TFDS's metadata alone (the name, whether it is prepared, its features, the class names and split)
is checked without TensorFlow; the images per class need a pass over the labels (TensorFlow),
still before ``training.fit`` writes anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import json
import logging
import os
import pathlib
import re

import numpy as np

from tfp_abml.data import folder
from tfp_abml.errors import UserInputError

PUBLISHED = ("cifar_fs", "fc100")  # the benchmarks with a published split of TFDS's cifar100
PAPERS = {"cifar_fs": "Bertinetto et al., 2019", "fc100": "Oreshkin et al., 2018"}
PREFIX = "tfds:"
USAGE = "tfds:NAME[:LABEL_KEY]"
DEFAULT_LABEL_KEY = "label"
SPLITS = folder.SPLITS
SPLIT_LISTS = pathlib.Path(__file__).resolve().parent / "split_lists"  # package data (setup.cfg)
CIFAR100 = "cifar100"
DEFAULT_IMAGE_KEY = "image"
_NAME = re.compile(r"[a-z0-9][a-z0-9_]*(/[A-Za-z0-9_.+-]+)?")  # TFDS's name[/config]
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BATCH = 256


def is_tfds_dataset(dataset):
    """Whether ``--dataset`` names one read through TFDS here: cifar_fs, fc100 or tfds:NAME."""
    return isinstance(dataset, str) and (dataset in PUBLISHED or dataset.startswith(PREFIX))


@dataclasses.dataclass(frozen=True)
class Spec:
    """What ``--dataset`` asks for: the TFDS name (with its config), version and label key."""

    dataset: str
    name: str
    version: str | None
    label_key: str

    @property
    def published(self):
        return self.dataset if self.dataset in PUBLISHED else None

    @property
    def tfds_name(self):
        """``name[/config][:version]`` as TFDS writes it (for messages and commands)."""
        return f"{self.name}:{self.version}" if self.version else self.name


def parse(dataset) -> Spec:
    """``cifar_fs``, ``fc100`` or ``tfds:NAME[:VERSION][:LABEL_KEY]`` -> Spec; syntax only (no TFDS)."""
    if dataset in PUBLISHED:
        return Spec(dataset, CIFAR100, None, DEFAULT_LABEL_KEY)
    fix = f"use --dataset {USAGE}, e.g. tfds:oxford_flowers102 or tfds:cifar100:coarse_label"
    if not isinstance(dataset, str) or not dataset.startswith(PREFIX):
        raise UserInputError(f"--dataset {dataset!r} is not a TFDS dataset: {fix}")
    parts = dataset[len(PREFIX):].split(":")
    name, rest = parts[0], parts[1:]
    if not name:
        raise UserInputError(f"--dataset {dataset} names no TFDS dataset: {fix}")
    if not _NAME.fullmatch(name):
        raise UserInputError(f"--dataset {dataset}: {name!r} is not a TFDS dataset name (lower case, digits and "
                             f"_, optionally /config): {fix}")
    version = rest.pop(0) if rest and _VERSION.fullmatch(rest[0]) else None
    if len(rest) > 1 or (rest and not _KEY.fullmatch(rest[0])):
        raise UserInputError(f"--dataset {dataset}: {':'.join(rest)!r} is not a label key (a feature name such "
                             f"as label): {fix}")
    return Spec(dataset, name, version, rest[0] if rest else DEFAULT_LABEL_KEY)


@functools.lru_cache(maxsize=None)
def published_split(name):
    """The published split of ``cifar_fs`` or ``fc100`` from its package data file."""
    path = SPLIT_LISTS / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:  # a broken installation, not the user's input
        raise UserInputError(f"cannot read the {name} split list {path} ({err}): reinstall tfp_abml") from err


def resolve_data_dir(data_dir=None):
    """The TFDS data dir: ``--data-dir``, else ``$TFP_ABML_TFDS_DIR``, else ``$TFDS_DATA_DIR``, else
    ``~/tensorflow_datasets`` (a cloud path such as gs://... as it is)."""
    from tfp_abml.data.tfds_builders.preparation import tfds_dir

    value = data_dir if data_dir not in (None, "") else tfds_dir() or os.environ.get("TFDS_DATA_DIR") or None
    value = str(value or "~/tensorflow_datasets")
    if "://" in value:
        return value
    return str(pathlib.Path(value).expanduser().absolute())


def prepare_command(spec, data_dir):
    """How to prepare the dataset, as one shell command (for a machine online)."""
    return f"tfds build {spec.tfds_name} --data_dir {data_dir}"


def _prepare_help(spec, data_dir):
    python = (f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{spec.tfds_name}', "
              f"data_dir='{data_dir}').download_and_prepare()\"")
    return (f"on a machine online run `{prepare_command(spec, data_dir)}` (or `{python}`), copy {data_dir} "
            f"here if that machine is another, and pass --data-dir {data_dir}")


@dataclasses.dataclass(frozen=True)
class Source:
    """A prepared TFDS dataset as this package reads it, from TFDS's metadata alone (no TensorFlow)."""

    spec: Spec
    data_dir: str  # the TFDS data dir
    version: str
    image_key: str
    image_shape: tuple  # as stored: (height, width, channels), None where they vary
    image_channels: int  # of the stored images (4: RGBA, read as RGB)
    class_names: tuple  # of the label key, in label order
    coarse_names: tuple | None  # fc100: CIFAR-100's superclasses ("coarse_label")
    tfds_splits: tuple  # every TFDS split, pooled in this order

    @property
    def channels(self):
        """Channels of the images as read: 1 (grey) or 3 (colour; RGBA's alpha dropped)."""
        return 1 if self.image_channels == 1 else 3

    @property
    def label(self):
        """The dataset for messages: ``cifar_fs`` or ``tfds:NAME``."""
        return self.spec.dataset


@contextlib.contextmanager
def _quiet_absl():
    """TFDS logs warnings on stderr that are not the user's to act on: for every folder of a dataset
    not prepared yet (which the error then says), and for its own use of deprecated fields."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _builder(spec, data_dir):
    with _quiet_absl():
        return _make_builder(spec, data_dir)


def _make_builder(spec, data_dir):
    import tensorflow_datasets as tfds

    kwargs = {"data_dir": data_dir} | ({"version": spec.version} if spec.version else {})
    try:
        return tfds.builder(spec.name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        if spec.name.split("/")[0] in tfds.list_builders(with_community_datasets=False):
            raise UserInputError(f"TFDS's {spec.tfds_name} is not prepared in {data_dir}, and training never "
                                 f"downloads: {_prepare_help(spec, data_dir)}") from None
        close = difflib.get_close_matches(spec.name.split("/")[0], tfds.list_builders(with_community_datasets=False),
                                          n=3, cutoff=0.8)
        hint = f" (did you mean {' or '.join(PREFIX + n for n in close)}?)" if close else ""
        raise UserInputError(f"unknown TFDS dataset {spec.name!r}{hint}: it is neither in TFDS's catalogue "
                             f"(https://www.tensorflow.org/datasets/catalog/overview) nor prepared in {data_dir}; "
                             f"give a catalogue name as --dataset {USAGE}, or --data-dir the TFDS data dir that "
                             "holds it") from None
    except UserInputError:
        raise
    except Exception as err:  # noqa: BLE001 -- a bad config or version, a builder that fails to import
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserInputError(f"cannot open TFDS's {spec.tfds_name} in {data_dir} ({type(err).__name__}: "
                             f"{first}): check --dataset {spec.dataset} against the TFDS catalogue") from None


def _versions_on_disk(builder_dir):
    try:
        return sorted(p.name for p in pathlib.Path(builder_dir).iterdir() if _VERSION.fullmatch(p.name))
    except OSError:
        return []


def open_source(dataset, data_dir=None) -> Source:
    """The prepared dataset ``dataset`` in the TFDS data dir (``data_dir``, else as
    :func:`resolve_data_dir` finds it), checked from its metadata (no TensorFlow): a known, prepared
    dataset with an image feature and the label key, and for cifar_fs and fc100 the classes of the
    published split."""
    return _open_source(parse(dataset), resolve_data_dir(data_dir))


@functools.lru_cache(maxsize=8)
def _open_source(spec, data_dir):
    with _quiet_absl():  # is_prepared() warns of a version folder without dataset_info.json
        return _checked_source(spec, data_dir)


def _checked_source(spec, data_dir):
    import tensorflow_datasets as tfds

    builder = _make_builder(spec, data_dir)
    if not builder.is_prepared():
        found = _versions_on_disk(pathlib.Path(builder.data_dir).parent) if "://" not in data_dir else []
        have = (f" (it holds version {', '.join(found)}; this TFDS reads {builder.version}: give "
                f"--dataset tfds:{spec.name}:{found[-1]} to read that one, or prepare {builder.version})"
                if found and spec.published is None else "")
        missing = "" if "://" in data_dir or os.path.isdir(data_dir) else " (that folder does not exist)"
        raise UserInputError(f"TFDS's {spec.tfds_name} is not prepared in {data_dir}{missing}{have}, and training "
                             f"never downloads: {_prepare_help(spec, data_dir)}")
    features = builder.info.features
    images = [key for key, feature in features.items() if isinstance(feature, tfds.features.Image)]
    if not images:
        raise UserInputError(f"{spec.dataset} has no image feature (its features: {', '.join(sorted(features))}): "
                             "give an image-classification dataset of the TFDS catalogue, e.g. tfds:oxford_flowers102")
    image_key = DEFAULT_IMAGE_KEY if DEFAULT_IMAGE_KEY in images else images[0]
    image = features[image_key]
    channels = image.shape[-1] if image.shape and image.shape[-1] is not None else 3
    if np.dtype(image.np_dtype) != np.uint8 or channels not in (1, 3, 4):
        raise UserInputError(f"{spec.dataset}'s image feature {image_key!r} holds {image.np_dtype} images of "
                             f"{channels} channels; only 8-bit grey, RGB or RGBA images are read: choose another "
                             "dataset")
    labels = sorted(key for key, feature in features.items() if isinstance(feature, tfds.features.ClassLabel))
    if spec.label_key not in labels:
        if not labels:
            raise UserInputError(f"{spec.dataset} has no class label (its features: {', '.join(sorted(features))}), "
                                 f"so no {spec.label_key!r}: give an image-classification dataset")
        raise UserInputError(f"{spec.dataset} has no class label {spec.label_key!r}: its class labels are "
                             f"{', '.join(labels)}; give one as --dataset tfds:{spec.tfds_name}:{labels[0]}")
    names = tuple(features[spec.label_key].names)
    coarse = tuple(features["coarse_label"].names) if spec.published == "fc100" and "coarse_label" in labels else None
    source = Source(spec, data_dir, str(builder.version), image_key, tuple(image.shape), int(channels), names,
                    coarse, tuple(builder.info.splits.keys()))
    if spec.published:
        _check_published(source)
    return source


def _check_published(source):
    lists = published_split(source.spec.published)
    have = set(source.class_names if lists["split_by"] == "label" else source.coarse_names or ())
    wanted = [name for split in SPLITS for name in lists["splits"][split]]
    missing = [name for name in wanted if name not in have]
    if missing:
        kind = "class" if lists["split_by"] == "label" else "superclass"
        raise UserInputError(f"the {CIFAR100} in {source.data_dir} has no {kind} {missing[0]!r} of the published "
                             f"{source.spec.dataset} split ({len(missing)} missing): it is not TFDS's CIFAR-100; "
                             f"prepare it again: {_prepare_help(source.spec, source.data_dir)}")


# -- labels and class splits (TensorFlow) -----------------------------------------------------------


def _dataset(source, keys):
    import tensorflow_datasets as tfds

    builder = _builder(source.spec, source.data_dir)
    decoders = tfds.decode.PartialDecoding({key: True for key in keys})
    with _quiet_absl():
        return builder.as_dataset(split="+".join(source.tfds_splits), shuffle_files=False, decoders=decoders)


@contextlib.contextmanager
def _reading(source):
    """A record TensorFlow cannot read (a damaged or partly copied TFDS folder): one line, not a traceback."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as err:
        first = (str(err.message).strip().splitlines() or [type(err).__name__])[0]
        raise UserInputError(f"cannot read {source.label} in {source.data_dir} ({type(err).__name__}: {first}): "
                             f"its prepared files are damaged or incomplete; prepare it again: "
                             f"{_prepare_help(source.spec, source.data_dir)}") from None


@functools.lru_cache(maxsize=4)
def labels(source):
    """``(labels, coarse labels or None)``: int64 arrays over every example, in TFDS's order (-1: an
    unlabelled example, as in some TFDS datasets' extra splits; left out of every class)."""
    keys = [source.spec.label_key] + (["coarse_label"] if source.coarse_names is not None else [])
    with _reading(source):
        parts = [tuple(batch[key] for key in keys) for batch in
                 _dataset(source, keys).batch(8192).as_numpy_iterator()]
    if not parts:
        raise UserInputError(f"{source.label} in {source.data_dir} has no examples: prepare it again: "
                             f"{_prepare_help(source.spec, source.data_dir)}")
    columns = [np.concatenate(column).astype(np.int64) for column in zip(*parts)]
    return columns[0], (columns[1] if len(columns) > 1 else None)


def superclass_of(source):
    """fc100: ``{fine class name: superclass name}`` from the data (each example has both labels)."""
    fine, coarse = labels(source)
    labelled = (fine >= 0) & (coarse >= 0)
    pairs = np.unique(np.stack([fine[labelled], coarse[labelled]], axis=1), axis=0)
    mapping = {}
    for f, c in pairs:
        name = source.class_names[f]
        if name in mapping:
            raise UserInputError(f"the {CIFAR100} in {source.data_dir} puts class {name!r} in the superclasses "
                                 f"{mapping[name]!r} and {source.coarse_names[c]!r}: it is not TFDS's CIFAR-100; "
                                 f"prepare it again: {_prepare_help(source.spec, source.data_dir)}")
        mapping[name] = source.coarse_names[c]
    return mapping


def split_names(source, class_split=None):
    """``{split: sorted class names}``: the published split (cifar_fs; fc100 through the superclasses
    of the data), or the seeded ``--class-split`` of a tfds: dataset (no TensorFlow for that one)."""
    if source.spec.published == "cifar_fs":
        lists = published_split("cifar_fs")["splits"]
        return {split: tuple(sorted(lists[split])) for split in SPLITS}
    if source.spec.published == "fc100":
        lists, mapping = published_split("fc100")["splits"], superclass_of(source)
        return {split: tuple(sorted(name for name, coarse in mapping.items() if coarse in lists[split]))
                for split in SPLITS}
    class_split = folder.DEFAULT_CLASS_SPLIT if class_split is None else class_split
    names = folder.split_classes(source.class_names, class_split)
    for split, chosen in names.items():
        if not chosen:
            raise UserInputError(f"--class-split {class_split} gives the {split} split none of the "
                                 f"{len(source.class_names)} classes of {source.label}: give every split a share of "
                                 f"at least 1/{len(source.class_names)}")
    return {split: tuple(chosen) for split, chosen in names.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class Listing:
    """The classes of each split with their image counts: ``splits[split]`` holds ``(name, count)`` pairs."""

    source: Source
    class_split: str | None  # tfds: datasets (as used); None for the published splits
    splits: dict

    def where(self, split):
        if self.source.spec.published:
            return f"the {self.source.label} {split} split ({PAPERS[self.source.spec.published]})"
        return f"the {split} split of {self.source.label} (--class-split {self.class_split})"

    def record(self, channels=None):
        """What ``classes.json`` holds: where the data is, the split's source and each split's classes."""
        source = self.source
        record = {"dataset": source.label, "tfds_name": source.spec.name, "version": source.version,
                  "data_dir": source.data_dir, "label_key": source.spec.label_key, "image_key": source.image_key,
                  "tfds_splits": list(source.tfds_splits), "class_split": self.class_split,
                  "class_split_seed": None if source.spec.published else folder.CLASS_SPLIT_SEED,
                  "split_source": f"tfp_abml/data/split_lists/{source.spec.published}.json"
                  if source.spec.published else None,
                  "channels": channels,
                  "splits": {split: dict(self.splits[split]) for split in SPLITS}}
        if source.spec.published == "fc100":
            record["superclasses"] = published_split("fc100")["splits"]
        return record


def find_classes(dataset, data_dir=None, class_split=None) -> Listing:
    """Every split's classes and their image counts (one pass over the labels)."""
    source = open_source(dataset, data_dir)
    if source.spec.published and class_split is not None:
        raise UserInputError(f"--class-split applies to --dataset folder and {USAGE}, not {dataset}: its classes "
                             "follow the published split; leave --class-split out")
    if not source.spec.published:
        class_split = folder.DEFAULT_CLASS_SPLIT if class_split is None else class_split
    return _listing(source, class_split)


@functools.lru_cache(maxsize=4)
def _listing(source, class_split):
    names = split_names(source, class_split)
    fine = labels(source)[0]
    counts = np.bincount(fine[fine >= 0], minlength=len(source.class_names))
    index = {name: i for i, name in enumerate(source.class_names)}
    return Listing(source, class_split,
                   {split: tuple((name, int(counts[index[name]])) for name in names[split]) for split in SPLITS})


def check_split(listing, split, ways, shots, queries, flags=("--ways", "--shots", "--queries")):
    """A split has ``ways`` classes, each with ``shots + queries`` images; else one line naming the fix."""
    ways_flag, shots_flag, queries_flag = flags
    classes = listing.splits[split]
    if ways > len(classes):
        more = "" if listing.source.spec.published else ", or give that split a larger share of --class-split"
        raise UserInputError(f"{ways_flag} {ways} is larger than the {len(classes)} classes of "
                             f"{listing.where(split)}: use {ways_flag} {len(classes)} or fewer{more}")
    if classes:
        name, count = min(classes, key=lambda item: item[1])
        if count < shots + queries:
            raise UserInputError(f"class {name!r} of {listing.where(split)} has {count} images, fewer than "
                                 f"{shots_flag} {shots} + {queries_flag} {queries} = {shots + queries}: lower "
                                 f"{shots_flag} or {queries_flag}")


# -- images (TensorFlow) ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _pool(listing, size):  # listing: one of _listing's (cached), so the same splits share one read
    """uint8 images of every split's classes, the splits one after the other (train, val, test), each
    class's images in TFDS's order; returns ``(images, {split: (start, stop)})``. Two passes: the
    labels give each example its slot, then the pixels go straight there (held once)."""
    import tensorflow as tf

    source = listing.source
    fine = labels(source)[0]
    index = {name: i for i, name in enumerate(source.class_names)}
    order, bounds = [], {}
    for split in SPLITS:
        start = sum(len(part) for part in order)
        for name, _ in listing.splits[split]:
            order.append(np.flatnonzero(fine == index[name]))
        bounds[split] = (start, sum(len(part) for part in order))
    order = np.concatenate(order) if order else np.zeros(0, np.int64)
    slot = np.full(len(fine), -1, np.int64)
    slot[order] = np.arange(len(order))
    grey = source.channels == 1
    images = np.empty((len(order), size, size) + (() if grey else (3,)), np.uint8)

    image_key, label_key = source.image_key, source.spec.label_key
    stored = source.image_shape

    def convert(example):
        image = example[image_key]
        if stored[-1] is None:  # channels as each file has them: grey ones repeated to RGB
            image = tf.cond(tf.shape(image)[-1] < 3, lambda: tf.image.grayscale_to_rgb(image[..., :1]),
                            lambda: image[..., :3])
        elif source.image_channels == 4:
            image = image[..., :3]
        if stored[:2] != (size, size):  # CIFAR at 32 px: as stored
            image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear", antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return (image[..., 0] if grey else image), example[label_key]

    pixels = _dataset(source, [image_key, label_key]).map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    position = 0
    with _reading(source):
        for batch, batch_labels in pixels.batch(_BATCH).prefetch(2).as_numpy_iterator():
            count = len(batch_labels)
            if not np.array_equal(batch_labels, fine[position:position + count]):
                raise RuntimeError(f"{source.label}: TFDS read the examples in another order than on the first pass")
            slots = slot[position:position + count]
            keep = slots >= 0
            images[slots[keep]] = batch[keep]
            position += count
    return images, bounds


def tfds_split(split, dataset, data_dir, image_size, class_split=None, channels=None) -> folder.FolderClasses:
    """The classes of one split, ``image_size`` pixels square, ragged (a view of the pooled images).

    ``channels``: what the model takes (a run's ``image_channels``); None: the dataset's."""
    if split not in SPLITS:
        raise UserInputError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if int(image_size) < 8:
        raise UserInputError(f"image size {image_size} is too small: use at least 8")
    listing = find_classes(dataset, data_dir, class_split)
    source = listing.source
    if channels is not None and int(channels) != source.channels:
        kinds = {1: "grey (1 channel)", 3: "colour (3 channels)"}
        raise UserInputError(f"the images of {source.label} in {source.data_dir} are {kinds[source.channels]}, but "
                             f"this run's model takes {kinds[int(channels)]} images: use the dataset the run was "
                             "trained on")
    images, bounds = _pool(listing, int(image_size))
    start, stop = bounds[split]
    names, counts = zip(*listing.splits[split]) if listing.splits[split] else ((), ())
    return folder.FolderClasses(tuple(names), tuple(counts), images[start:stop], where=listing.where(split))


def channels_of(dataset, data_dir=None):
    """1 or 3, from TFDS's metadata (no TensorFlow)."""
    return open_source(dataset, data_dir).channels


def write_classes(run_dir, listing, channels):
    """``run_dir/classes.json``: the classes of each split this run trains and is evaluated on."""
    folder.write_classes(run_dir, listing, channels)


def check_recorded_classes(run_dir, dataset, data_dir, class_split, split):
    """Refuse to evaluate a tfds: run's ``split`` on other classes than its ``classes.json`` records: the
    seeded class split of another set of class names (another version or copy) puts other classes in
    every split, some of them seen in training. From TFDS's metadata (no TensorFlow). The published
    splits are fixed, so cifar_fs and fc100 are not checked here."""
    from tfp_abml.checkpointing import read_json

    if dataset in PUBLISHED:
        return
    recorded = read_json(pathlib.Path(run_dir) / folder.CLASSES_FILE, None)
    if not recorded or split not in recorded.get("splits", {}):
        return
    source = open_source(dataset, data_dir)
    now = list(split_names(source, class_split)[split])
    then = sorted(recorded["splits"][split])
    if now == then:
        return
    differ = sorted(set(now) ^ set(then))
    raise UserInputError(f"the classes of {dataset} in {source.data_dir} differ from those "
                         f"{pathlib.Path(run_dir) / folder.CLASSES_FILE} records for this run ({len(now)} {split} "
                         f"classes now, {len(then)} then; first difference: "
                         f"{differ[0] if differ else 'their order'}): the seeded --class-split now puts other "
                         f"classes in each split, some seen in training; evaluate on the copy it was trained on "
                         f"(--data-dir {recorded.get('data_dir')})")
