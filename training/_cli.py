"""What every command-line tool here shares: one-line errors for users, quiet TensorFlow logs."""

from __future__ import annotations

import argparse
import os
import sys

from tfp_abml.errors import UserInputError
from tfp_abml.output_location import describe_os_error


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag raises UserInputError: one line, like every other user error."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        raise UserInputError(f"{message} (see --help)")


def run_command(body, argv=None):
    """Run ``body(argv)``; a UserInputError becomes ``error: ...`` on stderr and exit code 2.

    So does an ``OSError`` (a disk that fills, a folder made read-only mid-run): the outputs were
    checked up front (:func:`tfp_abml.output_location.check_writable`), so what is left is the
    machine's to fix, and the user needs the path and the cause, not a traceback. Every file is
    written to a temporary name and renamed, so nothing half-written is left behind.
    """
    # TensorFlow's C++ INFO/WARNING lines bury the progress bar; users can still ask for them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        body(argv)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {describe_os_error(err)} (check that the location exists, is writable and has "
              "free space)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0
