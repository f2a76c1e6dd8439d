"""Omniglot through the local TFDS builder: same pixels as the archives, prepared once per set of archives."""

import shutil
import zipfile

import numpy as np
import pytest

from tfp_abml.data import omniglot
from tfp_abml.errors import UserInputError


@pytest.fixture(scope="module")
def tfds():
    import tensorflow_datasets

    return tensorflow_datasets


@pytest.fixture(scope="module")
def omniglot_local():
    from tfp_abml.data.tfds_builders import omniglot_local

    return omniglot_local


def _subset(folder, data_dir, characters):
    """Both archives with the first ``characters`` whole characters of the real ones, in ``folder/omniglot``."""
    (folder / "omniglot").mkdir(parents=True)
    for name in omniglot.ARCHIVES:
        with zipfile.ZipFile(data_dir / "omniglot" / f"{name}.zip") as source, \
                zipfile.ZipFile(folder / "omniglot" / f"{name}.zip", "w") as out:
            for png in sorted(n for n in source.namelist() if n.endswith(".png"))[:characters * omniglot.DRAWERS]:
                out.writestr(png, source.read(png))
    return folder


def test_tfds_gives_the_archives_pixels_names_and_order(data_dir, omniglot_local):
    """What load_omniglot reads through TFDS equals a direct decode of the zips, image for image."""
    through_tfds = omniglot.load_omniglot(data_dir, 28)
    sources = omniglot.find_sources(data_dir)
    direct = omniglot._assemble((r for name in omniglot.ARCHIVES for r in omniglot._read_pngs(sources[name])), 28)
    assert through_tfds.names == direct.names
    np.testing.assert_array_equal(through_tfds.background, direct.background)
    np.testing.assert_array_equal(through_tfds.images, direct.images)


def test_prepared_dataset_has_lakes_splits_and_features(data_dir, omniglot_local, tfds, _tfds_dir):
    builder = omniglot_local.prepare(data_dir)
    assert builder.data_path.is_relative_to(_tfds_dir)  # the session's folder, not ~/tensorflow_datasets
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {"train": 19280, "test": 13180}
    # Readable by TFDS alone, without this package's builder class.
    example = next(iter(tfds.builder_from_directory(builder.data_dir).as_dataset(split="test").take(1)))
    image = example["image"].numpy()
    assert image.shape == (105, 105, 1) and set(np.unique(image)) == {0, 255}
    filename = example["filename"].numpy().decode()
    assert example["label"].numpy() == int(filename.split("_")[0]) - 1
    assert example["character"].numpy().decode().startswith("character")


def test_prepared_once_then_reused(data_dir, omniglot_local, monkeypatch):
    omniglot_local.prepare(data_dir)

    def refuse(*args, **kwargs):
        raise AssertionError("prepared again")

    monkeypatch.setattr(omniglot_local.OmniglotLocal, "download_and_prepare", refuse)
    assert omniglot_local.prepare(data_dir).is_prepared()


def test_each_set_of_archives_gets_its_own_prepared_copy(tmp_path, data_dir, omniglot_local):
    one, two = _subset(tmp_path / "one", data_dir, 1), _subset(tmp_path / "two", data_dir, 2)
    moved = tmp_path / "moved"
    shutil.copytree(one, moved)
    built = {name: omniglot_local.prepare(folder) for name, folder in
             (("one", one), ("two", two), ("moved", moved))}
    assert built["one"].data_dir != built["two"].data_dir
    assert built["moved"].data_dir == built["one"].data_dir  # same files elsewhere: reused
    assert built["two"].info.splits["train"].num_examples == 2 * omniglot.DRAWERS
    chars = omniglot.load_omniglot(two, 28)
    assert chars.images.shape == (4, 20, 28, 28) and chars.background.tolist() == [True, True, False, False]


def test_an_incomplete_archive_is_never_left_prepared(tmp_path, data_dir, omniglot_local, _tfds_dir):
    folder = _subset(tmp_path, data_dir, 1)
    with zipfile.ZipFile(folder / "omniglot" / "images_evaluation.zip", "a") as out:
        out.writestr("images_evaluation/Angelic/character02/0966_01.png", b"")  # a character with one drawer
    with pytest.raises(UserInputError, match=r"Angelic/character02 has 1 images, expected 20"):
        omniglot_local.prepare(folder)
    digest = omniglot_local.preparation.digest(omniglot_local.source_files(omniglot.find_sources(folder)))
    assert not (_tfds_dir / "omniglot_local" / f"src-{digest}" / "1.0.0").exists()


def test_builder_without_archives_says_where_to_get_them(tmp_path, omniglot_local, tfds):
    """Used directly through TFDS: no manual dir gives TFDS's error with our instructions; one without
    the archives names the missing files."""
    builder = omniglot_local.OmniglotLocal(data_dir=str(tmp_path / "tfds"))
    config = lambda folder: tfds.download.DownloadConfig(manual_dir=str(folder))
    with pytest.raises(AssertionError, match=r"(?s)does not exist or is empty.*brendenlake/omniglot"):
        builder.download_and_prepare(download_config=config(tmp_path / "nowhere"))
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "README").write_text("not the archives")
    with pytest.raises(UserInputError, match=r"missing images_background.zip, images_evaluation.zip"):
        builder.download_and_prepare(download_config=config(tmp_path / "manual"))


def test_processes_started_together_prepare_once_and_all_succeed(tmp_path, data_dir):
    """Two training runs started at once on a fresh machine: before the lock the second failed
    renaming its prepared copy onto the first's ("Destination ... already exists")."""
    import os
    import subprocess
    import sys

    folder = _subset(tmp_path / "archives", data_dir, 3)
    env = dict(os.environ, TFP_ABML_TFDS_DIR=str(tmp_path / "fresh_tfds"))
    code = (f"from tfp_abml.data.tfds_builders import omniglot_local; "
            f"import pathlib; print(omniglot_local.prepare(pathlib.Path({str(folder)!r})).info.splits['train'].num_examples)")
    children = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [child.communicate(timeout=600) + (child.returncode,) for child in children]
    for out, err, code_ in results:
        assert code_ == 0, err[-2000:]
        assert out.split()[-1] == str(3 * omniglot.DRAWERS)
    assert sum("Preparing" in err for _, err, _ in results) == 1  # one prepared, the others reused its copy
