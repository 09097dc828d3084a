"""Linear multistep methods in σ: Adams–Bashforth on ε (PLMS, iPNDM and its variable-step form).

The Adams–Bashforth step of order k integrates the polynomial through the last k values of ε:

    x̄' = x̄ + Σ_j β_j ε_j,   β_j = ∫_σ^σ' ℓ_j(s) ds,

with ℓ_j the Lagrange basis on the σ's where the ε_j were evaluated. :func:`adams_bashforth_weights`
computes the weights from the actual grid (Gauss–Legendre quadrature, exact for these polynomials),
so they are correct on any non-uniform grid and in both directions; on a uniform σ grid they are
the classical (55, −59, 37, −9)/24 of PNDM's PLMS, whose "DDIM transfer" is exactly this Euler-type
update in x̄ coordinates. iPNDM uses the uniform-grid weights on any grid. σ = 0 is an ordinary
point for a polynomial in σ, so no special final step is needed (the step to σ = 0 only uses ε at
σ > 0).

State: :class:`AdamsState`, the last evaluations (σ, ε) and where the first ε may be taken from
the large-σ limit instead of the network (``analytic_first_step``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
from torch import Tensor

from ..field import ProbabilityFlowODE
from ..ranges import check_choice
from .base import Solver, lincomb, register, touches_zero
from .rk import RK4_CLASSIC, rk_step

__all__ = ["AdamsBashforth", "AdamsState", "PLMS", "IPNDM", "IPNDMV", "IPNDM_COEFFICIENTS", "adams_bashforth_weights"]

_LIU_2022 = "Liu, Ren, Lin & Zhao 2022, Pseudo Numerical Methods for Diffusion Models on Manifolds (ICLR)"
_ZHANG_2023 = (
    "Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator (ICLR), iPNDM; "
    "Zhou, Chen, Wang & Yu 2024, Fast ODE-based Sampling for Diffusion Models in Around 5 Steps (CVPR)"
)

#: iPNDM's constant Adams–Bashforth weights of orders 1–4, most recent ε first (times h = σ' − σ)
IPNDM_COEFFICIENTS: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


@functools.lru_cache(maxsize=8)
def _gauss_legendre(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [−1, 1] (exact for polynomials of degree < 2k), cached."""
    return np.polynomial.legendre.leggauss(k)


def adams_bashforth_weights(nodes: list[float], sigma: float, sigma_next: float) -> list[float]:
    """β_j = ∫_σ^σ' ℓ_j(s) ds for the Lagrange basis ℓ_j on ``nodes`` (float64, any spacing)."""
    return list(_ab_weights(tuple(float(v) for v in nodes), float(sigma), float(sigma_next)))


@functools.lru_cache(maxsize=4096)
def _ab_weights(nodes: tuple[float, ...], sigma: float, sigma_next: float) -> tuple[float, ...]:
    """:func:`adams_bashforth_weights`, memoised: a grid used again costs no quadrature."""
    k = len(nodes)
    xg, wg = _gauss_legendre(max(k, 1))
    half = 0.5 * (sigma_next - sigma)
    s = 0.5 * (sigma + sigma_next) + half * xg
    w = half * wg
    out = []
    for j, node_j in enumerate(nodes):
        ell = np.ones_like(s)
        for m, node_m in enumerate(nodes):
            if m != j:
                ell *= (s - node_m) / (node_j - node_m)
        out.append(float(w @ ell))
    return tuple(out)


@dataclass(frozen=True)
class AdamsState:
    """An Adams–Bashforth solver's state: the last evaluations ``history`` ((σ, ε), oldest first) and
    ``analytic_sigma``, the σ at which a step without history takes ε from the large-σ limit
    (``None``: always from the network)."""

    history: tuple[tuple[float, Tensor], ...] = ()
    analytic_sigma: float | None = None


