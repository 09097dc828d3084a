"""The files of a run folder: their names, which of them this package owns, and which may be opened.

A run folder may also hold files of the user's; the package reads, overwrites and removes only
the names listed here, never anything else, and opens only regular files (a FIFO or a folder
under a shard's name is an error, not something to wait on or delete).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .._files import TMP_MARK, is_own_tmp

__all__ = [
    "MANIFEST",
    "INDEX",
    "PNG",
    "DECODE_INPUT",
    "DECODE_SETTINGS",
    "OUTPUTS",
    "shard_name",
    "parse_shard_name",
    "is_run_file",
    "is_regular_file",
    "check_writable",
    "remove_own_leftovers",
]

MANIFEST = "manifest.json"
INDEX = "index.json"
#: the first 64 samples of a sampling run as an image grid
PNG = "samples.png"
#: an encoding run's latents with the solver, steps, grid and solver state: the input of ``ddim-ode decode``
DECODE_INPUT = "latents.npz"
#: the decoding settings a caller gave an encoding run for ``latents.npz`` (kept for every merge)
DECODE_SETTINGS = "decode-settings.npz"
#: the name of the result array (and of its merged ``.npy``) per kind of run
OUTPUTS = {"sample": "samples", "encode": "latents"}

_SHARD = re.compile(r"^shard-(\d{8,})-(\d{8,})\.npz$")
_MERGED = re.compile(r"^(samples|latents|aux(_[A-Za-z0-9_]+)?)\.npy$")


def shard_name(start: int, stop: int) -> str:
    """The file name of the shard holding indices ``start .. stop−1``."""
    return f"shard-{start:08d}-{stop:08d}.npz"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """``(start, stop)`` of a shard file name as :func:`shard_name` writes it, else ``None``."""
    m = _SHARD.match(name)
    if m is None:
        return None
    start, stop = int(m.group(1)), int(m.group(2))
    return (start, stop) if name == shard_name(start, stop) else None


def is_run_file(name: str) -> bool:
    """Whether ``name`` is one of the files a run writes into its folder."""
    return (
        name in (MANIFEST, INDEX, PNG, DECODE_INPUT, DECODE_SETTINGS)
        or bool(_MERGED.match(name))
        or parse_shard_name(name) is not None
    )


def _own_leftover(name: str) -> bool:
    """A temporary file of ours (``._files.atomic_path``) that was to become one of the run's files."""
    return is_own_tmp(name) and is_run_file(name[1:].rpartition(TMP_MARK)[0])


def _what(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "not a regular file"


def is_regular_file(path: Path) -> bool:
    """``True`` for a regular file (or a link to one), ``False`` when nothing is there.

    Raises:
        ValueError: something else stands there (a folder, a FIFO, …): it is neither opened (a FIFO
            would block forever) nor replaced nor removed.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISREG(mode):
        return True
    raise ValueError(f"{path} is {_what(mode)}, not a regular file; move it out of the run folder")


def check_writable(path: Path) -> None:
    """Refuse to write ``path`` when something other than a regular file stands there."""
    is_regular_file(path)


def remove_own_leftovers(out_dir: Path) -> list[str]:
    """Remove the temporary files killed writers of this package left in ``out_dir``; returns their names.

    Only regular files named like a temporary file of one of the run's own files go; a user's
    ``.notes.tmp`` or anything else stays. Call it only when no process is writing into ``out_dir``.
    """
    removed = []
    for entry in os.scandir(out_dir):
        if _own_leftover(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(entry.name)
    return sorted(removed)
