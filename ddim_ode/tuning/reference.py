"""The reference a grid is tuned against: accurate ODE solutions on a fine candidate grid.

:func:`candidate_sigmas` builds the candidate points a tuned grid is chosen from (σ_max, a fine
log-σ grid from the schedule's largest finite σ down to σ_min, any extra points, then 0);
:func:`reference_trajectory` integrates a batch of noises along them with classical RK4 (4 NFE
per step, the full method also on steps that end at σ = 0) on at least ``steps`` steps in all
(the same number of sub-steps in every candidate interval) and keeps x̄ at every candidate. Its
accuracy is bounded by a second solve on every other sub-step point: the RMS difference of the
two end states is the error of the coarser one, and so an upper estimate of the finer one's (RK4
on twice the steps is up to 2⁴ times better).

On a flow path σ_max = ∞ (pure noise, x̄ infinite) is a candidate of its own, followed by the
schedule's :attr:`~ddim_ode.schedules.Schedule.sigma_top`. The reference leaves the noise by the
exact limit of the DDIM step from σ = ∞ (:func:`~ddim_ode.core.step_from_noise`) to
σ_far = :data:`FAR` · σ_top, then continues with RK4: that first step errs by O(s_d²/σ_far) in x̄
(s_d² the data variance), an error that shrinks by s_d/σ_far more on its way to σ = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..core import solve, step_from_noise, to_xbar
from ..field import ProbabilityFlowODE
from ..schedules import Schedule
from ..solvers import get_solver

__all__ = ["Reference", "candidate_sigmas", "fine_sigmas", "reference_trajectory", "rms", "FAR"]

#: relative distance below which two candidate points are merged
_MERGE = 1e-6
#: where the reference of a flow path leaves pure noise, as a multiple of the schedule's largest finite σ
FAR = 1e3


def rms(a: Tensor, b: Tensor) -> float:
    """Root-mean-square difference over every element (float64)."""
    d = (a.to(torch.float64) - b.to(torch.float64)).reshape(-1)
    return float(torch.sqrt(torch.mean(d * d)))


@dataclass(frozen=True)
class Reference:
    """Accurate states of a batch along the candidate grid.

    Attributes:
        sigmas: the candidates, float64, decreasing, σ_max first (``inf`` on a flow path) and 0 last
            (``N + 1`` values).
        noise: the batch in the model's scale at σ_max (the noise itself).
        states: x̄ at every candidate, shape ``(N + 1, batch, ...)`` (``inf`` at σ = ∞).
        error: upper estimate of the RMS error of the end state (x̄ at σ = 0): its RMS distance
            from a solve with half as many steps (NaN when not estimated).
        nfe: network evaluations spent (both solves).
    """

    sigmas: Tensor
    noise: Tensor
    states: Tensor
    error: float
    nfe: int


def candidate_sigmas(schedule: Schedule, count: int, extra: list[Tensor] | None = None) -> Tensor:
    """``count`` points uniform in log σ from σ_top to σ_min, the ``extra`` points in range, and 0.

    σ_top is the schedule's largest finite σ (:attr:`~ddim_ode.schedules.Schedule.sigma_top`,
    σ_max on a VP or VE path); on a flow path σ_max = ∞ comes first. ``extra`` (e.g. the points of
    the standard grids at the requested n) lets the search reproduce those grids. Returns a float64
    tensor, strictly decreasing, ending at 0.
    """
    hi, lo = schedule.sigma_top, schedule.sigma_min
    pts = np.exp(np.linspace(math.log(hi), math.log(lo), count))
    pts[0], pts[-1] = hi, lo
    for e in extra or []:
        v = e.to(torch.float64).cpu().numpy()
        pts = np.concatenate([pts, v[(v >= lo) & (v <= hi)]])
    kept = [hi]
    for p in np.unique(pts)[::-1]:
        if p < kept[-1] * (1.0 - _MERGE):  # points closer than that are one candidate
            kept.append(float(p))
    head = [math.inf] if math.isinf(schedule.sigma_max) else []
    return torch.tensor([*head, *kept, 0.0], dtype=torch.float64)


def fine_sigmas(sigmas: Tensor, substeps: int) -> Tensor:
    """``substeps`` points per interval of ``sigmas``: uniform in log σ, or in σ on a step that ends at 0.

    Candidate ``i`` is point ``i · substeps`` of the result.
    """
    sig = sigmas.tolist()
    out: list[float] = []
    frac = np.arange(substeps) / substeps
    for a, b in zip(sig[:-1], sig[1:]):
        pts = a * (1.0 - frac) if b == 0.0 else a * (b / a) ** frac
        pts[0] = a
        out += pts.tolist()
    out.append(sig[-1])
    return torch.tensor(out, dtype=torch.float64)


def _rk4_solve(field: ProbabilityFlowODE, xbar: Tensor, sigmas: Tensor, trajectory: bool) -> tuple[Tensor, Tensor]:
    sol = solve(field, xbar, sigmas, get_solver("rk4", final_step="full"), trajectory=trajectory)
    return sol.xbar, (sol.trajectory if sol.trajectory is not None else sol.xbar[None])


def _coarse(fine: Tensor) -> Tensor:
    """Every other point of ``fine``, always keeping its last (σ = 0)."""
    coarse = fine[::2]
    return coarse if float(coarse[-1]) == float(fine[-1]) else torch.cat([coarse, fine[-1:]])


def reference_trajectory(
    field: ProbabilityFlowODE, z: Tensor, sigmas: Tensor, steps: int, estimate_error: bool = True
) -> Reference:
    """x̄ at every point of ``sigmas`` (candidates, from σ_max = ``sigmas[0]``) for the noises ``z`` (model scale).

    RK4 on :func:`fine_sigmas` with ⌈steps/N⌉ sub-steps in each of the N candidate intervals
    (4 NFE per sub-step); with ``estimate_error`` also a check solve on every other sub-step point
    (half as many NFE) that bounds the error (see the module docstring; else ``error`` is NaN). From
    σ_max = ∞ the solve starts at σ_far (module docstring) with one NFE more, and x̄ = ∞ there.
    """
    nfe0 = field.nfe
    head = math.isinf(float(sigmas[0]))
    start = sigmas.clone()  # from σ_max = ∞ the solve starts at σ_far instead
    if head:
        start[0] = float(sigmas[1]) * FAR
    substeps = max(1, math.ceil(steps / (len(sigmas) - 1)))
    fine = fine_sigmas(start, substeps)
    xbar = step_from_noise(field, z, float(start[0])) if head else to_xbar(z, float(start[0]), field.schedule)
    end, traj = _rk4_solve(field, xbar, fine, trajectory=True)
    error = math.nan
    if estimate_error:
        check, _ = _rk4_solve(field, xbar, _coarse(fine), trajectory=False)
        error = rms(end, check)
    states = traj[::substeps]
    if head:
        states[0] = math.inf
    return Reference(sigmas, z, states.clone(), error, field.nfe - nfe0)
