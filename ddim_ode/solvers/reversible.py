"""Algebraically reversible solvers: encode → decode is exact up to rounding at any step count.

Both schemes carry an auxiliary state besides x̄, and both are *time-symmetric*: the step from σ to
σ' run on the reversed grid is exactly the algebraic inverse of the forward step, so the driver
runs the same code in both directions and ``decode(encode(x0))`` returns ``x0`` up to rounding —
provided the auxiliary state made by one direction is handed to the other. :func:`encode` and
:func:`decode` do that for you: with a reversible solver they return a :class:`ReversibleLatent`,
an ordinary tensor (the usual VP-scale x_T or x_0) that also carries the auxiliary state, and they
read that state back when given such a tensor. Any operation on it (``+``, ``.to(other dtype)``,
indexing, ``.clone()``) returns a plain tensor without the state, as it should: the state belongs
to those exact values. Decoding a plain tensor starts the scheme afresh, which for a tensor made by
encoding is no better than DDIM inversion (docs/math.md §9).

* :class:`BELM` — O-BELM, the optimal two-step "bidirectional explicit linear multistep" scheme
  (Wang et al. 2024), of the family that contains BDIA and leapfrog. State: the neighbouring
  grid point (x̄ and its σ).
* :class:`ReversibleHeun` — reversible Heun (Kidger, Foster, Li & Lyons 2021). State: (ŷ, ε(ŷ)).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..field import ProbabilityFlowODE
from .base import Solver, lincomb, register

__all__ = [
    "BELM",
    "BELMState",
    "ReversibleHeun",
    "ReversibleHeunState",
    "ReversibleLatent",
    "latent_state",
    "state_to_arrays",
    "state_from_arrays",
    "concat_states",
]


class ReversibleLatent(Tensor):
    """A tensor (the VP-scale latent or sample) carrying a reversible solver's auxiliary state.

    Returned by :func:`~ddim_ode.encode` / :func:`~ddim_ode.decode` with a reversible solver and
    accepted by both as their input, so that ``decode(encode(x0, "belm"), "belm")`` is exact.
    It behaves as a plain tensor; every operation on it returns a plain ``torch.Tensor``
    (without the state). Autograd history is kept. Do not modify it in place.

    Attributes:
        state: the solver's final state (:class:`BELMState` or :class:`ReversibleHeunState`).
    """

    state: Any
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def wrap(x: Tensor, state: Any) -> ReversibleLatent:
        """``x`` (same storage, same autograd history) carrying ``state``."""
        out = x.as_subclass(ReversibleLatent)
        out.state = state
        return out


def latent_state(x: Tensor) -> Any:
    """The auxiliary state carried by ``x`` (``None`` for a plain tensor)."""
    return x.state if isinstance(x, ReversibleLatent) else None


def _grid_mismatch(sigma: float, state_sigma: float) -> ValueError:
    return ValueError(
        f"the auxiliary state was made at sigma={state_sigma:.6g}, which is not a neighbour of sigma={sigma:.6g} on "
        "this grid: decode/encode with the same solver, n, grid (or sigmas/timesteps) and schedule as the call "
        "that produced it, or pass a plain tensor to start afresh"
    )


# ---------------------------------------------------------------------------------------------
# O-BELM


@dataclass(frozen=True)
class BELMState:
    """O-BELM's auxiliary state: x̄ at the neighbouring grid point ``sigma`` (the previous one
    while integrating; the next one to visit in the reverse direction after it)."""

    xbar: Tensor
    sigma: float


@register("belm")
class BELM(Solver):
    """O-BELM, the exactly invertible two-step scheme (Wang et al. 2024). Order 2, 1 NFE/step.

    With h = σ' − σ the current step and h₋ = σ − σ₋ the previous one,

        x̄' = DDIM(x̄ → σ') + g [x̄₋ − DDIM(x̄ → σ₋)],   g = (h/h₋)²,   DDIM(x̄ → s) = x̄ + (s − σ) ε(x̄, σ),

    i.e. x̄' = g x̄₋ + (1 − g) x̄ + h (1 + h/h₋) ε(x̄, σ): the unique second-order explicit two-step
    formula of this form. Solved for x̄₋ it is the same formula on the reversed grid, so encoding
    and decoding are exact inverses; BDIA and leapfrog are the same family with g = 1.

    Start and state: without an auxiliary state the first step is a plain DDIM step. The state
    (:class:`BELMState`) is the neighbouring grid point; when it is the point the step goes to
    (a latent made by encoding, passed to decoding) the step returns it without evaluating the
    network. So decoding fresh noise costs n NFE, decoding an encoded latent n − 1.

    Stability: the parasitic root of the two-step recursion is −g, so |h| must not grow along the
    integration direction (g ≤ 1): true when decoding on every grid of :mod:`ddim_ode.grids`
    (steps in σ shrink towards σ = 0). Encoding runs the inverse, whose errors are undone exactly
    by decoding; the encoded pair is not N(0, I)-like at small n (docs/math.md §9).
    """

    name = "belm"
    paper = (
        "Wang, Zhu, Liu & Wang 2024, BELM: Bidirectional Explicit Linear Multi-step Sampler for Exact Inversion "
        "in Diffusion Models (NeurIPS)"
    )
    reversible = True

    def __init__(self) -> None:
        self.order = 2
        self.nfe_per_step = 1.0

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: BELMState | None
    ) -> tuple[Tensor, BELMState]:
        here = BELMState(xbar, sigma)
        if state is not None and state.sigma == sigma_next:
            return state.xbar, here
        eps = field(xbar, sigma)
        h = sigma_next - sigma
        if state is None:
            return torch.add(xbar, eps, alpha=h), here
        h_prev = sigma - state.sigma
        if h_prev * h <= 0.0:
            raise _grid_mismatch(sigma, state.sigma)
        g = (h / h_prev) ** 2
        # DDIM(x̄ → σ') + g [x̄₋ − DDIM(x̄ → σ₋)] with DDIM(x̄ → σ₋) = x̄ − h₋ ε. Both DDIM values are
        # computed exactly alike by the reverse step (where they swap roles), so its rounding undoes
        # this step's: the round trip stays at rounding level (keep this order of operations)
        ddim_next = torch.add(xbar, eps, alpha=h)
        ddim_prev = torch.add(xbar, eps, alpha=-h_prev)
        return torch.add(ddim_next, torch.sub(state.xbar, ddim_prev), alpha=g), here

    def __repr__(self) -> str:
        return "BELM()"


# ---------------------------------------------------------------------------------------------
# reversible Heun


@dataclass(frozen=True)
class ReversibleHeunState:
    """Reversible Heun's auxiliary state at ``sigma``: the second solution ŷ and ε(ŷ, σ)."""

    sigma: float
    xhat: Tensor
    eps_hat: Tensor


