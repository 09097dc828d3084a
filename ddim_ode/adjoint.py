"""Gradients of :func:`~ddim_ode.integrate`, :func:`~ddim_ode.decode` and :func:`~ddim_ode.encode`
in memory that does not grow with the number of steps n.

Plain autograd through the driver is exact but keeps every step's graph: memory O(n). The
functions here compute the *same* gradients (of the discrete solver's output, "discretise then
optimise") with a custom :class:`torch.autograd.Function`:

* **Discrete adjoint, fixed-grid solvers.** The forward pass runs without a graph and stores only
  the start and ``checkpoints`` evenly spaced intermediate states (x̄ and the solver's state).
  The backward pass sweeps the steps from last to first; for step k it reconstructs (x̄_k, state_k)
  by re-running the solver forward from the nearest stored state at or before k (under
  ``torch.no_grad``, bit-identical to the first pass), re-runs step k under ``torch.enable_grad``
  and back-propagates the adjoint (∂L/∂x̄_{k+1}, ∂L/∂state_{k+1}) through it to (x̄_k, state_k)
  and the model's parameters (Chen et al. 2018, "Neural Ordinary Differential Equations", Sec. 2,
  in its discrete form). Memory: ``checkpoints + 2`` states plus one step's graph, independent of
  n. Compute: the forward pass (n steps), then for the backward pass ≈ n²/(2(c + 1)) re-computed
  steps plus n differentiated steps, with c = ``checkpoints``. ``checkpoints=0`` is the
  constant-memory extreme (n(n − 1)/2 extra steps); ``checkpoints ≈ √n`` costs ≈ n^1.5/2 extra steps
  for O(√n) memory; ``checkpoints ≥ n − 1`` stores every state (O(n) memory, n extra steps, like
  ``torch.utils.checkpoint`` per step). Multistep and reversible solvers are covered: their state
  (history of ε, auxiliary tensors, also inside dataclasses) is part of the adjoint.
* **Continuous adjoint, adaptive solvers.** torchdiffeq's ``odeint_adjoint`` solves the adjoint
  ODE backwards with the solver's method and tolerances (constant memory, O(NFE) compute); its
  forward pass is torchdiffeq's method of the same name, whichever ``engine`` the solver has. Its
  gradients are those of the exact flow up to the tolerance, not of the discrete forward pass
  ("optimise then discretise").

The gradients equal plain autograd's through :func:`~ddim_ode.integrate` to rounding
(``tests/test_adjoint.py``). Use them for optimising latents (inversion, inpainting by
optimisation, see ``docs/likelihood.md``) or for training through the sampler.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .field import ProbabilityFlowODE
from .integrate import Solution, _tabulate, decode, encode, from_xbar, integrate
from .solvers import Solver, get_solver
from .solvers.reversible import ReversibleLatent

__all__ = ["solve_adjoint", "integrate_adjoint", "decode_adjoint", "encode_adjoint"]


# ---------------------------------------------------------------------------------------------
# solver states as lists of tensors (tuples, lists, dicts, dataclasses; other values are constants)


def _flatten(obj: Any) -> tuple[list[Tensor], Callable[[Sequence[Tensor]], Any]]:
    """The tensors inside ``obj`` and a function rebuilding ``obj`` with other tensors in their place."""
    if isinstance(obj, Tensor):
        return [obj], lambda ts: ts[0]
    if isinstance(obj, (tuple, list)):
        parts = [_flatten(o) for o in obj]
        sizes = [len(p[0]) for p in parts]
        leaves = [t for p in parts for t in p[0]]

        def rebuild_seq(ts: Sequence[Tensor]) -> Any:
            out, i = [], 0
            for (_, fn), k in zip(parts, sizes):
                out.append(fn(ts[i : i + k]))
                i += k
            if isinstance(obj, list):
                return out
            return type(obj)(*out) if hasattr(obj, "_fields") else type(obj)(out)

        return leaves, rebuild_seq
    if isinstance(obj, dict):
        keys = list(obj)
        leaves_d, rebuild_vals = _flatten([obj[k] for k in keys])
        return leaves_d, lambda ts: type(obj)(zip(keys, rebuild_vals(ts)))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj)]
        leaves_c, rebuild_fields = _flatten([getattr(obj, n) for n in names])

        def rebuild_dc(ts: Sequence[Tensor]) -> Any:
            new = copy.copy(obj)  # also for frozen and slotted dataclasses; no __init__ re-run
            for n, v in zip(names, rebuild_fields(ts)):
                object.__setattr__(new, n, v)
            return new

        return leaves_c, rebuild_dc
    if hasattr(obj, "__dict__") and any(isinstance(v, Tensor) for v in vars(obj).values()):
        raise TypeError(
            f"the adjoint cannot trace tensors inside a solver state of type {type(obj).__name__}; "
            "solver states must be tensors, tuples, lists, dicts or dataclasses of them"
        )
    return [], lambda ts: obj


def _differentiable(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


# ---------------------------------------------------------------------------------------------
# the discrete adjoint


class _Sweep:
    """Everything the forward and backward passes of one fixed-grid integration share."""

    def __init__(
        self,
        field: ProbabilityFlowODE,
        solver: Solver,
        sigmas: Tensor,
        state: Any,
        num_state_inputs: int,
        num_params: int,
        checkpoints: int,
    ) -> None:
        self.field = field
        self.solver = solver
        self.sigmas = sigmas
        self.sig = [float(s) for s in sigmas]
        self.n = len(self.sig) - 1
        self.user_state = state
        self.num_state_inputs = num_state_inputs
        self.num_params = num_params
        c = max(0, min(int(checkpoints), self.n - 1))
        self.positions = sorted({(j * self.n) // (c + 1) for j in range(c + 1)})
        self.store: dict[int, tuple[Tensor, Any]] = {}
        self.out_state_spec: Callable[[Sequence[Tensor]], Any] | None = None
        self.out_state_diff: list[bool] = []
        self.nfe_forward = 0
        self.nfe_backward = 0

    def initial(self, xbar: Tensor, state_leaves: Sequence[Tensor]) -> Any:
        if self.user_state is None:
            return self.solver.init(self.field, xbar, self.sigmas)
        _, rebuild = _flatten(self.user_state)
        return rebuild(list(state_leaves))

    def forward(self, xbar: Tensor, state_leaves: Sequence[Tensor]) -> tuple[Tensor, Any]:
        nfe0 = self.field.nfe
        self.x_start = xbar
        self.state_inputs = list(state_leaves)
        state = self.initial(xbar, state_leaves)
        for k in range(self.n):
            if k in self.positions:
                self.store[k] = (xbar, state)
            xbar, state = self.solver.step(self.field, xbar, self.sig[k], self.sig[k + 1], state)
        self.x_end = xbar
        self.nfe_forward = self.field.nfe - nfe0
        return xbar, state

    def reconstruct(self, k: int) -> tuple[Tensor, Any]:
        p = max(q for q in self.positions if q <= k)
        xbar, state = self.store[p]
        with torch.no_grad():
            for j in range(p, k):
                xbar, state = self.solver.step(self.field, xbar, self.sig[j], self.sig[j + 1], state)
        return xbar, state

    def backward(self, grad_x: Tensor, grad_state: Sequence[Tensor | None], params: Sequence[Tensor]) -> list[Any]:
        nfe0 = self.field.nfe
        a_x: Tensor = grad_x
        a_state: list[Tensor | None] = list(grad_state)
        a_params: list[Tensor | None] = [None] * len(params)
        for k in range(self.n - 1, -1, -1):
            xbar_k, state_k = self.reconstruct(k)
            leaves_k, rebuild_k = _flatten(state_k)
            with torch.enable_grad():
                x_in = xbar_k.detach().requires_grad_(True)
                s_in = [t.detach().requires_grad_(True) if _differentiable(t) else t for t in leaves_k]
                x_out, state_out = self.solver.step(self.field, x_in, self.sig[k], self.sig[k + 1], rebuild_k(s_in))
                if k == self.n - 1:
                    self._check_replay(x_out)
                out_leaves, _ = _flatten(state_out)
                if len(out_leaves) != len(a_state):
                    raise RuntimeError(
                        f"solver {self.solver.name!r} returned a state of another structure when step {k + 1} "
                        "was re-run; the adjoint needs a deterministic solver"
                    )
                outs, gouts = [x_out], [a_x]
                for t, g in zip(out_leaves, a_state):
                    if g is not None and t.requires_grad:
                        outs.append(t)
                        gouts.append(g)
                wrt = [x_in] + [t for t in s_in if t.requires_grad] + list(params)
                grads = torch.autograd.grad(outs, wrt, gouts, allow_unused=True)
            a_x = grads[0] if grads[0] is not None else torch.zeros_like(a_x)
            it = iter(grads[1 : 1 + sum(1 for t in s_in if t.requires_grad)])
            a_state = [next(it) if t.requires_grad else None for t in s_in]
            for i, g in enumerate(grads[len(grads) - len(params) :] if params else []):
                if g is not None:
                    a_params[i] = g if a_params[i] is None else a_params[i] + g
        # through the initial state: solver.init(x̄_start) or the caller's state
        g_state_inputs: list[Tensor | None] = [None] * self.num_state_inputs
        if self.user_state is None:
            with torch.enable_grad():
                x_in = self.x_start.detach().requires_grad_(True)
                leaves0, _ = _flatten(self.solver.init(self.field, x_in, self.sigmas))
                pairs = [(t, g) for t, g in zip(leaves0, a_state) if g is not None and t.requires_grad]
                if pairs:
                    wrt = [x_in, *params]
                    grads = torch.autograd.grad([p[0] for p in pairs], wrt, [p[1] for p in pairs], allow_unused=True)
                    if grads[0] is not None:
                        a_x = a_x + grads[0]
                    for i, g in enumerate(grads[1:]):
                        if g is not None:
                            a_params[i] = g if a_params[i] is None else a_params[i] + g
        else:
            g_state_inputs = a_state
        self.nfe_backward += self.field.nfe - nfe0
        return [a_x, *g_state_inputs, *a_params]

    def _check_replay(self, x_out: Tensor) -> None:
        ref = self.x_end
        scale = float(ref.detach().abs().max()) if ref.numel() else 0.0
        if not torch.allclose(x_out.detach(), ref, rtol=1e-5, atol=1e-5 * max(scale, 1e-30)):
            raise RuntimeError(
                f"re-running solver {self.solver.name!r} did not reproduce its forward pass; the adjoint needs a "
                "deterministic solver and model (no fresh noise, dropout off: model.eval())"
            )


class _DiscreteAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, sweep: _Sweep, xbar: Tensor, *inputs: Tensor) -> Any:  # type: ignore[override]
        state_leaves = inputs[: sweep.num_state_inputs]
        x_end, state_end = sweep.forward(xbar.detach(), [t.detach() for t in state_leaves])
        leaves, rebuild = _flatten(state_end)
        ins = {id(t) for t in inputs} | {id(xbar)}
        leaves = [t.clone() if id(t) in ins else t for t in leaves]
        sweep.out_state_spec = rebuild
        sweep.out_state_diff = [_differentiable(t) for t in leaves]
        nondiff = [t for t, d in zip(leaves, sweep.out_state_diff) if not d]
        if nondiff:
            ctx.mark_non_differentiable(*nondiff)
        ctx.sweep = sweep
        ctx.save_for_backward(*inputs[sweep.num_state_inputs :])
        return (x_end, *leaves)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_x: Tensor, *grad_leaves: Tensor | None) -> Any:  # type: ignore[override]
        sweep: _Sweep = ctx.sweep
        params = ctx.saved_tensors
        grad_state = [g if d else None for g, d in zip(grad_leaves, sweep.out_state_diff)]
        grads = sweep.backward(grad_x, grad_state, params)
        return (None, *grads)


# ---------------------------------------------------------------------------------------------
# public entries


def _default_params(field: ProbabilityFlowODE) -> list[Tensor]:
    model = field.model
    if isinstance(model, torch.nn.Module):
        return [p for p in model.parameters() if p.requires_grad]
    return []


def solve_adjoint(
    field: ProbabilityFlowODE,
    xbar: Tensor,
    sigmas: Tensor,
    solver: str | Solver = "euler",
    *,
    solver_options: dict[str, Any] | None = None,
    params: Iterable[Tensor] | None = None,
    checkpoints: int = 0,
    check_finite: bool = True,
    state: Any = None,
) -> Solution:
    """:func:`~ddim_ode.integrate.solve` with gradients by the adjoint method (memory independent of n).

    Integrates dx̄/dσ = field(x̄, σ) along the float64 grid ``sigmas`` exactly as
    :func:`~ddim_ode.integrate.solve` does (same solver code, same result), but records no graph;
    gradients with respect to ``xbar``, the tensors of ``state`` and ``params`` are computed in the
    backward pass (see the module docstring for the method and its cost).

    Args:
        field: the vector field (:class:`~ddim_ode.ProbabilityFlowODE`).
        xbar: the start in DDIM coordinates.
        sigmas: the grid (first value is the start), float64.
        solver: a registered solver name or instance; deterministic (η = 0).
        solver_options: keyword arguments of the solver's constructor.
        params: tensors the model depends on whose gradients are wanted; default: every parameter
            of ``field.model`` (an ``nn.Module``) with ``requires_grad``.
        checkpoints: intermediate states kept in the forward pass (fixed-grid solvers): 0 is
            constant memory with n(n − 1)/2 re-computed steps; ``n − 1`` keeps every state.
        check_finite: raise FloatingPointError if the result holds NaN/Inf.
        state: the solver's initial state (e.g. the auxiliary state of a reversible solver).

    Returns:
        A :class:`~ddim_ode.Solution` (``x``, ``xbar``, ``sigmas``, ``nfe`` of the forward pass,
        ``state``); ``trajectory`` is not recorded.
    """
    slv = get_solver(solver, **(solver_options or {}))
    if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 0:
        raise ValueError(f"checkpoints must be an int >= 0, got {checkpoints!r}")
    if slv.stochastic:
        raise ValueError(
            f"solver {slv.name!r} ({slv!r}) adds fresh noise at every step; the adjoint needs a deterministic solver"
        )
    sig = sigmas.to(torch.float64).cpu()
    if not slv.can_encode and float(sig[-1]) > float(sig[0]):
        raise ValueError(f"solver {slv.name!r} cannot integrate towards larger sigma (encoding)")
    plist = list(params) if params is not None else _default_params(field)
    for p in plist:
        if not isinstance(p, Tensor):
            raise TypeError(f"params must be tensors, got {type(p).__name__}")
    nfe0 = field.nfe
    _tabulate(field, slv, sig)  # as the plain driver: the sweep's re-computed steps look t(σ) up
    if slv.adjoint_method == "continuous":
        if state is not None:
            raise ValueError(f"solver {slv.name!r} takes no initial state")
        out = slv.solve_adjoint(field, xbar, sig, plist)
        final_state = None
    else:
        state_leaves, _ = _flatten(state)
        sweep = _Sweep(field, slv, sig, state, len(state_leaves), len(plist), checkpoints)
        res = _DiscreteAdjoint.apply(sweep, xbar, *state_leaves, *plist)
        out = res[0]
        assert sweep.out_state_spec is not None
        final_state = sweep.out_state_spec(list(res[1:]))
    if check_finite and not bool(torch.isfinite(out).all()):
        raise FloatingPointError(
            f"NaN/Inf in the result of solver {slv.name!r} (sigma {float(sig[0]):.6g} -> {float(sig[-1]):.6g}); "
            "try more steps, another solver or a float64 state"
        )
    x_out = from_xbar(out, float(sig[-1]))
    if slv.reversible:  # as the driver: the result carries the auxiliary state for the reverse pass
        x_out = ReversibleLatent.wrap(x_out, final_state)
    return Solution(
        x=x_out,
        xbar=out,
        sigmas=sig,
        nfe=field.nfe - nfe0,
        trajectory=None,
        state=final_state,
        solver=slv,
    )


def integrate_adjoint(x: Tensor, solver: str | Solver = "euler", n: int = 20, **kwargs: Any) -> Tensor | Solution:
    """:func:`~ddim_ode.integrate` with ``adjoint=True``: same arguments, same result, memory flat in n.

    Cost: the forward pass is that of :func:`~ddim_ode.integrate` (n steps); the backward pass
    re-computes ≈ n²/(2(checkpoints + 1)) steps and differentiates n steps. Extra keywords:
    ``params`` (tensors to differentiate with respect to; default the model's parameters with
    ``requires_grad``) and ``checkpoints`` (see :func:`solve_adjoint`). There is no
    ``trajectory`` (it would keep n states). References: Chen et al. 2018 (adjoint method).
    """
    return integrate(x, solver, n, adjoint=True, **kwargs)


def decode_adjoint(x_T: Tensor, solver: str | Solver = "euler", n: int = 20, **kwargs: Any) -> Tensor | Solution:
    """:func:`~ddim_ode.decode` (noise → data) with ``adjoint=True``; see :func:`integrate_adjoint`."""
    return decode(x_T, solver, n, adjoint=True, **kwargs)


def encode_adjoint(x_0: Tensor, solver: str | Solver = "euler", n: int = 20, **kwargs: Any) -> Tensor | Solution:
    """:func:`~ddim_ode.encode` (data → noise) with ``adjoint=True``; see :func:`integrate_adjoint`.

    With a reversible solver the latent is a :class:`~ddim_ode.solvers.reversible.ReversibleLatent`
    carrying the auxiliary state (differentiable), which :func:`decode_adjoint` picks up.
    """
    return encode(x_0, solver, n, adjoint=True, **kwargs)
