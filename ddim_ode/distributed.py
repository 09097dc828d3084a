"""Sampling and encoding into a folder of shards, on one process or on many (``torch.distributed``).

The indices ``0 .. num−1`` are cut into shards of ``shard_size`` consecutive indices; the shards
still to do are dealt round-robin to the ranks of the process group (one process without a group:
world size 1). Every rank writes each finished shard atomically (temporary name, then
``os.replace``) as ``shard-<start>-<stop>.npz`` next to a ``manifest.json`` that records every
argument the numbers depend on. A re-run with the same arguments keeps the valid shards, computes
the missing ones, and refuses to continue when the arguments differ. Finally rank 0, after all
ranks are done, checks that every index is present exactly once and writes ``samples.npy``
(``latents.npy`` for encoding) atomically, plus ``samples.png`` (the first 64 images) when the
samples are images.

What is deterministic (bit for bit, for a given device type, library build and thread setting):

* The initial noise of sample ``i`` depends only on ``(seed, i)`` (:func:`index_noise`, the same
  numbers as ``ddim-ode sample``); it is drawn on the CPU in float32, whatever the device.
* The network is always evaluated on whole shards of exactly ``shard_size`` rows (the last shard
  is padded with the following indices, which are dropped), because batched matrix products can
  round differently at another batch size. Sample ``i`` therefore depends on
  ``(seed, i, shard_size)`` and the model/solver arguments, and *not* on ``num``, the number of
  processes, the rank a shard lands on, ``batch_size``, or how often the run was interrupted.
* ``shard_size`` itself (and the device type, the torch build, CPU thread counts, cuDNN/cuBLAS
  algorithm choices) can change the last bits; it is part of the manifest.

Launch with e.g. ``torchrun --nproc-per-node 4 -m ddim_ode sample ...`` (NCCL on GPUs, gloo on
the CPU); see ``docs/scaling.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._files import atomic_path, save_npz
from .analytic import AnalyticModel
from .core import Solution
from .field import PREDICTIONS, EpsModel, SigmaModel
from .grids import GRIDS, make_grid
from .integrate import decode, encode
from .schedules import Schedule
from .solvers import Solver, get_solver

__all__ = [
    "ShardedRun",
    "ResumeError",
    "DistInfo",
    "sample_to_dir",
    "encode_to_dir",
    "merge_dir",
    "index_noise",
    "shard_ranges",
    "dist_info",
    "process_group",
    "MANIFEST",
]

MANIFEST = "manifest.json"
INDEX = "index.json"
FORMAT = "ddim_ode.shards"
FORMAT_VERSION = 1
_NOISE_STRIDE = 1_000_003
_SHARD_RE = re.compile(r"^shard-(\d+)-(\d+)\.npz$")
_STALE_RE = re.compile(
    r"^\..+\.tmp(\.[A-Za-z0-9]+)?$"  # the temporary names of _files.atomic_path
)
_OUTPUTS = {"sample": "samples", "encode": "latents"}
Progress = bool | Callable[[int, int], None]


class ResumeError(ValueError):
    """``out_dir`` holds a run made with other arguments (or files that are not from a run)."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the process group (world size 1 without a group)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None


@dataclass(frozen=True)
class ShardedRun:
    """What :func:`sample_to_dir` / :func:`encode_to_dir` did, seen from one rank.

    Attributes:
        out_dir: the output folder.
        num: number of indices of the whole run.
        rank, world_size: this process and the size of the group.
        shards_total: shards of the whole run.
        shards_skipped: shards found complete when the run started (all ranks).
        shards_computed: shards this rank computed and wrote.
        nfe: network evaluations made by this rank (per solver call, summed).
        seconds: wall time of this rank's call.
        merged: the merged array file (``samples.npy`` / ``latents.npy``) if it was written.
    """

    out_dir: Path
    num: int
    rank: int
    world_size: int
    shards_total: int
    shards_skipped: int
    shards_computed: int
    nfe: int
    seconds: float
    merged: Path | None


# ---------------------------------------------------------------------------------------------
# the process group


