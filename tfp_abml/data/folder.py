"""A user's own images as class splits: ``--dataset folder --data-dir ROOT``.

Two layouts, found from the folder's listing alone (no image is read to find them):

1. TFDS's ImageFolder layout, each split with its own classes::

       ROOT/train/<class name>/<image>
       ROOT/val/<class name>/<image>
       ROOT/test/<class name>/<image>

2. One folder per class and no split folders, ``ROOT/<class name>/<image>``; the classes are then
   divided by ``--class-split`` (fractions of train, val, test; default ``0.64,0.16,0.20``, the
   proportions of miniImageNet's 64/16/20), by the largest-remainder rounding of each share of
   the class count, over a permutation of the sorted class names drawn with the fixed seed
   ``CLASS_SPLIT_SEED`` (0), not the run's ``--seed``: runs of every seed, method and task shape on
   one folder meet the same test classes, as on a published split. ``training.fit`` records the
   classes of each split in the run's ``classes.json``. A class cannot be called ``train``,
   ``val`` or ``test`` (those names mark layout 1), and ``--class-split`` with layout 1 is
   refused rather than ignored.

Images are PNG or JPEG (``.png``, ``.jpg``, ``.jpeg``, any case), any size, grey or colour;
hidden files and folders and files of other types are left out. Each image is resized to
``--image-size`` pixels square (stretched, not cropped; bilinear, antialiased when shrinking).
Channels follow the images of the whole folder: all grey (Pillow modes 1, L, LA, I, I;16, and
palettes of greys) gives 1 channel, any colour image gives 3 and the grey ones are repeated to
RGB. Alpha is dropped; 16-bit grey is scaled to 8 bits.

Classes may differ in size: every image is kept, in a ragged store (the images of each class
one after the other, with a count per class; :class:`~tfp_abml.data.sampling.EpisodeSampler`
draws each task's examples from all the images of its classes). A class needs at least
``shots + queries`` images; the smallest one is named when it has fewer.

The images are read with Pillow (a dependency), not ``tfds.ImageFolder``, which falls short here:
it knows only layout 1 (so layout 2 would need a second reader, whose JPEG decoder would differ
from TensorFlow's by a level here and there, so one folder would give other pixels in the other
layout); it decodes every image to the channels its feature declares (3 unless told), so grey and
colour folders cannot be told apart without reading the images a second time; it returns images
at their own sizes, so the resizing is ours anyway; a file it cannot decode fails inside its
``tf.data`` map with an error that does not name the file; and it lists the folder through
TensorFlow, while a bad folder must be refused before TensorFlow loads. It prepares nothing
either (it reads the original files on every pass), so it would add no caching. Decoded splits are
kept in memory per (files, size, channels), like the other datasets.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib

import numpy as np

from tfp_abml.errors import UserInputError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_CLASS_SPLIT = "0.64,0.16,0.20"
CLASS_SPLIT_SEED = 0  # the permutation of the class names that --class-split cuts (fixed, see above)
CLASSES_FILE = "classes.json"  # in a run folder: the classes of each split, as trained
SPLIT_LAYOUT, CLASS_LAYOUT = "split folders", "class folders"
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_PARALLEL_READS = 8


def layouts_help(root):
    return (f"put one folder of images per class in {root}/<class>/, or split folders "
            f"{root}/train/<class>/, {root}/val/<class>/ and {root}/test/<class>/ (PNG or JPEG)")


@dataclasses.dataclass(frozen=True)
class Listing:
    """The classes of a folder, split by split: ``splits[split]`` holds ``(class name, image paths)`` pairs."""

    root: pathlib.Path
    layout: str
    class_split: str | None  # as given (layout 2 only; None with split folders)
    splits: dict

    def where(self, split):
        """Where a split's classes are, for messages: ``ROOT/test``, or ``the test split of ROOT
        (--class-split ...)``."""
        if self.layout == SPLIT_LAYOUT:
            return f"{self.root / split}"
        return f"the {split} split of {self.root} (--class-split {self.class_split})"

    def class_folder(self, split, name):
        return self.root / split / name if self.layout == SPLIT_LAYOUT else self.root / name

    def all_paths(self):
        return tuple(path for split in SPLITS for _, paths in self.splits[split] for path in paths)

    def record(self, channels=None):
        """What ``classes.json`` holds: the layout, the class split and each split's classes with their image counts."""
        return {"root": str(self.root), "layout": self.layout, "class_split": self.class_split,
                "class_split_seed": CLASS_SPLIT_SEED if self.layout == CLASS_LAYOUT else None,
                "channels": channels,
                "splits": {split: {name: len(paths) for name, paths in self.splits[split]} for split in SPLITS}}


