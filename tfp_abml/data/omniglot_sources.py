"""Lake's Omniglot archives on disk: where they are, and the PNGs they hold, without TensorFlow.

Shared by the reader (:mod:`tfp_abml.data.omniglot`) and the TFDS builder that prepares the
archives (:mod:`tfp_abml.data.tfds_builders.omniglot_local`), which the reader calls: kept
here, below both, the imports point one way.
"""

from __future__ import annotations

import pathlib
import re
import zipfile
import zlib

from tfp_abml.errors import UserInputError

ARCHIVES = ("images_background", "images_evaluation")
DRAWERS = 20
PNG_PATH = re.compile(r"^(?:.*/)?(images_background|images_evaluation)/([^/]+)/(character\d+)/([^/]+\.png)$")


def find_sources(data_dir: pathlib.Path):
    """Map each archive name to its zip file or extracted folder under ``data_dir``."""
    sources = {}
    for name in ARCHIVES:
        for base in (data_dir / "omniglot", data_dir):
            if (base / f"{name}.zip").is_file():
                sources[name] = base / f"{name}.zip"
                break
            if (base / name).is_dir():
                sources[name] = base / name
                break
    missing = [n for n in ARCHIVES if n not in sources]
    if missing:
        raise UserInputError(
            f"Omniglot not found in {data_dir}: missing {', '.join(m + '.zip' for m in missing)}. "
            f"Put Lake's images_background.zip and images_evaluation.zip "
            f"(https://github.com/brendenlake/omniglot/tree/master/python) in {data_dir / 'omniglot'}/")
    return sources


def read_pngs(source: pathlib.Path):
    """Yield (archive, alphabet, character, filename, png bytes) from a zip or a folder."""
    if source.suffix == ".zip":
        try:
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    match = PNG_PATH.match(info.filename)
                    if match:
                        yield (*match.groups(), zf.read(info))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:  # zlib, EOF: a damaged deflate stream
            raise UserInputError(f"cannot read {source}: {err}; download the archive again") from err
        return
    for path in sorted(source.glob("*/character*/*.png")):
        match = PNG_PATH.match(path.as_posix())
        if match:
            try:
                blob = path.read_bytes()
            except OSError as err:
                raise UserInputError(f"cannot read {path}: {err}; check the file or extract the archive again") from err
            yield (*match.groups(), blob)
