"""``tune_grid``: a σ grid tuned to one model, solver and number of steps, checked on held-out noise."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..analytic import AnalyticModel
from ..checks import check_n
from ..core import solve, solve_x
from ..field import EpsModel, ProbabilityFlowODE, SigmaModel
from ..grids import GRIDS, logsnr_grid, make_grid
from ..models import ResolvedModel, resolve_model
from ..schedules import Schedule
from ..solvers import Solver, get_solver
from .reference import candidate_sigmas, reference_trajectory, rms
from .refine import refine_grid
from .result import TunedGrid
from .search import StepCosts, best_path, step_costs

__all__ = ["tune_grid", "grid_nfe", "steps_for_nfe", "DEFAULT_GRIDS"]

#: the standard grids a tuned grid is compared with
DEFAULT_GRIDS: tuple[str, ...] = ("uniform", "logsnr", "karras", "quad")
#: exponents p of the error-propagation weight w(σ)^p tried by the discrete search (see :mod:`.search`)
WEIGHT_EXPONENTS: tuple[float, ...] = (0.0, 0.5, 1.0)


class _ZeroField:
    """ε ≡ 0 in DDIM coordinates: a free field for counting a solver's network evaluations."""

    def eps_xbar(self, xbar: Tensor, sigma: float) -> Tensor:
        return torch.zeros_like(xbar)


def grid_nfe(solver: Solver, schedule: Schedule, sigmas: Tensor) -> int:
    """Network evaluations ``solver`` makes along the decoding grid ``sigmas`` (counted, not estimated).

    A grid from σ = ∞ (pure noise on a flow path) takes one evaluation to leave it, then the rest.
    """
    if math.isinf(float(sigmas[0])):
        return 1 + grid_nfe(solver, schedule, sigmas[1:])
    field = ProbabilityFlowODE(_ZeroField(), schedule)
    return solve(field, torch.zeros(1, 1, dtype=torch.float64), sigmas, solver).nfe


def steps_for_nfe(solver: Solver, schedule: Schedule, nfe: int) -> int:
    """The most steps whose decoding grid costs ``solver`` at most ``nfe`` network evaluations."""
    best = 0
    for n in range(1, nfe + 1):
        if grid_nfe(solver, schedule, logsnr_grid(schedule, n)) > nfe:
            break
        best = n
    if best == 0:
        raise ValueError(f"solver {solver.name!r} needs more than nfe={nfe} network evaluations for a single step")
    return best


