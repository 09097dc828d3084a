"""Shard files: which index ranges a run is cut into, and writing and checking one shard.

A shard ``shard-<start>-<stop>.npz`` holds the run id, ``start``, ``stop``, the result rows
(``samples`` or ``latents``, shape ``(stop − start, *shape)``) and, for a reversible solver, its
final state restricted to those rows in the form of
:func:`ddim_ode.solvers.reversible.state_to_arrays` (``aux_type``, per-row ``aux_<field>`` arrays
and 0-d ``aux_<field>`` numbers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .._files import save_npz
from ..solvers.reversible import state_to_arrays
from .fingerprints import run_id
from .layout import OUTPUTS, is_regular_file, parse_shard_name, shard_name

__all__ = ["ShardFormat", "shard_ranges", "state_rows", "list_shards"]


def shard_ranges(num: int, shard_size: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` index ranges of the shards of a run of ``num`` indices."""
    return [(s, min(s + shard_size, num)) for s in range(0, num, shard_size)]


def state_rows(state: Any, rows: slice) -> dict[str, np.ndarray]:
    """A reversible solver's final state restricted to ``rows``, as ``state_to_arrays`` stores it."""
    values = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return state_to_arrays(
        dataclasses.replace(state, **{k: v[rows] for k, v in values.items() if isinstance(v, Tensor)})
    )


def list_shards(out_dir: Path) -> list[tuple[int, int, Path]]:
    """The ``(start, stop, path)`` of every entry named like a shard, sorted by ``start``."""
    found = []
    for path in out_dir.iterdir():
        span = parse_shard_name(path.name)
        if span is not None:
            found.append((*span, path))
    return sorted(found)


def _scalar_int(value: Any) -> int | None:
    arr = np.asarray(value)
    return int(arr) if arr.shape == () and arr.dtype.kind in "iu" else None


@dataclass(frozen=True)
class ShardFormat:
    """What every shard of one run holds: its run id, result array name, row shape and dtype."""

    run_id: str
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @classmethod
    def of(cls, arguments: dict[str, Any]) -> ShardFormat:
        """The shard format of a run with these (checked) manifest arguments."""
        return cls(
            run_id(arguments), OUTPUTS[arguments["kind"]], tuple(arguments["shape"]), np.dtype(arguments["dtype"])
        )

    def write(self, path: Path, start: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
        """Write a shard atomically (``arrays``: the result rows and any state arrays)."""
        save_npz(path, run_id=np.array(self.run_id), start=np.array(start), stop=np.array(stop), **arrays)

    def per_row(self, arrays: dict[str, np.ndarray]) -> list[str]:
        """The names of the arrays with one row per index (the result and the state's tensors)."""
        return sorted(k for k, v in arrays.items() if k == self.key or (k.startswith("aux_") and v.ndim > 0))

    @staticmethod
    def constants(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The state's 0-d arrays (its type name and scalar fields), the same in every shard of a run."""
        return {k: v for k, v in arrays.items() if k.startswith("aux_") and v.ndim == 0}

    def read(self, path: Path, start: int, stop: int) -> dict[str, np.ndarray] | None:
        """The arrays of a complete, intact shard of this run at ``path``, else ``None`` (missing,
        truncated, corrupt, from another run, or rows of another shape or dtype).

        Raises:
            ValueError: ``path`` is not a regular file (a folder, a FIFO, …); it is left alone.
        """
        if not is_regular_file(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}  # reading every member checks its CRC
        except Exception:  # an unreadable or truncated file counts as missing
            return None
        if str(arrays.get("run_id", "")) != self.run_id or self.key not in arrays:
            return None
        if _scalar_int(arrays.get("start")) != start or _scalar_int(arrays.get("stop")) != stop:
            return None
        rows = (stop - start, *self.shape)
        if any(arrays[k].shape != rows or arrays[k].dtype != self.dtype for k in self.per_row(arrays)):
            return None
        return arrays

    def pending(self, out_dir: Path, ranges: list[tuple[int, int]]) -> list[int]:
        """The positions in ``ranges`` whose shard is missing or not intact (so must be computed)."""
        return [
            k
            for k, (start, stop) in enumerate(ranges)
            if self.read(out_dir / shard_name(start, stop), start, stop) is None
        ]
