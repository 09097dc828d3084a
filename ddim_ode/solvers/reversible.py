"""Algebraically reversible solvers: encode → decode is exact up to rounding at any step count.

Both schemes carry an auxiliary state besides x̄, and both are *time-symmetric*: the step from σ to
σ' run on the reversed grid is exactly the algebraic inverse of the forward step, so the driver
runs the same code in both directions and ``decode(encode(x0))`` returns ``x0`` up to rounding —
provided the auxiliary state made by one direction is handed to the other. :func:`encode` and
:func:`decode` do that for you: with a reversible solver they return a :class:`ReversibleLatent`,
an ordinary tensor (the usual VP-scale x_T or x_0) that also carries the auxiliary state, and they
read that state back when given such a tensor. Indexing it along the batch dimension (an int, a
slice, an index tensor or list, a boolean mask) returns a ``ReversibleLatent`` carrying the
matching rows of the state, so ``decode(z[:2], "belm")`` is exact too. Every other operation
(``+``, ``.clone()``, ``.to(...)``, ``torch.cat``, …) returns a plain tensor without the state, as it
should: the state belongs to those exact values. Decoding a plain tensor starts the scheme afresh,
which for a tensor made by encoding is no better than DDIM inversion (docs/math.md §9); so that this is
not silent, a tensor of the same batch computed directly from a latent is remembered as such and
:func:`latent_state` (given the solver) warns when a reversible solver would start afresh from it.

* :class:`BELM` — O-BELM, the optimal two-step "bidirectional explicit linear multistep" scheme
  (Wang et al. 2024), of the family that contains BDIA and leapfrog. State: the neighbouring
  grid point (x̄ and its σ).
* :class:`ReversibleHeun` — reversible Heun (Kidger, Foster, Li & Lyons 2021). State: (ŷ, ε(ŷ)).
"""

from __future__ import annotations