def _positive_int(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _sample_shape(resolved: ResolvedModel, shape: Sequence[int] | None) -> tuple[int, ...]:
    if shape is not None:
        dims = tuple(shape)
        if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
            raise ValueError(f"shape must be a non-empty sequence of ints >= 1 (one sample, no batch), got {shape!r}")
        return dims
    if isinstance(resolved.model, AnalyticModel):
        return resolved.model.event_shape
    if resolved.metadata:
        from ..io import sample_shape  # only loaded models carry metadata

        return sample_shape(resolved.metadata)
    raise ValueError("cannot tell the shape of one sample of this model: pass shape=(C, H, W) (no batch dimension)")


def _model_name(model: Any) -> str:
    if model is None:
        return "default"
    if isinstance(model, (str, Path)):
        return str(model)
    return repr(model) if isinstance(model, AnalyticModel) else type(model).__qualname__


def _noise(shape: tuple[int, ...], count: int, seed: int, device: Any) -> Tensor:
    """``count`` seeded standard normal samples (float64, drawn on the host so that every device gets the same)."""
    z = torch.randn(count, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return z.to(device)


class _Noises:
    """A seeded batch of noises z at σ_max with the accurate solution from them, and the error of a grid on it.

    Every grid starts with x_T = z at its own first σ (as :func:`~ddim_ode.decode` takes it) and is
    compared with the accurate solution from z at σ_max.
    """

    def __init__(self, field: ProbabilityFlowODE, slv: Solver, z: Tensor, end: Tensor) -> None:
        self.field, self.slv, self.z, self.end = field, slv, z, end

    def error(self, grid: Tensor) -> tuple[float, int]:
        """(RMS error at σ = 0, NFE) of ``slv`` along ``grid``; the error is ``inf`` when the solve blows up."""
        sol = solve_x(self.field, self.z, grid, self.slv, check_finite=False)
        err = rms(sol.xbar, self.end)
        return (err if math.isfinite(err) else math.inf), sol.nfe

    def objective(self, grid: Tensor) -> float:
        """The error alone: what the refinement minimises."""
        return self.error(grid)[0]


def _search(costs: StepCosts, cands: Tensor, steps: int, keep_top: bool, tuning: _Noises) -> tuple[Tensor, float]:
    """The best of the dynamic programme's paths (one per weight exponent, with the top held at σ_max and,
    unless ``keep_top``, free) by the error of full solves on the tuning noises."""
    tops = (True,) if keep_top else (True, False)
    paths = {tuple(best_path(costs, steps, p, top)[0]) for p in WEIGHT_EXPONENTS for top in tops}
    err, path = min((tuning.error(cands[list(path)])[0], path) for path in paths)
    return cands[list(path)], err


def _compare(
    heldout: _Noises, tuned: Tensor, standard: dict[str, Tensor]
) -> tuple[tuple[float, int], dict[str, float], dict[str, int]]:
    """Held-out (error, NFE) of the tuned grid; errors of the standard grids costing at most as many NFE, and
    the NFE of every standard grid."""
    tuned_err, tuned_nfe = heldout.error(tuned)
    errors: dict[str, float] = {}
    nfes: dict[str, int] = {}
    for name, grid in standard.items():
        err, nfes[name] = heldout.error(grid)
        if nfes[name] <= tuned_nfe:
            errors[name] = err
    return (tuned_err, tuned_nfe), errors, nfes


def tune_grid(
    n: int | None = None,
    solver: str | Solver = "euler",
    *,
    nfe: int | None = None,
    model: EpsModel | SigmaModel | str | Path | None = None,
    schedule: Schedule | None = None,
    prediction: str | None = None,
    solver_options: dict[str, Any] | None = None,
    num_samples: int = 64,
    heldout_samples: int = 64,
    seed: int = 0,
    heldout_seed: int | None = None,
    candidates: int = 48,
    reference_steps: int = 192,
    shape: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    keep_top: bool = False,
    refine: bool = True,
    refine_solves: int = 60,
    defaults: Sequence[str] = DEFAULT_GRIDS,
) -> TunedGrid:
    """A decoding σ grid of ``n`` steps chosen for this model and solver, never worse than the standard grids.

    Method (see :mod:`ddim_ode.tuning`): draw ``num_samples`` seeded noises z at σ_max; integrate
    them accurately (RK4, at least ``reference_steps`` steps) along ``candidates`` points uniform
    in log σ (plus the points of the standard grids at this n), keeping x̄ at every candidate;
    choose the n steps on the candidates that minimise the sum of the solver's own local errors
    against that reference (and, unless ``keep_top``, the cost of starting below σ_max) by dynamic
    programming; then, with ``refine``, move the points by Nelder–Mead on the actual RMS error of
    full solves on the tuning noises (at most ``refine_solves`` solves). Finally compare, on
    ``heldout_samples`` noises of another seed, with each grid in ``defaults`` that costs at most
    as many NFE: if the tuned grid is not better than the best of them, that standard grid is
    returned (``chosen`` says which).

    Errors are RMS differences at σ = 0 between the solver's result and the accurate solution
    from the same noise z at σ_max; every grid starts with x_T = z at its own first σ, as
    :func:`~ddim_ode.decode` does. On a flow path σ_max = ∞ (pure noise): the candidates are ∞ and
    log-σ points from the schedule's ``sigma_top`` down, and a step from ∞ is the exact limit of the
    DDIM step, as :func:`~ddim_ode.decode` takes it (see :mod:`ddim_ode.tuning.search`).

    Args:
        n: number of steps (give ``n`` or ``nfe``).
        solver: a registered solver name or a :class:`~ddim_ode.solvers.Solver` (not adaptive,
            not stochastic).
        nfe: network evaluations per sample instead of ``n``: the most steps the solver can take
            for that many (e.g. heun: n steps cost 2n − 1, so nfe=9 gives n=5).
        model, schedule, prediction: as for :func:`~ddim_ode.decode` (``None``: the built-in model).
        solver_options: keyword arguments for the solver's constructor.
        num_samples: noises the grid is tuned on; ``heldout_samples``: noises it is checked on.
        seed: seed of the tuning noises; ``heldout_seed`` that of the held-out ones (default seed + 1).
        candidates: number of log-σ candidate points from σ_top (σ_max on VP and VE paths) to σ_min.
        reference_steps: least number of RK4 steps of the reference solutions (spread evenly over
            the candidate intervals; the reported ``reference_error`` says whether they suffice).
        shape: the shape of one sample; default the model's (a loaded model's ``sample_shape``, an
            oracle's ``event_shape``).
        device: where the noises (and a named model) go.
        keep_top: start the grid at σ_max; by default it may start lower (every grid starts from
            the same noise, x_T = z at its first σ as :func:`~ddim_ode.decode` takes it, and is
            compared with the accurate solution from z at σ_max, so starting lower is charged for
            the part of the trajectory skipped).
        refine: refine the grid's points on the global error after the discrete search.
        refine_solves: most solves the refinement may spend.
        defaults: the standard grids (names of :data:`~ddim_ode.grids.GRIDS`) to compare with.

    Returns:
        A :class:`~ddim_ode.tuning.TunedGrid`: ``sigmas`` (float64, decreasing from at most σ_max, which
        is ``inf`` on a flow path, ending at 0, for ``decode(..., sigmas=...)``) with held-out errors, NFE
        and tuning cost.
        Deterministic for fixed seeds.
    """
    start = time.perf_counter()
    if (n is None) == (nfe is None):
        raise ValueError("give exactly one of n (number of steps) and nfe (network evaluations)")
    num_samples = _positive_int(num_samples, "num_samples")
    heldout_samples = _positive_int(heldout_samples, "heldout_samples")
    candidates = _positive_int(candidates, "candidates", 2)
    reference_steps = _positive_int(reference_steps, "reference_steps")
    refine_solves = _positive_int(refine_solves, "refine_solves", 0)
    for name in defaults:
        if name not in GRIDS:
            raise ValueError(f"unknown grid {name!r} in defaults; allowed: {', '.join(GRIDS)}")
    if not defaults:
        raise ValueError("defaults must name at least one standard grid to compare with")
    slv = get_solver(solver, **(solver_options or {}))
    if slv.adaptive or slv.stochastic:
        kind = "adaptive (it chooses its own steps)" if slv.adaptive else "stochastic (it samples an SDE)"
        raise ValueError(f"solver {slv.name!r} is {kind}; a grid can be tuned for fixed-step ODE solvers only")
    resolved = resolve_model(model, schedule, prediction, device)
    sched = resolved.schedule
    steps = check_n(n) if n is not None else steps_for_nfe(slv, sched, _positive_int(nfe, "nfe"))
    event = _sample_shape(resolved, shape)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    field = ProbabilityFlowODE(resolved.model, sched, prediction=resolved.prediction)
    phases: dict[str, int] = {}

    def spent(phase: str, since: int) -> int:
        phases[phase] = phases.get(phase, 0) + field.nfe - since
        return field.nfe

    standard = {name: make_grid(sched, name, steps) for name in defaults}
    cands = candidate_sigmas(sched, candidates, list(standard.values()))
    if steps > len(cands) - 1:
        raise ValueError(f"n={steps} steps need more than the {len(cands) - 1} candidate intervals; raise candidates")

    with torch.no_grad():
        mark = field.nfe
        z = _noise(event, num_samples, seed, dev)
        ref = reference_trajectory(field, z, cands, reference_steps)
        tuning = _Noises(field, slv, z, ref.states[-1])
        mark = spent("reference", mark)
        costs = step_costs(field, slv, ref)
        phases["search"] = costs.nfe
        tuned, train_err = _search(costs, cands, steps, keep_top, tuning)
        method = "dp"
        mark = spent("search", mark)
        if refine:
            refined, refined_err, _ = refine_grid(
                tuning.objective, tuned, sched.sigma_top, sched.sigma_min, refine_solves, keep_top
            )
            if refined_err < train_err:
                tuned, train_err, method = refined, refined_err, "dp+refine"
            mark = spent("refine", mark)
        h_seed = seed + 1 if heldout_seed is None else int(heldout_seed)
        z_h = _noise(event, heldout_samples, h_seed, dev)
        end_h = reference_trajectory(field, z_h, cands, reference_steps, False).states[-1]
        (tuned_err, tuned_nfe), default_err, default_nfe = _compare(_Noises(field, slv, z_h, end_h), tuned, standard)
        spent("heldout", mark)

    chosen, sigmas, result_err, result_nfe = "tuned", tuned, tuned_err, tuned_nfe
    if default_err:
        best = min(default_err, key=default_err.__getitem__)
        if default_err[best] <= tuned_err:
            chosen, sigmas, result_err, result_nfe = best, standard[best], default_err[best], default_nfe[best]
    return TunedGrid(
        sigmas=sigmas.clone(),
        model=_model_name(model),
        schedule=repr(sched),
        solver=slv.name,
        n=len(sigmas) - 1,
        nfe=result_nfe,
        chosen=chosen,
        method=method,
        heldout_error=result_err,
        tuned_heldout_error=tuned_err,
        default_heldout_errors=default_err,
        default_nfe=default_nfe,
        tuning_error=train_err,
        reference_error=ref.error,
        tuning_nfe=sum(phases.values()),
        tuning_seconds=time.perf_counter() - start,
        seed=seed,
        heldout_seed=h_seed,
        num_samples=num_samples,
        heldout_samples=heldout_samples,
        candidates=len(cands) - 1,
        solver_options=dict(solver_options or {}),
        tuning_nfe_by_phase=phases,
    )
