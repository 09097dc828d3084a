"""The driver: :func:`integrate`, :func:`decode` (noise → data) and :func:`encode` (data → noise).

All three convert the VP-scale input to x̄ = x/√ᾱ, build (or take) a float64 σ grid, hand field,
state and grid to a solver, and convert back. Decoding and encoding run the *same* solver code on
a grid and its reverse (steps are signed), so ``decode(encode(x0))`` is the DDIM paper's
reconstruction experiment (its Table 2).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .field import EpsModel, Prediction, ProbabilityFlowODE, SigmaModel
from .grids import make_grid, sigmas_from_timesteps
from .schedules import Schedule
from .solvers import Solver, get_solver
from .solvers.reversible import ReversibleLatent, latent_state

__all__ = ["Solution", "integrate", "decode", "encode", "solve", "to_xbar", "from_xbar"]

GridLike = Sequence[float] | np.ndarray | Tensor


@dataclass
class Solution:
    """The outcome of an integration.

    Attributes:
        x: the final state in VP scale, ``x = x̄/√(1 + σ_end²)`` (at σ = 0 this is x̄ = x0).
        xbar: the final state in DDIM coordinates.
        sigmas: the float64 σ grid actually integrated along (first value is the start).
        nfe: number of network evaluations made.
        trajectory: x̄ at every grid point (shape ``(len(sigmas), *x.shape)``), if requested.
        state: the solver's final state (e.g. the auxiliary state of a reversible solver).
        solver: the solver instance used.
    """

    x: Tensor
    xbar: Tensor
    sigmas: Tensor
    nfe: int
    trajectory: Tensor | None = None
    state: Any = None
    solver: Solver | None = dc_field(default=None, repr=False)


def to_xbar(x: Tensor, sigma: float) -> Tensor:
    """VP scale → DDIM coordinates: x̄ = x √(1 + σ²) (= x/√ᾱ)."""
    return x * math.sqrt(1.0 + float(sigma) ** 2)


def from_xbar(xbar: Tensor, sigma: float) -> Tensor:
    """DDIM coordinates → VP scale: x = x̄/√(1 + σ²)."""
    return xbar / math.sqrt(1.0 + float(sigma) ** 2)


# ---------------------------------------------------------------------------------------------
# validation (once, at the public entry points)


def _check_x(x: Any, name: str) -> None:
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


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n (number of steps) must be an int >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"n (number of steps) must be >= 1, got {n}")
    return int(n)


def _check_grid(sig: Tensor, schedule: Schedule, what: str) -> Tensor:
    sig = sig.to(torch.float64).cpu().reshape(-1)
    if sig.numel() < 2:
        raise ValueError(f"{what} must hold at least 2 values (start and end), got {sig.numel()}")
    v = sig.numpy()  # host checks in numpy: a handful of microseconds per call
    if not np.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"{what} must be finite and >= 0")
    d = np.diff(v)
    if not ((d < 0).all() or (d > 0).all()):
        raise ValueError(f"{what} must be strictly monotone (decreasing to decode, increasing to encode)")
    top = float(max(v[0], v[-1]))
    if top > schedule.sigma_max * (1 + 1e-9):
        raise ValueError(f"{what} reaches sigma={top:.6g}, above the schedule's sigma_max={schedule.sigma_max:.6g}")
    return sig


@functools.lru_cache(maxsize=4)
def _default_model(device: str) -> tuple[Any, Schedule, dict[str, Any]]:
    from .io import load_default  # the built-in trained model

    model, schedule, meta = load_default(device)
    model.eval().requires_grad_(False)  # shipped weights are frozen: no autograd graph unless x needs one
    return model, schedule, meta


def _resolve_model(
    model: EpsModel | SigmaModel | None, schedule: Schedule | None, device: torch.device
) -> tuple[EpsModel | SigmaModel, Schedule, dict[str, Any]]:
    if model is None:
        if schedule is not None:
            raise ValueError(
                "schedule given without model: the built-in model comes with its own schedule; pass both or neither"
            )
        default_model, default_schedule, meta = _default_model(str(device))
        return default_model, default_schedule, {"prediction": meta.get("prediction", "eps")}
    if schedule is None:
        raise ValueError("schedule is required when a model is given, e.g. schedule=ddim_ode.DiscreteSchedule.linear()")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a ddim_ode Schedule, got {type(schedule).__name__}")
    return model, schedule, {}


def _as_sigmas(values: GridLike) -> Tensor:
    return torch.as_tensor(np.asarray(values.cpu() if isinstance(values, Tensor) else values, dtype=np.float64))


def _make_field(model: Any, schedule: Schedule, prediction: Prediction, defaults: dict[str, Any]) -> ProbabilityFlowODE:
    return ProbabilityFlowODE(model, schedule, prediction=defaults.get("prediction", prediction))


# ---------------------------------------------------------------------------------------------
# the core loop


def _tabulate(field: ProbabilityFlowODE, slv: Solver, sig: Tensor) -> None:
    """t(σ) at the grid points and the solver's stage points in one vectorised call, not one per evaluation."""
    prepare = getattr(field, "prepare", None)
    if prepare is not None:
        extra = slv.stage_sigmas(sig.tolist())
        prepare(torch.cat([sig, torch.tensor(extra, dtype=torch.float64)]) if extra else sig)


