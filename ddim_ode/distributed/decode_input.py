"""``latents.npz``, the input of ``ddim-ode decode`` that an encoding run leaves in its folder.

The merge writes the latents, the reversible solver's state (``aux_type``, ``aux_<field>``) and what
the manifest knows about decoding them: ``kind``, ``solver``, ``solver_options`` (JSON), ``steps``,
``grid`` and, for an explicit grid, ``sigmas``. A caller may add its own record of how to decode
them (``decode_settings`` of :func:`~ddim_ode.distributed.encode_to_dir`; the command line gives
the arrays of :mod:`ddim_ode.cli_io`: the decoding grid, the model and its conditioning). Rank 0
keeps those in ``decode-settings.npz`` with the run id, so that every merge of the folder, also a
later ``ddim-ode merge``, writes the same ``latents.npz``; they replace the merge's own arrays of
the same names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._files import save_npz
from .layout import DECODE_INPUT, DECODE_SETTINGS, OUTPUTS, check_writable, is_regular_file
from .manifest import EXPLICIT_GRID, grid_from_values

__all__ = ["DecodeSettings", "check_decode_settings", "write_decode_settings", "save_decode_input"]

#: named arrays for ``latents.npz``
DecodeSettings = dict[str, np.ndarray]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RUN_ID = "run_id"


def check_decode_settings(settings: Mapping[str, Any] | None) -> DecodeSettings | None:
    """``settings`` as numpy arrays, checked: plain names (letters, digits, ``_``), none of the
    run's own per-row arrays (``latents``, ``aux_*``) nor ``run_id``, no Python objects."""
    if settings is None:
        return None
    if not isinstance(settings, Mapping):
        raise TypeError(f"decode_settings must be a mapping of names to arrays, got {type(settings).__name__}")
    out: DecodeSettings = {}
    for name, value in settings.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"decode_settings: bad name {name!r}; use letters, digits and _ (a letter first)")
        if name in (OUTPUTS["encode"], _RUN_ID) or name.startswith("aux_"):
            raise ValueError(f"decode_settings may not set {name!r}: the run writes it")
        arr = np.asarray(value)
        if arr.dtype.kind == "O":
            raise ValueError(f"decode_settings[{name!r}] must be numbers or text, got Python objects")
        out[name] = arr
    return out


def write_decode_settings(out: Path, run_id: str, settings: DecodeSettings) -> None:
    """Keep ``settings`` in the run folder (atomically) for the merges of the run ``run_id``."""
    path = out / DECODE_SETTINGS
    check_writable(path)
    save_npz(path, **settings, **{_RUN_ID: np.array(run_id)})


def _read_decode_settings(out: Path, run_id: str) -> DecodeSettings:
    """The settings kept for the run ``run_id`` (none when the run was given none)."""
    path = out / DECODE_SETTINGS
    if not is_regular_file(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:  # any unreadable file is reported the same way
        raise ValueError(f"{path} is unreadable ({err}); delete it and re-run the command to write it again") from None
    if str(arrays.pop(_RUN_ID, "")) != run_id:
        raise ValueError(f"{path} belongs to another run; delete it and re-run the command to write it again")
    return arrays


def save_decode_input(
    out: Path, args: dict[str, Any], run_id: str, per_row: dict[str, Path], constants: dict[str, Any]
) -> Path:
    """Write ``latents.npz`` (streamed from the merged ``.npy`` files); returns its path.

    ``args`` are the manifest arguments of the run ``run_id``, ``per_row`` the merged per-row files
    and ``constants`` the solver state's 0-d arrays.
    """
    path = out / DECODE_INPUT
    check_writable(path)
    solver = str(args["solver"]).split(" ", 1)[0]  # a name, or "name repr" for a solver object
    own: DecodeSettings = {
        "kind": np.array("encoded"),
        "solver": np.array(solver),
        "steps": np.array(args["n"]),
        "grid": np.array(args["grid"]),
    }
    if isinstance(args["solver_options"], dict):  # else the text of options that are not JSON
        own["solver_options"] = np.array(json.dumps(args["solver_options"], sort_keys=True))
    if args["grid"] == EXPLICIT_GRID:
        own["sigmas"] = grid_from_values(args["sigmas"])
    settings = _read_decode_settings(out, run_id)
    arrays = {k: np.load(p, mmap_mode="r") for k, p in per_row.items()}
    save_npz(path, **(own | settings), **arrays, **constants)
    return path
