"""Bad data on disk: every fault is a UserInputError that names the file to replace.

Fixtures are small copies of the real archives (two characters from each) in ``tmp_path``,
then damaged one way each: a missing or truncated archive, a damaged compressed stream, an
undecodable or truncated PNG in a zip or an extracted folder, a character folder short of
images, split lists naming unknown characters or malformed, a split too small for the task.
"""

import zipfile

import pytest

from tfp_abml.data import make_sampler, omniglot
from tfp_abml.errors import UserInputError
from training import fit

CHARACTERS = 2  # per archive


def _members(data_dir, archive):
    with zipfile.ZipFile(data_dir / "omniglot" / f"{archive}.zip") as source:
        names = sorted(n for n in source.namelist() if n.endswith(".png"))[:CHARACTERS * omniglot.DRAWERS]
        return [(name, source.read(name)) for name in names]


@pytest.fixture(scope="module")
def members(data_dir):
    """``{archive: [(member name, png bytes)]}``: the first two whole characters of each real archive."""
    return {archive: _members(data_dir, archive) for archive in omniglot.ARCHIVES}


def _build(folder, members, damage=None, compression=zipfile.ZIP_STORED, extracted=False):
    """A data dir with both small archives (zips, or extracted folders) and Vinyals lists of their characters
    (train: the background ones, val and test: the evaluation ones; 8 classes each with rotations).

    ``damage(archive, index, png)`` may replace the bytes of a member (None drops it).
    """
    root = folder / "omniglot"
    root.mkdir(parents=True)
    characters = {}
    for archive, entries in members.items():
        kept = []
        for index, (name, png) in enumerate(entries):
            png = damage(archive, index, png) if damage else png
            if png is not None:
                kept.append((name, png))
        characters[archive] = sorted({"/".join(name.split("/")[1:3]) for name, _ in entries})
        if extracted:
            for name, png in kept:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(png)
        else:
            with zipfile.ZipFile(root / f"{archive}.zip", "w", compression) as out:
                for name, png in kept:
                    out.writestr(name, png)
    lists = root / "splits" / "vinyals"
    lists.mkdir(parents=True)
    for split, archive in (("train", "images_background"), ("val", "images_evaluation"), ("test", "images_evaluation")):
        (lists / f"{split}.txt").write_text(
            "".join(f"{c}/rot{r:03d}\n" for c in characters[archive] for r in (0, 90, 180, 270)))
    return folder


def _at(archive, position, replacement):
    """A ``damage`` that replaces member ``position`` of ``archive`` by ``replacement(png)``."""
    return lambda a, i, png: replacement(png) if (a, i) == (archive, position) else png


def _member(members, archive, position):
    return members[archive][position][0]


def test_the_small_copy_itself_loads(tmp_path, members):
    chars = omniglot.load_omniglot(_build(tmp_path, members), 28)
    assert chars.images.shape == (2 * CHARACTERS, omniglot.DRAWERS, 28, 28)


def test_a_missing_archive_is_named(tmp_path, members):
    folder = _build(tmp_path, members)
    (folder / "omniglot" / "images_evaluation.zip").unlink()
    with pytest.raises(UserInputError, match=r"Omniglot not found in .*: missing images_evaluation\.zip"):
        omniglot.load_omniglot(folder, 28)


def test_a_truncated_archive_is_named(tmp_path, members):
    folder = _build(tmp_path, members)
    archive = folder / "omniglot" / "images_background.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 3])
    with pytest.raises(UserInputError, match=rf"cannot read {archive}: File is not a zip file"):
        omniglot.load_omniglot(folder, 28)


def test_a_damaged_compressed_stream_is_named(tmp_path, members):
    folder = _build(tmp_path, members, compression=zipfile.ZIP_DEFLATED)
    archive = folder / "omniglot" / "images_evaluation.zip"
    data = bytearray(archive.read_bytes())
    for offset in range(200, 260):  # inside the first member's compressed bytes
        data[offset] ^= 0x5A
    archive.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match=rf"cannot read {archive}: .*download the archive again"):
        omniglot.load_omniglot(folder, 28)