def solve(
    field: ProbabilityFlowODE,
    xbar: Tensor,
    sigmas: Tensor,
    solver: str | Solver = "euler",
    *,
    solver_options: dict[str, Any] | None = None,
    trajectory: bool = False,
    check_finite: bool = True,
    state: Any = None,
) -> Solution:
    """Integrate dx̄/dσ = field(x̄, σ) along the float64 grid ``sigmas`` (in DDIM coordinates).

    This is the low-level entry that :func:`integrate`, :func:`encode` and :func:`decode` use; it
    assumes validated inputs. ``check_finite`` records (without a host–device sync per step)
    whether each step produced NaN/Inf and raises once at the end, naming the first bad step and σ.
    """
    slv = get_solver(solver, **(solver_options or {}))
    sig = sigmas.to(torch.float64).cpu()
    if not slv.can_encode and float(sig[-1]) > float(sig[0]):
        raise ValueError(f"solver {slv.name!r} cannot integrate towards larger sigma (encoding): {_why_no_encode(slv)}")
    traj: list[Tensor] = [xbar] if trajectory else []
    flags: list[Tensor] = []
    nfe0 = field.nfe

    # one sum per step for the finite check: NaN/±Inf in any element (or an overflowing sum) makes it non-finite
    callback: Callable[[int, float, Tensor], None] | None = None
    if trajectory:

        def record(i: int, sigma: float, xb: Tensor) -> None:
            traj.append(xb)
            if check_finite:
                flags.append(xb.detach().sum())

        callback = record
    elif check_finite:
        if torch.is_grad_enabled():
            callback = lambda i, sigma, xb: flags.append(xb.detach().sum())
        else:
            callback = lambda i, sigma, xb: flags.append(xb.sum())
    _tabulate(field, slv, sig)
    # only finiteness is read unless a trajectory is recorded: an adaptive solver may then pass the
    # value at the end of the step that contains a grid point instead of interpolating there
    out, final_state = slv.solve(field, xbar, sig, callback, state, dense=trajectory)
    if check_finite and flags:
        ok = torch.isfinite(torch.stack(flags)).cpu()
        if not bool(ok.all()):
            k = int((~ok).nonzero()[0])
            raise FloatingPointError(
                f"NaN/Inf appeared at step {k + 1} of {len(sig) - 1} "
                f"(sigma {float(sig[k]):.6g} -> {float(sig[k + 1]):.6g}) "
                f"with solver {slv.name!r}; try more steps, another solver or a float32/float64 state"
            )
    x_out = from_xbar(out, float(sig[-1]))
    if slv.reversible:  # the result carries the auxiliary state that makes the reverse pass exact
        x_out = ReversibleLatent.wrap(x_out, final_state)
    return Solution(
        x=x_out,
        xbar=out,
        sigmas=sig,
        nfe=field.nfe - nfe0,
        trajectory=torch.stack(traj) if trajectory else None,
        state=final_state,
        solver=slv,
    )


def _why_no_encode(slv: Solver) -> str:
    return getattr(slv, "why_no_encode", "it is not defined in that direction")


