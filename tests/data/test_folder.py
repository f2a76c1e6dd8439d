"""``--dataset folder``: a user's own images, on small generated PNGs and JPEGs in both layouts.

Two folders are made per module. ``colour``: split folders (train/, val/, test/, each with its own
classes), classes of 3 to 5 images, PNG and JPEG, grey and colour, of several sizes; every image is
one flat colour that says which class (red) and which image of it (green) it is, grey ones a grey
level per class, so every pixel read back can be traced to its file. ``grey``: 30 class folders
and no split folders, all grey (8-bit and 16-bit PNG, palette PNG of greys, grey JPEG), divided by
``--class-split``.
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from tfp_abml.data import folder, make_sampler
from tfp_abml.errors import UserInputError
from training import evaluate, export, fit

COLOUR_SPLITS = {"train": 4, "val": 4, "test": 6}  # test: 6 classes for evaluation's 6-way OOD tasks at 3-way
SIZES = [(20, 24), (40, 40), (28, 28), (33, 17), (50, 30)]
GREY_CLASSES = 30  # 0.64/0.16/0.20 of 30: 19 / 5 / 6
JPEG_ATOL = 4  # JPEG moves a flat colour by a level or two
TASK = ["--ways", "3", "--shots", "1", "--queries", "2"]
SHORT = ["--steps-per-epoch", "3", "--epochs", "1", "--val-tasks", "0", "--verbose", "0"]


def _count(index):
    return 3 + index % 3


def _save(path, mode, value, size):
    if mode == "I;16":
        image = Image.fromarray(np.full(size[::-1], value * 257, np.uint16))
    elif mode == "P":
        image = Image.new("P", size, value)
        image.putpalette([level for grey in range(256) for level in (grey, grey, grey)])
    else:
        image = Image.new(mode, size, value)
    image.save(path, quality=95) if path.suffix == ".jpg" else image.save(path)


def _write_colour(root):
    """Split folders; returns ``{split: {class: [expected RGB of each image, in file-name order]}}``."""
    expected, number = {}, 0
    for split, classes in COLOUR_SPLITS.items():
        expected[split] = {}
        for c in range(classes):
            name = f"{split} class {c}"  # any name, spaces too
            (root / split / name).mkdir(parents=True)
            colours = []
            for j in range(_count(number)):
                colour = j % 2 == 0
                value = (30 + 15 * number, 20 + 30 * j, 90) if colour else 30 + 15 * number + j
                suffix = ".jpg" if (number + j) % 3 == 0 else ".png"
                _save(root / split / name / f"{j:02d}{suffix}", "RGB" if colour else "L", value,
                      SIZES[(number + j) % 5])
                colours.append(value if colour else (value,) * 3)
            expected[split][name] = colours
            number += 1
    (root / "train" / "train class 0" / "notes.txt").write_text("not an image")  # left out
    (root / "train" / "train class 0" / ".hidden.png").write_bytes(b"")  # hidden: left out
    return expected


def _write_grey(root):
    """Class folders only; returns ``{class: [expected grey level of each image]}``."""
    expected = {}
    for c in range(GREY_CLASSES):
        name = f"class{c:02d}"
        (root / name).mkdir(parents=True)
        levels = []
        for j in range(_count(c)):
            mode, suffix = [("L", ".png"), ("I;16", ".png"), ("P", ".png"), ("L", ".jpg")][(c + j) % 4]
            level = 20 + 7 * c + j
            _save(root / name / f"{j}{suffix}", mode, level, SIZES[(c + j) % 5])
            levels.append(level)
        expected[name] = levels
    return expected


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    return root, _write_colour(root)


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    root = tmp_path_factory.mktemp("grey")
    return root, _write_grey(root)


def _tolerance(root, split, name):
    """Per image: JPEG's tolerance, or exact for PNGs."""
    files = sorted(p for p in (root / split / name if split else root / name).iterdir()
                   if p.suffix in (".png", ".jpg") and not p.name.startswith("."))
    return np.array([JPEG_ATOL if p.suffix == ".jpg" else 0 for p in files])


