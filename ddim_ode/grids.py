"""Time grids: pure functions returning float64 σ values, in decoding order (largest first).

A grid of ``n`` steps holds ``n + 1`` values. With the default range it runs from the top of
the schedule down to σ = 0 (clean data): ``n`` noisy points and a trailing 0, so the last step
goes from the schedule's smallest timestep to ᾱ = 1, as the official DDIM sampler does. With an
explicit range ``[t_lo, t_hi]`` it holds ``n + 1`` points from σ(t_hi) to σ(t_lo), both included.
Encoding uses the same grid reversed.

Grids:

* ``"uniform"`` — uniform in t. For a :class:`~ddim_ode.schedules.DiscreteSchedule` over its
  full range this is exactly the official DDIM grid: timesteps ``range(0, T, T // n)`` visited
  from the largest down (so it starts at ``T − T//n``); when ``n`` does not divide ``T`` that
  range has more than ``n`` entries, and the sampler takes that many steps, as the official one
  does (e.g. T = 1000, n = 30 gives 31 steps). For a :class:`~ddim_ode.schedules.FlowSchedule`
  it is uniform in the unshifted time and, over the default range, exactly the σ̄ of diffusers'
  ``FlowMatchEulerDiscreteScheduler.set_timesteps(n)`` (σ̄ = τ/(1 − τ) of its ``sigmas``): it
  starts at σ̄ = ∞ (τ = 1, pure noise), so Euler along it is that scheduler's loop (the first
  step from σ̄ = ∞ needs the model-scale evaluation
  :meth:`~ddim_ode.field.ProbabilityFlowODE.evaluate_x`).
* ``"quad"`` — quadratic in t. Discrete, full range: the official ``(linspace(0, √(0.8 T), n))²``
  truncated to integers (``int()``, as the official code does; repeated timesteps, which occur
  only for n close to T, are dropped, which changes nothing but the NFE). Otherwise
  ``u = u_lo + (u_hi − u_lo)(k/K)²`` in the schedule's grid time (t itself except for a flow's shift).
* ``"logsnr"`` — uniform in log σ (= uniform in log-SNR; k-diffusion's "exponential").
* ``"karras"`` — σ^(1/ρ) uniform, ρ = 7 (Karras et al. 2022, eq. 5). On a
  :class:`~ddim_ode.schedules.VESchedule` over its full range this is EDM's (and k-diffusion's
  ``get_sigmas_karras``) grid.
* ``"ays-sd15"``, ``"ays-sdxl"`` — published tables (Align Your Steps), see :mod:`ddim_ode.published_grids`.

"uniform" and "quad" are spaced in the schedule's grid time
(:meth:`~ddim_ode.schedules.Schedule.grid_time`, t itself except for a flow's shift) between
:attr:`~ddim_ode.schedules.Schedule.grid_span` by default; "logsnr" and "karras" space σ between
:attr:`~ddim_ode.schedules.Schedule.sigma_top` (``sigma_max`` when it is finite; on a flow, one
training level below pure noise, where diffusers' flow-σ grids start) and ``sigma_min``.
On a discrete schedule "uniform" and "quad" round timesteps to integers (the network was trained
on those); "logsnr" and "karras" use fractional timesteps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .published_grids import PUBLISHED_GRIDS
from .schedules import Schedule

__all__ = ["GRIDS", "uniform_grid", "quad_grid", "logsnr_grid", "karras_grid", "make_grid", "sigmas_from_timesteps"]


def _assemble(schedule: Schedule, values: np.ndarray, is_t: bool, to_zero: bool) -> Tensor:
    v = torch.tensor(np.array(values, dtype=np.float64), dtype=torch.float64)
    sig = schedule.sigma(v) if is_t else v
    if to_zero:
        sig = torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    return sig


def _range(schedule: Schedule, t_hi: float | None, t_lo: float | None) -> tuple[float, float, bool]:
    """(top, bottom) in the schedule's grid time, and whether a trailing σ = 0 follows."""
    span_hi, span_lo = schedule.grid_span if t_hi is None or t_lo is None else (0.0, 0.0)
    hi = span_hi if t_hi is None else float(schedule.grid_time(torch.tensor(float(t_hi), dtype=torch.float64)))
    lo = span_lo if t_lo is None else float(schedule.grid_time(torch.tensor(float(t_lo), dtype=torch.float64)))
    return hi, lo, t_lo is None


def _timesteps(schedule: Schedule, u: np.ndarray) -> np.ndarray:
    """Timesteps t of grid times u (the same array when grid time is t)."""
    return np.asarray(schedule.from_grid_time(torch.from_numpy(np.asarray(u, dtype=np.float64))), dtype=np.float64)


def _sigma_range(schedule: Schedule, name: str, t_hi: float | None, t_lo: float | None) -> tuple[float, float, bool]:
    """(σ top, σ bottom, trailing 0) of a grid spaced in σ; the top must be finite."""
    s_hi = schedule.sigma_top if t_hi is None else float(schedule.sigma(float(t_hi)))
    s_lo = schedule.sigma_min if t_lo is None else float(schedule.sigma(float(t_lo)))
    if not np.isfinite(s_hi):
        raise ValueError(
            f"the {name!r} grid spaces sigma between finite ends, but t_hi = {t_hi!r} is sigma = inf; "
            f"give a top t_hi below t_max = {schedule.t_max:g}, or use the 'uniform' grid"
        )
    return s_hi, s_lo, t_lo is None


