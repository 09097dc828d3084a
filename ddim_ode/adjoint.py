"""Memory-free gradients through a solve: the adjoint strategies of :func:`~ddim_ode.core.solve`.

Plain autograd through the driver (:class:`~ddim_ode.core.DirectAdjoint`) is exact but keeps every
step's graph: memory O(n). The strategies here are passed as ``adjoint=`` to
:func:`~ddim_ode.integrate`, :func:`~ddim_ode.decode`, :func:`~ddim_ode.encode` or
:func:`~ddim_ode.core.solve` (``adjoint=True`` picks the one the solver supports, see
:func:`memory_free_adjoint`):

* :class:`DiscreteAdjoint`, **fixed-grid solvers**: the *same* gradients as plain autograd (of the
  discrete solver's output, "discretise then optimise") with a custom
  :class:`torch.autograd.Function`. The forward pass runs without a graph and stores only the
  start and ``checkpoints`` evenly spaced intermediate states (x̄ and the solver's state). The
  backward pass sweeps the steps from last to first; for step k it reconstructs (x̄_k, state_k) by
  re-running the solver forward from the nearest stored state at or before k (under
  ``torch.no_grad``, bit-identical to the first pass), re-runs step k under
  ``torch.enable_grad`` and back-propagates the adjoint (∂L/∂x̄_{k+1}, ∂L/∂state_{k+1}) through it
  to (x̄_k, state_k) and the model's parameters (Chen et al. 2018, "Neural Ordinary Differential
  Equations", Sec. 2, in its discrete form). Memory: ``checkpoints + 2`` states plus one step's
  graph, independent of n. Compute: the forward pass (n steps), then for the backward pass
  ≈ n²/(2(c + 1)) re-computed steps plus n differentiated steps, with c = ``checkpoints``.
  ``checkpoints=0`` is the constant-memory extreme (n(n − 1)/2 extra steps); ``checkpoints ≈ √n``
  costs ≈ n^1.5/2 extra steps for O(√n) memory; ``checkpoints ≥ n − 1`` stores every state (O(n)
  memory, n extra steps, like ``torch.utils.checkpoint`` per step). Multistep and reversible
  solvers are covered: their state (history of ε, auxiliary tensors, also inside dataclasses) is
  part of the adjoint.
* :class:`ContinuousAdjoint`, **adaptive solvers**: torchdiffeq's ``odeint_adjoint`` solves the
  adjoint ODE backwards with the solver's method and tolerances (constant memory, O(NFE) compute); its
  forward pass is torchdiffeq's method of the same name, whichever ``engine`` the solver has. Its
  gradients are those of the exact flow up to the tolerance, not of the discrete forward pass
  ("optimise then discretise").

The discrete adjoint's gradients equal plain autograd's through :func:`~ddim_ode.integrate` to rounding
(``tests/test_adjoint.py``). Use them for optimising latents (inversion, inpainting by
optimisation, see ``docs/likelihood.md``) or for training through the sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .core import Adjoint, Callback
from .field import ProbabilityFlowODE
from .solvers import Solver
from .state_tree import flatten

__all__ = ["DiscreteAdjoint", "ContinuousAdjoint", "memory_free_adjoint"]


def _differentiable(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


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
        _, rebuild = flatten(self.user_state)
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
            leaves_k, rebuild_k = flatten(state_k)
            with torch.enable_grad():
                x_in = xbar_k.detach().requires_grad_(True)
                s_in = [t.detach().requires_grad_(True) if _differentiable(t) else t for t in leaves_k]
                x_out, state_out = self.solver.step(self.field, x_in, self.sig[k], self.sig[k + 1], rebuild_k(s_in))
                if k == self.n - 1:
                    self._check_replay(x_out)
                out_leaves, _ = flatten(state_out)
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
                leaves0, _ = flatten(self.solver.init(self.field, x_in, self.sigmas))
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


class _DiscreteFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, sweep: _Sweep, xbar: Tensor, *inputs: Tensor) -> Any:  # type: ignore[override]
        state_leaves = inputs[: sweep.num_state_inputs]
        x_end, state_end = sweep.forward(xbar.detach(), [t.detach() for t in state_leaves])
        leaves, rebuild = flatten(state_end)
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


def _checked_params(params: Iterable[Tensor] | None) -> list[Tensor] | None:
    if params is None:
        return None
    plist = list(params)
    for p in plist:
        if not isinstance(p, Tensor):
            raise TypeError(f"params must be tensors, got {type(p).__name__}")
    return plist


def _model_params(field: ProbabilityFlowODE, params: list[Tensor] | None) -> list[Tensor]:
    """``params`` if given, else every parameter of ``field.model`` (an ``nn.Module``) with ``requires_grad``."""
    if params is not None:
        return params
    model = field.model
    if isinstance(model, torch.nn.Module):
        return [p for p in model.parameters() if p.requires_grad]
    return []


class DiscreteAdjoint(Adjoint):
    """Gradients of a fixed-grid solver's output by sweeping its steps backwards (memory flat in n).

    Args:
        checkpoints: states kept in the forward pass: 0 is constant memory with n(n − 1)/2
            re-computed steps; ``n − 1`` keeps every state (n extra steps).
        params: tensors the model depends on whose gradients are wanted; default every parameter
            of ``field.model`` (an ``nn.Module``) with ``requires_grad``.

    See the module docstring for the method (Chen et al. 2018, in its discrete form) and its cost.
    """

    def __init__(self, checkpoints: int = 0, params: Iterable[Tensor] | None = None) -> None:
        if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 0:
            raise ValueError(f"checkpoints must be an int >= 0, got {checkpoints!r}")
        self.checkpoints = checkpoints
        self.params = _checked_params(params)

    def check(self, slv: Solver) -> None:
        if slv.stochastic:
            raise ValueError(
                f"solver {slv.name!r} ({slv!r}) adds fresh noise at every step; "
                "the adjoint needs a deterministic solver"
            )
        if slv.adjoint_method != "discrete":
            raise ValueError(f"solver {slv.name!r} chooses its own steps; use ContinuousAdjoint for it")

    def run(
        self,
        field: ProbabilityFlowODE,
        slv: Solver,
        xbar: Tensor,
        sigmas: Tensor,
        state: Any,
        callback: Callback | None,
        dense: bool,
    ) -> tuple[Tensor, Any]:
        plist = _model_params(field, self.params)
        state_leaves, _ = flatten(state)
        sweep = _Sweep(field, slv, sigmas, state, len(state_leaves), len(plist), self.checkpoints)
        res = _DiscreteFunction.apply(sweep, xbar, *state_leaves, *plist)
        assert sweep.out_state_spec is not None
        return res[0], sweep.out_state_spec(list(res[1:]))

    def __repr__(self) -> str:
        return f"DiscreteAdjoint(checkpoints={self.checkpoints})"


class ContinuousAdjoint(Adjoint):
    """Gradients of an adaptive solver by solving the adjoint ODE backwards (constant memory).

    The solver's :meth:`~ddim_ode.solvers.Solver.solve_adjoint` runs torchdiffeq's
    ``odeint_adjoint`` with its method and tolerances (Chen et al. 2018). Its gradients are those of
    the exact flow up to the tolerance, not of the discrete forward pass ("optimise then discretise").

    Args:
        params: as for :class:`DiscreteAdjoint`.
    """

    def __init__(self, params: Iterable[Tensor] | None = None) -> None:
        self.params = _checked_params(params)

    def check(self, slv: Solver) -> None:
        if slv.adjoint_method != "continuous":
            raise ValueError(f"solver {slv.name!r} steps on the given grid; use DiscreteAdjoint for it")

    def run(
        self,
        field: ProbabilityFlowODE,
        slv: Solver,
        xbar: Tensor,
        sigmas: Tensor,
        state: Any,
        callback: Callback | None,
        dense: bool,
    ) -> tuple[Tensor, Any]:
        if state is not None:
            raise ValueError(f"solver {slv.name!r} takes no initial state")
        return slv.solve_adjoint(field, xbar, sigmas, _model_params(field, self.params)), None

    def __repr__(self) -> str:
        return "ContinuousAdjoint()"


def memory_free_adjoint(slv: Solver, params: Iterable[Tensor] | None = None, checkpoints: int = 0) -> Adjoint:
    """The memory-free adjoint a solver supports (its ``adjoint_method``): discrete or continuous."""
    if slv.adjoint_method == "continuous":
        if checkpoints:
            raise ValueError(f"checkpoints apply to fixed-grid solvers; {slv.name!r} uses the continuous adjoint")
        return ContinuousAdjoint(params)
    return DiscreteAdjoint(checkpoints, params)