@dataclasses.dataclass(frozen=True)
class FolderClasses:
    """One split, ragged: uint8 ``images[total, size, size(, 3)]``, class ``c`` the ``counts[c]`` images
    after those of the classes before it."""

    names: tuple
    counts: tuple
    images: np.ndarray
    where: str = ""

    @property
    def num_classes(self):
        return len(self.names)

    def class_images(self, index):
        start = sum(self.counts[:index])
        return self.images[start:start + self.counts[index]]


def parse_class_split(text):
    """``"0.64,0.16,0.20"`` -> ``(0.64, 0.16, 0.2)``: three fractions >= 0 that sum to 1."""
    fix = f"give three fractions for train, val and test that sum to 1, e.g. --class-split {DEFAULT_CLASS_SPLIT}"
    parts = str(text).split(",")
    try:
        fractions = tuple(float(part) for part in parts)
    except ValueError:
        raise UserInputError(f"--class-split {text!r} is not three numbers: {fix}") from None
    if len(fractions) != 3:
        raise UserInputError(f"--class-split {text!r} has {len(fractions)} numbers, not 3: {fix}")
    if not all(math.isfinite(f) and f >= 0 for f in fractions):
        raise UserInputError(f"--class-split {text!r} has a fraction below 0 or not finite: {fix}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise UserInputError(f"--class-split {text!r} sums to {sum(fractions):g}, not 1: {fix}")
    return fractions


def split_classes(names, class_split, seed=CLASS_SPLIT_SEED):
    """``{split: sorted names}``: a seeded permutation of the sorted ``names`` cut by ``class_split``'s fractions.

    The number of classes of each split is its share of ``len(names)`` rounded by largest
    remainder (ties to the earlier split), so the three add up to every class.
    """
    fractions = parse_class_split(class_split)
    names = sorted(names)
    shares = [f * len(names) for f in fractions]
    sizes = [math.floor(s + 1e-9) for s in shares]
    for index in sorted(range(3), key=lambda i: (-(shares[i] - sizes[i]), i))[:len(names) - sum(sizes)]:
        sizes[index] += 1
    order = np.random.default_rng(seed).permutation(len(names))
    bounds = np.cumsum([0] + sizes)
    return {split: sorted(names[i] for i in order[bounds[n]:bounds[n + 1]]) for n, split in enumerate(SPLITS)}


def resolve_root(data_dir):
    """The folder of the images: ``--data-dir``, which ``--dataset folder`` needs (no environment fallback)."""
    if data_dir in (None, ""):
        raise UserInputError("--dataset folder needs --data-dir ROOT, the folder of your images: "
                             "ROOT/<class>/<image>, or ROOT/train/<class>/<image> with val/ and test/ beside it")
    root = pathlib.Path(data_dir).expanduser()
    if not root.exists():
        raise UserInputError(f"--data-dir {root} does not exist: {layouts_help(root)}")
    if not root.is_dir():
        raise UserInputError(f"--data-dir {root} is a file, not a folder: {layouts_help(root)}")
    return root.resolve()


def _entries(folder):
    """``(dirs, image files)`` of a folder, sorted by name, hidden ones left out."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise UserInputError(f"cannot list {folder}: {err.strerror or err}; check its permissions") from err
    visible = [e for e in entries if not e.name.startswith(".")]
    dirs = [pathlib.Path(e.path) for e in visible if e.is_dir()]
    images = [pathlib.Path(e.path) for e in visible
              if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]
    return dirs, images


def _classes(folder):
    """``(name, image paths)`` of every class folder in ``folder``."""
    return [(d.name, tuple(_entries(d)[1])) for d in _entries(folder)[0]]


def find_classes(data_dir, class_split=None) -> Listing:
    """The layout and the classes of each split of ``data_dir``, from its listing (no TensorFlow, no image read).

    ``class_split``: ``--class-split`` as given (None: :data:`DEFAULT_CLASS_SPLIT` without split
    folders); refused with split folders.
    """
    root = resolve_root(data_dir)
    present = [split for split in SPLITS if (root / split).is_dir()]
    if present:
        if len(present) < len(SPLITS):
            missing = [f"{split}/" for split in SPLITS if split not in present]
            raise UserInputError(f"{root} has {', '.join(s + '/' for s in present)} but not {', '.join(missing)}: "
                                 f"give it all three split folders (train/, val/, test/, each with its own class "
                                 f"folders), or none: class folders directly in {root}, divided by --class-split")
        if class_split is not None:
            raise UserInputError(f"--class-split {class_split} applies to class folders without split folders, and "
                                 f"{root} has train/, val/ and test/ (each split's own classes): leave out "
                                 "--class-split, or put the class folders directly in the root folder")
        splits = {}
        for split in SPLITS:
            splits[split] = _classes(root / split)
            if not any(paths for _, paths in splits[split]):
                raise UserInputError(f"no images in {root / split}/<class>/: put the {split} classes there, one "
                                     "folder of PNG or JPEG images each")
        return Listing(root, SPLIT_LAYOUT, None, splits)
    class_split = DEFAULT_CLASS_SPLIT if class_split is None else class_split
    parse_class_split(class_split)
    classes = dict(_classes(root))
    if not any(classes.values()):
        raise UserInputError(f"no images in {root}/<class>/: {layouts_help(root)}")
    names = split_classes(classes, class_split)
    for split, chosen in names.items():
        if not chosen:
            raise UserInputError(f"--class-split {class_split} gives the {split} split none of the {len(classes)} "
                                 f"classes in {root}: give every split a share of at least 1/{len(classes)}, or "
                                 "add classes")
    return Listing(root, CLASS_LAYOUT, class_split,
                   {split: [(name, classes[name]) for name in chosen] for split, chosen in names.items()})


def check_split(listing, split, ways, shots, queries, flags=("--ways", "--shots", "--queries")):
    """A split has ``ways`` classes, each with ``shots + queries`` images; else one line naming the fix."""
    ways_flag, shots_flag, queries_flag = flags
    classes = listing.splits[split]
    if ways > len(classes):
        more = ("add class folders" if listing.layout == SPLIT_LAYOUT
                else "add classes, or give that split a larger share of --class-split")
        raise UserInputError(f"{ways_flag} {ways} is larger than the {len(classes)} classes of "
                             f"{listing.where(split)}: use {ways_flag} {len(classes)} or fewer, or {more}")
    if classes:
        name, paths = min(classes, key=lambda item: len(item[1]))
        if len(paths) < shots + queries:
            raise UserInputError(f"class {listing.class_folder(split, name)} has {len(paths)} images, fewer than "
                                 f"{shots_flag} {shots} + {queries_flag} {queries} = {shots + queries}: add images "
                                 f"to it, remove it, or lower {shots_flag} or {queries_flag}")


def _bad_image(path, err):
    return UserInputError(f"cannot read the image {path} ({type(err).__name__}: {err}): replace it with a good "
                          "PNG or JPEG, or delete it")


def _open(path):
    from PIL import Image

    if os.path.getsize(path) == 0:
        raise UserInputError(f"the image {path} is empty (0 bytes): replace it with a good PNG or JPEG, or delete it")
    try:
        return Image.open(path)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise _bad_image(path, err) from err


def _is_grey(image):
    if image.mode in _GREY_MODES:
        return True
    if image.mode in ("P", "PA") and image.palette is not None:
        mode, data = image.palette.mode, image.palette.palette  # the palette as stored: no pixel is decoded
        step = len(mode)
        if mode.startswith("RGB") and len(data) >= step:
            colours = np.frombuffer(bytes(data[:len(data) // step * step]), np.uint8).reshape(-1, step)[:, :3]
            return bool((colours == colours[:, :1]).all())
    return False


def _colour_of(path):
    with _open(path) as image:
        return not _is_grey(image)


@functools.lru_cache(maxsize=4)
def _channels(paths):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(_PARALLEL_READS) as pool:
        return 3 if any(pool.map(_colour_of, paths)) else 1


def image_channels(listing):
    """1 if every image of the folder is grey, else 3; reads each file's header (an unreadable one is named)."""
    return _channels(listing.all_paths())


def read_image(path, size, channels):
    """uint8 ``[size, size]`` (grey) or ``[size, size, 3]`` of one file."""
    from PIL import Image

    with _open(path) as image:
        try:
            image.load()
            if image.mode.startswith("I") or image.mode == "F":  # 16-bit (or wider) grey: to 8 bits
                array = np.asarray(image, np.float64)
                image = Image.fromarray(np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8), "L")
            image = image.convert("RGB" if channels == 3 else "L")  # L to RGB repeats the grey; RGB to L weighs
            image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, np.uint8)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
            raise _bad_image(path, err) from err


