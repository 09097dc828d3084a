"""The error policy of the ``ddim-ode`` command line: user errors, interruptions and warnings.

A problem the user can fix (:data:`USER_ERRORS`: bad arguments or files, an output that cannot be
written, an unavailable device, a run that produced NaN) is reported on one line and exits with
status 2, before any work when it can be known before; outputs are checked to be writable first
and written atomically, so a failed or interrupted run leaves nothing behind. Anything else is a
bug and shows its traceback; ``DDIM_ODE_DEBUG=1`` (:data:`DEBUG_VARIABLE`) shows the traceback of
user errors too. Warnings (:func:`warn`) are printed when a command ends, so a refused command
prints its one line only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CLIError", "DEBUG_VARIABLE", "USER_ERRORS", "one_line", "guarded", "warn"]

#: set to 1 to see the traceback of a user error instead of the one-line message
DEBUG_VARIABLE = "DDIM_ODE_DEBUG"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


#: what the user can fix: bad arguments or files, an unwritable output, a missing optional
#: package, a device that is not there, a run that diverged or did not fit in memory
USER_ERRORS: tuple[type[BaseException], ...] = (
    CLIError,
    ValueError,
    OSError,
    FloatingPointError,
    ImportError,
    MemoryError,
    torch.OutOfMemoryError,
)


def one_line(err: BaseException) -> str:
    """One line describing a user error."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        first = (str(err).strip().splitlines() or [""])[0]
        return f"out of memory ({first or type(err).__name__}); lower --batch-size or --num"
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.strerror or err}: {err.filename}"
        return text if err.filename2 is None else f"{text} -> {err.filename2}"
    return " ".join((str(err) or type(err).__name__).split())


def guarded(command: str, run: Callable[[], Any]) -> int:
    """Run ``ddim-ode COMMAND`` under the error policy (see the module docstring); returns the exit status."""
    try:
        run()
    except KeyboardInterrupt:
        print(f"ddim-ode {command}: interrupted; no partial output was written", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get(DEBUG_VARIABLE, "").strip() not in ("", "0"):
            raise
        print(f"ddim-ode {command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


def warn(args: argparse.Namespace, text: str) -> None:
    """A warning of the running command (``args``), printed when it ends without a user error (a
    refused command prints its one line only)."""
    args.warnings.append(text)
