"""Validation of what callers pass to the public entry points, once, with messages that say what is allowed.

The driver (:mod:`ddim_ode.driver`) and the likelihood (:mod:`ddim_ode.likelihood`) check
their input here; the code below them trusts its input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .grids import make_grid, sigmas_from_timesteps
from .schedules import Schedule

__all__ = [
    "MAX_STEPS",
    "GridLike",
    "check_x",
    "check_n",
    "check_batch_size",
    "as_float64",
    "check_grid",
    "check_decoding_grid",
    "span_grid",
    "data_grid",
]

#: the most steps one integration may take (a larger grid is a mistake, not a request)
MAX_STEPS = 100_000

GridLike = Sequence[float] | np.ndarray | Tensor


def check_x(x: Any, name: str) -> None:
    """``x`` is a non-empty batched floating tensor without NaN/Inf."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name} must be batched, shape (batch, ...) with at least 2 dims, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


def check_n(n: Any) -> int:
    """The number of steps as an int in [1, :data:`MAX_STEPS`]."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n (number of steps) must be an int >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"n (number of steps) must be >= 1, got {n}")
    if n > MAX_STEPS:
        raise ValueError(f"n (number of steps) must be <= {MAX_STEPS}, got {n}")
    return int(n)


def check_batch_size(batch_size: Any) -> int | None:
    """``None`` or an int >= 1."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
    return batch_size


def as_float64(values: GridLike, what: str) -> Tensor:
    """A 1-D float64 host tensor of ``values`` (a list, array or tensor of numbers)."""
    try:
        arr = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a 1-D sequence of numbers") from None
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size > MAX_STEPS + 1:
        raise ValueError(f"{what} holds {arr.size} values; at most {MAX_STEPS + 1} (that is {MAX_STEPS} steps)")
    return torch.from_numpy(arr)


def _check_timesteps(ts: Tensor, schedule: Schedule) -> None:
    v = ts.numpy()
    if not np.isfinite(v).all():
        raise ValueError("timesteps must be finite")
    lo, hi = float(v.min()), float(v.max())
    if lo < schedule.t_min or hi > schedule.t_max:
        raise ValueError(
            f"timesteps must lie in the schedule's range [{schedule.t_min:g}, {schedule.t_max:g}], "
            f"got values from {lo:g} to {hi:g}"
        )


def check_grid(sig: Tensor, schedule: Schedule, what: str) -> Tensor:
    """A σ grid: at least 2 values ≥ 0, strictly monotone, within the schedule's σ range.

    σ = ∞ (pure noise) is allowed as the first or last value on a schedule that reaches it (a
    flow path); every other value is finite.
    """
    sig = sig.to(torch.float64).cpu().reshape(-1)
    if sig.numel() < 2:
        raise ValueError(f"{what} must hold at least 2 values (start and end), got {sig.numel()}")
    v = sig.numpy()  # host checks in numpy: a handful of microseconds per call
    inner = v[1:-1]
    ends_ok = np.isfinite(v[[0, -1]]) | (np.isposinf(v[[0, -1]]) & np.isinf(schedule.sigma_max))
    if not np.isfinite(inner).all() or not ends_ok.all() or (v < 0).any():
        where = " (sigma = inf only as the first or last value, on a schedule that reaches it)"
        raise ValueError(f"{what} must be finite and >= 0{where}")
    d = np.diff(v)
    if not ((d < 0).all() or (d > 0).all()):
        raise ValueError(f"{what} must be strictly monotone (decreasing to decode, increasing to encode)")
    top = float(max(v[0], v[-1]))
    if top > schedule.sigma_max * (1 + 1e-9):
        raise ValueError(f"{what} reaches sigma={top:.6g}, above the schedule's sigma_max={schedule.sigma_max:.6g}")
    return sig