class AdamsBashforth(Solver):
    """Adams–Bashforth on ε in σ with the last ``k`` evaluations (fewer while they build up); 1 NFE/step.

    Subclasses choose the weights (:meth:`weights`). ``analytic_first_step``: on a decoding grid,
    the first step from its top σ_0 takes ε ≈ a(σ_0) x̄ (= x̄/√(1 + σ_0²) on a VP path) instead of
    evaluating the network, which saves one NFE (n − 1 for n steps). That is the exact ε of a VP
    model as σ → ∞ (x_t is then pure noise and ε = x_t); at finite σ_0 it neglects the data term,
    about E[x0]/σ_0 in ε, so the first step misses x̄(σ_1) by about |E[x0]|, which the flow then
    contracts like √Var[x0]/σ_1. The error does not vanish as the steps shrink: the method is then
    first order (``order`` says so), and the option pays only for few steps from a large σ_0.
    Measured on N((0.5, −1), 0.5²), 10 steps of EDM's grid from σ_0 = 80: ipndm-v's result moves by
    2.2e-3 (3 % of its error, half the shift from σ_0 = 40); iPNDM's constant weights do not contract
    the first step's error as the flow does on such a graded grid: 1.7e-2 (+14 % error), and at
    5 steps 0.18, four times its error.
    """

    def __init__(self, k: int, analytic_first_step: bool = False) -> None:
        if not isinstance(analytic_first_step, bool):
            raise ValueError(f"analytic_first_step must be True or False, got {analytic_first_step!r}")
        self.steps_order = k
        self.analytic_first_step = analytic_first_step
        self.nfe_per_step = 1.0

    def init(self, field: ProbabilityFlowODE, xbar: Tensor, sigmas: Tensor) -> AdamsState:
        top, end = float(sigmas[0]), float(sigmas[-1])
        return AdamsState((), top if self.analytic_first_step and end < top else None)

    def weights(self, nodes: tuple[float, ...], sigma: float, sigma_next: float) -> tuple[float, ...]:
        """The weights of ε at ``nodes`` (oldest first, the last one σ) for the step σ → σ'."""
        raise NotImplementedError

    def warmup_step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, eps: Tensor, filled: int
    ) -> Tensor | None:
        """A step replacing Adams–Bashforth while only ``filled`` < k evaluations are known (default: none)."""
        return None

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: AdamsState | None
    ) -> tuple[Tensor, AdamsState]:
        state = state or AdamsState()
        history = state.history
        # entries behind σ in the direction of travel (a state from the other direction restarts);
        # a history made along one direction is monotone, so checking its ends suffices
        h = sigma_next - sigma
        if history and not ((history[0][0] - sigma) * h < 0.0 and (history[-1][0] - sigma) * h < 0.0):
            history = tuple((s, e) for s, e in history if (s - sigma) * h < 0.0)
        if not history and state.analytic_sigma == sigma:
            eps = xbar * field.schedule.scale(sigma)  # the σ → ∞ limit of a VP model: ε = x_t
        else:
            eps = field(xbar, sigma)
        history = (history + ((sigma, eps),))[-self.steps_order :]
        new_state = AdamsState(history, state.analytic_sigma)
        if len(history) < self.steps_order:
            out = self.warmup_step(field, xbar, sigma, sigma_next, eps, len(history))
            if out is not None:
                return out, new_state
        weights = self.weights(tuple(s for s, _ in history), sigma, sigma_next)
        # most recent first: the largest weight enters first
        return lincomb([(1.0, xbar)] + [(w, e) for w, (_, e) in zip(weights[::-1], history[::-1])]), new_state


@register("plms")
class PLMS(AdamsBashforth):
    """PLMS: variable-step Adams–Bashforth (k = 4) on ε in σ. Order 2 (k with RK4 warm-up), 1 NFE/step.

    Args:
        order: k, the number of ε values combined (1 = Euler/DDIM, 4 = PLMS).
        warmup: ``"lower-order"`` (default, as k-diffusion's ``lms``): steps 1, …, k − 1 use
            Adams–Bashforth of order 1, …, k − 1 (1 NFE each); the first-order first step limits
            the *global* order to 2 for k ≥ 2, which is what ``order`` reports.
            ``"singlestep"``: those steps are classical RK4 steps (4 NFE each), as PNDM's
            Runge–Kutta warm-up (Liu et al. 2022, Alg. 1 uses the same count), restoring global
            order k at 3(k − 1) extra NFE. A warm-up step touching σ = 0 stays Adams–Bashforth.

    On a non-uniform grid PNDM's constant coefficients would be wrong; these are the
    variable-step ones. NFE = n for n steps with the default warm-up.
    """

    name = "plms"
    paper = _LIU_2022

    def __init__(self, order: int = 4, warmup: Literal["lower-order", "singlestep"] = "lower-order") -> None:
        check_choice("PLMS order", order, (1, 2, 3, 4))
        super().__init__(order)
        self.warmup = check_choice("warmup", warmup, ("lower-order", "singlestep"))
        self.order = order if warmup == "singlestep" else min(order, 2)

    def weights(self, nodes: tuple[float, ...], sigma: float, sigma_next: float) -> tuple[float, ...]:
        return _ab_weights(nodes, sigma, sigma_next)

    def warmup_step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, eps: Tensor, filled: int
    ) -> Tensor | None:
        if self.warmup == "singlestep" and not touches_zero(sigma, sigma_next):
            return rk_step(field, xbar, sigma, sigma_next, RK4_CLASSIC, eps=eps)
        return None

    def __repr__(self) -> str:
        return f"PLMS(order={self.steps_order}, warmup={self.warmup!r})"


