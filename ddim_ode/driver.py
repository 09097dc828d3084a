"""The driver: :func:`integrate`, :func:`decode` (noise → data) and :func:`encode` (data → noise).

All three resolve the model once (:func:`~ddim_ode.models.resolve_model`), build (or take) a
float64 σ grid, convert the input from the model's scale to x̄, hand field, state and grid to
:func:`~ddim_ode.core.solve`, and convert back. Decoding and encoding run the *same* solver code on
a grid and its reverse (steps are signed), so ``decode(encode(x0))`` is the DDIM paper's
reconstruction experiment (its Table 2). The three public signatures differ only in how the grid
is chosen; one private :class:`_Request` carries their arguments to :func:`_drive`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor

from .checks import GridLike, check_batch_size, check_n, check_x, data_grid, span_grid
from .core import Adjoint, Solution, solve_x
from .field import EpsModel, Prediction, ProbabilityFlowODE, SigmaModel
from .models import resolve_model
from .schedules import Schedule
from .solvers import Solver, get_solver
from .solvers.reversible import ReversibleLatent, latent_state

__all__ = ["integrate", "decode", "encode"]

Direction = Literal["span", "decode", "encode"]


@dataclass(frozen=True)
class _Request:
    """The arguments of one :func:`integrate` / :func:`decode` / :func:`encode` call."""

    x: Tensor
    solver: str | Solver
    n: int
    model: EpsModel | SigmaModel | None
    schedule: Schedule | None
    grid: str
    sigmas: GridLike | None
    timesteps: GridLike | None
    prediction: Prediction | None
    solver_options: dict[str, Any] | None
    return_solution: bool
    trajectory: bool
    check_finite: bool
    state: Any
    adjoint: bool | Adjoint
    params: Any
    checkpoints: int
    batch_size: int | None
    model_kwargs: dict[str, Any] | None
    guidance_scale: float | None
    uncond_kwargs: dict[str, Any] | None
    t_start: float | None = None
    t_end: float | None = None

    @classmethod
    def of(cls, arguments: dict[str, Any], x_name: str) -> _Request:
        """The request built from a public function's ``locals()`` (its input is named ``x_name``)."""
        names = {f.name for f in fields(cls)} - {"x"}
        values = {k: v for k, v in arguments.items() if k in names}
        return cls(x=arguments[x_name], **values)


def _adjoint_strategy(req: _Request, slv: Solver) -> Adjoint | None:
    """The strategy :func:`~ddim_ode.core.solve` uses: plain autograd unless an adjoint is asked for."""
    if isinstance(req.adjoint, Adjoint):
        if req.params is not None or req.checkpoints:
            raise ValueError("`params` and `checkpoints` go into the Adjoint object when one is passed as adjoint=")
        return req.adjoint
    if not isinstance(req.adjoint, bool):
        raise TypeError(f"adjoint must be a bool or an Adjoint, got {type(req.adjoint).__name__}")
    if not req.adjoint:
        if req.params is not None or req.checkpoints:
            raise ValueError("`params` and `checkpoints` apply only with adjoint=True")
        return None
    from .adjoint import memory_free_adjoint  # the adjoint strategies are loaded only when asked for

    return memory_free_adjoint(slv, req.params, req.checkpoints)


def _grid(req: _Request, schedule: Schedule, direction: Direction) -> Tensor:
    n = check_n(req.n)
    if direction == "span":
        return span_grid(schedule, req.grid, n, req.t_start, req.t_end, req.sigmas, req.timesteps)
    sig = data_grid(schedule, req.grid, n, req.sigmas, req.timesteps)
    return sig.flip(0) if direction == "encode" else sig


def _solve_chunks(
    req: _Request, x: Tensor, field: ProbabilityFlowODE, sig: Tensor, slv: Solver, adjoint: Adjoint | None, state: Any
) -> Solution:
    """Solve ``x`` (the request's input as a plain tensor) whole, or ``batch_size`` samples at a time
    (results concatenated, NFE summed)."""
    size = check_batch_size(req.batch_size)
    kw = dict(trajectory=req.trajectory, check_finite=req.check_finite, adjoint=adjoint)
    if size is None or x.shape[0] <= size:
        return solve_x(field, x, sig, slv, state, **kw)
    if state is not None or slv.reversible:
        raise ValueError("batch_size cannot split a solver state (reversible solvers): pass smaller batches")
    parts = [
        solve_x(field.select(slice(i, i + size)), x[i : i + size], sig, slv, None, **kw)
        for i in range(0, x.shape[0], size)
    ]
    return Solution(
        x=torch.cat([p.x for p in parts]),
        xbar=torch.cat([p.xbar for p in parts]),
        sigmas=parts[0].sigmas,
        nfe=sum(p.nfe for p in parts),
        trajectory=torch.cat([p.trajectory for p in parts], dim=1) if req.trajectory else None,  # type: ignore[misc]
        state=None,
        solver=slv,
    )