@register("reversible-heun")
class ReversibleHeun(Solver):
    """Reversible Heun (Kidger, Foster, Li & Lyons 2021). Order 2, 1 NFE/step (+1 to start).

    With h = σ' − σ and the auxiliary ŷ (ŷ = x̄ at the start):

        ŷ' = 2 x̄ − ŷ + h ε(ŷ, σ),      x̄' = x̄ + h/2 [ε(ŷ, σ) + ε(ŷ', σ')].

    The same step with −h from (x̄', ŷ', ε(ŷ')) gives back (x̄, ŷ) exactly, so it is algebraically
    reversible; ε(ŷ) is carried in the state so each step costs 1 NFE (n + 1 for n steps without a
    state). Its stability region is the imaginary axis: on this dissipative ODE x̄ and ŷ drift apart
    (oscillate) at small σ when the steps are large — see docs/solvers.md; prefer :class:`BELM`.
    """

    name = "reversible-heun"
    paper = "Kidger, Foster, Li & Lyons 2021, Efficient and Accurate Gradients for Neural SDEs (NeurIPS), Sec. 3"
    reversible = True

    def __init__(self) -> None:
        self.order = 2
        self.nfe_per_step = 1.0

    def step(
        self,
        field: ProbabilityFlowODE,
        xbar: Tensor,
        sigma: float,
        sigma_next: float,
        state: ReversibleHeunState | None,
    ) -> tuple[Tensor, ReversibleHeunState]:
        if state is None:
            state = ReversibleHeunState(sigma, xbar, field(xbar, sigma))
        elif state.sigma != sigma:
            raise _grid_mismatch(sigma, state.sigma)
        h = sigma_next - sigma
        xhat_next = lincomb([(2.0, xbar), (-1.0, state.xhat), (h, state.eps_hat)])
        eps_next = field(xhat_next, sigma_next)
        out = lincomb([(1.0, xbar), (0.5 * h, state.eps_hat), (0.5 * h, eps_next)])
        return out, ReversibleHeunState(sigma_next, xhat_next, eps_next)

    def __repr__(self) -> str:
        return "ReversibleHeun()"


# ---------------------------------------------------------------------------------------------
# saving latents: auxiliary states as named arrays (for .npz files)

_STATE_TYPES = {cls.__name__: cls for cls in (BELMState, ReversibleHeunState)}


def state_to_arrays(state: Any, prefix: str = "aux_") -> dict[str, np.ndarray]:
    """A reversible solver's auxiliary state as named numpy arrays (e.g. to store beside a latent)."""
    if type(state).__name__ not in _STATE_TYPES:
        raise TypeError(f"cannot store a state of type {type(state).__name__}; allowed: {', '.join(_STATE_TYPES)}")
    out = {f"{prefix}type": np.array(type(state).__name__)}
    for f in fields(state):
        v = getattr(state, f.name)
        out[prefix + f.name] = v.detach().cpu().numpy() if isinstance(v, Tensor) else np.array(v)
    return out


def state_from_arrays(
    arrays: Any, prefix: str = "aux_", device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Any:
    """Rebuild the state written by :func:`state_to_arrays` (``None`` when ``arrays`` holds none)."""
    key = f"{prefix}type"
    if key not in arrays:
        return None
    name = str(arrays[key])
    if name not in _STATE_TYPES:
        raise ValueError(f"unknown auxiliary state type {name!r}; allowed: {', '.join(_STATE_TYPES)}")
    cls = _STATE_TYPES[name]
    kw: dict[str, Any] = {}
    for f in fields(cls):
        v = np.asarray(arrays[prefix + f.name])
        kw[f.name] = float(v) if v.ndim == 0 else torch.from_numpy(v).to(device=device, dtype=dtype)
    return cls(**kw)


def concat_states(states: list[Any]) -> Any:
    """Concatenate the auxiliary states of consecutive batches along the batch dimension."""
    first = states[0]
    kw: dict[str, Any] = {}
    for f in fields(first):
        vals = [getattr(s, f.name) for s in states]
        if isinstance(vals[0], Tensor):
            kw[f.name] = torch.cat(vals)
        elif any(v != vals[0] for v in vals):
            raise ValueError(f"cannot join states made at different {f.name}: {sorted(set(vals))}")
        else:
            kw[f.name] = vals[0]
    return type(first)(**kw)