def dist_info() -> DistInfo:
    """Rank and world size of the current default process group; ``(0, 1)`` without one."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = str(torch.distributed.get_backend())
        return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local, backend)
    return DistInfo(0, 1, 0, None)


@contextlib.contextmanager
def process_group(backend: str | None = None, timeout_s: float = 1800.0) -> Iterator[DistInfo]:
    """Join the job that ``torchrun`` launched, for the duration of the ``with`` block.

    Under ``torchrun`` (``WORLD_SIZE`` set in the environment) and with no default group yet, it
    initialises one from the environment (``backend`` default: ``"nccl"`` when CUDA is available,
    else ``"gloo"``; with NCCL the CUDA device is set to ``LOCAL_RANK``) and destroys it on exit.
    Without ``torchrun``, or when a group already exists, it changes nothing. Yields
    :func:`dist_info`.
    """
    created = False
    if "WORLD_SIZE" in os.environ and torch.distributed.is_available() and not torch.distributed.is_initialized():
        be = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if be not in ("nccl", "gloo"):
            raise ValueError(f"unknown backend {be!r}; allowed: 'nccl' (GPUs) or 'gloo' (CPU)")
        if be == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(be, timeout=_dt.timedelta(seconds=timeout_s))
        created = True
    try:
        yield dist_info()
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _bcast(obj: Any, info: DistInfo, device: torch.device) -> Any:
    """Rank 0's ``obj`` on every rank (also a barrier)."""
    if info.world_size == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0, device=device if info.backend == "nccl" else None)
    return box[0]


def _gather(obj: Any, info: DistInfo) -> list[Any]:
    if info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------
# indices, noise, fingerprints


