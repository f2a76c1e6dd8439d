"""Where a command writes: checked once, up front, before any work that a bad location would waste.

Every command-line tool calls :func:`check_writable` on each of its output paths before it loads
data or builds a model. The check does what writing will do -- it creates (and removes) a small
file in the folder the output will live in -- rather than asking ``os.access``, which answers
"yes" to root for a read-only folder and knows nothing of read-only mounts, pseudo file systems
(``/proc``, ``/sys``) or a full disk.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

from tfp_abml.errors import UserInputError

# Written and removed by the probe: a write of this size fails on a full disk, an empty file may not.
_PROBE_BYTES = 4096


def _nearest_existing(path):
    """``path`` itself if it exists, else its nearest existing ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return pathlib.Path(".")


def check_writable(path, flag="--output", folder=True):
    """Raise ``UserInputError`` unless ``path`` can be created and written; returns it as a Path.

    ``folder``: ``path`` is a folder the command fills (an existing file there is an error);
    else a file the command writes (an existing folder there is an error). Nothing is created
    except the probe file, which is removed at once: a refused command leaves no trace.
    """
    path = pathlib.Path(path).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            raise UserInputError(f"{flag} {path} is a file, not a folder: choose another {flag}")
        if not folder and path.is_dir():
            raise UserInputError(f"{flag} {path} is a folder, not a file: give a file name")
    where = path if path.is_dir() else _nearest_existing(path.parent)
    if not where.is_dir():
        raise UserInputError(f"{flag} {path}: {where} is a file, so no folder can be made there; "
                             f"choose another {flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tfp_abml-write-check-", dir=where)
        try:
            os.write(fd, b"\0" * _PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise UserInputError(f"{flag} {path} cannot be written: {describe_os_error(err, where)}; "
                             f"choose a writable location for {flag}") from err
    return path


def describe_os_error(err, path=None):
    """``"<path>: <cause>"`` for an ``OSError``, e.g. ``"/proc/x: No such file or directory"``."""
    where = err.filename if err.filename is not None else path
    cause = err.strerror or str(err) or type(err).__name__
    return f"{where}: {cause}" if where is not None else cause