@pytest.mark.parametrize("split", folder.SPLITS)
def test_split_folders_read_with_their_classes_counts_and_colours(colour, split):
    root, expected = colour
    classes = folder.folder_split(split, root, 28)
    assert classes.names == tuple(sorted(expected[split]))
    assert classes.counts == tuple(len(expected[split][name]) for name in classes.names)  # unequal: all kept
    assert classes.images.shape == (sum(classes.counts), 28, 28, 3) and classes.images.dtype == np.uint8
    for index, name in enumerate(classes.names):
        images = classes.class_images(index).astype(int)
        want = np.array(expected[split][name])[:, None, None, :]  # grey images repeated to RGB
        assert (np.abs(images - want).max(axis=(1, 2, 3)) <= _tolerance(root, split, name)).all()


def test_image_size_and_channels_follow_the_flags_and_the_images(colour, grey):
    (colour_root, _), (grey_root, expected) = colour, grey
    assert folder.folder_split("val", colour_root, 16).images.shape[1:] == (16, 16, 3)
    classes = folder.folder_split("test", grey_root, 20)
    assert classes.images.shape == (sum(classes.counts), 20, 20)  # all grey: one channel, no axis
    for index, name in enumerate(classes.names):  # 16-bit scaled to 8, the palette's greys as levels
        error = np.abs(classes.class_images(index).astype(int) - np.array(expected[name])[:, None, None])
        assert (error.max(axis=(1, 2)) <= _tolerance(grey_root, None, name)).all()
    from tfp_abml.run_config import RunConfig

    config = RunConfig(dataset="folder", data_dir=str(grey_root)).validate()
    assert (config.resolved_image_size, config.channels) == (28, 1)  # the encoder's default size
    assert RunConfig(dataset="folder", data_dir=str(colour_root)).channels == 3
    with pytest.raises(UserInputError, match=r"are grey \(1 channel\), but this run's model takes colour"):
        folder.folder_split("test", grey_root, 28, channels=3)


def test_the_seeded_class_split_is_deterministic_disjoint_and_complete(grey):
    root, expected = grey
    listing = folder.find_classes(root)
    assert listing.layout == folder.CLASS_LAYOUT and listing.class_split == folder.DEFAULT_CLASS_SPLIT
    names = {split: [name for name, _ in listing.splits[split]] for split in folder.SPLITS}
    assert {split: len(v) for split, v in names.items()} == {"train": 19, "val": 5, "test": 6}
    assert sorted(sum(names.values(), [])) == sorted(expected)  # every class once: disjoint, complete
    assert names == folder.split_classes(reversed(sorted(expected)), folder.DEFAULT_CLASS_SPLIT)  # input order
    assert names == {s: [n for n, _ in folder.find_classes(root).splits[s]] for s in folder.SPLITS}
    assert names != folder.split_classes(expected, folder.DEFAULT_CLASS_SPLIT, seed=1)  # the seed decides
    other = folder.find_classes(root, "0.5,0.25,0.25")
    assert [len(other.splits[s]) for s in folder.SPLITS] == [15, 8, 7]  # largest remainder: 7.5 -> 8 first
    counts = {name: len(paths) for name, paths in listing.splits["train"]}
    assert counts == {name: len(expected[name]) for name in names["train"]}