@functools.lru_cache(maxsize=3)
def _decode(classes, size, channels):
    """uint8 ``[images, size, size(, 3)]`` of ``classes`` (``(name, paths)`` pairs), in order, read in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [path for _, class_paths in classes for path in class_paths]
    images = np.empty((len(paths), size, size) + ((3,) if channels == 3 else ()), np.uint8)

    def fill(index):
        images[index] = read_image(paths[index], size, channels)

    with ThreadPoolExecutor(_PARALLEL_READS) as pool:
        list(pool.map(fill, range(len(paths))))
    return images


def folder_split(split, data_dir, image_size, class_split=None, channels=None) -> FolderClasses:
    """The classes of one split of the folder, ``image_size`` pixels square, ragged.

    ``channels``: what the model takes (a run's ``image_channels``); None: from the images. Images
    of other channels than the model's are refused.
    """
    if split not in SPLITS:
        raise UserInputError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if int(image_size) < 8:
        raise UserInputError(f"image size {image_size} is too small: use at least 8")
    listing = find_classes(data_dir, class_split)
    found = image_channels(listing)
    if channels is not None and int(channels) != found:
        kinds = {1: "grey (1 channel)", 3: "colour (3 channels)"}
        raise UserInputError(f"the images in {listing.root} are {kinds[found]}, but this run's model takes "
                             f"{kinds[int(channels)]} images: use the folder the run was trained on, or train "
                             "another run on this one")
    classes = tuple((name, paths) for name, paths in listing.splits[split])
    images = _decode(classes, int(image_size), found)
    return FolderClasses(tuple(name for name, _ in classes), tuple(len(paths) for _, paths in classes), images,
                         where=listing.where(split))


def write_classes(run_dir, listing, channels):
    """``run_dir/classes.json``: the classes of each split this run trains and is evaluated on (atomically)."""
    from tfp_abml.checkpointing import write_json_atomic

    write_json_atomic(pathlib.Path(run_dir) / CLASSES_FILE, listing.record(channels))


def check_recorded_classes(run_dir, data_dir, class_split, split):
    """Refuse to evaluate a run's ``split`` on other classes than its ``classes.json`` records, where the
    folder the run was trained on has no split folders: the seeded class split of a changed folder
    puts other classes in every split, some of them seen in training. With split folders, or on
    another folder (``--data-dir``), other classes are the user's choice (another test set): a note
    to print is returned instead. Returns None when nothing changed."""
    from tfp_abml.checkpointing import read_json

    recorded = read_json(pathlib.Path(run_dir) / CLASSES_FILE, None)
    if not recorded or split not in recorded.get("splits", {}):
        return None
    listing = find_classes(data_dir, class_split)
    now, then = [name for name, _ in listing.splits[split]], sorted(recorded["splits"][split])
    if now == then:
        return None
    detail = (f"{len(now)} {split} classes now, {len(then)} then; "
              f"first difference: {sorted(set(now) ^ set(then))[0] if set(now) ^ set(then) else 'their order'}")
    if listing.layout == CLASS_LAYOUT and str(listing.root) == recorded.get("root"):
        raise UserInputError(f"the classes in {listing.root} differ from those {pathlib.Path(run_dir) / CLASSES_FILE} "
                             f"records for this run ({detail}): the seeded --class-split now puts other classes in "
                             "each split, some seen in training; restore the folder, or move its classes into "
                             "train/, val/ and test/ folders and train again")
    return (f"note: the classes of {listing.where(split)} differ from those "
            f"{pathlib.Path(run_dir) / CLASSES_FILE} records for this run ({detail})")
