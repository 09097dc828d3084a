"""The sharded run on every rank: agree on the shards still to do, compute this rank's share,
merge on rank 0. :func:`sample_to_dir` and :func:`encode_to_dir` differ only in their inputs."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checks import GridLike
from ..field import EpsModel, SigmaModel
from ..schedules import Schedule
from ..solvers import Solver
from .decode_input import write_decode_settings
from .fingerprints import sha256, tensor_bytes
from .groups import broadcast, gather
from .layout import shard_name
from .manifest import ResumeError, check_int, open_run
from .merge import merge_dir
from .noise import NOISE_RULE, index_noise
from .plan import RunPlan, RunSettings, make_plan
from .shards import ShardFormat, shard_ranges, state_rows

__all__ = ["ShardedRun", "Progress", "sample_to_dir", "encode_to_dir"]

Progress = bool | Callable[[int, int], None]
Inputs = Callable[[int, int], Tensor]


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


def _agree_on_pending(out: Path, plan: RunPlan, ranges: list[tuple[int, int]]) -> list[int]:
    """Rank 0 creates or checks the manifest and lists the shards still to do; every rank receives
    that list and checks that all ranks were given the same arguments."""
    info, device = plan.info, plan.device
    fmt = ShardFormat.of(plan.arguments)
    environment = {
        "torch": torch.__version__,
        "device_type": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": info.world_size,
        "threads": torch.get_num_threads(),
    }
    err: str | None = None
    todo: list[int] = []
    if info.rank == 0:
        try:
            open_run(out, plan.arguments, environment)
            if plan.decode_settings is not None:
                write_decode_settings(out, fmt.run_id, plan.decode_settings)
            todo = fmt.pending(out, ranges)
        except OSError as exc:
            err = f"cannot use {out}: {exc}"
        except ValueError as exc:  # ResumeError, a damaged manifest, a FIFO under a shard's name, ...
            err = str(exc)
    err, todo = broadcast((err, todo), info, device)
    ids = gather(fmt.run_id, info)
    if err is None and len(set(ids)) > 1:
        err = f"the ranks were given different arguments (run ids {sorted(set(ids))}); every rank needs the same"
    if err is not None:
        raise ResumeError(err)
    return todo


def _compute_shards(
    out: Path, plan: RunPlan, ranges: list[tuple[int, int]], mine: list[int], inputs: Inputs, progress: Progress
) -> tuple[int, int]:
    """Integrate this rank's shards, ``plan.group`` per solver call, writing each atomically as it
    is done; returns (network evaluations, shards written)."""
    fmt = ShardFormat.of(plan.arguments)
    size = plan.shard_size
    nfe, done = 0, 0
    bar = None
    if progress is True and plan.info.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=f"{plan.kind} shards (rank 0 of {plan.info.world_size})", leave=False)
    try:
        for g in range(0, len(mine), plan.group):
            ks = mine[g : g + plan.group]
            starts = [ranges[k][0] for k in ks]
            sol = plan.solve(torch.cat([inputs(start, start + size) for start in starts]), starts)
            nfe += sol.nfe
            y = sol.x.detach()
            for j, k in enumerate(ks):
                start, stop = ranges[k]
                rows = slice(j * size, j * size + stop - start)
                arrays = {fmt.key: y[rows].cpu().numpy()}
                if plan.keeps_state:
                    arrays |= state_rows(sol.state, rows)
                fmt.write(out / shard_name(start, stop), start, stop, arrays)
                done += 1
                if bar is not None:
                    bar.update(1)
                if callable(progress):
                    progress(done, len(mine))
    finally:
        if bar is not None:
            bar.close()
    return nfe, done


def _merge_on_rank_zero(out: Path, plan: RunPlan) -> Path:
    """After every rank is done, rank 0 merges; every rank learns the merged file or the error."""
    gather(None, plan.info)  # barrier
    result: tuple[str | None, str | None] = (None, None)
    if plan.info.rank == 0:
        try:
            result = (str(merge_dir(out)), None)
        except (OSError, ValueError) as exc:
            result = (None, f"{type(exc).__name__}: {exc}")
    path, err = broadcast(result, plan.info, plan.device)
    if err is not None:
        raise RuntimeError(f"merging the shards in {out} failed: {err}")
    return Path(path)


def _execute(plan: RunPlan, out_dir: str | Path, inputs: Inputs, progress: Progress, merge: bool) -> ShardedRun:
    t0 = time.perf_counter()
    out = Path(out_dir)
    info = plan.info
    if info.backend == "nccl" and plan.device.type == "cuda":
        torch.cuda.set_device(plan.device)  # the device NCCL's object collectives use
    num = plan.arguments["num"]
    ranges = shard_ranges(num, plan.shard_size)
    with torch.no_grad():
        todo = _agree_on_pending(out, plan, ranges)
        nfe, done = _compute_shards(out, plan, ranges, todo[info.rank :: info.world_size], inputs, progress)
        merged = _merge_on_rank_zero(out, plan) if merge else None
    seconds = time.perf_counter() - t0
    skipped = len(ranges) - len(todo)
    return ShardedRun(out, num, info.rank, info.world_size, len(ranges), skipped, done, nfe, seconds, merged)


def sample_to_dir(
    out_dir: str | Path,
    num: int,
    *,
    model: EpsModel | SigmaModel | str | Path | None = None,
    schedule: Schedule | None = None,
    solver: str | Solver = "euler",
    n: int = 20,
    grid: str = "uniform",
    sigmas: GridLike | None = None,
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
    model_kwargs: dict[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond_kwargs: dict[str, Any] | None = None,
) -> ShardedRun:
    """Decode ``num`` samples from per-index seeded noise into shards under ``out_dir``; resumable.

    Call it on every rank of a process group (e.g. under ``torchrun``, inside :func:`process_group`)
    or in a single process. Shards already complete in ``out_dir`` (same arguments, checked against
    ``manifest.json``) are skipped, so re-running after a crash or a kill finishes the rest.

    Args:
        out_dir: output folder (created). Files of other names in it are left alone.
        num: number of samples (at most :data:`~ddim_ode.distributed.manifest.MAX_NUM`).
        model, schedule: as for :func:`ddim_ode.models.resolve_model` (``None``: the built-in
            model); an ``nn.Module`` is moved to ``device``.
        solver, n, grid, prediction, solver_options: as for :func:`ddim_ode.decode`
            (``prediction=None`` takes a loaded model's, else ``"eps"``). A solver that draws
            fresh noise (``ddpm``, ``ddim`` with η > 0) gets a generator seeded per shard from
            ``(seed, shard start)``.
        sigmas: an explicit decoding grid (float64 σ values, strictly decreasing to 0; σ = ∞ first
            on a flow path), as for :func:`ddim_ode.decode`; it replaces ``n`` and ``grid``. The
            manifest records its values, so a resume with another grid is refused.
        seed: noise seed; sample ``i`` starts from :func:`index_noise` ``(seed, i)``.
        batch_size: samples integrated per solver call, rounded down to whole shards (at least
            one; default one shard). It does not change the numbers: the network still sees one
            shard of ``shard_size`` rows at a time. Adaptive and stochastic solvers always take one
            shard per call.
        shard_size: indices per shard file and rows per network call (the last shard is padded).
        device: ``None``/``"auto"``: ``cuda:LOCAL_RANK`` under NCCL or when CUDA is available,
            else CPU; ``"cuda"`` means ``cuda:LOCAL_RANK``.
        shape: the shape of one sample; inferred from a loaded model, this package's UNet or an
            analytic model when omitted.
        dtype: dtype of the solver state and of the files: ``torch.float32`` or ``torch.float64``.
        check_finite: passed to :func:`ddim_ode.decode`.
        progress: ``True`` for a progress bar on rank 0, or ``callable(done, total)`` called on
            every rank after each shard it writes.
        merge: merge the shards into ``samples.npy`` (+ ``samples.png``) at the end (rank 0).
        model_kwargs, guidance_scale, uncond_kwargs: conditioning and classifier-free guidance, as
            for :func:`ddim_ode.decode`. A tensor whose first dimension is ``num`` is per sample:
            sample ``i`` is conditioned on its row ``i`` whatever the shard size, the number of
            processes or the interruptions (e.g. class labels ``{"y": labels}`` of shape
            ``(num,)``); anything else is passed to every call as it is. Guidance without
            ``uncond_kwargs`` needs a model with ``null_kwargs``. The manifest records a hash of
            the keyword arguments and the weight: a resume with other ones is refused.

    Returns:
        A :class:`ShardedRun` describing this rank's share.

    Raises:
        ResumeError: ``out_dir`` holds a run with other arguments or a damaged manifest, something
            other than a regular file stands under a shard's name, or the ranks disagree.
    """
    settings = RunSettings.of(locals())
    seed = check_int("seed", seed, low=-(2**62))
    plan = make_plan("sample", settings, num=num, shape=shape, seed=seed, identity={"seed": seed, "noise": NOISE_RULE})

    def inputs(start: int, stop: int) -> Tensor:
        return index_noise(seed, start, stop, plan.shape, dtype=dtype, device=plan.device)

    return _execute(plan, out_dir, inputs, progress, merge)


def encode_to_dir(
    images: Tensor | np.ndarray,
    out_dir: str | Path,
    *,
    model: EpsModel | SigmaModel | str | Path | None = None,
    schedule: Schedule | None = None,
    solver: str | Solver = "euler",
    n: int = 20,
    grid: str = "uniform",
    sigmas: GridLike | None = None,
    batch_size: int | None = None,
    shard_size: int = 256,
    device: str | torch.device | None = None,
    prediction: str | None = None,
    solver_options: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    check_finite: bool = True,
    progress: Progress = False,
    merge: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond_kwargs: dict[str, Any] | None = None,
    decode_settings: Mapping[str, Any] | None = None,
) -> ShardedRun:
    """Encode a data set ``images`` (shape ``(N, ...)``, model scale) into latents under ``out_dir``.

    The counterpart of :func:`sample_to_dir` for :func:`ddim_ode.encode`, with the same sharding,
    resume and determinism rules: row ``i`` depends on image ``i``, ``shard_size`` and the
    model/solver arguments (the last shard is padded with zeros). Every rank must pass the same
    ``images`` (their hash is part of the manifest). The merge writes ``latents.npy``, for a
    reversible solver its state's ``aux_<field>.npy``, and ``latents.npz`` for ``ddim-ode decode``
    (see :func:`merge_dir`). ``decode_settings``: named arrays that ``latents.npz`` records beside the
    latents (they replace the merge's own ``solver``, ``grid``, … of the same names; see
    :mod:`~ddim_ode.distributed.decode_input`), kept in the folder for every later merge.
    """
    settings = RunSettings.of(locals())
    data = torch.as_tensor(images).detach().cpu()
    if not data.is_floating_point() or data.ndim < 2 or data.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty floating array of shape (N, ...), got {data.dtype} {tuple(data.shape)}"
        )
    if not bool(torch.isfinite(data).all()):
        raise ValueError("images contain NaN or Inf values")
    num = int(data.shape[0])
    identity = {"data_sha256": sha256(tensor_bytes(data))}
    plan = make_plan(
        "encode",
        settings,
        num=num,
        shape=data.shape[1:],
        seed=None,
        identity=identity,
        decode_settings=decode_settings,
    )

    def inputs(start: int, stop: int) -> Tensor:
        x = data[start : min(stop, num)]
        if x.shape[0] < stop - start:
            x = torch.cat([x, x.new_zeros(stop - start - x.shape[0], *plan.shape)])
        return x.to(device=plan.device, dtype=dtype)

    return _execute(plan, out_dir, inputs, progress, merge)
