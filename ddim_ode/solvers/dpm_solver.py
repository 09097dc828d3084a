"""DPM-Solver: the single-step exponential integrator on noise prediction ε, in λ = −log σ.

Orders 1 (= DDIM), 2 and 3 (:class:`DPMSolver1`, :class:`DPMSolver2`, :class:`DPMSolver3`), each
taking ``order`` NFE per step; a step with an endpoint at σ = 0 is one DDIM step (1 NFE). The
integral form it discretises and the σ = 0 rule are in :mod:`.exponential`.

Source: Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver: A Fast ODE Solver for Diffusion
Probabilistic Model Sampling in Around 10 Steps (NeurIPS), Algorithms 1 and 2.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..field import ProbabilityFlowODE
from ..ranges import check_choice
from .base import Solver, lincomb, register, touches_zero

__all__ = ["DPMSolver", "DPMSolver1", "DPMSolver2", "DPMSolver3", "dpm_solver_step"]

_LU_2022 = (
    "Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling "
    "in Around 10 Steps (NeurIPS)"
)


def _intermediate(sigma: float, h: float, r: float) -> float:
    """σ at λ + r h, h = λ' − λ: σ e^{−r h}."""
    return sigma * math.exp(-r * h)


def dpm_solver_step(
    field: ProbabilityFlowODE,
    xbar: Tensor,
    sigma: float,
    sigma_next: float,
    order: int,
    r1: float = 0.5,
    r2: float = 2 / 3,
    eps: Tensor | None = None,
) -> Tensor:
    """One DPM-Solver step (noise prediction) of ``order`` 1, 2 or 3 between two σ > 0.

    Order 2 is Lu et al. (2022) Algorithm 1 (intermediate point λ + r1 h; r1 = 1/2 is the
    midpoint in λ, i.e. the geometric mean of σ and σ'); order 3 is their Algorithm 2 (points
    λ + r1 h and λ + r2 h, default 1/3 and 2/3 when ``order == 3``). ``eps`` = ε(x̄, σ) if known.
    """
    eps0 = field(xbar, sigma) if eps is None else eps
    if order == 1:
        return torch.add(xbar, eps0, alpha=sigma_next - sigma)
    h = math.log(sigma / sigma_next)  # λ' − λ
    sigma1 = _intermediate(sigma, h, r1)
    eps1 = field(torch.add(xbar, eps0, alpha=sigma1 - sigma), sigma1)
    if order == 2:  # x̄ + (σ' − σ)[ε₀ + (ε₁ − ε₀)/(2 r1)]
        c1 = (sigma_next - sigma) / (2.0 * r1)
        return lincomb([(1.0, xbar), (sigma_next - sigma - c1, eps0), (c1, eps1)])
    sigma2 = _intermediate(sigma, h, r2)
    # σ_s2 ((e^{r2 h} − 1)/(r2 h) − 1) and σ' ((e^h − 1)/h − 1): the φ₂ terms in x̄ coordinates
    phi2_s2 = sigma2 * (math.expm1(r2 * h) / (r2 * h) - 1.0)
    phi2_t = sigma_next * (math.expm1(h) / h - 1.0)
    # u₂ = x̄ + (σ₂ − σ) ε₀ − (r2/r1) φ₂(s₂) (ε₁ − ε₀);  x̄' = x̄ + (σ' − σ) ε₀ − (φ₂(t)/r2) (ε₂ − ε₀)
    k1 = r2 / r1 * phi2_s2
    eps2 = field(lincomb([(1.0, xbar), (sigma2 - sigma + k1, eps0), (-k1, eps1)]), sigma2)
    k2 = phi2_t / r2
    return lincomb([(1.0, xbar), (sigma_next - sigma + k2, eps0), (-k2, eps2)])


class DPMSolver(Solver):
    """DPM-Solver (single step, noise prediction ε) of order 1, 2 or 3 in λ = −log σ; ``order`` NFE/step.

    Args:
        order: 1 (= DDIM), 2 (Algorithm 1) or 3 (Algorithm 2 of Lu et al. 2022).
        r1, r2: intermediate points λ + r h (defaults 1/2 for order 2; 1/3 and 2/3 for order 3).

    A step with an endpoint at σ = 0 is an order-1 (DDIM) step, 1 NFE: a decoding grid of n steps
    ending at 0 costs ``order·(n − 1) + 1`` NFE.
    """

    paper = _LU_2022

    def __init__(self, order: int = 2, r1: float | None = None, r2: float | None = None) -> None:
        check_choice("DPM-Solver order", order, (1, 2, 3))
        r1 = (0.5 if order == 2 else 1 / 3) if r1 is None else float(r1)
        r2 = 2 / 3 if r2 is None else float(r2)
        if order >= 2 and not 0.0 < r1 <= 1.0:
            raise ValueError(f"r1 must be in (0, 1], got {r1}")
        if order == 3 and not r1 < r2 <= 1.0:
            raise ValueError(f"need r1 < r2 <= 1, got r1={r1}, r2={r2}")
        self.order = order
        self.nfe_per_step = float(order)
        self.r1, self.r2 = r1, r2

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: Any
    ) -> tuple[Tensor, Any]:
        if self.order == 1 or touches_zero(sigma, sigma_next):  # the DDIM step
            return torch.add(xbar, field(xbar, sigma), alpha=sigma_next - sigma), state
        return dpm_solver_step(field, xbar, sigma, sigma_next, self.order, self.r1, self.r2), state

    def stage_sigmas(self, sigmas: list[float]) -> list[float]:
        out = []
        rs = [self.r1, self.r2][: self.order - 1]
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            if not touches_zero(sigma, sigma_next):
                h = math.log(sigma / sigma_next)
                out += [_intermediate(sigma, h, r) for r in rs]
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order}, r1={self.r1:.4g}, r2={self.r2:.4g})"


@register("dpm-solver-1")
class DPMSolver1(DPMSolver):
    """DPM-Solver-1: the first-order exponential integrator, identical to DDIM. Order 1, 1 NFE/step."""

    name = "dpm-solver-1"

    def __init__(self) -> None:
        super().__init__(order=1)


@register("dpm-solver-2")
class DPMSolver2(DPMSolver):
    """DPM-Solver-2 (single step, ε, midpoint in λ by default). Order 2, 2 NFE/step.

    x̄' = x̄ + (σ' − σ)[ε₀ + (ε₁ − ε₀)/(2 r1)], ε₁ at σ₁ = σ e^{−r1 h} from a DDIM step; a step
    touching σ = 0 is one DDIM step (2(n − 1) + 1 NFE for a decoding grid ending at 0).
    """

    name = "dpm-solver-2"

    def __init__(self, r1: float = 0.5) -> None:
        super().__init__(order=2, r1=r1)


@register("dpm-solver-3")
class DPMSolver3(DPMSolver):
    """DPM-Solver-3 (single step, ε, Algorithm 2 with r1 = 1/3, r2 = 2/3). Order 3, 3 NFE/step.

    A step touching σ = 0 is one DDIM step (3(n − 1) + 1 NFE for a decoding grid ending at 0).
    """

    name = "dpm-solver-3"

    def __init__(self, r1: float = 1 / 3, r2: float = 2 / 3) -> None:
        super().__init__(order=3, r1=r1, r2=r2)
