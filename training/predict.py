"""Predict query images from a labelled support set: ``python -m training.predict --model PATH --support DIR --query DIR``.

``--support`` is a folder with one subfolder of images per class (the folder names are the class
names); ``--query`` is a folder of images (searched recursively) or image files. When the query
images sit in subfolders named like the support classes, those names are taken as their true
classes and the accuracy is printed too. ``--model`` is a training run folder, a ``.keras`` file
or a SavedModel (``tfp_abml.FewShotClassifier.load``).

Prints one row per query image (file, predicted class, probability, predictive entropy, for the
Bayesian model the mutual information, and whether the probability is below
``--min-confidence``), writes the rows to ``--output`` (``.csv`` or ``.json``), and with
``--sheet`` a contact sheet of the query images, each titled with its predicted class and
probability, the uncertain ones framed in red. Outputs are written to a temporary file and
renamed, so an interrupted run leaves none half-written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import sys
import tempfile

from tfp_abml.errors import UserInputError
from tfp_abml.output_location import check_writable
from training._cli import Parser, run_command

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
OUTPUT_SUFFIXES = (".csv", ".json")
SHEET_MAX_IMAGES = 200  # a contact sheet of more than this is unreadable: the first ones are drawn


def build_parser():
    p = Parser(prog="python -m training.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="training run folder, .keras file or SavedModel folder")
    p.add_argument("--support", required=True, help="folder of class folders: SUPPORT/<class name>/<image>")
    p.add_argument("--query", required=True, nargs="+", help="a folder of query images, or image files")
    p.add_argument("--min-confidence", type=float, default=0.9,
                   help="flag predictions whose probability is below this as uncertain")
    p.add_argument("--output", default=None, help="write the table to this .csv or .json file")
    p.add_argument("--sheet", default=None, help="write a contact sheet of the query images to this .png")
    p.add_argument("--weights", default="best", choices=("best", "last"),
                   help="for a run folder: the best validation epoch's weights, or the newest")
    p.add_argument("--batch-size", type=int, default=100, help="query images per model call")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1),
                   help="0: only the summary line; 1: the table and a progress bar for large query sets")
    return p


def _image_files(folder):
    return sorted(p for p in pathlib.Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path):
    """uint8 ``[H, W, 1]`` (grey) or ``[H, W, 3]``; UserInputError naming the file if it cannot be read."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = pathlib.Path(path)
    if path.stat().st_size == 0:
        raise UserInputError(f"{path} is empty (0 bytes): remove it or replace it with an image")
    try:
        with Image.open(path) as image:
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F") or (
                image.mode == "P" and "transparency" not in image.info and _palette_is_grey(image))
            array = np.asarray(image.convert("L" if grey else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserInputError(f"{path} cannot be read as an image ({str(err).splitlines()[0][:200]}): "
                             "give PNG, JPEG, BMP, GIF or TIFF files") from None
    return array[..., None] if array.ndim == 2 else array


def _palette_is_grey(image):
    palette = image.getpalette() or []
    triples = [palette[i:i + 3] for i in range(0, len(palette), 3)]
    return all(r == g == b for r, g, b in triples)


def read_support(folder):
    """``(images, labels)``: every image of ``folder/<class>/``, labelled by its class folder's name."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"--support {folder} is not a folder: give a folder with one subfolder of images "
                             "per class")
    images, labels = [], []
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for class_folder in classes:
        files = _image_files(class_folder)
        if not files:
            raise UserInputError(f"--support class folder {class_folder} holds no images "
                                 f"({', '.join(IMAGE_SUFFIXES)}): add some or remove the folder")
        for file in files:
            images.append(read_image(file))
            labels.append(class_folder.name)
    if not classes:
        loose = _image_files(folder)
        hint = f" (it holds {len(loose)} images directly: put them in one folder per class)" if loose else ""
        raise UserInputError(f"--support {folder} has no class folders{hint}: lay it out as "
                             f"{folder}/<class name>/<image>")
    if len(classes) < 2:
        raise UserInputError(f"--support {folder} has one class ({classes[0].name}): a few-shot task needs at "
                             "least 2 class folders")
    return images, labels


def read_queries(paths, classes):
    """``(files, images, true classes or None)`` of the query images given as folders or files."""
    files = []
    for given in paths:
        given = pathlib.Path(given)
        if given.is_dir():
            found = _image_files(given)
            if not found:
                raise UserInputError(f"--query {given} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += [(file, given) for file in found]
        elif given.is_file():
            files.append((given, None))
        else:
            raise UserInputError(f"--query {given} does not exist: give a folder of images or image files")
    images = [read_image(file) for file, _ in files]
    truth = [file.parent.name if root is not None and file.parent != root else None for file, root in files]
    known = set(classes)
    labelled = all(name in known for name in truth)
    return [file for file, _ in files], images, (truth if labelled else None)


def rows_of(files, prediction, truth=None):
    rows = []
    for i, file in enumerate(files):
        row = {"file": str(file), "predicted": str(prediction.predicted[i]),
               "probability": round(float(prediction.confidence[i]), 6),
               "entropy": round(float(prediction.entropy[i]), 6)}
        if prediction.mutual_information is not None:
            row["mutual_information"] = round(float(prediction.mutual_information[i]), 6)
        row["uncertain"] = bool(prediction.uncertain[i])
        if truth is not None:
            row["true_class"] = truth[i]
        rows.append(row)
    return rows


def _atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_table(path, rows, classes):
    path = pathlib.Path(path)
    if path.suffix == ".json":
        data = json.dumps({"classes": [str(c) for c in classes], "predictions": rows}, indent=1).encode()
        _atomic_write(path, lambda f: f.write(data + b"\n"))
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def write_sheet(path, images, rows, min_confidence):
    """A grid of the query images titled ``class (probability)``; uncertain ones framed in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = min(len(images), SHEET_MAX_IMAGES)
    columns = min(10, shown)
    lines = -(-shown // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(1.6 * columns, 1.9 * lines + 0.5), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for i in range(shown):
        axis = axes.ravel()[i]
        image = images[i]
        axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
                    vmin=0, vmax=255)
        uncertain = rows[i]["uncertain"]
        wrong = "true_class" in rows[i] and rows[i]["true_class"] != rows[i]["predicted"]
        name = rows[i]["predicted"]
        name = name if len(name) <= 18 else "..." + name[-15:]
        axis.set_title(f"{name}\n{100 * rows[i]['probability']:.0f}%{' ?' if uncertain else ''}{' x' if wrong else ''}",
                       fontsize=7, color="red" if uncertain else "black")
        axis.axis("on")
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_color("red" if uncertain else "lightgrey")
            spine.set_linewidth(3 if uncertain else 0.5)
    uncertain = sum(r["uncertain"] for r in rows)
    more = f", first {shown} of {len(images)} shown" if shown < len(images) else ""
    figure.suptitle(f"{len(rows)} queries, {uncertain} below {100 * min_confidence:.0f}% confidence (red){more}"
                    + ("; x: wrong" if "true_class" in rows[0] else ""), fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    del np
    _atomic_write(path, lambda f: f.write(buffer.getvalue()))


def print_table(rows, out=None):
    out = out or sys.stdout
    columns = list(rows[0])
    width = {c: max(len(c), *(len(_cell(r[c])) for r in rows)) for c in columns}
    width["file"] = min(width["file"], 60)
    print("  ".join(c.ljust(width[c]) for c in columns), file=out)
    for row in rows:
        print("  ".join(_cell(row[c])[-width[c]:].ljust(width[c]) for c in columns), file=out)


def _cell(value):
    if isinstance(value, bool):
        return "uncertain" if value else "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def run(argv):
    args = build_parser().parse_args(argv)
    if not 0.0 < args.min_confidence <= 1.0:
        raise UserInputError(f"--min-confidence must be in (0, 1], got {args.min_confidence}")
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.output is not None:
        if pathlib.Path(args.output).suffix not in OUTPUT_SUFFIXES:
            raise UserInputError(f"--output {args.output}: give a file ending in .csv or .json")
        check_writable(args.output, "--output", folder=False)
    if args.sheet is not None:
        if pathlib.Path(args.sheet).suffix != ".png":
            raise UserInputError(f"--sheet {args.sheet}: give a file ending in .png")
        check_writable(args.sheet, "--sheet", folder=False)
    support_images, support_labels = read_support(args.support)
    files, query_images, truth = read_queries(args.query, sorted(set(support_labels)))

    from tfp_abml.classifier import FewShotClassifier

    classifier = FewShotClassifier.load(args.model, weights=args.weights)
    progress = None
    if args.verbose and len(query_images) > args.batch_size:
        import keras

        bar = keras.utils.Progbar(len(query_images), unit_name="query")
        progress = bar.update
    prediction = classifier.predict(support_images, support_labels, query_images,
                                    min_confidence=args.min_confidence, batch_size=args.batch_size, progress=progress)
    rows = rows_of(files, prediction, truth)
    if args.verbose:
        print_table(rows)
    uncertain = int(prediction.uncertain.sum())
    summary = (f"{len(rows)} queries, {len(prediction.classes)} classes: {uncertain} below "
               f"{args.min_confidence:g} confidence")
    if truth is not None:
        correct = sum(r["predicted"] == r["true_class"] for r in rows)
        summary += f"; accuracy {100 * correct / len(rows):.1f}% (true classes from the query folders)"
    if args.output is not None:
        write_table(args.output, rows, prediction.classes)
        summary += f"; wrote {args.output}"
    if args.sheet is not None:
        write_sheet(args.sheet, query_images, rows, args.min_confidence)
        summary += f"; wrote {args.sheet}"
    print(summary)


def main(argv=None):
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
