"""miniImageNet through the local TFDS builder, on small generated images laid out as the real folder.

The real images (ImageNet's) are not on these machines; the split lists are. The
generated folder uses the real Ravi file and class names, a few classes per split
and 25 images per class, each a flat colour that says which class (red) and which
image of it (green) it is, so that every pixel read back can be traced to its file.
"""

import json
import shutil

import numpy as np
import pytest

from tfp_abml.data import miniimagenet
from tfp_abml.errors import UserInputError

CLASSES = {"train": 6, "val": 5, "test": 5}
PER_CLASS = 25
# train images are 96x120 (resized when prepared), val and test 84x84 JPEGs (kept byte for byte).
SOURCE_SIZE = {"train": (96, 120), "val": (84, 84), "test": (84, 84)}


def _colour(class_index, image_index):
    return 20 + 12 * class_index, 8 * image_index, 128


def _ravi_rows(data_dir, split):
    rows = miniimagenet.read_list(data_dir / "miniimagenet" / "splits" / "ravi" / f"{split}.csv")
    labels = sorted({label for _, label in rows})[:CLASSES[split]]
    return [(filename, label) for label in labels
            for filename in sorted(f for f, lab in rows if lab == label)[:PER_CLASS]]


def _write_folder(root, data_dir):
    """Ravi's layout in ``root/miniimagenet``: images/<filename> and the three CSVs beside it."""
    import tensorflow as tf

    base = root / "miniimagenet"
    (base / "images").mkdir(parents=True)
    class_index = 0
    for split in miniimagenet.SPLITS:
        rows = _ravi_rows(data_dir, split)
        (base / f"{split}.csv").write_text("filename,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows))
        for number, (filename, label) in enumerate(rows):
            if number % PER_CLASS == 0 and number:
                class_index += 1
            colour = np.array(_colour(class_index, number % PER_CLASS), np.uint8)
            image = np.broadcast_to(colour, SOURCE_SIZE[split] + (3,))
            (base / "images" / filename).write_bytes(tf.io.encode_jpeg(image, quality=100).numpy())
        class_index += 1
    return root


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory, data_dir):
    return _write_folder(tmp_path_factory.mktemp("mini"), data_dir)


def _expected_colours(split, size):
    first = sum(CLASSES[s] for s in miniimagenet.SPLITS[:miniimagenet.SPLITS.index(split)])
    colours = np.array([[_colour(first + c, i) for i in range(PER_CLASS)] for c in range(CLASSES[split])], float)
    return np.broadcast_to(colours[:, :, None, None, :], (CLASSES[split], PER_CLASS, size, size, 3))


def test_ravi_lists_of_the_shared_data_have_64_16_20_classes_of_600(data_dir):
    labels = {split: [label for _, label in miniimagenet.read_list(
        data_dir / "miniimagenet" / "splits" / "ravi" / f"{split}.csv")] for split in miniimagenet.SPLITS}
    assert {s: len(set(v)) for s, v in labels.items()} == {"train": 64, "val": 16, "test": 20}
    assert all(v.count(label) == 600 for v in labels.values() for label in set(v))
    assert not set(labels["train"]) & set(labels["val"]) and not set(labels["train"]) & set(labels["test"])


@pytest.mark.parametrize("split", miniimagenet.SPLITS)
def test_every_split_prepared_through_tfds_at_84_pixels(mini_dir, data_dir, split):
    classes = miniimagenet.miniimagenet_split(split, mini_dir)
    assert classes.images.shape == (CLASSES[split], PER_CLASS, 84, 84, 3) and classes.images.dtype == np.uint8
    assert classes.names == tuple(sorted({label for _, label in _ravi_rows(data_dir, split)}))
    # Every image in its class's row and at its file-name position: JPEG moves a flat colour by 1 or 2.
    np.testing.assert_allclose(classes.images, _expected_colours(split, 84), atol=3)


def test_84_pixel_jpegs_are_stored_as_they_are(mini_dir, _tfds_dir):
    import tensorflow_datasets as tfds

    from tfp_abml.data.tfds_builders import miniimagenet_local

    builder = miniimagenet_local.prepare(mini_dir)
    assert builder.data_path.is_relative_to(_tfds_dir)
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == \
        {split: CLASSES[split] * PER_CLASS for split in miniimagenet.SPLITS}
    stored = next(iter(builder.as_dataset(split="val", decoders={"image": tfds.decode.SkipDecoding()}).take(1)))
    filename = stored["filename"].numpy().decode()
    assert stored["image"].numpy() == (mini_dir / "miniimagenet" / "images" / filename).read_bytes()


