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