def _start_state(req: _Request, slv: Solver) -> tuple[Any, Tensor]:
    """The solver's starting state (given, or carried by a :class:`ReversibleLatent` input) and the input
    as a plain tensor."""
    if req.state is not None:
        if not slv.reversible:
            raise ValueError(
                f"solver {slv.name!r} carries no state between calls; `state` applies to reversible solvers"
            )
        return req.state, req.x
    if not isinstance(req.x, ReversibleLatent):
        return latent_state(req.x, slv), req.x  # warns for a tensor derived from a latent
    if not slv.reversible:
        warnings.warn(
            f"the input carries the auxiliary state of a reversible solver, which {slv.name!r} does not use: "
            "it integrates the values only",
            UserWarning,
            stacklevel=4,
        )
    return latent_state(req.x, slv), req.x.as_subclass(Tensor)


def _drive(req: _Request, direction: Direction, x_name: str) -> Tensor | Solution:
    """Validate, resolve the model, build the grid and solve: the one path of the three public entries."""
    check_x(req.x, x_name)
    resolved = resolve_model(req.model, req.schedule, req.prediction, req.x.device)
    sig = _grid(req, resolved.schedule, direction)
    slv = get_solver(req.solver, **(req.solver_options or {}))
    state, x = _start_state(req, slv)
    field = ProbabilityFlowODE(
        resolved.model,
        resolved.schedule,
        prediction=resolved.prediction,
        model_kwargs=req.model_kwargs,
        guidance_scale=req.guidance_scale,
        uncond_kwargs=req.uncond_kwargs,
        batch_size=req.x.shape[0],
    )
    sol = _solve_chunks(req, x, field, sig, slv, _adjoint_strategy(req, slv), state)
    return sol if req.return_solution else sol.x


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
    prediction: Prediction | None = None,
    solver_options: dict[str, Any] | None = None,
    return_solution: bool = False,
    trajectory: bool = False,
    check_finite: bool = True,
    state: Any = None,
    adjoint: bool | Adjoint = False,
    params: Any = None,
    checkpoints: int = 0,
    batch_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond_kwargs: dict[str, Any] | None = None,
) -> Tensor | Solution:
    """Integrate the probability-flow ODE from ``t_start`` to ``t_end``; the model's scale in and out.

    Args:
        x: state at ``t_start`` in the model's scale (VP: the usual x_t), shape ``(batch, ...)``;
            its dtype is kept.
        solver: a registered solver name (see :func:`ddim_ode.list_solvers`) or a :class:`Solver`.
        n: number of steps, at most :data:`~ddim_ode.checks.MAX_STEPS` (for discrete "uniform" see
            :mod:`ddim_ode.grids` when ``n ∤ T``).
        model: ε-model ``model(x_t, t)`` (or an exact oracle from :mod:`ddim_ode.analytic`), a
            model directory or built-in name; ``None`` uses the built-in trained model with its
            own schedule (see :func:`~ddim_ode.models.resolve_model`).
        schedule: the model's noise schedule (required with a model object).
        grid: ``"uniform"``, ``"quad"``, ``"logsnr"`` or ``"karras"`` (see :mod:`ddim_ode.grids`).
        t_start, t_end: endpoints in the schedule's time units. ``t_start=None`` is the top of the
            grid (noise); ``t_end=None`` is clean data (σ = 0). ``t_start < t_end`` integrates
            towards noise (encoding).
        sigmas: an explicit σ grid, used as given (first value is the start); overrides the above.
        timesteps: an explicit list of timesteps in the schedule's range, converted to σ and used
            as given.
        prediction: what the model predicts: ``"eps"``, ``"x0"``, ``"v"`` or ``"flow"``; default
            the loaded model's own, else ``"eps"``.
        solver_options: keyword arguments for the solver's constructor.
        return_solution: return a :class:`~ddim_ode.core.Solution` (with ``nfe``, ``sigmas``, …)
            instead of a tensor.
        trajectory: record x̄ at every grid point in ``Solution.trajectory``.
        check_finite: raise if NaN/Inf appears (checked once at the end, naming the step).
        state: initial state of a reversible solver (default: the one carried by a
            :class:`~ddim_ode.ReversibleLatent` input).
        adjoint: ``True`` computes gradients by the adjoint the solver supports (memory
            independent of n; see :mod:`ddim_ode.adjoint`), or pass an
            :class:`~ddim_ode.core.Adjoint` object; ``False``: plain autograd through the steps.
        params: with ``adjoint=True``, the tensors to differentiate with respect to (default: the
            model's parameters with ``requires_grad``).
        checkpoints: with ``adjoint=True``, states kept in the forward pass (0: constant memory).
        batch_size: integrate at most this many samples at a time (bounds memory; the result is
            concatenated and ``Solution.nfe`` counts every network call); the result does not
            depend on it.
        model_kwargs: keyword arguments of every network call, ``model(x_t, t, **model_kwargs)``
            (class labels, text embeddings); tensors whose first dimension is the batch are
            per-sample and follow ``batch_size`` chunks.
        guidance_scale: classifier-free guidance weight w: the field evaluates
            out_u + w (out_c − out_u) in the model's own output space, with out_u from
            ``uncond_kwargs`` (or the model's ``null_kwargs``); one NFE per guided evaluation
            (see :class:`~ddim_ode.field.ProbabilityFlowODE`).
        uncond_kwargs: keyword arguments of the unconditional call under guidance.

    Returns:
        The state at ``t_end`` in the model's scale, shaped like ``x`` (or a Solution).
    """
    return _drive(_Request.of(locals(), "x"), "span", "x")


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
    prediction: Prediction | None = None,
    solver_options: dict[str, Any] | None = None,
    return_solution: bool = False,
    trajectory: bool = False,
    check_finite: bool = True,
    state: Any = None,
    adjoint: bool | Adjoint = False,
    params: Any = None,
    checkpoints: int = 0,
    batch_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond_kwargs: dict[str, Any] | None = None,
) -> Tensor | Solution:
    """Noise → data: integrate from the top of the grid down to σ = 0 (sampling).

    ``x_T`` is in the model's scale at the grid's first timestep (for discrete "uniform",
    ``T − T//n``, as the official DDIM sampler); with ``solver="euler"`` this *is* deterministic
    DDIM. ``timesteps`` (decreasing) get the final step to ᾱ = 1 appended; ``sigmas`` must end at 0.
    ``state`` is the auxiliary state of solvers that carry one; by default, the one carried by
    ``x_T`` when it is the :class:`~ddim_ode.solvers.ReversibleLatent` returned by :func:`encode`.
    See :func:`integrate` for the other arguments.
    """
    return _drive(_Request.of(locals(), "x_T"), "decode", "x_T")


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
    prediction: Prediction | None = None,
    solver_options: dict[str, Any] | None = None,
    return_solution: bool = False,
    trajectory: bool = False,
    check_finite: bool = True,
    state: Any = None,
    adjoint: bool | Adjoint = False,
    params: Any = None,
    checkpoints: int = 0,
    batch_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond_kwargs: dict[str, Any] | None = None,
) -> Tensor | Solution:
    """Data → noise (inversion): the decoding grid of :func:`decode`, run upwards from σ = 0.

    Returns the latent in the model's scale at the grid's top, the ``x_T`` that :func:`decode`
    with the same arguments maps (approximately, or exactly for reversible solvers) back to
    ``x_0``. ``sigmas``/``timesteps`` are given in decoding order, as for :func:`decode`.
    With a reversible solver (``"belm"``, ``"reversible-heun"``) the latent is a
    :class:`~ddim_ode.solvers.ReversibleLatent`: an ordinary tensor that also carries the
    solver's auxiliary state, which :func:`decode` picks up to return ``x_0`` exactly. ``state``
    (default: the state carried by a ``ReversibleLatent`` ``x_0``) starts from a given one.
    See :func:`integrate` for the other arguments.
    """
    return _drive(_Request.of(locals(), "x_0"), "encode", "x_0")