def check_decoding_grid(sig: Tensor, schedule: Schedule, what: str) -> Tensor:
    """A σ grid in decoding order: at least one step, strictly decreasing from at most the schedule's
    ``sigma_max`` down to σ = 0; returns it as a float64 host tensor.

    σ = ∞ (pure noise) is allowed as the first value on a schedule that reaches it (a flow path,
    ``sigma_max = inf``) and refused on any other; every other value is finite. ``what`` names the
    grid in the messages (``"sigmas"``, ``"--sigmas"``).
    """
    sig = sig.to(torch.float64).cpu().reshape(-1)
    v = sig.numpy()
    if v.size < 2:
        raise ValueError(f"{what} must give at least one step (2 values: start and 0), got {v.size} value(s)")
    if np.isnan(v).any() or np.isinf(v[1:]).any() or np.isneginf(v[0]):
        raise ValueError(f"{what} must be finite (sigma = inf only as the first value, on a flow path that reaches it)")
    if (v < 0).any():
        raise ValueError(f"{what} values must be >= 0")
    if not (np.diff(v) < 0).all():
        raise ValueError(f"{what} must be strictly decreasing (decoding order, noise to data)")
    if v[-1] != 0.0:
        raise ValueError(f"{what} must end at sigma = 0 (clean data)")
    top, sigma_max = float(v[0]), float(schedule.sigma_max)
    if np.isinf(top) and not np.isinf(sigma_max):
        raise ValueError(
            f"{what} starts at sigma = inf (pure noise), which only a schedule that reaches it (a flow path) allows; "
            f"this one's sigma_max is {sigma_max:.6g}"
        )
    if top > sigma_max * (1 + 1e-9):
        raise ValueError(f"{what} starts at sigma={top:.6g}, above the schedule's sigma_max={sigma_max:.6g}")
    return sig


def _one_of(sigmas: GridLike | None, timesteps: GridLike | None) -> None:
    if sigmas is not None and timesteps is not None:
        raise ValueError("give at most one of `sigmas` and `timesteps`")


def span_grid(
    schedule: Schedule,
    grid: str,
    n: int,
    t_start: float | None,
    t_end: float | None,
    sigmas: GridLike | None,
    timesteps: GridLike | None,
) -> Tensor:
    """The grid of :func:`~ddim_ode.integrate`: explicit, or ``grid`` between ``t_start`` and ``t_end``."""
    _one_of(sigmas, timesteps)
    if sigmas is not None:
        return check_grid(as_float64(sigmas, "sigmas"), schedule, "sigmas")
    if timesteps is not None:
        ts = as_float64(timesteps, "timesteps")
        _check_timesteps(ts, schedule)
        return check_grid(sigmas_from_timesteps(schedule, ts), schedule, "timesteps")
    for name, val in (("t_start", t_start), ("t_end", t_end)):
        if val is not None and not (schedule.t_min <= float(val) <= schedule.t_max):
            raise ValueError(f"{name}={val} is outside the schedule's range [{schedule.t_min}, {schedule.t_max}]")
    if t_start is not None and t_end is not None and float(t_start) < float(t_end):  # upwards: encoding
        sig = make_grid(schedule, grid, n, t_hi=t_end, t_lo=t_start).flip(0)
    else:
        sig = make_grid(schedule, grid, n, t_hi=t_start, t_lo=t_end)
    return check_grid(sig, schedule, f"the {grid!r} grid")


def data_grid(schedule: Schedule, grid: str, n: int, sigmas: GridLike | None, timesteps: GridLike | None) -> Tensor:
    """The decoding grid (decreasing, ending at σ = 0) of :func:`~ddim_ode.decode` and :func:`~ddim_ode.encode`."""
    _one_of(sigmas, timesteps)
    if sigmas is not None:
        return check_decoding_grid(as_float64(sigmas, "sigmas"), schedule, "sigmas")
    if timesteps is not None:
        ts = as_float64(timesteps, "timesteps")
        _check_timesteps(ts, schedule)
        sig = torch.cat([sigmas_from_timesteps(schedule, ts), torch.zeros(1, dtype=torch.float64)])
        return check_decoding_grid(sig, schedule, "timesteps")
    return check_grid(make_grid(schedule, grid, n), schedule, f"the {grid!r} grid")
