"""The Omniglot reader on Lake's real archives, and its errors on bad ones."""

import zipfile

import numpy as np
import pytest

from tfp_abml.data import omniglot
from tfp_abml.errors import UserInputError


def test_reads_every_character_of_both_archives(data_dir):
    chars = omniglot.load_omniglot(data_dir, 28)
    assert len(chars.names) == 1623 and chars.images.shape == (1623, 20, 28, 28)
    assert chars.images.dtype == np.uint8
    assert chars.background.sum() == 964
    assert chars.names == tuple(sorted(chars.names))
    # White background, black ink: mostly bright, but every image has some ink.
    assert chars.images.mean() > 200
    assert (chars.images.reshape(1623 * 20, -1).min(axis=1) < 128).all()


def test_images_are_cached_per_size(data_dir):
    assert omniglot.load_omniglot(data_dir, 28) is omniglot.load_omniglot(data_dir, 28)


def test_environment_variable_names_the_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv(omniglot.DATA_DIR_ENV, str(data_dir))
    assert omniglot.resolve_data_dir(None) == data_dir


def test_missing_archives_say_what_to_put_where(tmp_path):
    with pytest.raises(UserInputError, match=r"images_background.zip.*omniglot"):
        omniglot.load_omniglot(tmp_path, 28)


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        omniglot.resolve_data_dir(tmp_path / "nowhere")


def test_corrupt_archive_is_named(tmp_path):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    for name in omniglot.ARCHIVES:
        (folder / f"{name}.zip").write_bytes(b"not a zip file")
    with pytest.raises(UserInputError, match="images_background.zip"):
        omniglot.load_omniglot(tmp_path, 20)


def test_incomplete_character_is_named(tmp_path, data_dir):
    """An archive missing one drawer of a character is reported with that character's name."""
    folder = tmp_path / "omniglot"
    folder.mkdir()
    source = zipfile.ZipFile(data_dir / "omniglot" / "images_evaluation.zip")
    pngs = [n for n in source.namelist() if n.endswith(".png")][:40]  # two whole characters
    for name in omniglot.ARCHIVES:
        with zipfile.ZipFile(folder / f"{name}.zip", "w") as out:
            for png in pngs[:-1]:  # drop the last drawer of the second character
                out.writestr(png.replace("images_evaluation", name), source.read(png))
    with pytest.raises(UserInputError, match=r"character\d+ has 19 images"):
        omniglot.load_omniglot(tmp_path, 21)


def test_extracted_folders_read_like_the_zips(tmp_path, data_dir):
    source = zipfile.ZipFile(data_dir / "omniglot" / "images_background.zip")
    pngs = [n for n in source.namelist() if n.endswith(".png")][:20]
    for name in omniglot.ARCHIVES:
        for png in pngs:
            target = tmp_path / png.replace("images_background", name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read(png))
    chars = omniglot.load_omniglot(tmp_path, 22)
    assert chars.images.shape == (2, 20, 22, 22)  # one character in each "archive"
    assert chars.background.tolist() == [True, False]


def test_without_a_data_dir_images_come_from_tfds(monkeypatch):
    """The TFDS fallback (which downloads for online users) maps TFDS records to Lake's names."""
    import types

    import tensorflow as tf
    import tensorflow_datasets as tfds

    def fake_load(name, split, with_info):
        assert name == "omniglot"
        count = 2 * omniglot.DRAWERS
        images = np.full((count, 105, 105, 3), 255, np.uint8)
        images[:, 40:60, 40:60] = 0
        records = {"image": images, "alphabet": np.full(count, 1 if split == "train" else 0),
                   "alphabet_char_id": np.repeat([0, 1], omniglot.DRAWERS)}
        info = types.SimpleNamespace(features={"alphabet": types.SimpleNamespace(names=["Atlantean", "Bengali"])})
        return tf.data.Dataset.from_tensor_slices(records), info

    monkeypatch.delenv(omniglot.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(tfds, "load", fake_load)
    omniglot._load_tfds.cache_clear()
    try:
        chars = omniglot.load_omniglot(None, 28)
    finally:
        omniglot._load_tfds.cache_clear()
    assert chars.names == ("Atlantean/character01", "Atlantean/character02",
                           "Bengali/character01", "Bengali/character02")
    assert chars.background.tolist() == [False, False, True, True]
    assert chars.images.shape == (4, 20, 28, 28) and chars.images[0, 0, 0, 0] == 255 and chars.images[0, 0, 14, 14] == 0