def _run(
    x: Tensor,
    sig: Tensor,
    field: ProbabilityFlowODE,
    solver: str | Solver,
    *,
    solver_options: dict[str, Any] | None,
    return_solution: bool,
    trajectory: bool,
    check_finite: bool,
    state: Any,
    adjoint: bool,
    params: Any,
    checkpoints: int,
    batch_size: int | None,
) -> Tensor | Solution:
    """Run the solver from ``x`` (VP scale at ``sig[0]``) along ``sig``: plain, adjoint or micro-batched."""
    if adjoint and trajectory:
        raise ValueError("trajectory=True cannot be combined with adjoint=True (the adjoint keeps no states)")
    if not adjoint and (params is not None or checkpoints):
        raise ValueError("`params` and `checkpoints` apply only with adjoint=True")
    state = state if state is not None else latent_state(x)
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
        if x.shape[0] > batch_size:
            if state is not None or get_solver(solver, **(solver_options or {})).reversible:
                raise ValueError("batch_size cannot split a solver state (reversible solvers): pass smaller batches")
            kw = dict(
                solver_options=solver_options,
                return_solution=True,
                trajectory=trajectory,
                check_finite=check_finite,
                state=None,
                adjoint=adjoint,
                params=params,
                checkpoints=checkpoints,
                batch_size=None,
            )
            parts = [_run(x[i : i + batch_size], sig, field, solver, **kw) for i in range(0, x.shape[0], batch_size)]
            sols = [p for p in parts if isinstance(p, Solution)]
            sol = Solution(
                x=torch.cat([p.x for p in sols]),
                xbar=torch.cat([p.xbar for p in sols]),
                sigmas=sols[0].sigmas,
                nfe=sum(p.nfe for p in sols),
                trajectory=torch.cat([p.trajectory for p in sols], dim=1) if trajectory else None,  # type: ignore[misc]
                state=None,
                solver=sols[0].solver,
            )
            return sol if return_solution else sol.x
    xbar0 = to_xbar(x, float(sig[0]))
    if adjoint:
        from .adjoint import solve_adjoint  # adjoint builds on this module

        sol = solve_adjoint(
            field,
            xbar0,
            sig,
            solver,
            solver_options=solver_options,
            params=params,
            checkpoints=checkpoints,
            check_finite=check_finite,
            state=state,
        )
    else:
        sol = solve(
            field,
            xbar0,
            sig,
            solver,
            solver_options=solver_options,
            trajectory=trajectory,
            check_finite=check_finite,
            state=state,
        )
    return sol if return_solution else sol.x


def _span_grid(
    schedule: Schedule,
    grid: str,
    n: int,
    t_start: float | None,
    t_end: float | None,
    sigmas: GridLike | None,
    timesteps: GridLike | None,
) -> Tensor:
    """The grid of :func:`integrate`: explicit, or ``grid`` between ``t_start`` and ``t_end``."""
    if sigmas is not None and timesteps is not None:
        raise ValueError("give at most one of `sigmas` and `timesteps`")
    if sigmas is not None:
        return _check_grid(_as_sigmas(sigmas), schedule, "sigmas")
    if timesteps is not None:
        return _check_grid(sigmas_from_timesteps(schedule, _as_sigmas(timesteps)), schedule, "timesteps")
    for name, val in (("t_start", t_start), ("t_end", t_end)):
        if val is not None and not (schedule.t_min <= float(val) <= schedule.t_max):
            raise ValueError(f"{name}={val} is outside the schedule's range [{schedule.t_min}, {schedule.t_max}]")
    if t_start is not None and t_end is not None and float(t_start) < float(t_end):  # upwards: encoding
        sig = make_grid(schedule, grid, n, t_hi=t_end, t_lo=t_start).flip(0)
    else:
        sig = make_grid(schedule, grid, n, t_hi=t_start, t_lo=t_end)
    return _check_grid(sig, schedule, f"the {grid!r} grid")