@register("ipndm")
class IPNDM(AdamsBashforth):
    """iPNDM: Adams–Bashforth on ε in σ with iPNDM's constant weights. Order 2, 1 NFE/step.

    x̄' = x̄ + h Σ_j c_j ε_{n−j}, h = σ' − σ, with the uniform-step weights c of order
    m = min(step number, ``max_order``): (1), (3/2, −1/2), (23/12, −16/12, 5/12),
    (55/24, −59/24, 37/24, −9/24) (:data:`IPNDM_COEFFICIENTS`, the most recent ε first): PNDM's
    pseudo linear multistep method with lower-order starting steps instead of Runge–Kutta ones
    (Zhang & Chen 2023), the strongest few-step baseline of Zhou et al. 2024.

    Global order 2 for every ``max_order`` ≥ 2 (measured on the Gaussian problem of
    ``tests/test_solvers.py``: 1.94 decoding, 2.00 encoding), for two reasons: the first-order
    first step has local error O(h²), and on a non-uniform grid the constant weights are those of
    the wrong nodes, which leaves a local error O(h³) at every step (the nodes σ_{n−j} sit O(h²)
    away from σ_n − j h on a smoothly graded grid). On a uniform σ grid its steps are those of
    :class:`IPNDMV`. A step touching σ = 0 is an ordinary Adams–Bashforth step. n NFE for n steps.

    Args:
        max_order: 1–4 (default 4); 1 is Euler (DDIM).
        analytic_first_step: take the first ε of a decoding grid from the large-σ limit (saves
            one NFE; first order, see :class:`AdamsBashforth`).
    """

    name = "ipndm"
    paper = _ZHANG_2023

    def __init__(self, max_order: int = 4, analytic_first_step: bool = False) -> None:
        check_choice("iPNDM max_order", max_order, (1, 2, 3, 4))
        super().__init__(max_order, analytic_first_step)
        self.order = 1 if analytic_first_step else min(max_order, 2)

    def weights(self, nodes: tuple[float, ...], sigma: float, sigma_next: float) -> tuple[float, ...]:
        h = sigma_next - sigma
        return tuple(h * c for c in IPNDM_COEFFICIENTS[len(nodes) - 1][::-1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_order={self.steps_order}, analytic_first_step={self.analytic_first_step})"


@register("ipndm-v")
class IPNDMV(IPNDM):
    """iPNDM-v: variable-step Adams–Bashforth on ε in σ, iPNDM's lower-order start. Order 2, 1 NFE/step.

    The weights integrate the Lagrange interpolant of the last m = min(step number, ``max_order``)
    values of ε over the actual step [σ, σ'] (:func:`adams_bashforth_weights`), so each step of
    order m is locally O(h^(m+1)) on any grid; the first-order first step still limits the global
    order to 2 (measured: 2.04 decoding, 1.94 encoding). The same steps as ``plms`` with its
    default warm-up (Zhou et al. 2024 name this variant iPNDM-v). n NFE for n steps. Options as
    :class:`IPNDM`; of the two it is the one to use with ``analytic_first_step``.
    """

    name = "ipndm-v"

    def weights(self, nodes: tuple[float, ...], sigma: float, sigma_next: float) -> tuple[float, ...]:
        return _ab_weights(nodes, sigma, sigma_next)