import copy
import warnings
import weakref
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
    It behaves as a plain tensor. Autograd history is kept.

    * Indexing along the batch dimension only (``z[i]``, ``z[a:b]``, ``z[idx]`` with an index
      tensor, list or array, ``z[mask]``, each optionally followed by ``:``/``...`` for the other
      dimensions) returns a ``ReversibleLatent`` whose state holds the same rows.
    * Any other operation returns a plain ``torch.Tensor`` without the state. When it has the same
      batch size it is remembered (weakly, until it is freed) as derived from a latent, and
      :func:`latent_state` with a reversible solver warns instead of silently starting afresh.
      Tensors computed further from such a tensor are not tracked.
    * Modifying the latent in place (``z += 1``, ``z[0] = …``, ``z.mul_(2)``, ``out=z``) drops its
      state the same way (``z.state`` becomes ``None``).

    ``z.as_subclass(torch.Tensor)`` is the plain tensor, deliberately without the state.

    Attributes:
        state: the solver's final state (:class:`BELMState` or :class:`ReversibleHeunState`), or
            ``None`` once dropped by an in-place change.
    """

    state: Any

    @staticmethod
    def wrap(x: Tensor, state: Any) -> ReversibleLatent:
        """``x`` (same storage, same autograd history) carrying ``state``."""
        out = x.as_subclass(ReversibleLatent)
        out.state = state
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> ReversibleLatent:
        plain = self.as_subclass(Tensor)
        return ReversibleLatent.wrap(copy.deepcopy(plain, memo), copy.deepcopy(self.state, memo))

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _NOT_AN_OPERATION:
            return out
        src = _first_latent(args, kwargs)
        if src is None:
            return out
        if _modifies_in_place(name, src, args, kwargs):
            _forget_state(src, f"a ReversibleLatent whose auxiliary state was dropped when {name} modified it in place")
            return out
        if not (type(out) is Tensor and out is not src and out.ndim >= 1 and src.ndim >= 1):
            return out
        if name == "__getitem__" and args and args[0] is src and src.state is not None:
            state = _index_state(src.state, args[1], out)
            if state is not None:
                return ReversibleLatent.wrap(out, state)
        if out.shape[0] == src.shape[0]:
            _remember_derived(out, f"computed by {name} from a ReversibleLatent, without its auxiliary state")
        return out


#: functions that read attributes or convert rather than compute: they neither drop nor carry the state
_NOT_AN_OPERATION = frozenset({"__get__", "__set__", "as_subclass", "__repr__", "__format__", "__reduce_ex__"})
#: in-place methods that leave the values alone
_VALUE_PRESERVING = frozenset({"requires_grad_", "retain_grad", "share_memory_", "detach_"})
#: augmented assignments (``z += 1``), which modify a tensor in place
_AUGMENTED = frozenset(
    f"__i{op}__" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor")
) | {"__ilshift__", "__irshift__"}
#: id of a live plain tensor computed from a latent (or of a latent that lost its state) -> how
_DERIVED: dict[int, str] = {}


def _first_latent(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ReversibleLatent | None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, ReversibleLatent):
            return a
        if isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, ReversibleLatent):
                    return b
    return None


def _modifies_in_place(name: str, src: ReversibleLatent, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if kwargs.get("out") is src:
        return True
    if not (args and args[0] is src) or name in _VALUE_PRESERVING:
        return False
    return name == "__setitem__" or name in _AUGMENTED or (name.endswith("_") and not name.startswith("__"))


def _remember_derived(x: Tensor, how: str) -> None:
    key = id(x)
    if key not in _DERIVED:
        weakref.finalize(x, _DERIVED.pop, key, None)
    _DERIVED[key] = how


def _forget_state(latent: ReversibleLatent, how: str) -> None:
    if latent.state is not None:
        latent.state = None
        _remember_derived(latent, how)


def _batch_index(index: Any) -> Any:
    """The index applied to dimension 0 when ``index`` indexes nothing else, else ``None``."""
    if not isinstance(index, tuple):
        return None if index is None or index is Ellipsis or isinstance(index, bool) else index
    if not index:
        return None
    rest = index[1:]
    if not all(r is Ellipsis or (isinstance(r, slice) and r == slice(None)) for r in rest):
        return None
    if index[0] is Ellipsis:
        return slice(None) if not rest else None
    return _batch_index(index[0])


def _index_state(state: Any, index: Any, out: Tensor) -> Any:
    """``state`` with each tensor indexed like the latent was (``None`` if that does not fit ``out``)."""
    first = _batch_index(index)
    if first is None:
        return None
    kw: dict[str, Any] = {}
    for f in fields(state):
        v = getattr(state, f.name)
        if isinstance(v, Tensor):
            idx = first.to(v.device) if isinstance(first, Tensor) else first
            with torch._C.DisableTorchFunctionSubclass():
                v = v[idx]
            if v.shape != out.shape:
                return None
        kw[f.name] = v
    return type(state)(**kw)


def latent_state(x: Tensor, solver: Solver | None = None) -> Any:
    """The auxiliary state carried by ``x`` for ``solver`` (``None`` for a plain tensor).

    Without ``solver``, whatever state ``x`` carries. With it: ``None`` unless ``solver`` is
    reversible; a ``ValueError`` when the state was made by another reversible solver; and a
    ``UserWarning`` when ``x`` is a plain tensor computed directly from a latent (see
    :class:`ReversibleLatent`), which ``solver`` would decode afresh rather than exactly.
    """
    if solver is not None and not solver.reversible:
        return None
    state = x.state if isinstance(x, ReversibleLatent) else None
    if solver is None:
        return state
    if state is None:
        how = _DERIVED.get(id(x))
        if how is not None:
            warnings.warn(
                f"this tensor is {how}: {solver.name!r} starts afresh and is not exact. "
                "Index the latent along the batch (z[a:b], z[mask]) to keep the state, or "
                "pass z.as_subclass(torch.Tensor) to start afresh deliberately",
                UserWarning,
                stacklevel=2,
            )
        return None
    made_by = _SOLVER_OF_STATE.get(type(state).__name__)
    if made_by is not None and made_by != solver.name:
        raise ValueError(
            f"the latent carries the auxiliary state of {made_by!r}, not of {solver.name!r}: decode it with "
            f"{made_by!r}, or pass z.as_subclass(torch.Tensor) to start afresh"
        )
    return state


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
_SOLVER_OF_STATE = {BELMState.__name__: BELM.name, ReversibleHeunState.__name__: ReversibleHeun.name}


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