@pytest.mark.parametrize("damage, reason", [
    (lambda png: b"this is no PNG", "Unknown image file format"),
    (lambda png: png[: len(png) // 2], "Invalid PNG data"),
    (lambda png: b"", "Input is empty"),
], ids=["garbage", "truncated", "empty"])
def test_an_undecodable_png_in_a_zip_is_named(tmp_path, members, damage, reason):
    folder = _build(tmp_path, members, damage=_at("images_evaluation", 23, damage))
    member = _member(members, "images_evaluation", 23)
    with pytest.raises(UserInputError) as caught:
        omniglot.load_omniglot(folder, 28)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'omniglot' / 'images_evaluation.zip'} (member {member}) is not a readable PNG")
    assert reason in message and "function_node" not in message


def test_an_undecodable_png_in_an_extracted_folder_is_named(tmp_path, members):
    folder = _build(tmp_path, members, damage=_at("images_background", 5, lambda png: png[:40]), extracted=True)
    path = folder / "omniglot" / _member(members, "images_background", 5)
    with pytest.raises(UserInputError, match=rf"^{path} is not a readable PNG \(Invalid PNG"):
        omniglot.load_omniglot(folder, 28)


def test_a_character_folder_short_of_images_is_named(tmp_path, members):
    folder = _build(tmp_path, members, damage=_at("images_background", 7, lambda png: None), extracted=True)
    character = "/".join(_member(members, "images_background", 7).split("/")[:3])
    with pytest.raises(UserInputError, match=rf"{character} has 19 images, expected 20"):
        omniglot.load_omniglot(folder, 28)


def _split_list(folder, split="train"):
    return folder / "omniglot" / "splits" / "vinyals" / f"{split}.txt"


def test_a_split_list_naming_unknown_characters_is_named(tmp_path, members):
    folder = _build(tmp_path, members)
    with _split_list(folder).open("a") as handle:
        handle.write("Klingon/character01/rot000\n")
    with pytest.raises(UserInputError, match=rf"{_split_list(folder)} names 1 characters that are not in the "
                                             r"Omniglot archives \(first: Klingon/character01\)"):
        make_sampler("omniglot", "train", ways=2, shots=1, queries=1, data_dir=folder)


def test_a_malformed_split_list_line_is_named(tmp_path, members):
    folder = _build(tmp_path, members)
    lines = _split_list(folder, "val").read_text().splitlines()
    _split_list(folder, "val").write_text("\n".join([lines[0], "Angelic character01", *lines[1:]]) + "\n")
    with pytest.raises(UserInputError, match=rf"{_split_list(folder, 'val')}:2: expected 'Alphabet/characterNN/rotDDD'"):
        make_sampler("omniglot", "val", ways=2, shots=1, queries=1, data_dir=folder)


def test_a_missing_split_list_is_named(tmp_path, members):
    folder = _build(tmp_path, members)
    _split_list(folder, "test").unlink()
    with pytest.raises(UserInputError, match=rf"Vinyals split list {_split_list(folder, 'test')} not found"):
        make_sampler("omniglot", "test", ways=2, shots=1, queries=1, data_dir=folder)


@pytest.mark.parametrize("ways, shots, queries, message", [
    (9, 1, 1, r"--ways 9 is larger than the 8 classes of the omniglot vinyals train split"),
    (2, 15, 6, r"--shots 15 \+ --queries 6 = 21 is more than the 20 examples per class of the omniglot vinyals"),
])
def test_a_split_too_small_for_the_task_is_named(tmp_path, members, ways, shots, queries, message):
    folder = _build(tmp_path, members)
    with pytest.raises(UserInputError, match=message):
        make_sampler("omniglot", "train", ways=ways, shots=shots, queries=queries, data_dir=folder)


def test_training_on_a_corrupt_png_stops_with_one_line_naming_it(tmp_path, members, capsys):
    folder = _build(tmp_path / "data", members, damage=_at("images_background", 0, lambda png: b"\x89PNG broken"))
    code = fit.main(["--data-dir", str(folder), "--ways", "2", "--shots", "1", "--queries", "1", "--epochs", "1",
                     "--steps-per-epoch", "1", "--val-tasks", "0", "--output", str(tmp_path / "run"), "--verbose", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    assert f"(member {_member(members, 'images_background', 0)}) is not a readable PNG" in err[-1]
    assert not (tmp_path / "run" / "checkpoints").exists()