def test_episodes_draw_from_every_image_of_unequal_classes(colour):
    root, expected = colour
    sampler = make_sampler("folder", "train", ways=3, shots=1, queries=2, seed=0, data_dir=root, image_size=28)
    assert sampler.counts.tolist() == [len(expected["train"][name]) for name in sorted(expected["train"])]
    seen = set()
    for index in range(60):
        s_img, s_lab, q_img, q_lab = sampler.sample(index)
        images, labels = np.concatenate([s_img, q_img]), np.concatenate([s_lab, q_lab])
        assert images.shape == (9, 28, 28, 3)
        for label in range(3):  # one class per label: one red level (grey ones: 0..4 levels above it)
            assert len({(int(v) - 26) // 15 for v in images[labels == label][:, 0, 0, 0]}) == 1
        seen.update(image.tobytes() for image in images)
    assert seen == {image.tobytes() for image in sampler.images}  # the 4th and 5th images of a class too
    assert sampler.sample(7)[0].tobytes() == make_sampler("folder", "train", 3, 1, 2, seed=0, data_dir=root,
                                                          image_size=28).sample(7)[0].tobytes()
    with pytest.raises(UserInputError, match=r"class train class 0 of .*/train has 3 images, fewer than --shots 2 "
                                             r"\+ --queries 2 = 4: add images to it"):
        make_sampler("folder", "train", ways=3, shots=2, queries=2, data_dir=root, image_size=28)



def test_trainval_of_a_folder_holds_both_splits_classes(colour):
    """--trainval on one's own images: the train/ and val/ classes together, each with all its images."""
    root, expected = colour
    parts = [make_sampler("folder", split, ways=2, shots=1, queries=2, data_dir=root, image_size=28)
             for split in ("train", "val")]
    union = make_sampler("folder", "trainval", ways=6, shots=1, queries=2, seed=1, data_dir=root, image_size=28)
    assert union.counts.tolist() == [*parts[0].counts.tolist(), *parts[1].counts.tolist()]
    assert union.class_names == [*parts[0].class_names, *parts[1].class_names]
    np.testing.assert_array_equal(union.images, np.concatenate([parts[0].images, parts[1].images]))
    with pytest.raises(UserInputError, match="--ways 9 is larger than the 8 classes"):
        make_sampler("folder", "trainval", ways=9, shots=1, queries=2, data_dir=root, image_size=28)

def _last_error(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def protonet_run(colour, tmp_path_factory):
    root, _ = colour
    run = tmp_path_factory.mktemp("runs") / "protonet"
    assert fit.main(["--dataset", "folder", "--data-dir", str(root), "--method", "protonet", *TASK,
                     "--train-ways", "4", *SHORT, "--output", str(run)]) == 0
    return run


def test_protonet_trains_at_4_ways_evaluates_at_3_and_exports(protonet_run, colour, tmp_path):
    import tensorflow as tf

    from tfp_abml.runs import load_run

    root, expected = colour
    config = json.loads((protonet_run / "config.json").read_text())
    assert (config["dataset"], config["image_channels"], config["class_split"]) == ("folder", 3, None)
    record = json.loads((protonet_run / "classes.json").read_text())
    assert record["layout"] == folder.SPLIT_LAYOUT and record["channels"] == 3
    assert record["splits"] == {split: {name: len(v) for name, v in classes.items()}
                                for split, classes in expected.items()}
    assert evaluate.main(["--run", str(protonet_run), "--tasks", "4", "--verbose", "0"]) == 0
    result = json.loads((protonet_run / "eval_test.json").read_text())
    assert (result["ways"], result["tasks"]) == (3, 4)
    out = tmp_path / "savedmodel" / "1"
    assert export.main(["--run", str(protonet_run), "--output", str(out)]) == 0
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    s_img, s_lab, q_img, _ = make_sampler("folder", "test", 3, 1, 2, seed=3, data_dir=root, image_size=28).sample(0)
    support, query = (tf.constant(x / 255.0, tf.float32) for x in (s_img, q_img))
    served = serve(support_images=support, support_labels=tf.constant(s_lab), query_images=query)["probabilities"]
    _, model = load_run(protonet_run)
    want = model.predict_episode({"support_images": support[None], "support_labels": s_lab[None],
                                  "query_images": query[None]})[0]
    np.testing.assert_allclose(served.numpy(), want.numpy(), atol=1e-5)


def test_abml_trains_on_class_folders_evaluates_and_exports(grey, tmp_path, capsys):
    root, _ = grey
    run = tmp_path / "abml"
    assert fit.main(["--dataset", "folder", "--data-dir", str(root), *TASK, "--meta-batch", "2", "--inner-steps", "1",
                     *SHORT, "--output", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["image_channels"], config["class_split"]) == (1, folder.DEFAULT_CLASS_SPLIT)
    record = json.loads((run / "classes.json").read_text())
    listing = folder.find_classes(root)
    assert record["class_split"] == folder.DEFAULT_CLASS_SPLIT and record["class_split_seed"] == 0
    assert {s: sorted(v) for s, v in record["splits"].items()} == \
        {s: [name for name, _ in listing.splits[s]] for s in folder.SPLITS}
    assert evaluate.main(["--run", str(run), "--tasks", "4", "--samples", "2", "--verbose", "0"]) == 0
    assert json.loads((run / "eval_test.json").read_text())["tasks"] == 4
    assert export.main(["--run", str(run), "--output", str(tmp_path / "savedmodel" / "1")]) == 0
    assert (tmp_path / "savedmodel" / "1" / "saved_model.pb").is_file()
    # The folder changes: the seeded split moves classes between splits, so evaluation is refused.
    capsys.readouterr()
    moved = tmp_path / "moved"
    (root / "class00").rename(moved)
    try:
        assert evaluate.main(["--run", str(run), "--tasks", "4", "--verbose", "0"]) == 2
    finally:
        moved.rename(root / "class00")
    error = _last_error(capsys)
    assert f"the classes in {root} differ from those {run / 'classes.json'} records for this run" in error


@pytest.mark.parametrize("method", ["maml", "metasgd", "matching"])
def test_every_other_method_trains_on_a_folder(colour, tmp_path, method):
    root, _ = colour
    assert fit.main(["--dataset", "folder", "--data-dir", str(root), "--method", method, *TASK, "--meta-batch", "2",
                     "--steps-per-epoch", "1", "--epochs", "1", "--val-tasks", "2", "--verbose", "0",
                     "--output", str(tmp_path / method)]) == 0
    assert np.isfinite(json.loads((tmp_path / method / "history.json").read_text())["val_loss"][0])


# -- bad input: exit code 2, one `error:` line, nothing written --------------------------------------


def _copy(tree, root):
    import shutil

    shutil.copytree(tree, root)
    return root


def _first_image(root, split="train"):
    return sorted(p for p in (root / split).glob("*/*.png") if not p.name.startswith("."))[0]


# Per fault: (make(tmp_path, colour root, grey root) -> the data dir (None: no --data-dir), flags, message).
BAD = {
    "missing root": (lambda tmp, c, g: tmp / "nowhere", [], r"--data-dir .*nowhere does not exist: put one folder"),
    "no data dir": (None, [], r"--dataset folder needs --data-dir ROOT"),
    "some split folders": (lambda tmp, c, g: _only(_copy(c, tmp / "d"), "train"), [],
                           r"d has train/ but not val/, test/: give it all three split folders"),
    "small class": (lambda tmp, c, g: c, ["--shots", "2", "--queries", "2"],
                    r"class .*/train/train class 0 has 3 images, fewer than --shots 2 \+ --queries 2 = 4"),
    "small training class": (lambda tmp, c, g: c, ["--train-queries", "4"],
                             r"class .*/train/train class 0 has 3 images, fewer than --shots 1 \+ --train-queries 4"),
    "few classes": (lambda tmp, c, g: c, ["--ways", "5"],
                    r"--ways 5 is larger than the 4 classes of .*colour0/train: use --ways 4 or fewer, or add class "
                    r"folders"),
    "few test classes": (lambda tmp, c, g: g, ["--ways", "7", "--train-ways", "3", "--method", "protonet"],
                         r"--ways 7 is larger than the 6 classes of the test split of .* \(--class-split 0.64"),
    "garbage image": (lambda tmp, c, g: _damage(_copy(c, tmp / "d"), lambda p: p.write_bytes(b"no PNG")), [],
                      r"cannot read the image .*/train/train class 0/01.png \(UnidentifiedImageError"),
    "empty image": (lambda tmp, c, g: _damage(_copy(c, tmp / "d"), lambda p: p.write_bytes(b"")), [],
                    r"the image .*/train/train class 0/01.png is empty \(0 bytes\): replace it"),
    "truncated image": (lambda tmp, c, g: _damage(_copy(c, tmp / "d"), lambda p: p.write_bytes(p.read_bytes()[:60])),
                        [], r"cannot read the image .*/train/train class 0/01.png \("),
    "split unparsed": (lambda tmp, c, g: g, ["--class-split", "0.6,0.2,x"], r"--class-split '0.6,0.2,x' is not three"),
    "split two numbers": (lambda tmp, c, g: g, ["--class-split", "0.8,0.2"], r"has 2 numbers, not 3"),
    "split sum": (lambda tmp, c, g: g, ["--class-split", "0.6,0.3,0.3"], r"sums to 1.2, not 1"),
    "split negative": (lambda tmp, c, g: g, ["--class-split", "1.2,-0.1,-0.1"], r"has a fraction below 0"),
    "split empty": (lambda tmp, c, g: g, ["--class-split", "0.98,0.02,0"],
                    r"--class-split 0.98,0.02,0 gives the test split none of the 30 classes in .*: give every split"),
    "split with split folders": (lambda tmp, c, g: c, ["--class-split", "0.6,0.2,0.2"],
                                 r"--class-split 0.6,0.2,0.2 applies to class folders without split folders, and "
                                 r".* has train/, val/ and test/"),
}


def _only(root, keep):
    import shutil

    for split in folder.SPLITS:
        if split != keep:
            shutil.rmtree(root / split)
    return root


def _damage(root, change):
    change(_first_image(root))
    return root


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, colour, grey, tmp_path, capsys):
    make, flags, message = BAD[case]
    data = [] if make is None else ["--data-dir", str(make(tmp_path, colour[0], grey[0]))]
    output = tmp_path / "run"
    code = fit.main(["--dataset", "folder", *data, *TASK, *SHORT, *flags, "--output", str(output)])
    error = _last_error(capsys)
    assert code == 2 and re.search(message, error), error
    assert not output.exists()


def test_class_split_is_refused_on_other_datasets_and_checked_in_configs(data_dir, tmp_path, capsys):
    assert fit.main(["--class-split", "0.5,0.25,0.25", "--data-dir", str(data_dir),
                     "--output", str(tmp_path / "r")]) == 2
    assert "--class-split applies only to --dataset folder" in _last_error(capsys)
    from tfp_abml.run_config import RunConfig

    with pytest.raises(UserInputError, match="image_channels must be 1 .grey. or 3 .colour., got 2"):
        RunConfig(dataset="folder", data_dir=str(tmp_path), image_channels=2).validate()


def test_a_missing_folder_from_the_command_line(tmp_path):
    """As a user sees it: exit code 2 and one line, no traceback."""
    result = subprocess.run([sys.executable, "-m", "training.fit", "--dataset", "folder", "--data-dir",
                             str(tmp_path / "none"), "--output", str(tmp_path / "run")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --data-dir {tmp_path / 'none'} does not exist: {folder.layouts_help(tmp_path / 'none')}"]
    assert not (tmp_path / "run").exists()


def test_the_kl_scale_search_runs_on_a_folder_run(grey, tmp_path):
    """training.tune takes a folder run's config (it has no --dataset flag of its own) and searches on it."""
    from training import fit, tune
    from tfp_abml.run_config import RunConfig

    root, _ = grey
    run = tmp_path / "run"
    assert fit.main(["--dataset", "folder", "--data-dir", str(root), *TASK, "--steps-per-epoch", "2", "--epochs", "1",
                     "--val-tasks", "0", "--output", str(run), "--verbose", "0"]) == 0
    out = tmp_path / "search"
    assert tune.main(["--config", str(run / "config.json"), "--tuner", "random", "--max-trials", "1",
                      "--trial-steps", "2", "--meta-batch", "1", "--val-tasks", "2", "--inner-steps", "1",
                      "--output", str(out), "--verbose", "0"]) == 0
    best = RunConfig.load(out / "best_config.json")
    assert best.dataset == "folder" and best.data_dir == str(root) and best.ways == 3