def test_smaller_image_size_keeps_the_classes(mini_dir):
    classes = miniimagenet.miniimagenet_split("train", mini_dir, image_size=28)
    assert classes.images.shape == (6, 25, 28, 28, 3)
    np.testing.assert_allclose(classes.images, _expected_colours("train", 28), atol=3)


def test_per_class_folder_layouts_read_like_ravis(tmp_path, mini_dir):
    """``<split>/<class>/<file>`` without CSVs, and the CSVs in splits/ravi/ with images/<class>/<file>."""
    base = mini_dir / "miniimagenet"
    folders, nested = tmp_path / "folders", tmp_path / "nested" / "miniimagenet"
    (nested / "splits" / "ravi").mkdir(parents=True)
    for split in miniimagenet.SPLITS:
        shutil.copy(base / f"{split}.csv", nested / "splits" / "ravi")
        for filename, label in miniimagenet.read_list(base / f"{split}.csv"):
            for target in (folders / split / label / filename, nested / "images" / label / filename):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(base / "images" / filename, target)
    for root in (folders, nested.parent):
        for split in ("train", "test"):
            expected, got = miniimagenet.miniimagenet_split(split, mini_dir), miniimagenet.miniimagenet_split(split, root)
            assert got.names == expected.names
            np.testing.assert_array_equal(got.images, expected.images)


def _broken(tmp_path, mini_dir, change):
    root = tmp_path / "data"
    shutil.copytree(mini_dir, root)
    change(root / "miniimagenet")
    return root


def _drop_one_image(base):
    (base / "images" / miniimagenet.read_list(base / "val.csv")[3][0]).unlink()


def _short_class(base):
    lines = (base / "test.csv").read_text().splitlines()
    (base / "test.csv").write_text("\n".join(lines[:-1]) + "\n")


@pytest.mark.parametrize("change, message", [
    (lambda base: shutil.rmtree(base), r"miniImageNet not found in .*: put Ravi & Larochelle's images/ folder and "
                                       r"train.csv, val.csv, test.csv in .*miniimagenet/"),
    (lambda base: shutil.rmtree(base / "images"), r"the images of .*train.csv are not in .*images/n\d+\.jpg"),
    (_drop_one_image, r"1 images listed in .*val.csv are missing, first .*images/n\d+\.jpg"),
    (lambda base: (base / "test.csv").unlink(), r"has train.csv, val.csv but not test.csv"),
    (lambda base: (base / "val.csv").write_text("name,class\nx.jpg,n1\n"), r"val.csv:1: expected the header"),
    (lambda base: (base / "val.csv").write_text("filename,label\nx.jpg\n"), r"val.csv:2: expected 'filename,label'"),
    (_short_class, r"the test classes of .* differ in size: n\d+ has 24 images, others up to 25"),
])
def test_broken_folders_say_which_file_and_what_to_do(tmp_path, mini_dir, change, message):
    with pytest.raises(UserInputError, match=message):
        miniimagenet.miniimagenet_split("train", _broken(tmp_path, mini_dir, change))


def test_an_unreadable_image_is_named_and_nothing_is_left_prepared(tmp_path, mini_dir, _tfds_dir):
    from tfp_abml.data.tfds_builders import preparation

    bad = miniimagenet.read_list(mini_dir / "miniimagenet" / "test.csv")[7][0]
    root = _broken(tmp_path, mini_dir, lambda base: (base / "images" / bad).write_bytes(b"\xff\xd8 not a jpeg"))
    with pytest.raises(UserInputError, match=rf"cannot read the image .*images/{bad} .*replace it"):
        miniimagenet.miniimagenet_split("test", root)
    digest = preparation.digest(miniimagenet.find_sources(root).digest_entries(), contents=False)
    assert (_tfds_dir / "miniimagenet_local").is_dir()
    assert not (_tfds_dir / "miniimagenet_local" / f"src-{digest}" / "1.0.0").exists()


def test_without_a_data_dir_says_where_the_images_come_from(monkeypatch):
    monkeypatch.delenv("TFP_ABML_DATA_DIR", raising=False)
    with pytest.raises(UserInputError, match=r"cannot be downloaded automatically: make the images from ImageNet"):
        miniimagenet.miniimagenet_split("train", None)