def integrate(
    x: Tensor,
    solver: str | Solver = "euler",
    n: int = 20,
    *,
    model: EpsModel | SigmaModel | None = None,
    schedule: Schedule | None = None,
    grid: str = "uniform",
    t_start: float | None = None,
    t_end: float | None = None,
    sigmas: GridLike | None = None,
    timesteps: GridLike | None = None,
    prediction: Prediction = "eps",
    solver_options: dict[str, Any] | None = None,
    return_solution: bool = False,
    trajectory: bool = False,
    check_finite: bool = True,
    state: Any = None,
    adjoint: bool = False,
    params: Any = None,
    checkpoints: int = 0,
    batch_size: int | None = None,
) -> Tensor | Solution:
    """Integrate the probability-flow ODE from ``t_start`` to ``t_end``; VP scale in and out.

    Args:
        x: state at ``t_start`` in the usual VP scale, shape ``(batch, ...)``; its dtype is kept.
        solver: a registered solver name (see :func:`ddim_ode.solvers`) or a :class:`Solver`.
        n: number of steps (for discrete "uniform" see :mod:`ddim_ode.grids` when ``n ∤ T``).
        model: ε-model ``model(x_t, t)`` (or an exact oracle from :mod:`ddim_ode.analytic`);
            ``None`` uses the built-in trained model with its own schedule.
        schedule: the model's noise schedule.
        grid: ``"uniform"``, ``"quad"``, ``"logsnr"`` or ``"karras"`` (see :mod:`ddim_ode.grids`).
        t_start, t_end: endpoints in the schedule's time units. ``t_start=None`` is the top of the
            grid (noise); ``t_end=None`` is clean data (σ = 0). ``t_start < t_end`` integrates
            towards noise (encoding).
        sigmas: an explicit σ grid, used as given (first value is the start); overrides the above.
        timesteps: an explicit list of timesteps, converted to σ and used as given.
        prediction: what the model predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        solver_options: keyword arguments for the solver's constructor.
        return_solution: return a :class:`Solution` (with ``nfe``, ``sigmas``, …) instead of a tensor.
        trajectory: record x̄ at every grid point in ``Solution.trajectory``.
        check_finite: raise if NaN/Inf appears (checked once at the end, naming the step).
        state: initial solver state (default: the one carried by a
            :class:`~ddim_ode.ReversibleLatent` input).
        adjoint: compute gradients by the adjoint method (memory independent of n; see
            :mod:`ddim_ode.adjoint`) instead of plain autograd through the steps.
        params: with ``adjoint=True``, the tensors to differentiate with respect to (default: the
            model's parameters with ``requires_grad``).
        checkpoints: with ``adjoint=True``, states kept in the forward pass (0: constant memory).
        batch_size: integrate at most this many samples at a time (bounds memory; the result is
            concatenated and ``Solution.nfe`` counts every network call).

    Returns:
        The state at ``t_end`` in VP scale, shaped like ``x`` (or a :class:`Solution`).
    """
    _check_x(x, "x")
    n = _check_n(n)
    model_, schedule_, defaults = _resolve_model(model, schedule, x.device)
    sig = _span_grid(schedule_, grid, n, t_start, t_end, sigmas, timesteps)
    return _run(
        x,
        sig,
        _make_field(model_, schedule_, prediction, defaults),
        solver,
        solver_options=solver_options,
        return_solution=return_solution,
        trajectory=trajectory,
        check_finite=check_finite,
        state=state,
        adjoint=adjoint,
        params=params,
        checkpoints=checkpoints,
        batch_size=batch_size,
    )


def _data_grid(schedule: Schedule, grid: str, n: int, sigmas: GridLike | None, timesteps: GridLike | None) -> Tensor:
    """The decoding grid (decreasing, ending at σ = 0) for decode/encode."""
    if sigmas is not None and timesteps is not None:
        raise ValueError("give at most one of `sigmas` and `timesteps`")
    if sigmas is not None:
        sig = _check_grid(_as_sigmas(sigmas), schedule, "sigmas")
        if not (float(sig[0]) > float(sig[-1]) and float(sig[-1]) == 0.0):
            raise ValueError("decode/encode take `sigmas` in decoding order: strictly decreasing and ending at 0")
        return sig
    if timesteps is not None:
        ts = _as_sigmas(timesteps)
        sig = torch.cat([sigmas_from_timesteps(schedule, ts), torch.zeros(1, dtype=torch.float64)])
        sig = _check_grid(sig, schedule, "timesteps")
        if not float(sig[0]) > float(sig[-1]):
            raise ValueError("decode/encode take `timesteps` in decoding order: strictly decreasing")
        return sig
    return _check_grid(make_grid(schedule, grid, n), schedule, f"the {grid!r} grid")


