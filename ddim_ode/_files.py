"""Atomic file output and JSON files: the one home of the package's file helpers.

Every file the package writes goes to a temporary name in the target folder and is renamed into
place, so a failure or Ctrl-C while writing leaves no half-written file under the final name. The
temporary names carry :data:`TMP_MARK`, so that the package can tell its own leftovers from a
user's files and never removes anything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TMP_MARK", "atomic_path", "atomic_write", "is_own_tmp", "read_json", "write_json", "save_npz", "save_png"]

#: part of the name of every temporary file the package creates (``.NAME.ddim_ode-XXXXXX.tmp[.ext]``)
TMP_MARK = ".ddim_ode-"
_OWN_TMP = re.compile(r"^\..+" + re.escape(TMP_MARK) + r"[A-Za-z0-9_]{6,}\.tmp(\.[A-Za-z0-9]+)?$")


def is_own_tmp(name: str) -> bool:
    """Whether a file name is one of this package's temporary names (and so safe to remove)."""
    return bool(_OWN_TMP.match(name))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, else removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}{TMP_MARK}", suffix=".tmp" + final.suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; follow the umask like open() does
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place."""
    with atomic_path(path) as tmp:
        write(str(tmp))


def write_json(path: str | Path, obj: Any, *, sort_keys: bool = False, allow_nan: bool = False) -> None:
    """Write ``obj`` as indented JSON, atomically (serialised first: nothing is written if it cannot be)."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=allow_nan) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | Path) -> Any:
    """The JSON document in ``path``; ``ValueError`` naming the file when it is not valid JSON."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{p} is not valid JSON: {err}") from None


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """``numpy.savez`` made atomic."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Save an ``(H, W)`` or ``(H, W, 3)`` array in [0, 1] as an 8-bit grayscale or RGB PNG, atomically."""
    from PIL import Image  # Pillow (a dependency of matplotlib): far cheaper to import than pyplot

    img = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
