"""Merging a finished run folder: every index exactly once, streamed into memory-mapped arrays."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from .._files import atomic_path, save_png, write_json
from .decode_input import save_decode_input
from .layout import DECODE_INPUT, INDEX, MANIFEST, PNG, check_writable, remove_own_leftovers
from .manifest import ResumeError, read_manifest
from .shards import ShardFormat, list_shards

__all__ = ["merge_dir"]

_PNG_SAMPLES = 64


def merge_dir(out_dir: str | Path, *, png: bool = True) -> Path:
    """Check that every index of the run in ``out_dir`` is present exactly once and merge.

    Writes, each atomically and streaming shard by shard through a memory map:

    * ``samples.npy`` (or ``latents.npy``) of shape ``(num, ...)``, and for a reversible solver
      its final state's per-row tensors as ``aux_<field>.npy`` (e.g. ``aux_xbar.npy`` for ``belm``);
    * for an encoding run ``latents.npz``, the input of ``ddim-ode decode``: ``latents``, how to
      decode them (``kind``, ``solver``, ``solver_options``, ``steps``, ``grid``, and ``sigmas`` for
      an explicit grid, replaced by the ``decode_settings`` the run was given; see
      :mod:`.decode_input`) and the reversible solver's state (``aux_type``, ``aux_<field>``; see
      :func:`ddim_ode.solvers.reversible.state_from_arrays`);
    * ``samples.png`` with the first 64 samples when they are 1- or 3-channel images (and ``png``);
    * ``index.json``: the shards and their ranges, the outputs, the state's type and numbers.

    Removes the temporary files that killed writers of this package left (nothing else), so call
    it only when no process is writing into ``out_dir``. Returns the merged ``.npy`` file.

    Raises:
        ResumeError: ``out_dir`` holds no manifest, or one that is damaged (the field is named).
        FileNotFoundError: indices are missing (names the missing ranges).
        ValueError: a shard is corrupt or from another run, shards overlap, or something other
            than a regular file stands under a shard's or an output's name.
    """
    out = Path(out_dir)
    doc = read_manifest(out)
    if doc is None:
        raise ResumeError(f"{out} holds no {MANIFEST} of a ddim_ode sharded run")
    args = doc["arguments"]
    num = int(args["num"])
    fmt = ShardFormat.of(args)
    remove_own_leftovers(out)
    found = list_shards(out)
    _check_coverage(out, found, num)
    per_row, constants = _merge_rows(out, found, fmt, num)
    shape = tuple(args["shape"])
    if png and args["kind"] == "sample" and len(shape) == 3 and shape[0] in (1, 3):
        _save_grid(out, np.load(per_row[fmt.key], mmap_mode="r")[:_PNG_SAMPLES])
    outputs = sorted(p.name for p in per_row.values())
    if args["kind"] == "encode":
        save_decode_input(out, args, fmt.run_id, per_row, constants)
        outputs.append(DECODE_INPUT)
    check_writable(out / INDEX)
    write_json(
        out / INDEX,
        {
            "run_id": fmt.run_id,
            "num": num,
            "shards": [[s, e, p.name] for s, e, p in found],
            "outputs": outputs,
            "state_type": str(constants["aux_type"]) if "aux_type" in constants else None,
            "state_scalars": {k[len("aux_") :]: v.item() for k, v in constants.items() if k != "aux_type"},
        },
        sort_keys=True,
    )
    return per_row[fmt.key]


def _check_coverage(out: Path, found: list[tuple[int, int, Path]], num: int) -> None:
    """Every index of ``[0, num)`` in exactly one shard (``found`` sorted by start)."""
    gaps, covered = [], 0
    for start, stop, p in found:
        if not (0 <= start < stop <= num):
            raise ValueError(f"shard {p.name} lies outside the run's indices [0, {num})")
        if start < covered:
            raise ValueError(f"shards overlap in {out} (index {start} appears more than once)")
        if start > covered:
            gaps.append((covered, start))
        covered = stop
    if covered < num:
        gaps.append((covered, num))
    if gaps:
        raise FileNotFoundError(f"{out} misses indices {_spans(gaps)}; re-run with the same arguments to finish them")


def _spans(gaps: list[tuple[int, int]]) -> str:
    """Compact text of index ranges ``[a, b)``: ``0-9, 20``."""
    parts = [f"{a}-{b - 1}" if b - 1 > a else f"{a}" for a, b in gaps]
    return ", ".join(parts[:10]) + (", ..." if len(parts) > 10 else "")


def _merge_rows(
    out: Path, found: list[tuple[int, int, Path]], fmt: ShardFormat, num: int
) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    """Stream the per-row arrays of every shard into ``<name>.npy``; returns their paths and the
    state's 0-d arrays (the same in every shard)."""
    first = fmt.read(found[0][2], found[0][0], found[0][1])
    if first is None:
        raise ValueError(f"{found[0][2]} is corrupt or from another run; delete it and re-run to recompute it")
    names = fmt.per_row(first)
    constants = fmt.constants(first)
    targets = {k: out / f"{k}.npy" for k in names}
    for path in targets.values():
        check_writable(path)
    with contextlib.ExitStack() as stack:
        tmps = {k: stack.enter_context(atomic_path(p)) for k, p in targets.items()}
        maps = {
            k: np.lib.format.open_memmap(tmps[k], mode="w+", dtype=first[k].dtype, shape=(num, *first[k].shape[1:]))
            for k in names
        }
        for start, stop, path in found:
            arrays = fmt.read(path, start, stop)
            if arrays is None or fmt.per_row(arrays) != names or not _same_constants(arrays, constants):
                raise ValueError(f"{path} is corrupt or from another run; delete it and re-run to recompute it")
            for k, mm in maps.items():
                mm[start:stop] = arrays[k]
        for mm in maps.values():
            mm.flush()
        del maps
    return targets, constants


def _same_constants(arrays: dict[str, np.ndarray], constants: dict[str, np.ndarray]) -> bool:
    mine = ShardFormat.constants(arrays)
    return mine.keys() == constants.keys() and all(np.array_equal(mine[k], constants[k]) for k in mine)


def _save_grid(out: Path, head: np.ndarray) -> None:
    from ..images import image_grid, to_unit

    check_writable(out / PNG)
    save_png(out / PNG, image_grid(to_unit(torch.from_numpy(np.array(head))), ncol=8))