def _exact_ends(sig: np.ndarray, s_hi: float, s_lo: float) -> np.ndarray:
    """``sig`` with its ends set to the range's own values (the maps through log σ or σ^(1/ρ) round them)."""
    sig[0] = s_hi
    if sig.size > 1:
        sig[-1] = s_lo
    return sig


def _count(n: int, to_zero: bool) -> int:
    """Number of points spanning [lo, hi] inclusive: n when a trailing 0 follows, else n + 1."""
    return n if to_zero else n + 1


def _int_unique_desc(t: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(t, dtype=np.int64))[::-1].astype(np.float64)


def uniform_grid(schedule: Schedule, n: int, t_hi: float | None = None, t_lo: float | None = None) -> Tensor:
    """Uniform in grid time; on a full-range discrete schedule the official DDIM ``range(0, T, T//n)``,
    on a full-range flow schedule diffusers' ``FlowMatchEulerDiscreteScheduler`` grid."""
    if schedule.is_discrete and t_hi is None and t_lo is None:
        big_t = int(round(schedule.t_max)) + 1
        if n > big_t:
            raise ValueError(
                f"the 'uniform' grid of a schedule with T={big_t} allows at most n={big_t} steps, got n={n}"
            )
        ts = np.arange(0, big_t, big_t // n, dtype=np.float64)[::-1]
        return _assemble(schedule, ts, True, True)
    hi, lo, to_zero = _range(schedule, t_hi, t_lo)
    m = _count(n, to_zero)
    ts = _timesteps(schedule, np.linspace(hi, lo, m) if m > 1 else np.array([hi]))
    if schedule.is_discrete:
        ts = _int_unique_desc(np.round(ts))
    return _assemble(schedule, ts, True, to_zero)


def quad_grid(schedule: Schedule, n: int, t_hi: float | None = None, t_lo: float | None = None) -> Tensor:
    """Quadratic in t; on a full-range discrete schedule the official DDIM 'quad' grid."""
    if schedule.is_discrete and t_hi is None and t_lo is None:
        big_t = int(round(schedule.t_max)) + 1
        ts = np.array([int(s) for s in np.linspace(0, np.sqrt(big_t * 0.8), n) ** 2], dtype=np.float64)
        return _assemble(schedule, _int_unique_desc(ts), True, True)
    hi, lo, to_zero = _range(schedule, t_hi, t_lo)
    m = _count(n, to_zero)
    u = np.linspace(1.0, 0.0, m) if m > 1 else np.array([1.0])
    ts = _timesteps(schedule, lo + (hi - lo) * u**2)
    if schedule.is_discrete:
        ts = _int_unique_desc(np.round(ts))
    return _assemble(schedule, ts, True, to_zero)


def logsnr_grid(schedule: Schedule, n: int, t_hi: float | None = None, t_lo: float | None = None) -> Tensor:
    """Uniform in log σ (equivalently in log-SNR = −2 log σ)."""
    s_hi, s_lo, to_zero = _sigma_range(schedule, "logsnr", t_hi, t_lo)
    m = _count(n, to_zero)
    sig = np.exp(np.linspace(np.log(s_hi), np.log(s_lo), m)) if m > 1 else np.array([s_hi])
    return _assemble(schedule, _exact_ends(sig, s_hi, s_lo), False, to_zero)


def karras_grid(
    schedule: Schedule, n: int, t_hi: float | None = None, t_lo: float | None = None, rho: float = 7.0
) -> Tensor:
    """σ_i = (σ_hi^(1/ρ) + i/(m−1) (σ_lo^(1/ρ) − σ_hi^(1/ρ)))^ρ (Karras et al. 2022, eq. 5)."""
    s_hi, s_lo, to_zero = _sigma_range(schedule, "karras", t_hi, t_lo)
    m = _count(n, to_zero)
    ramp = np.linspace(0.0, 1.0, m) if m > 1 else np.array([0.0])
    sig = (s_hi ** (1 / rho) + ramp * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
    return _assemble(schedule, _exact_ends(sig, s_hi, s_lo), False, to_zero)


GridFn = Callable[..., Tensor]
GRIDS: dict[str, GridFn] = {
    "uniform": uniform_grid,
    "quad": quad_grid,
    "logsnr": logsnr_grid,
    "karras": karras_grid,
}
GRIDS.update(PUBLISHED_GRIDS)


def make_grid(schedule: Schedule, grid: str, n: int, t_hi: float | None = None, t_lo: float | None = None) -> Tensor:
    """The decoding σ grid (float64, strictly decreasing) named ``grid`` with ``n`` steps.

    The first value is ``inf`` when the grid starts at pure noise of a path whose ``sigma_max``
    is infinite (a :class:`~ddim_ode.schedules.FlowSchedule`'s "uniform" and "quad" grids).
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; allowed: {', '.join(GRIDS)}")
    sig = GRIDS[grid](schedule, n, t_hi, t_lo)
    keep = torch.cat([torch.ones(1, dtype=torch.bool), sig[1:] < sig[:-1]])
    return sig[keep]


def sigmas_from_timesteps(schedule: Schedule, timesteps: Sequence[float] | np.ndarray | Tensor) -> Tensor:
    """σ(t) for an explicit list of timesteps, as float64."""
    return schedule.sigma(torch.as_tensor(np.asarray(timesteps, dtype=np.float64)))
