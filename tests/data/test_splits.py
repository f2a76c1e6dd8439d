"""Vinyals and Lake splits: sizes, disjoint classes, rotations."""

import numpy as np
import pytest

from tfp_abml.data import omniglot, splits
from tfp_abml.errors import UserInputError


def _characters(names):
    return {name.rsplit("/rot", 1)[0] for name in names}


def test_vinyals_split_sizes_and_disjoint_characters(data_dir):
    parts = {s: splits.omniglot_split(s, "vinyals", data_dir) for s in splits.SPLITS}
    assert {s: p.num_classes for s, p in parts.items()} == {"train": 4112, "val": 688, "test": 1692}
    chars = {s: _characters(p.names) for s, p in parts.items()}
    assert not chars["train"] & chars["val"] and not chars["train"] & chars["test"] and not chars["val"] & chars["test"]
    assert parts["train"].images.shape[1:] == (20, 28, 28)


def test_rotations_are_separate_classes_of_rotated_images(data_dir):
    chars_index = omniglot.load_omniglot(data_dir).index()
    original = omniglot.load_omniglot(data_dir).images
    train = splits.omniglot_split("train", "vinyals", data_dir)
    position = {name: i for i, name in enumerate(train.names)}
    base = train.names[0].rsplit("/rot", 1)[0]
    for turns in range(4):
        images = train.images[position[f"{base}/rot{turns * 90:03d}"]]
        np.testing.assert_array_equal(images, np.rot90(original[chars_index[base]], turns, axes=(-2, -1)))
    assert not np.array_equal(train.images[position[f"{base}/rot000"]], train.images[position[f"{base}/rot090"]])


def test_lake_split_holds_out_alphabets(data_dir):
    parts = {s: splits.omniglot_split(s, "lake", data_dir) for s in splits.SPLITS}
    assert parts["test"].num_classes == 659
    assert parts["train"].num_classes + parts["val"].num_classes == 964
    alphabets = {s: {n.split("/")[0] for n in p.names} for s, p in parts.items()}
    assert len(alphabets["val"]) == splits.LAKE_VALIDATION_ALPHABETS
    assert not alphabets["train"] & alphabets["val"] and not alphabets["train"] & alphabets["test"]


def test_class_count_without_decoding(data_dir):
    assert splits.num_classes("test", "vinyals", data_dir) == 1692


def test_unknown_scheme_and_split_are_rejected(data_dir):
    with pytest.raises(UserInputError, match="split scheme"):
        splits.omniglot_split("train", "mine", data_dir)
    with pytest.raises(UserInputError, match="unknown split"):
        splits.omniglot_split("dev", "vinyals", data_dir)


def test_list_naming_an_unknown_character_is_rejected(tmp_path, data_dir):
    (tmp_path / "omniglot" / "splits" / "vinyals").mkdir(parents=True)
    for name in omniglot.ARCHIVES:
        (tmp_path / "omniglot" / f"{name}.zip").symlink_to(data_dir / "omniglot" / f"{name}.zip")
    (tmp_path / "omniglot" / "splits" / "vinyals" / "train.txt").write_text("Klingon/character01/rot000\n")
    with pytest.raises(UserInputError, match=r"train.txt names 1 characters.*Klingon/character01"):
        splits.omniglot_split("train", "vinyals", tmp_path)
    (tmp_path / "omniglot" / "splits" / "vinyals" / "val.txt").write_text("Latin/character01/rot045\n")
    with pytest.raises(UserInputError, match=r"val.txt:1: expected"):
        splits.omniglot_split("val", "vinyals", tmp_path)
    with pytest.raises(UserInputError, match="test.txt not found"):
        splits.omniglot_split("test", "vinyals", tmp_path)


def test_lake_rotated_quadruples_training_characters_only(data_dir):
    lake = {s: splits.omniglot_split(s, "lake", data_dir) for s in splits.SPLITS}
    rotated = {s: splits.omniglot_split(s, "lake-rotated", data_dir) for s in splits.SPLITS}
    assert rotated["train"].num_classes == 4 * lake["train"].num_classes
    for split in ("val", "test"):
        assert rotated[split].names == lake[split].names
        np.testing.assert_array_equal(rotated[split].images, lake[split].images)
    position = {name: i for i, name in enumerate(rotated["train"].names)}
    assert len(position) == rotated["train"].num_classes  # every name unique
    for index in (0, lake["train"].num_classes - 1):
        base = lake["train"].names[index]
        for turns in range(4):
            np.testing.assert_array_equal(rotated["train"].images[position[f"{base}/rot{turns * 90:03d}"]],
                                          np.rot90(lake["train"].images[index], turns, axes=(-2, -1)))
    assert _characters(rotated["train"].names) == set(lake["train"].names)


def test_training_fit_offers_every_scheme():
    from training import fit

    action = next(a for a in fit.build_parser()._actions if a.dest == "split_scheme")
    assert tuple(action.choices) == splits.SCHEMES