def test_episodes_are_rgb_at_84_pixels(mini_dir):
    from tfp_abml.data import episode_dataset, make_sampler

    sampler = make_sampler("miniimagenet", "val", ways=5, shots=2, queries=3, seed=0, data_dir=mini_dir,
                           image_size=84)
    inputs, query_labels = next(iter(episode_dataset(sampler, meta_batch=2)))
    assert inputs["support_images"].shape == (2, 10, 84, 84, 3) and inputs["query_images"].shape == (2, 15, 84, 84, 3)
    images = inputs["support_images"].numpy()
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Each label's support images are of one class: one red level per label.
    labels = inputs["support_labels"].numpy()
    for task in range(2):
        for label in range(5):
            reds = np.round(images[task][labels[task] == label][..., 0].mean(axis=(1, 2)) * 255 / 12)
            assert len(set(reds)) == 1
    with pytest.raises(UserInputError, match=r"--shots 20 \+ --queries 6 = 26 is more than the 25 examples"):
        make_sampler("miniimagenet", "val", ways=5, shots=20, queries=6, data_dir=mini_dir, image_size=84)


def test_config_defaults_for_miniimagenet():
    from tfp_abml.run_config import RunConfig

    config = RunConfig(dataset="miniimagenet", shots=5, queries=595).validate()
    assert (config.resolved_image_size, config.channels) == (84, 3)
    assert config.example_inputs()["support_images"].shape == (1, 25, 84, 84, 3)
    assert RunConfig(dataset="miniimagenet", image_size=32).resolved_image_size == 32
    assert (RunConfig().resolved_image_size, RunConfig().channels) == (28, 1)
    with pytest.raises(UserInputError, match=r"= 601 is more than the 600 images per miniimagenet class"):
        RunConfig(dataset="miniimagenet", shots=1, queries=600).validate()


@pytest.fixture(scope="module")
def mini_run(mini_dir, tmp_path_factory):
    from training import fit

    output = tmp_path_factory.mktemp("runs") / "mini"
    assert fit.main(["--dataset", "miniimagenet", "--data-dir", str(mini_dir), "--ways", "5", "--shots", "1",
                     "--queries", "2", "--meta-batch", "2", "--steps-per-epoch", "2", "--epochs", "1",
                     "--val-tasks", "2", "--inner-steps", "1", "--output", str(output), "--verbose", "0"]) == 0
    return output


def test_fit_trains_on_miniimagenet_and_writes_its_run(mini_run):
    config = json.loads((mini_run / "config.json").read_text())
    assert config["dataset"] == "miniimagenet" and config["image_size"] is None
    history = json.loads((mini_run / "history.json").read_text())
    assert history["epoch"] == [1] and np.isfinite(history["loss"][0]) and np.isfinite(history["val_loss"][0])
    assert (mini_run / "model.weights.h5").is_file()


def test_exported_miniimagenet_model_takes_rgb_and_grey_tasks(mini_dir, tmp_path):
    """The SavedModel feeds RGB to an RGB encoder (ProtoNet: deterministic, so served == Keras exactly)."""
    import tensorflow as tf

    from tfp_abml.data import make_sampler
    from tfp_abml.runs import load_run
    from training import export, fit

    run, out = tmp_path / "protonet", tmp_path / "savedmodel" / "1"
    assert fit.main(["--dataset", "miniimagenet", "--method", "protonet", "--data-dir", str(mini_dir), "--ways", "5",
                     "--shots", "1", "--queries", "2", "--meta-batch", "2", "--steps-per-epoch", "2", "--epochs", "1",
                     "--val-tasks", "0", "--output", str(run), "--verbose", "0"]) == 0
    assert export.main(["--run", str(run), "--output", str(out)]) == 0
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    s_img, s_lab, q_img, _ = make_sampler("miniimagenet", "test", 5, 1, 2, seed=3, data_dir=mini_dir,
                                          image_size=84).sample(0)
    support, query = (tf.constant(x / 255.0, tf.float32) for x in (s_img, q_img))
    served = serve(support_images=support, support_labels=tf.constant(s_lab), query_images=query)["probabilities"]
    _, model = load_run(run)
    expected = model.predict_episode({"support_images": support[None], "support_labels": s_lab[None],
                                      "query_images": query[None]})[0]
    np.testing.assert_allclose(served.numpy(), expected.numpy(), atol=1e-5)
    grey = lambda x: tf.reduce_mean(x, axis=-1, keepdims=True)
    from_grey = serve(support_images=grey(support), support_labels=tf.constant(s_lab), query_images=grey(query))
    assert from_grey["probabilities"].shape == (10, 5)


def test_fit_names_a_missing_folder_and_too_many_ways(tmp_path, mini_dir, capsys):
    from training import fit

    assert fit.main(["--dataset", "miniimagenet", "--data-dir", str(tmp_path), "--output", str(tmp_path / "r")]) == 2
    assert "miniImageNet not found in" in capsys.readouterr().err
    assert fit.main(["--dataset", "miniimagenet", "--data-dir", str(mini_dir), "--ways", "6",
                     "--output", str(tmp_path / "r")]) == 2
    assert "--ways 6 is larger than the 5 classes of the miniImageNet val split" in capsys.readouterr().err