def decode(
    x_T: Tensor,
    solver: str | Solver = "euler",
    n: int = 20,
    *,
    model: EpsModel | SigmaModel | None = None,
    schedule: Schedule | None = None,
    grid: str = "uniform",
    sigmas: GridLike | None = None,
    timesteps: GridLike | None = None,
    prediction: Prediction = "eps",
    solver_options: dict[str, Any] | None = None,
    return_solution: bool = False,
    trajectory: bool = False,
    check_finite: bool = True,
    state: Any = None,
    adjoint: bool = False,
    params: Any = None,
    checkpoints: int = 0,
    batch_size: int | None = None,
) -> Tensor | Solution:
    """Noise → data: integrate from the top of the grid down to σ = 0 (sampling).

    ``x_T`` is in VP scale at the grid's first timestep (for discrete "uniform", ``T − T//n``,
    as the official DDIM sampler); with ``solver="euler"`` this *is* deterministic DDIM.
    ``timesteps`` (decreasing) get the final step to ᾱ = 1 appended; ``sigmas`` must end at 0.
    ``state`` is the auxiliary state of solvers that carry one; by default, the one carried by
    ``x_T`` when it is the :class:`~ddim_ode.solvers.ReversibleLatent` returned by :func:`encode`.
    See :func:`integrate` for the other arguments.
    """
    _check_x(x_T, "x_T")
    n = _check_n(n)
    model_, schedule_, defaults = _resolve_model(model, schedule, x_T.device)
    sig = _data_grid(schedule_, grid, n, sigmas, timesteps)
    return _run(
        x_T,
        sig,
        _make_field(model_, schedule_, prediction, defaults),
        solver,
        solver_options=solver_options,
        return_solution=return_solution,
        trajectory=trajectory,
        check_finite=check_finite,
        state=state,
        adjoint=adjoint,
        params=params,
        checkpoints=checkpoints,
        batch_size=batch_size,
    )


def encode(
    x_0: Tensor,
    solver: str | Solver = "euler",
    n: int = 20,
    *,
    model: EpsModel | SigmaModel | None = None,
    schedule: Schedule | None = None,
    grid: str = "uniform",
    sigmas: GridLike | None = None,
    timesteps: GridLike | None = None,
    prediction: Prediction = "eps",
    solver_options: dict[str, Any] | None = None,
    return_solution: bool = False,
    trajectory: bool = False,
    check_finite: bool = True,
    state: Any = None,
    adjoint: bool = False,
    params: Any = None,
    checkpoints: int = 0,
    batch_size: int | None = None,
) -> Tensor | Solution:
    """Data → noise (inversion): the decoding grid of :func:`decode`, run upwards from σ = 0.

    Returns the latent in VP scale at the grid's top, the ``x_T`` that :func:`decode` with the
    same arguments maps (approximately, or exactly for reversible solvers) back to ``x_0``.
    ``sigmas``/``timesteps`` are given in decoding order, as for :func:`decode`.
    With a reversible solver (``"belm"``, ``"reversible-heun"``) the latent is a
    :class:`~ddim_ode.solvers.ReversibleLatent`: an ordinary tensor that also carries the
    solver's auxiliary state, which :func:`decode` picks up to return ``x_0`` exactly. ``state``
    (default: the state carried by a ``ReversibleLatent`` ``x_0``) starts from a given one.
    See :func:`integrate` for the other arguments.
    """
    _check_x(x_0, "x_0")
    n = _check_n(n)
    model_, schedule_, defaults = _resolve_model(model, schedule, x_0.device)
    sig = _data_grid(schedule_, grid, n, sigmas, timesteps).flip(0)
    return _run(
        x_0,
        sig,
        _make_field(model_, schedule_, prediction, defaults),
        solver,
        solver_options=solver_options,
        return_solution=return_solution,
        trajectory=trajectory,
        check_finite=check_finite,
        state=state,
        adjoint=adjoint,
        params=params,
        checkpoints=checkpoints,
        batch_size=batch_size,
    )
