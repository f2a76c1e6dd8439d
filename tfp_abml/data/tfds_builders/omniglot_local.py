"""``omniglot_local``: a TFDS builder that prepares Omniglot from Lake's archives on local disk.

TFDS's own ``omniglot`` builder downloads Lake's archives from GitHub. This one
reads the same archives from ``manual_dir``, so that users without network
access (and the tests) get Omniglot through TFDS exactly as online users do:
prepared once into TFDS's record files, then read with ``as_dataset``.

Differences from TFDS's ``omniglot``, each on purpose:

* images are stored as Lake's original 1-bit PNG bytes, 105x105x1 (TFDS's
  builder declares 3 channels); no re-encoding, so pixels match the archives;
* ``alphabet``, ``character`` and ``filename`` are kept as text, so a reader can
  name every character ``Alphabet/characterNN`` as the published split lists
  do, and order the 20 drawers by file name as the archives do;
* only the two full archives (``train`` = images_background, ``test`` =
  images_evaluation); the ``small1``/``small2`` subsets are not needed.

Prepare it from Python (``tfp_abml.data.omniglot.load_omniglot(data_dir)`` does
this on first use)::

    import tensorflow_datasets as tfds
    from tfp_abml.data.tfds_builders.omniglot_local import OmniglotLocal
    builder = OmniglotLocal()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="path/to/omniglot"))
    train = builder.as_dataset(split="train")
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from tfp_abml.data import omniglot_sources
from tfp_abml.data.tfds_builders import preparation
from tfp_abml.errors import UserInputError

SPLIT_ARCHIVES = {"train": "images_background", "test": "images_evaluation"}
NUM_CHARACTERS = 1623  # Lake's file names number every character of both archives 1..1623


class OmniglotLocal(tfds.core.GeneratorBasedBuilder):
    """Omniglot (Lake et al., 2015) from ``images_background.zip`` and ``images_evaluation.zip`` in ``manual_dir``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Lake's two archives, original 1-bit PNGs, alphabet/character/file names as text."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download Lake's two Omniglot archives, images_background.zip and
    images_evaluation.zip, from https://github.com/brendenlake/omniglot/tree/master/python
    (raw files: https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip
    and .../images_evaluation.zip) and put both in the manual dir, directly or in an
    `omniglot/` folder inside it. The extracted folders images_background/ and
    images_evaluation/ work as well as the zips. Do not rename anything inside them.
    """

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="Omniglot: 1623 handwritten characters of 50 alphabets, 20 drawers each, "
                        "read from Lake's official archives in the manual dir.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(105, 105, 1), encoding_format="png"),
                "alphabet": tfds.features.Text(),
                "character": tfds.features.Text(),  # Lake's folder name, "characterNN"
                "filename": tfds.features.Text(),  # "<character number>_<drawer>.png"
                "label": tfds.features.ClassLabel(num_classes=NUM_CHARACTERS),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/brendenlake/omniglot",
            citation="Lake, Salakhutdinov and Tenenbaum (2015). Human-level concept learning through "
                     "probabilistic program induction. Science 350(6266).",
        )

    def _split_generators(self, dl_manager):
        sources = omniglot_sources.find_sources(dl_manager.manual_dir)
        return {split: self._generate_examples(sources[archive], archive)
                for split, archive in SPLIT_ARCHIVES.items()}

    def _generate_examples(self, source, archive):
        # Read a whole archive first (about 8 MB): an incomplete character must stop the
        # preparation before anything is written, not leave a prepared copy that lacks drawers.
        by_character = {}
        for _, alphabet, character, filename, png in omniglot_sources.read_pngs(source):
            by_character.setdefault((alphabet, character), []).append((filename, png))
        if not by_character:
            raise UserInputError(f"{source} holds no Omniglot character images; download {archive}.zip again")
        for (alphabet, character), files in sorted(by_character.items()):
            if len(files) != omniglot_sources.DRAWERS:
                raise UserInputError(f"Omniglot character {archive}/{alphabet}/{character} has {len(files)} images, "
                                     f"expected {omniglot_sources.DRAWERS}; the archive is incomplete, "
                                     "download it again")
            for filename, png in sorted(files):
                yield f"{alphabet}/{character}/{filename}", {
                    "image": png, "alphabet": alphabet, "character": character, "filename": filename,
                    "label": _label(filename, source)}


def _label(filename, source):
    number = filename.split("_", 1)[0]
    if not number.isdigit() or not 1 <= int(number) <= NUM_CHARACTERS:
        raise UserInputError(f"{source}: image {filename} is not named <character number>_<drawer>.png "
                             "as in Lake's archives; download the archive again")
    return int(number) - 1


def source_files(sources):
    """``(name, path)`` of every file the prepared data depends on, in a fixed order.

    The zips, or the PNGs of extracted folders; names are relative to the folder
    that holds the archive, so moving the data elsewhere keeps the same digest.
    """
    files = []
    for archive in omniglot_sources.ARCHIVES:
        source = sources[archive]
        paths = [source] if source.suffix == ".zip" else sorted(source.glob("*/character*/*.png"))
        files.extend((path.relative_to(source.parent).as_posix(), path) for path in paths)
    return files


def prepare(data_dir):
    """``OmniglotLocal`` prepared from the archives under ``data_dir`` (once per distinct set of archives)."""
    sources = omniglot_sources.find_sources(data_dir)
    return preparation.prepared_builder(OmniglotLocal, data_dir, preparation.digest(source_files(sources)),
                                        "Omniglot from Lake's archives")


def records(data_dir):
    """``(archive, alphabet, character, filename, png bytes)`` for every image, read through TFDS."""
    builder = prepare(data_dir)
    for split, archive in SPLIT_ARCHIVES.items():
        dataset = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        dataset = dataset.map(lambda x: (x["alphabet"], x["character"], x["filename"], x["image"])).batch(4096)
        for alphabets, characters, filenames, pngs in dataset.as_numpy_iterator():
            for alphabet, character, filename, png in zip(alphabets, characters, filenames, pngs):
                yield archive, alphabet.decode(), character.decode(), filename.decode(), png
