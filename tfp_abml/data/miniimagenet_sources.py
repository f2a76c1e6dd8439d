"""Where the images of a miniImageNet folder are, split by split, found without TensorFlow.

The layouts of :mod:`tfp_abml.data.miniimagenet`, found from the folder's listing alone. Shared by
that reader and the TFDS builder that prepares the images
(:mod:`tfp_abml.data.tfds_builders.miniimagenet_local`), which the reader calls: kept here,
below both, the imports point one way.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import pathlib

from tfp_abml.errors import UserInputError

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
IMAGES_PER_CLASS = 600  # in Ravi & Larochelle's split; a folder may hold fewer (equal in every class)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
HOW_TO_GET = ("make the images from ImageNet's ILSVRC-2012 training set with a published script such as "
              "https://github.com/yaoyao-liu/mini-imagenet-tools (see the README's miniImageNet section)")


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where each image of each split is: ``files[split]`` holds ``(label, filename, path)`` rows."""

    root: pathlib.Path
    layout: str
    files: dict

    def digest_entries(self):
        """``(name, path)`` per image for the prepared copy's digest: the listing and the files."""
        return [(f"{split}/{label}/{filename}", path)
                for split in SPLITS for label, filename, path in self.files[split]]


def read_list(path):
    """``(filename, label)`` rows of a Ravi split CSV (header ``filename,label``)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise UserInputError(f"cannot read {path}: {err}; copy the split list again") from err
    if not rows or [cell.strip() for cell in rows[0]] != ["filename", "label"]:
        raise UserInputError(f"{path}:1: expected the header 'filename,label' of Ravi & Larochelle's split lists, "
                             f"got {','.join(rows[0]) if rows else 'an empty file'!r}")
    entries = []
    for number, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise UserInputError(f"{path}:{number}: expected 'filename,label', got {','.join(row)!r}")
        entries.append((row[0].strip(), row[1].strip()))
    if not entries:
        raise UserInputError(f"{path} lists no images; copy the split list again")
    return entries


def _base(data_dir):
    nested = data_dir / "miniimagenet"
    return nested if nested.is_dir() else data_dir


def _split_lists(base):
    """The three CSVs, from ``base`` or ``base/splits/ravi``; {} if there are none."""
    for folder in (base, base / "splits" / "ravi"):
        found = {split: folder / f"{split}.csv" for split in SPLITS if (folder / f"{split}.csv").is_file()}
        if found:
            missing = [f"{split}.csv" for split in SPLITS if split not in found]
            if missing:
                raise UserInputError(f"{folder} has {', '.join(sorted(p.name for p in found.values()))} but not "
                                     f"{', '.join(missing)}: put all three Ravi split lists there")
            return found
    return {}


def _listings():
    """``listing(folder)``: the names in a folder, read once: one listdir, not 60,000 stats."""

    @functools.lru_cache(maxsize=None)
    def listing(folder):
        try:
            return frozenset(os.listdir(folder))
        except OSError:
            return frozenset()

    return listing


def _locate(base, split, csv_path, entries, listing):
    """Paths for a CSV's rows in the first layout that holds its first image; every image must be there."""
    layouts = {"images/<filename>": lambda fn, label: base / "images" / fn,
               "images/<label>/<filename>": lambda fn, label: base / "images" / label / fn,
               f"{split}/<label>/<filename>": lambda fn, label: base / split / label / fn}
    first_name, first_label = entries[0]
    for layout, where in layouts.items():
        first = where(first_name, first_label)
        if first.name in listing(first.parent):
            break
    else:
        raise UserInputError(f"the images of {csv_path} are not in {base}: expected {base / 'images' / first_name} "
                             f"(Ravi's layout) or {base / split / first_label / first_name}; {HOW_TO_GET}")
    paths = [where(fn, label) for fn, label in entries]
    missing = [p for p in paths if p.name not in listing(p.parent)]
    if missing:
        raise UserInputError(f"{len(missing)} images listed in {csv_path} are missing, first {missing[0]}: "
                             "copy the whole miniImageNet images folder again")
    return layout, [(label, fn, path) for (fn, label), path in zip(entries, paths)]


def _from_folders(base):
    """Layout 3: ``<split>/<class>/<image>`` without CSVs."""
    files = {}
    for split in SPLITS:
        folder = base / split
        classes = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        files[split] = [(c.name, p.name, p) for c in classes for p in sorted(c.iterdir())
                        if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files[split]:
            raise UserInputError(f"no images in {folder}/<class>/: put the {split} classes there, one folder each, "
                                 f"or Ravi's images/ folder with train.csv, val.csv and test.csv in {base}")
    return files


def find_sources(data_dir) -> Sources:
    """Find the images of every split under ``data_dir`` and check that each class has as many."""
    base = _base(pathlib.Path(data_dir))
    lists = _split_lists(base)
    if lists:
        files, layouts, listing = {}, set(), _listings()
        for split, path in lists.items():
            layout, files[split] = _locate(base, split, path, read_list(path), listing)
            layouts.add(layout)
        layout = " + ".join(sorted(layouts)) + " with the split CSVs"
    elif any((base / split).is_dir() for split in SPLITS):
        files, layout = _from_folders(base), "<split>/<class>/<image> folders"
    else:
        raise UserInputError(
            f"miniImageNet not found in {data_dir}: put Ravi & Larochelle's images/ folder and train.csv, val.csv, "
            f"test.csv in {pathlib.Path(data_dir) / 'miniimagenet'}/ (or train/, val/, test/ folders of one "
            f"folder per class); {HOW_TO_GET}")
    for split, rows in files.items():
        counts = {}
        for label, _, _ in rows:
            counts[label] = counts.get(label, 0) + 1
        if len(set(counts.values())) > 1:
            fewest = min(counts, key=counts.get)
            raise UserInputError(f"the {split} classes of {base} differ in size: {fewest} has {counts[fewest]} images, "
                                 f"others up to {max(counts.values())}; every class needs as many "
                                 f"({IMAGES_PER_CLASS} in miniImageNet): complete or remove {fewest}")
    return Sources(base, layout, files)
