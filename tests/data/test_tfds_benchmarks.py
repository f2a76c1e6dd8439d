"""``--dataset cifar_fs``, ``fc100`` and ``tfds:NAME[:LABEL_KEY]`` on small TFDS datasets prepared here.

Nothing is downloaded. Three datasets are prepared per module into a folder of their own (never
the session's TFDS dir, which a user may point at real data):

* ``cifar100``: TFDS's own ``cifar100`` builder (its features, name and version, so read back
  exactly as the real one is) writing 4 generated 32x32 images per CIFAR-100 class (3 in TFDS's
  ``train`` split, 1 in ``test``), labelled with CIFAR-100's real fine and coarse names and the real
  fine -> superclass mapping (``HIERARCHY``, the table of the CIFAR page, written out here
  independently of the package's split lists), so the published splits are checked class by class.
  Every image is one flat colour: red = its fine label, green = its number within the class.
* ``tiny_shapes``: a builder this package has no code for (TFDS reads it back from its files, as it
  reads any prepared dataset), 16 classes of 3 to 5 images of several sizes over two TFDS splits,
  a second class label ``kind`` and a second image feature ``mask``.
* ``tiny_table``: a class label and no image feature.
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tfp_abml.data import folder, make_sampler, tfds_datasets
from tfp_abml.errors import UserInputError
from training import evaluate, export, fit

# CIFAR-100's 20 superclasses and their 5 classes each (https://www.cs.toronto.edu/~kriz/cifar.html),
# with the names of its label files (fine_label_names.txt, coarse_label_names.txt), which TFDS uses.
HIERARCHY = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
SUPERCLASS = {fine: coarse for coarse, names in HIERARCHY.items() for fine in names.split()}
FINE, COARSE = sorted(SUPERCLASS), sorted(HIERARCHY)  # label order: the label files are sorted
PER_CLASS = {"train": 3, "test": 1}
SHAPES = 16  # tiny_shapes' classes: 0.64/0.16/0.20 of 16 gives 10 / 3 / 3
TASK = ["--ways", "3", "--shots", "1", "--queries", "2"]
SHORT = ["--steps-per-epoch", "2", "--epochs", "1", "--val-tasks", "0", "--verbose", "0"]


def _shape_count(c):
    return 3 + c % 3


def _prepare(root):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar

    class Cifar100(cifar.Cifar100, skip_registration=True):
        name = "cifar100"  # TFDS's builder, its features and version; generated images instead of the download

        def _split_generators(self, dl_manager):
            self.info.features["label"].names = FINE
            self.info.features["coarse_label"].names = COARSE
            return {split: self._fake(split) for split in PER_CLASS}

        def _fake(self, split):
            for f, name in enumerate(FINE):
                for j in range(PER_CLASS[split]):
                    number = j + (PER_CLASS["train"] if split == "test" else 0)
                    key = f"{split}_{f:03d}_{j}"
                    yield key, {"id": key, "image": np.full((32, 32, 3), (f, number, 7), np.uint8),
                                "label": f, "coarse_label": COARSE.index(SUPERCLASS[name])}

    class TinyShapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "mask": tfds.features.Image(shape=(None, None, 1)),
                "label": tfds.features.ClassLabel(names=[f"shape {c:02d}" for c in range(SHAPES)]),
                "kind": tfds.features.ClassLabel(names=["round", "square"]),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0), "test": self._generate_examples(1)}

        def _generate_examples(self, part):
            for c in range(SHAPES):
                for j in range(_shape_count(c)):
                    if (j == 0) == bool(part):  # each class's first image in 'test', the others in 'train'
                        size = (20 + 3 * j, 30 + c)
                        yield f"{c}-{j}", {"image": np.full(size + (3,), (10 * c, 40 * j, 200), np.uint8),
                                           "mask": np.zeros(size + (1,), np.uint8), "label": c, "kind": c % 2}

    class TinyTable(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "values": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=4)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(8):
                yield i, {"values": np.full(3, i, np.float32), "label": i % 4}

    for builder in (Cifar100, TinyShapes, TinyTable):
        builder(data_dir=str(root)).download_and_prepare()


@pytest.fixture(scope="module")
def tfds_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensorflow_datasets")
    _prepare(root)
    return root


def _data(root):
    return ["--data-dir", str(root)]


# -- the published splits ----------------------------------------------------------------------------


def test_the_published_split_lists_are_complete_disjoint_and_name_their_sources():
    cifar_fs, fc100 = (tfds_datasets.published_split(name) for name in ("cifar_fs", "fc100"))
    fs = cifar_fs["splits"]
    assert [len(fs[split]) for split in folder.SPLITS] == [64, 16, 20]
    assert sorted(sum(fs.values(), [])) == FINE  # 100 distinct CIFAR-100 classes: each in one split
    fc = fc100["splits"]
    assert [len(fc[split]) for split in folder.SPLITS] == [12, 4, 4]
    assert sorted(sum(fc.values(), [])) == COARSE  # 20 distinct superclasses
    fine = {split: [name for name in FINE if SUPERCLASS[name] in fc[split]] for split in folder.SPLITS}
    assert [len(fine[split]) for split in folder.SPLITS] == [60, 20, 20]
    for record in (cifar_fs, fc100):
        assert "tristandeleu/pytorch-meta" in record["source"]["copied_from"] and record["source"]["paths"]
        assert record["tfds_name"] == "cifar100" and record["paper"]


@pytest.mark.parametrize("dataset", ["cifar_fs", "fc100"])
def test_benchmark_classes_and_images_follow_the_published_split(tfds_root, dataset):
    listing = tfds_datasets.find_classes(dataset, tfds_root)
    lists = tfds_datasets.published_split(dataset)["splits"]
    for split in folder.SPLITS:
        want = sorted(lists[split]) if dataset == "cifar_fs" else \
            sorted(name for name in FINE if SUPERCLASS[name] in lists[split])
        assert [name for name, _ in listing.splits[split]] == want
        assert {count for _, count in listing.splits[split]} == {4}  # TFDS's train and test pooled per class
        classes = tfds_datasets.tfds_split(split, dataset, tfds_root, 32)
        assert classes.names == tuple(want) and classes.images.shape == (4 * len(want), 32, 32, 3)
        for index, name in enumerate(classes.names):  # each class's own images, all four, as stored
            images = classes.class_images(index)
            assert (images[..., 0] == FINE.index(name)).all() and (images[..., 2] == 7).all()
            assert sorted(images[:, 0, 0, 1]) == [0, 1, 2, 3]
    if dataset == "fc100":  # no superclass in two splits
        superclasses = {split: {SUPERCLASS[name] for name, _ in listing.splits[split]} for split in folder.SPLITS}
        assert [superclasses[split] == set(lists[split]) for split in folder.SPLITS] == [True] * 3
    resized = tfds_datasets.tfds_split("val", dataset, tfds_root, 20)
    assert resized.images.shape[1:] == (20, 20, 3) and (resized.class_images(0)[..., 2] == 7).all()


def test_the_tfds_dir_defaults_to_the_environment(tfds_root, monkeypatch):
    monkeypatch.setenv("TFP_ABML_TFDS_DIR", str(tfds_root))
    assert tfds_datasets.open_source("cifar_fs").data_dir == str(tfds_root)
    from tfp_abml.run_config import RunConfig

    config = RunConfig(dataset="cifar_fs").validate()
    assert (config.resolved_image_size, config.channels) == (32, 3)
    assert RunConfig(dataset="tfds:tiny_shapes", data_dir=str(tfds_root)).validate().resolved_image_size == 28


# -- any TFDS dataset ----------------------------------------------------------------------------------


def test_a_tfds_dataset_is_split_like_class_folders_with_unequal_classes(tfds_root):
    listing = tfds_datasets.find_classes("tfds:tiny_shapes", tfds_root)
    names = {split: [name for name, _ in listing.splits[split]] for split in folder.SPLITS}
    all_names = [f"shape {c:02d}" for c in range(SHAPES)]
    assert names == folder.split_classes(all_names, folder.DEFAULT_CLASS_SPLIT)  # the folder's seeded split
    assert [len(names[split]) for split in folder.SPLITS] == [10, 3, 3]
    assert listing.class_split == folder.DEFAULT_CLASS_SPLIT
    other = tfds_datasets.find_classes("tfds:tiny_shapes", tfds_root, "0.5,0.25,0.25")
    assert [len(other.splits[split]) for split in folder.SPLITS] == [8, 4, 4]
    sampler = make_sampler("tfds:tiny_shapes", "train", 3, 1, 2, seed=0, data_dir=tfds_root, image_size=24)
    counts = [_shape_count(int(name[-2:])) for name in names["train"]]
    assert sampler.counts.tolist() == counts  # ragged: every image of every class kept
    classes = tfds_datasets.tfds_split("train", "tfds:tiny_shapes", tfds_root, 24)
    for index, name in enumerate(classes.names):  # resized from their own sizes, flat colours kept
        images = classes.class_images(index)
        assert images.shape[1:] == (24, 24, 3) and (images[..., 0] == 10 * int(name[-2:])).all()
        assert sorted(images[:, 0, 0, 1]) == [40 * j for j in range(_shape_count(int(name[-2:])))]
    seen = set()
    for index in range(40):
        s_img, _, q_img, _ = sampler.sample(index)
        seen.update(image.tobytes() for image in np.concatenate([s_img, q_img]))
    assert seen == {image.tobytes() for image in sampler.images}
    source = tfds_datasets.open_source("tfds:tiny_shapes:kind", tfds_root)  # another label key, the same images
    assert (source.class_names, source.image_key, source.channels) == (("round", "square"), "image", 3)


def test_dataset_names_are_checked_without_tfds():
    parse = tfds_datasets.parse
    assert parse("tfds:oxford_flowers102") == tfds_datasets.Spec("tfds:oxford_flowers102", "oxford_flowers102",
                                                                 None, "label")
    versioned = parse("tfds:cifar100:3.0.2:coarse_label")
    assert (versioned.name, versioned.version, versioned.label_key) == ("cifar100", "3.0.2", "coarse_label")
    assert parse("tfds:cifar100:coarse_label").label_key == "coarse_label"
    assert parse("tfds:dtd/1").name == "dtd/1"
    for bad, message in (("tfds:", "names no TFDS dataset"), ("tfds:Bad Name", "is not a TFDS dataset name"),
                         ("tfds:dtd:label:more", "is not a label key")):
        with pytest.raises(UserInputError, match=message):
            parse(bad)


# -- training, evaluation and export --------------------------------------------------------------------


def test_cifar_fs_trains_at_4_ways_evaluates_at_3_and_exports(tfds_root, tmp_path):
    run = tmp_path / "fs"
    assert fit.main(["--dataset", "cifar_fs", *_data(tfds_root), "--method", "protonet", *TASK, "--train-ways", "4",
                     *SHORT, "--output", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["dataset"], config["image_size"], config["class_split"], config["image_channels"]) == \
        ("cifar_fs", None, None, None)
    record = json.loads((run / "classes.json").read_text())
    lists = tfds_datasets.published_split("cifar_fs")["splits"]
    assert record["splits"] == {split: {name: 4 for name in sorted(lists[split])} for split in folder.SPLITS}
    assert (record["split_source"], record["tfds_name"], record["data_dir"]) == \
        ("tfp_abml/data/split_lists/cifar_fs.json", "cifar100", str(tfds_root))
    assert evaluate.main(["--run", str(run), "--tasks", "4", "--no-ood", "--verbose", "0"]) == 0
    result = json.loads((run / "eval_test.json").read_text())
    assert (result["ways"], result["tasks"]) == (3, 4)
    assert export.main(["--run", str(run), "--output", str(tmp_path / "savedmodel" / "1")]) == 0
    assert (tmp_path / "savedmodel" / "1" / "saved_model.pb").is_file()


def test_a_tfds_dataset_trains_evaluates_and_exports(tfds_root, tmp_path, capsys):
    run = tmp_path / "shapes"
    assert fit.main(["--dataset", "tfds:tiny_shapes", *_data(tfds_root), "--method", "protonet", *TASK, *SHORT,
                     "--output", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["image_channels"], config["class_split"]) == (3, folder.DEFAULT_CLASS_SPLIT)
    record = json.loads((run / "classes.json").read_text())
    listing = tfds_datasets.find_classes("tfds:tiny_shapes", tfds_root)
    assert record["class_split_seed"] == folder.CLASS_SPLIT_SEED and record["channels"] == 3
    assert record["splits"] == {split: dict(listing.splits[split]) for split in folder.SPLITS}
    assert evaluate.main(["--run", str(run), "--tasks", "4", "--no-ood", "--verbose", "0"]) == 0
    assert json.loads((run / "eval_test.json").read_text())["tasks"] == 4
    out = tmp_path / "savedmodel" / "1"
    assert export.main(["--run", str(run), "--output", str(out)]) == 0
    import tensorflow as tf

    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    s_img, s_lab, q_img, _ = make_sampler("tfds:tiny_shapes", "test", 3, 1, 2, seed=3, data_dir=tfds_root,
                                          image_size=28).sample(0)  # conv4's default size, the dataset's channels
    served = serve(support_images=tf.constant(s_img / 255.0, tf.float32), support_labels=tf.constant(s_lab),
                   query_images=tf.constant(q_img / 255.0, tf.float32))["probabilities"].numpy()
    assert s_img.shape[1:] == (28, 28, 3) and served.shape == (6, 3)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, rtol=1e-5)
    # The recorded classes no longer match (another copy of the dataset with other classes): refused.
    capsys.readouterr()
    record["splits"]["test"] = {"shape 99": 3, **record["splits"]["test"]}
    (run / "classes.json").write_text(json.dumps(record))
    assert evaluate.main(["--run", str(run), "--tasks", "4", "--no-ood", "--verbose", "0"]) == 2
    error = _last_error(capsys)
    assert f"the classes of tfds:tiny_shapes in {tfds_root} differ from those {run / 'classes.json'} records" in error
    assert "the seeded --class-split now puts other classes in each split" in error


@pytest.mark.parametrize("method, dataset", [("maml", "fc100"), ("abml", "fc100"), ("metasgd", "tfds:tiny_shapes"),
                                             ("matching", "tfds:tiny_shapes")])
def test_every_other_method_trains_on_them(tfds_root, tmp_path, method, dataset):
    run = tmp_path / method
    inner = [] if method == "matching" else ["--inner-steps", "1"]
    assert fit.main(["--dataset", dataset, *_data(tfds_root), "--method", method, *TASK, "--meta-batch", "2", *inner,
                     "--steps-per-epoch", "1", "--epochs", "1", "--val-tasks", "2", "--verbose", "0",
                     "--output", str(run)]) == 0
    assert np.isfinite(json.loads((run / "history.json").read_text())["val_loss"][0])


# -- bad input: exit code 2, one `error:` line, nothing written --------------------------------------------


def _last_error(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# Per fault: (dataset, flags, the TFDS data dir: "root", "empty", "nowhere" or "damaged", message).
BAD = {
    "not prepared": ("cifar_fs", [], "empty",
                     r"TFDS's cifar100 is not prepared in .*empty, and training never downloads: on a machine online "
                     r"run `tfds build cifar100 --data_dir .*empty` \(or `python -c \"import tensorflow_datasets as "
                     r"tfds; tfds.builder\('cifar100', data_dir='.*empty'\).download_and_prepare\(\)\"`\), copy "
                     r".*empty here if that machine is another, and pass --data-dir .*empty"),
    "catalogue dataset not prepared": ("tfds:dtd", [], "empty", r"TFDS's dtd is not prepared in .*: on a machine "
                                                                 r"online run `tfds build dtd --data_dir"),
    "missing data dir": ("fc100", [], "nowhere", r"cifar100 is not prepared in .*nowhere \(that folder does not "
                                                 r"exist\)"),
    "unknown name": ("tfds:no_such_dataset", [], "root",
                     r"unknown TFDS dataset 'no_such_dataset': it is neither in TFDS's catalogue .* nor prepared in"),
    "misspelled name": ("tfds:oxford_flower102", [], "root", r"\(did you mean tfds:oxford_flowers102"),
    "unknown label key": ("tfds:tiny_shapes:colour", [], "root",
                          r"tfds:tiny_shapes:colour has no class label 'colour': its class labels are kind, label; "
                          r"give one as --dataset tfds:tiny_shapes:kind"),
    "no image feature": ("tfds:tiny_table", [], "root",
                         r"tfds:tiny_table has no image feature \(its features: .*values.*\): give an "
                         r"image-classification dataset"),
    "bad name": ("tfds:", [], "root", r"--dataset tfds: names no TFDS dataset"),
    "few classes": ("tfds:tiny_shapes", ["--ways", "4"], "root",
                    r"--ways 4 is larger than the 3 classes of the val split of tfds:tiny_shapes \(--class-split "
                    r"0.64,0.16,0.20\): use --ways 3 or fewer, or give that split a larger share of --class-split"),
    "few benchmark classes": ("cifar_fs", ["--ways", "3", "--train-ways", "17", "--method", "protonet"], "root",
                              r"--train-ways 17 is larger than the 16 classes of the cifar_fs val split \(Bertinetto "
                              r"et al., 2019\): use --train-ways 16 or fewer$"),
    "few test classes": ("fc100", ["--ways", "21", "--train-ways", "3", "--method", "protonet"], "root",
                         r"--ways 21 is larger than the 20 classes of the fc100 test split"),
    "small class": ("cifar_fs", ["--shots", "2", "--queries", "3"], "root",
                    r"class 'apple' of the cifar_fs train split \(Bertinetto et al., 2019\) has 4 images, fewer than "
                    r"--shots 2 \+ --queries 3 = 5: lower --shots or --queries"),
    "small tfds class": ("tfds:tiny_shapes", ["--shots", "2", "--queries", "2"], "root",
                         r"class 'shape \d\d' of the train split of tfds:tiny_shapes .* has 3 images, fewer than "
                         r"--shots 2 \+ --queries 2 = 4"),
    "class split on a benchmark": ("fc100", ["--class-split", "0.5,0.25,0.25"], "root",
                                   r"--class-split applies only to --dataset folder .* and tfds:NAME, not fc100: its "
                                   r"classes follow the published split"),
    "class split leaves a split empty": ("tfds:tiny_shapes:kind", [], "root",
                                         r"--class-split 0.64,0.16,0.20 gives the val split none of the 2 classes of "
                                         r"tfds:tiny_shapes:kind"),
    "damaged records": ("tfds:tiny_shapes", [], "damaged",
                        r"cannot read tfds:tiny_shapes in .*damaged \(DataLossError: .*\): its prepared files are "
                        r"damaged or incomplete; prepare it again: on a machine online run `tfds build tiny_shapes"),
    "too many shots for cifar": ("cifar_fs", ["--shots", "590", "--queries", "15"], "root",
                                 r"--shots 590 \+ --queries 15 = 605 is more than the 600 images per cifar_fs class"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, tfds_root, tmp_path, capsys):
    dataset, flags, where, message = BAD[case]
    data_dir = {"root": tfds_root, "empty": tmp_path / "empty", "nowhere": tmp_path / "nowhere",
                "damaged": tmp_path / "damaged"}[where]
    if where == "empty":
        data_dir.mkdir()
    if where == "damaged":  # a copy cut short: its train records end mid-record
        import shutil

        shutil.copytree(tfds_root / "tiny_shapes", data_dir / "tiny_shapes")
        shard = next((data_dir / "tiny_shapes" / "1.0.0").glob("tiny_shapes-train.tfrecord-*"))
        shard.write_bytes(shard.read_bytes()[:-100])
    output = tmp_path / "run"
    code = fit.main(["--dataset", dataset, "--data-dir", str(data_dir), *TASK, *SHORT, *flags,
                     "--output", str(output)])
    error = _last_error(capsys)
    assert code == 2 and re.search(message, error), error
    assert not output.exists()


def test_an_unprepared_benchmark_from_the_command_line(tmp_path):
    """As a user sees it: exit code 2 and one line, no traceback, no TFDS warning; TensorFlow not loaded."""
    empty = tmp_path / "tensorflow_datasets"
    empty.mkdir()
    script = ("import sys; from training import fit; code = fit.main(sys.argv[1:]); "
              "assert 'tensorflow' not in sys.modules; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script,
                             "--dataset", "cifar_fs", "--data-dir", str(empty), "--output", str(tmp_path / "run")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: TFDS's cifar100 is not prepared in {empty}, and training never downloads")
    assert not (tmp_path / "run").exists()
