"""Where the local builders' prepared data goes, and which prepared copy belongs to which files.

A local builder reads files the user supplied (``manual_dir``), so two prepared
copies of "the same" dataset can come from different files: a re-downloaded
archive, a test's tiny subset, a folder with more images. Each prepared copy is
therefore a TFDS builder config named after a digest of its source files
(``<tfds-dir>/<builder>/src-<digest>/<version>/``): changed files get a fresh
copy, unchanged files are prepared once and reused by every later process, and
copies from different sources never overwrite each other.

The TFDS data dir is ``$TFP_ABML_TFDS_DIR`` if set, else TFDS's own default
(``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import sys

from tfp_abml.errors import UserInputError

TFDS_DIR_ENV = "TFP_ABML_TFDS_DIR"
_CHUNK = 1 << 20


def tfds_dir():
    """The TFDS data dir for prepared datasets: ``$TFP_ABML_TFDS_DIR``, else None (TFDS's default)."""
    value = os.environ.get(TFDS_DIR_ENV) or None
    return str(pathlib.Path(value).expanduser()) if value else None


def digest(files, contents=True):
    """A short sha256 of ``(name, path)`` pairs: each name and its file, in the given order.

    With ``contents`` the files' bytes are hashed: the same archives copied
    elsewhere reuse a prepared copy, and a corrupted or replaced file never
    does. Without, each file's size and modification time stand in for its
    bytes: for image folders of gigabytes, which would take longer to hash than
    to read through TFDS.
    """
    sha = hashlib.sha256()
    for name, path in files:
        sha.update(name.encode() + b"\0")
        try:
            if contents:
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(_CHUNK), b""):
                        sha.update(block)
            else:
                stat = os.stat(path)
                sha.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        except OSError as err:
            raise UserInputError(f"cannot read {path}: {err}; check the file's permissions or copy it again") from err
        sha.update(b"\0")
    return sha.hexdigest()[:16]


def prepared_builder(builder_class, manual_dir, source_digest, description):
    """The builder for these sources, prepared into the TFDS data dir first if it is not there yet.

    ``description`` names the data for the one-line notice printed (to stderr)
    before a first preparation, which can take a minute.
    """
    import tensorflow_datasets as tfds

    config = tfds.core.BuilderConfig(name=f"src-{source_digest}",
                                     description=f"prepared from the files in {manual_dir}")
    # TFDS logs a warning for every config not listed in BUILDER_CONFIGS (ours never are, by design)
    # and for a copy not prepared yet (which is what the notice below says).
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        builder = builder_class(data_dir=tfds_dir(), config=config)
        prepared = builder.is_prepared()
    finally:
        absl_logger.setLevel(level)
    if not prepared:
        # Two processes started at once on a fresh machine (two training runs, a benchmark's
        # children) would both prepare, and the second to finish failed renaming its copy onto
        # the first's (measured). One prepares under a lock; the others wait, then reuse its copy.
        with _preparation_lock(pathlib.Path(builder.data_dir).parent):
            builder = builder_class(data_dir=tfds_dir(), config=config)
            if not builder.is_prepared():
                print(f"Preparing {description} through TFDS into {builder.data_dir} (once; later runs reuse it)",
                      file=sys.stderr, flush=True)
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


@contextlib.contextmanager
def _preparation_lock(folder):
    """An exclusive ``flock`` on ``folder/.prepare.lock`` (POSIX); no lock where flock is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: no concurrent-preparation guard
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".prepare.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