def shard_ranges(num: int, shard_size: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` index ranges of the shards of a run of ``num`` indices."""
    return [(s, min(s + shard_size, num)) for s in range(0, num, shard_size)]


def index_noise(
    seed: int,
    start: int,
    stop: int,
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> Tensor:
    """The initial noise of samples ``start .. stop−1``: row ``i`` depends only on ``(seed, i)``.

    Row ``i`` is ``torch.randn(shape)`` from a CPU generator seeded with
    ``(seed · 1000003 + i) mod 2³²`` (the CPU generator keeps 32 bits of its seed), in float32,
    then cast to ``dtype`` and moved to ``device``; these are the numbers ``ddim-ode sample`` uses.
    Consequence of the 32-bit seed: runs with seeds ``s`` and ``s + 1`` share noise once they
    pass 1000003 indices (index ``i + 1000003`` of seed ``s`` is index ``i`` of seed ``s + 1``).
    """
    if not 0 <= start <= stop:
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    if start == stop:
        return torch.empty((0, *shape), dtype=dtype, device=device)
    rows = [
        torch.randn(tuple(shape), generator=torch.Generator().manual_seed((seed * _NOISE_STRIDE + i) % 2**32))
        for i in range(start, stop)
    ]
    return torch.stack(rows).to(device=device, dtype=dtype)


def _sha(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "little"))
        h.update(c)
    return h.hexdigest()


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    head = f"{t.dtype}{tuple(t.shape)}".encode()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return head + t.numpy().tobytes()


def _fingerprint(obj: Any) -> dict[str, Any]:
    """What identifies a model or schedule: its class and a hash of its numbers (if it has any)."""
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    chunks: list[bytes] = [kind.encode()]
    numbers = False
    if isinstance(obj, torch.nn.Module):
        for name, t in obj.state_dict().items():
            chunks += [name.encode(), _tensor_bytes(t)]
            numbers = True
        cfg = getattr(obj, "config", None)
        if cfg is not None:
            chunks.append(repr(cfg).encode())
    attrs = vars(obj) if hasattr(obj, "__dict__") else {}
    for name in sorted(attrs):
        if name.startswith("_") and not isinstance(obj, Schedule):
            continue
        val = attrs[name]
        if isinstance(val, Tensor):
            chunks += [name.encode(), _tensor_bytes(val)]
            numbers = True
        elif isinstance(val, (bool, int, float, str)):
            chunks += [name.encode(), repr(val).encode()]
            numbers = True
        elif isinstance(val, (AnalyticModel, Schedule)):
            chunks += [name.encode(), _fingerprint(val)["sha256"].encode()]
            numbers = True
    if not numbers and callable(obj):
        name = getattr(obj, "__qualname__", kind)
        chunks.append(str(name).encode())
    return {"class": kind, "sha256": _sha(*chunks), "verified": numbers}


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError):
        return repr(value)


def _run_id(arguments: dict[str, Any]) -> str:
    return _sha(json.dumps(arguments, sort_keys=True).encode())[:16]


def _shard_name(start: int, stop: int) -> str:
    return f"shard-{start:08d}-{stop:08d}.npz"


# ---------------------------------------------------------------------------------------------
# evaluating the network on fixed-size row blocks


class _RowBlocks(torch.nn.Module):
    """Evaluates an ε-model on consecutive blocks of ``rows`` rows, so the batch seen by the
    network does not depend on how many shards are integrated together."""

    def __init__(self, inner: Any, rows: int) -> None:
        super().__init__()
        self.inner = inner
        self.rows = rows

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        r = self.rows
        return torch.cat([self.inner(x_t[i : i + r], t[i : i + r]) for i in range(0, x_t.shape[0], r)])


class _SigmaRowBlocks(_RowBlocks):
    def eps_xbar(self, xbar: Tensor, sigma: float) -> Tensor:
        r = self.rows
        return torch.cat([self.inner.eps_xbar(xbar[i : i + r], sigma) for i in range(0, xbar.shape[0], r)])


def _row_blocks(model: Any, rows: int) -> Any:
    return _SigmaRowBlocks(model, rows) if isinstance(model, SigmaModel) else _RowBlocks(model, rows)


# ---------------------------------------------------------------------------------------------
# validation


def _check_int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _device(device: str | torch.device | None, info: DistInfo) -> torch.device:
    if device is None or str(device) == "auto":
        if info.backend == "nccl" or (torch.cuda.is_available() and info.backend != "gloo"):
            return torch.device("cuda", info.local_rank)
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank)
    return dev


def _event_shape(model: Any, shape: Sequence[int] | None, metadata: dict[str, Any]) -> tuple[int, ...]:
    if shape is not None:
        out = tuple(int(s) for s in shape)
        if not out or any(s < 1 for s in out):
            raise ValueError(f"shape must be the event shape of one sample (positive ints), got {tuple(shape)}")
        return out
    if isinstance(model, AnalyticModel):
        return tuple(model.event_shape)
    inner = getattr(model, "oracle", None)
    if isinstance(inner, AnalyticModel):
        return tuple(inner.event_shape)
    if metadata.get("sample_shape"):
        return tuple(int(s) for s in metadata["sample_shape"])
    cfgs = [metadata.get("unet"), metadata.get("config"), getattr(getattr(model, "config", None), "__dict__", None)]
    for cfg in cfgs:
        if cfg and "in_channels" in cfg and ("resolution" in cfg or "sample_size" in cfg):
            side = int(cfg.get("resolution", cfg.get("sample_size")))
            return (int(cfg["in_channels"]), side, side)
    raise ValueError("cannot tell the shape of one sample from this model; pass shape=(C, H, W) (or the event shape)")


def _resolve(
    model: EpsModel | SigmaModel | None,
    schedule: Schedule | None,
    prediction: str | None,
    device: torch.device,
) -> tuple[Any, Schedule, str, dict[str, Any]]:
    meta: dict[str, Any] = {}
    if model is None:
        if schedule is not None:
            raise ValueError("schedule given without model: the built-in model comes with its own schedule")
        from .io import load_default

        model, schedule, meta = load_default(device)
    elif schedule is None:
        raise ValueError("schedule is required when a model is given, e.g. schedule=ddim_ode.DiscreteSchedule.linear()")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a ddim_ode Schedule, got {type(schedule).__name__}")
    pred = prediction if prediction is not None else str(meta.get("prediction", "eps"))
    if pred not in PREDICTIONS:
        raise ValueError(f"unknown prediction {pred!r}; allowed: {', '.join(PREDICTIONS)}")
    if isinstance(model, torch.nn.Module):
        model = model.to(device)
    return model, schedule, pred, meta


# ---------------------------------------------------------------------------------------------
# manifest and shards on disk


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} on disk vs {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]


def _prepare_dir(out_dir: Path, arguments: dict[str, Any], environment: dict[str, Any]) -> str | None:
    """Rank 0: check or create the manifest; returns an error message or ``None``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MANIFEST
    if path.exists():
        doc = _read_json(path)
        if doc is None or doc.get("format") != FORMAT:
            return f"{path} is not a manifest of a ddim_ode sharded run; use another out_dir"
        diffs = _differences(doc.get("arguments", {}), arguments)
        if diffs:
            return (
                f"refusing to resume in {out_dir}: it holds a run made with other arguments ("
                + "; ".join(diffs)
                + "). Use the same arguments to resume, or a new out_dir"
            )
        old_env = doc.get("environment", {})
        changed = [k for k in ("device_type", "torch") if old_env.get(k) != environment.get(k)]
        if changed:
            warnings.warn(
                f"resuming in {out_dir} with a different {', '.join(changed)} "
                f"({', '.join(f'{old_env.get(k)} -> {environment.get(k)}' for k in changed)}): the shards "
                "already written are valid but may differ in the last bits from a run made here",
                stacklevel=3,
            )
        return None
    if any(_SHARD_RE.match(p.name) for p in out_dir.iterdir()):
        return f"{out_dir} holds shard files but no {MANIFEST}; refusing to mix runs, use a new out_dir"
    _write_json(
        path,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arguments": arguments,
            "environment": environment,
            "run_id": _run_id(arguments),
        },
    )
    return None


def _load_shard(path: Path, run_id: str, start: int, stop: int, key: str) -> dict[str, np.ndarray] | None:
    """The arrays of a complete, uncorrupted shard of this run, else ``None``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}  # reading every member checks its CRC
    except Exception:  # an unreadable or truncated file counts as missing
        return None
    if str(arrays.get("run_id", "")) != run_id or key not in arrays:
        return None
    if int(arrays.get("start", -1)) != start or int(arrays.get("stop", -1)) != stop:
        return None
    rows = [k for k in arrays if k == key or (k.startswith("aux") and not k.startswith("auxscalar_"))]
    if any(arrays[k].ndim == 0 or arrays[k].shape[0] != stop - start for k in rows):
        return None
    return arrays


def _state_arrays(state: Any, rows: slice, batch: int) -> dict[str, np.ndarray]:
    """The per-row part of a solver's final state as arrays (``aux`` / ``aux_<field>``), plus its
    scalar fields (``auxscalar_<field>``); nothing for states of another form."""

    def rowwise(t: Any) -> bool:
        return isinstance(t, Tensor) and t.ndim >= 1 and t.shape[0] == batch

    if rowwise(state):
        return {"aux": state[rows].detach().cpu().numpy()}
    out: dict[str, np.ndarray] = {}
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        for f in dataclasses.fields(state):
            val = getattr(state, f.name)
            if rowwise(val):
                out[f"aux_{f.name}"] = val[rows].detach().cpu().numpy()
            elif isinstance(val, (bool, int, float)):
                out[f"auxscalar_{f.name}"] = np.array(val)
    return out


def _pending(out_dir: Path, ranges: list[tuple[int, int]], run_id: str, key: str) -> list[int]:
    todo = []
    for k, (start, stop) in enumerate(ranges):
        path = out_dir / _shard_name(start, stop)
        if not path.exists() or _load_shard(path, run_id, start, stop, key) is None:
            todo.append(k)
    return todo


def merge_dir(out_dir: str | Path, *, png: bool = True) -> Path:
    """Check that every index of the run in ``out_dir`` is present exactly once and merge.

    Writes ``samples.npy`` (or ``latents.npy``) of shape ``(num, ...)`` atomically, streaming
    shard by shard, and likewise the per-row parts of a solver's final state (``aux.npy`` for a
    tensor state, ``aux_<field>.npy`` for the tensor fields of a dataclass state such as a
    reversible solver's); ``samples.png`` with the first 64 samples when they are 1- or 3-channel
    images (and ``png``); and ``index.json`` (the shards, their ranges, the outputs and the
    state's scalar fields). Removes temporary files left by killed writers,
    so call it only when no process is writing into ``out_dir``. Returns the merged file.

    Raises:
        ResumeError: ``out_dir`` holds no manifest.
        FileNotFoundError: indices are missing (names the missing ranges).
        ValueError: a shard is corrupt or from another run, or shards overlap.
    """
    out = Path(out_dir)
    doc = _read_json(out / MANIFEST)
    if doc is None or doc.get("format") != FORMAT:
        raise ResumeError(f"{out} holds no {MANIFEST} of a ddim_ode sharded run")
    args = doc["arguments"]
    num, run_id, kind = int(args["num"]), str(doc["run_id"]), str(args["kind"])
    key = _OUTPUTS[kind]
    found: list[tuple[int, int, Path]] = []
    for p in sorted(out.iterdir()):
        m = _SHARD_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), p))
        elif _STALE_RE.match(p.name):
            p.unlink(missing_ok=True)  # a temporary file of a writer that was killed
    count = np.zeros(num, dtype=np.int64)
    for start, stop, p in found:
        if not (0 <= start < stop <= num):
            raise ValueError(f"shard {p.name} lies outside the run's indices [0, {num})")
        count[start:stop] += 1
    if (count > 1).any():
        raise ValueError(f"shards overlap in {out} (index {int(np.argmax(count > 1))} appears more than once)")
    if (count == 0).any():
        missing = _runs(np.flatnonzero(count == 0))
        raise FileNotFoundError(f"{out} misses indices {missing}; re-run with the same arguments to finish them")
    first = _load_shard(found[0][2], run_id, found[0][0], found[0][1], key)
    if first is None:
        raise ValueError(f"{found[0][2]} is corrupt or from another run; delete it and re-run to recompute it")
    per_row = sorted(k for k in first if k == key or (k.startswith("aux") and not k.startswith("auxscalar_")))
    scalars = {k[len("auxscalar_") :]: first[k].item() for k in first if k.startswith("auxscalar_")}
    targets = {k: out / f"{k}.npy" for k in per_row}
    with contextlib.ExitStack() as stack:
        tmps = {k: stack.enter_context(atomic_path(p)) for k, p in targets.items()}
        maps = {
            k: np.lib.format.open_memmap(tmps[k], mode="w+", dtype=first[k].dtype, shape=(num, *first[k].shape[1:]))
            for k in targets
        }
        for start, stop, p in found:
            arrays = _load_shard(p, run_id, start, stop, key)
            if arrays is None or sorted(k for k in arrays if k in targets) != per_row:
                raise ValueError(f"{p} is corrupt or from another run; delete it and re-run to recompute it")
            for k, mm in maps.items():
                mm[start:stop] = arrays[k]
        head = np.array(maps[key][: min(num, 64)])
        for mm in maps.values():
            mm.flush()
        del maps
    shape = tuple(args["shape"])
    if png and kind == "sample" and len(shape) == 3 and shape[0] in (1, 3):
        from ._files import save_png
        from .images import image_grid, to_unit

        save_png(out / "samples.png", image_grid(to_unit(torch.from_numpy(head)), ncol=8))
    _write_json(
        out / INDEX,
        {
            "run_id": run_id,
            "num": num,
            "shards": [[s, e, p.name] for s, e, p in found],
            "outputs": sorted(p.name for p in targets.values()),
            "state_scalars": scalars,
        },
    )
    return targets[key]


def _runs(idx: np.ndarray) -> str:
    """Compact text of sorted indices: ``0-9, 20-29``."""
    parts, start, prev = [], int(idx[0]), int(idx[0])
    for i in idx[1:]:
        if int(i) != prev + 1:
            parts.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = int(i)
        prev = int(i)
    parts.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(parts[:10]) + (", ..." if len(parts) > 10 else "")


# ---------------------------------------------------------------------------------------------
# the driver shared by sampling and encoding


def _run(
    kind: str,
    out_dir: str | Path,
    num: int,
    inputs: Callable[[int, int], Tensor],
    solve_rows: Callable[[Tensor, int], Solution],
    arguments: dict[str, Any],
    *,
    shard_size: int,
    group: int,
    device: torch.device,
    info: DistInfo,
    progress: Progress,
    merge: bool,
) -> ShardedRun:
    t0 = time.perf_counter()
    out = Path(out_dir)
    key = _OUTPUTS[kind]
    environment = {
        "torch": torch.__version__,
        "device_type": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": info.world_size,
        "threads": torch.get_num_threads(),
    }
    run_id = _run_id(arguments)
    if info.backend == "nccl" and device.type == "cuda":
        torch.cuda.set_device(device)  # the device NCCL's object collectives use
    ranges = shard_ranges(num, shard_size)
    # 1. rank 0 checks/creates the manifest and lists what is left; every rank checks it agrees
    err, todo = None, []
    if info.rank == 0:
        try:
            err = _prepare_dir(out, arguments, environment)
            if err is None:
                todo = _pending(out, ranges, run_id, key)
        except OSError as exc:
            err = f"cannot use {out}: {exc}"
    err, todo = _bcast((err, todo), info, device)
    ids = _gather(run_id, info)
    if err is None and len(set(ids)) > 1:
        err = f"the ranks were given different arguments (run ids {sorted(set(ids))}); every rank needs the same"
    if err is not None:
        raise ResumeError(err)
    skipped = len(ranges) - len(todo)
    mine = todo[info.rank :: info.world_size]
    # 2. compute this rank's shards, `group` shards per solver call, each written atomically
    nfe, done = 0, 0
    bar = None
    if progress is True and info.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=f"{kind} shards (rank 0 of {info.world_size})", leave=False)
    try:
        for g in range(0, len(mine), group):
            ks = mine[g : g + group]
            x = torch.cat([inputs(ranges[k][0], ranges[k][0] + shard_size) for k in ks])
            sol = solve_rows(x, ranges[ks[0]][0])
            nfe += sol.nfe
            y = sol.x.detach()
            for j, k in enumerate(ks):
                start, stop = ranges[k]
                rows = slice(j * shard_size, j * shard_size + stop - start)
                arrays = {key: y[rows].cpu().numpy(), **_state_arrays(sol.state, rows, y.shape[0])}
                save_npz(
                    out / _shard_name(start, stop),
                    run_id=np.array(run_id),
                    start=np.array(start),
                    stop=np.array(stop),
                    **arrays,
                )
                done += 1
                if bar is not None:
                    bar.update(1)
                if callable(progress):
                    progress(done, len(mine))
    finally:
        if bar is not None:
            bar.close()
    # 3. after every rank is done, rank 0 merges; all ranks learn the outcome
    merged: Path | None = None
    if merge:
        _gather(None, info)  # barrier
        result: tuple[str | None, str | None] = (None, None)
        if info.rank == 0:
            try:
                result = (str(merge_dir(out)), None)
            except (OSError, ValueError) as exc:
                result = (None, f"{type(exc).__name__}: {exc}")
        path, merr = _bcast(result, info, device)
        if merr is not None:
            raise RuntimeError(f"merging the shards in {out} failed: {merr}")
        merged = Path(path) if path else None
    return ShardedRun(
        out, num, info.rank, info.world_size, len(ranges), skipped, done, nfe, time.perf_counter() - t0, merged
    )


@dataclass
class _Job:
    """The validated arguments shared by sampling and encoding."""

    model: Any
    schedule: Schedule
    prediction: str
    metadata: dict[str, Any]
    device: torch.device
    info: DistInfo
    stochastic: bool
    group: int
    arguments: dict[str, Any]


def _is_stochastic(slv: Solver) -> bool:
    """Whether the solver draws fresh noise (η-DDIM with η > 0, DDPM, or one that says so)."""
    return bool(getattr(slv, "stochastic", False)) or float(getattr(slv, "eta", 0.0) or 0.0) > 0.0


def _plan(
    kind: str,
    *,
    model: Any,
    schedule: Schedule | None,
    solver: str | Solver,
    solver_options: dict[str, Any] | None,
    n: int,
    grid: str,
    prediction: str | None,
    shard_size: int,
    batch_size: int | None,
    dtype: torch.dtype,
    device: str | torch.device | None,
) -> _Job:
    info = dist_info()
    shard_size = _check_int("shard_size", shard_size)
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size)
    n = _check_int("n", n)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype (of the solver state and files) must be torch.float32 or torch.float64, got {dtype!r}")
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; allowed: {', '.join(GRIDS)}")
    if solver_options is not None and not isinstance(solver_options, dict):
        raise TypeError(f"solver_options must be a dict of constructor options, got {type(solver_options).__name__}")
    slv = get_solver(solver, **(solver_options or {}))  # fails early on a bad name or options
    stochastic = _is_stochastic(slv)
    if stochastic and (not isinstance(solver, str) or "generator" in (solver_options or {})):
        raise ValueError(
            f"solver {slv.name!r} draws fresh noise: give it by name and without a `generator` option, so that "
            "its noise can be seeded per shard from `seed` (which keeps every sample independent of the ranks)"
        )
    if kind == "encode" and not slv.can_encode:
        raise ValueError(f"solver {slv.name!r} cannot encode: {getattr(slv, 'why_no_encode', '')}")
    dev = _device(device, info)
    model_, schedule_, pred, meta = _resolve(model, schedule, prediction, dev)
    sig = make_grid(schedule_, grid, n)
    arguments = {
        "kind": kind,
        "dtype": str(dtype).replace("torch.", ""),
        "shard_size": shard_size,
        "solver": solver if isinstance(solver, str) else f"{slv.name} {slv!r}",
        "solver_options": _jsonable(solver_options or {}),
        "n": n,
        "grid": grid,
        "sigmas_sha256": _sha(sig.to(torch.float64).numpy().tobytes()),
        "prediction": pred,
        "model": _fingerprint(model_),
        "schedule": _fingerprint(schedule_),
    }
    # the network always sees one shard; adaptive step control and fresh noise couple the rows of a
    # solver call, so those solvers integrate one shard per call
    group = 1 if (stochastic or slv.adaptive) else max(1, (batch_size or shard_size) // shard_size)
    return _Job(model_, schedule_, pred, meta, dev, info, stochastic, group, arguments)


def _solver_noise_seed(seed: int, start: int) -> int:
    """Seed of the generator a stochastic solver uses for the shard starting at ``start``.

    Derived through ``numpy.random.SeedSequence`` so that it shares no stream with :func:`index_noise`.
    """
    return int(np.random.SeedSequence([seed % 2**63, start, 0x5EED]).generate_state(1, np.uint32)[0])


# ---------------------------------------------------------------------------------------------
# public entry points


def sample_to_dir(
    out_dir: str | Path,
    num: int,
    *,
    model: EpsModel | SigmaModel | None = None,
    schedule: Schedule | None = None,
    solver: str | Solver = "euler",
    n: int = 20,
    grid: str = "uniform",
    seed: int = 0,
    batch_size: int | None = None,
    shard_size: int = 256,
    device: str | torch.device | None = None,
    prediction: str | None = None,
    solver_options: dict[str, Any] | None = None,
    shape: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    check_finite: bool = True,
    progress: Progress = False,
    merge: bool = True,
) -> ShardedRun:
    """Decode ``num`` samples from per-index seeded noise into shards under ``out_dir``; resumable.

    Call it on every rank of a process group (e.g. under ``torchrun``, inside :func:`process_group`)
    or in a single process. Shards already complete in ``out_dir`` (same arguments, checked against
    ``manifest.json``) are skipped, so re-running after a crash or a kill finishes the rest.

    Args:
        out_dir: output folder (created).
        num: number of samples.
        model, schedule: ε-model and its schedule (``None``: the built-in model); an
            ``nn.Module`` is moved to ``device``.
        solver, n, grid, prediction, solver_options: as for :func:`ddim_ode.decode`
            (``prediction=None`` takes the built-in model's, else ``"eps"``). A solver that draws
            fresh noise (``ddpm``, ``ddim`` with η > 0) gets a generator seeded per shard from
            ``(seed, shard start)``.
        seed: noise seed; sample ``i`` starts from :func:`index_noise` ``(seed, i)``.
        batch_size: samples integrated per solver call, rounded down to whole shards (at least
            one; default one shard). It does not change the numbers: the network still sees one
            shard of ``shard_size`` rows at a time. Adaptive and stochastic solvers always take one
            shard per call.
        shard_size: indices per shard file and rows per network call (the last shard is padded).
        device: ``None``/``"auto"``: ``cuda:LOCAL_RANK`` under NCCL or when CUDA is available,
            else CPU; ``"cuda"`` means ``cuda:LOCAL_RANK``.
        shape: the shape of one sample; inferred from the built-in model, a UNet's config or an
            analytic model when omitted.
        dtype: dtype of the solver state and of the files: ``torch.float32`` or ``torch.float64``.
        check_finite: passed to :func:`ddim_ode.decode`.
        progress: ``True`` for a progress bar on rank 0, or ``callable(done, total)`` called on
            every rank after each shard it writes.
        merge: merge the shards into ``samples.npy`` (+ ``samples.png``) at the end (rank 0).

    Returns:
        A :class:`ShardedRun` describing this rank's share.

    Raises:
        ResumeError: ``out_dir`` holds a run with other arguments, or the ranks disagree.
    """
    num = _check_int("num", num)
    seed = _check_int("seed", seed, low=-(2**62))
    job = _plan(
        "sample",
        model=model,
        schedule=schedule,
        solver=solver,
        solver_options=solver_options,
        n=n,
        grid=grid,
        prediction=prediction,
        shard_size=shard_size,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
    )
    shp = _event_shape(job.model, shape, job.metadata)
    job.arguments |= {
        "num": num,
        "shape": list(shp),
        "seed": seed,
        "noise": "torch.randn float32 (CPU), generator seed (seed*1000003 + i) mod 2**32",
    }
    if job.stochastic:
        job.arguments["solver_noise"] = (
            "torch.Generator(device) per shard, seeded by SeedSequence([seed, start, 0x5EED])"
        )
    eval_model = _row_blocks(job.model, shard_size)

    def inputs(start: int, stop: int) -> Tensor:
        return index_noise(seed, start, stop, shp, dtype=dtype, device=job.device)

    def solve_rows(x: Tensor, start: int) -> Solution:
        opts = dict(solver_options or {})
        if job.stochastic:
            opts["generator"] = torch.Generator(job.device).manual_seed(_solver_noise_seed(seed, start))
        return decode(  # type: ignore[return-value]
            x,
            solver,
            n,
            model=eval_model,
            schedule=job.schedule,
            grid=grid,
            prediction=job.prediction,  # type: ignore[arg-type]
            solver_options=opts,
            return_solution=True,
            check_finite=check_finite,
        )

    with torch.no_grad():
        return _run(
            "sample",
            out_dir,
            num,
            inputs,
            solve_rows,
            job.arguments,
            shard_size=shard_size,
            group=job.group,
            device=job.device,
            info=job.info,
            progress=progress,
            merge=merge,
        )


def encode_to_dir(
    images: Tensor | np.ndarray,
    out_dir: str | Path,
    *,
    model: EpsModel | SigmaModel | None = None,
    schedule: Schedule | None = None,
    solver: str | Solver = "euler",
    n: int = 20,
    grid: str = "uniform",
    batch_size: int | None = None,
    shard_size: int = 256,
    device: str | torch.device | None = None,
    prediction: str | None = None,
    solver_options: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    check_finite: bool = True,
    progress: Progress = False,
    merge: bool = True,
) -> ShardedRun:
    """Encode a data set ``images`` (shape ``(N, ...)``, model scale) into latents under ``out_dir``.

    The counterpart of :func:`sample_to_dir` for :func:`ddim_ode.encode`, with the same sharding,
    resume and determinism rules: row ``i`` depends on image ``i``, ``shard_size`` and the
    model/solver arguments (the last shard is padded with zeros). Every rank must pass the same
    ``images`` (their hash is part of the manifest). Shards hold ``latents`` and the per-row
    tensors of the solver's final state (see :func:`merge_dir`); the merge writes ``latents.npy``
    (+ ``aux*.npy``).
    """
    data = torch.as_tensor(images).detach().cpu()
    if not data.is_floating_point() or data.ndim < 2 or data.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty floating array of shape (N, ...), got {data.dtype} {tuple(data.shape)}"
        )
    if not bool(torch.isfinite(data).all()):
        raise ValueError("images contain NaN or Inf values")
    num = int(data.shape[0])
    job = _plan(
        "encode",
        model=model,
        schedule=schedule,
        solver=solver,
        solver_options=solver_options,
        n=n,
        grid=grid,
        prediction=prediction,
        shard_size=shard_size,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
    )
    shp = tuple(int(s) for s in data.shape[1:])
    job.arguments |= {"num": num, "shape": list(shp), "data_sha256": _sha(_tensor_bytes(data))}
    eval_model = _row_blocks(job.model, shard_size)

    def inputs(start: int, stop: int) -> Tensor:
        x = data[start : min(stop, num)]
        if x.shape[0] < stop - start:
            x = torch.cat([x, x.new_zeros(stop - start - x.shape[0], *shp)])
        return x.to(device=job.device, dtype=dtype)

    def solve_rows(x: Tensor, start: int) -> Solution:
        return encode(  # type: ignore[return-value]
            x,
            solver,
            n,
            model=eval_model,
            schedule=job.schedule,
            grid=grid,
            prediction=job.prediction,  # type: ignore[arg-type]
            solver_options=solver_options,
            return_solution=True,
            check_finite=check_finite,
        )

    with torch.no_grad():
        return _run(
            "encode",
            out_dir,
            num,
            inputs,
            solve_rows,
            job.arguments,
            shard_size=shard_size,
            group=job.group,
            device=job.device,
            info=job.info,
            progress=progress,
            merge=merge,
        )
