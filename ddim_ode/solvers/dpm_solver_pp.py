"""DPM-Solver++(kM): the multistep exponential integrator on data prediction D, in λ = −log σ.

Second- and third-order steps (:class:`DPMSolverPlusPlus2M`, :class:`DPMSolverPlusPlus3M`) at
1 NFE per step: each step reuses the denoiser values of the previous grid points. Global order 2
for 2M, and for 3M with the default lower-order warm-up; 3 for 3M with ``warmup="singlestep"``
(its first two steps DPM-Solver-3, 3 NFE each).
A step with an endpoint at σ = 0 is first order, x̄' = D(x̄, σ) when decoding (DDIM). The
integral form it discretises and the σ = 0 rule are in :mod:`.exponential`.

Source: Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models (arXiv:2211.01095), Algorithm 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..field import ProbabilityFlowODE
from ..ranges import check_bool, check_choice
from .base import Evaluation, Solver, evaluate, lincomb, register, touches_zero
from .dpm_solver import dpm_solver_step
from .exponential import usable_history

__all__ = ["DPMSolverPlusPlus", "DPMSolverPlusPlus2M", "DPMSolverPlusPlus3M", "FinalStepState"]

#: how the first k − 1 steps of a k-step method are taken (see :class:`DPMSolverPlusPlus`)
Warmup = Literal["lower-order", "singlestep"]

_LU_2022B = (
    "Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic "
    "Models (arXiv:2211.01095)"
)


@dataclass(frozen=True)
class FinalStepState:
    """DPM-Solver++'s state with ``lower_order_final``: past evaluations (most recent last) and the σ
    at which the grid ends (its last step is first order)."""

    history: tuple[Evaluation, ...]
    sigma_end: float


class DPMSolverPlusPlus(Solver):
    """DPM-Solver++(kM): multistep, data prediction D, order-k steps in λ = −log σ; 1 NFE/step.

    With h = λ' − λ, φ₁ = expm1(−h), φ₂ = φ₁/h + 1, φ₃ = φ₂/h − 1/2 and D₀, D₁, D₂ the denoiser at
    the current and the two previous grid points (variable steps r₀ = h₀/h, r₁ = h₁/h):

    * 2M (Lu et al. 2022b, Alg. 2):  x̄' = (σ'/σ) x̄ − φ₁ [D₀ + (D₀ − D₁)/(2 r₀)]
    * 3M:  x̄' = (σ'/σ) x̄ − φ₁ D₀ + φ₂ 𝐃₁ − φ₃ 𝐃₂ with 𝐃₁ ≈ h D' and 𝐃₂ ≈ h² D'' from divided
      differences. ``third_order_term="taylor"`` (default) uses 𝐃₂ = 2 (d₀ − d₁)/(r₀ + r₁), the
      Taylor coefficient of D'' (∫ e^{τ}(τ−λ)²/2 = −φ₃ h²); ``"published"`` uses
      (d₀ − d₁)/(r₀ + r₁) as in the reference implementation of DPM-Solver++ (and k-diffusion's
      dpmpp_3m_sde), which is half the Taylor value: its steps are then only locally O(h³), so
      that variant is globally second order (measured in docs/solvers.md).

    Warm-up (``warmup``): ``"lower-order"`` (default, as in the paper: 1 NFE every step) takes
    the first k − 1 steps at orders 1, …, k − 1; the first-order first step limits the *global*
    order to 2, which is what ``order`` reports for 3M. ``"singlestep"`` takes them with
    DPM-Solver-k (k NFE each), restoring global order k at k(k − 1) − (k − 1) extra NFE.

    Final step: a step touching σ = 0 is first order (x̄' = D(x̄, σ) when decoding, DDIM).
    ``lower_order_final=True`` takes the last step of the grid at first order wherever it ends
    (the DDIM step x̄' = (σ'/σ) x̄ − φ₁ D₀, as diffusers' ``DPMSolverMultistepScheduler`` does with
    ``final_sigmas_type="sigma_min"`` below 15 steps or with ``euler_at_final``); it needs the
    state of :meth:`init`, which records where the grid ends. NFE = n for n steps with the
    default warm-up.
    """

    paper = _LU_2022B

    def __init__(
        self,
        order: int = 2,
        warmup: Warmup = "lower-order",
        third_order_term: Literal["taylor", "published"] = "taylor",
        lower_order_final: bool = False,
    ) -> None:
        check_choice("DPM-Solver++ multistep order", order, (1, 2, 3))
        check_choice("warmup", warmup, ("lower-order", "singlestep"))
        check_choice("third_order_term", third_order_term, ("taylor", "published"))
        check_bool("lower_order_final", lower_order_final)
        self.steps_order = order
        self.warmup: Warmup = warmup
        self.third_order_term = third_order_term
        self.lower_order_final = bool(lower_order_final)
        full = warmup == "singlestep" and (order < 3 or third_order_term == "taylor")
        self.order = order if full else min(order, 2)
        self.nfe_per_step = 1.0

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: Any
    ) -> tuple[Tensor, Any]:
        k = self.steps_order
        final = isinstance(state, FinalStepState)
        history: tuple[Evaluation, ...] = (state.history if final else state) or ()
        e0 = evaluate(field, xbar, sigma)
        new_state: Any = (history + (e0,))[-k:]
        if final:
            new_state = FinalStepState(new_state, state.sigma_end)
        if touches_zero(sigma, sigma_next):
            return torch.add(xbar, e0.eps, alpha=sigma_next - sigma), new_state
        last = final and sigma_next == state.sigma_end  # lower_order_final: a first-order last step
        prev = [] if last else usable_history(history, k - 1, sigma, sigma_next)
        p = 1 + len(prev)
        if p < k and self.warmup == "singlestep" and not last:
            return dpm_solver_step(field, xbar, sigma, sigma_next, k, eps=e0.eps), new_state
        h = math.log(sigma / sigma_next)
        phi1 = math.expm1(-h)
        ratio = sigma_next / sigma
        if p == 1:  # (σ'/σ) x̄ − φ₁ D₀
            return lincomb([(ratio, xbar), (-phi1, e0.x0)]), new_state
        e1 = prev[0]
        r0 = (e0.lam - e1.lam) / h
        if p == 2:  # (σ'/σ) x̄ − φ₁ D₀ − (φ₁/2) (D₀ − D₁)/r₀
            c = 0.5 * phi1 / r0
            return lincomb([(ratio, xbar), (-phi1 - c, e0.x0), (c, e1.x0)]), new_state
        e2 = prev[1]
        r1 = (e1.lam - e2.lam) / h
        phi2 = phi1 / h + 1.0
        phi3 = phi2 / h - 0.5
        scale = 2.0 if self.third_order_term == "taylor" else 1.0
        # x̄' = (σ'/σ) x̄ − φ₁ D₀ + φ₂ 𝐃₁ − φ₃ 𝐃₂ with, for δ = d₀ − d₁ = D₀/r₀ − (1/r₀ + 1/r₁) D₁ + D₂/r₁,
        # 𝐃₁ = d₀ + r₀ q δ and 𝐃₂ = scale·q δ (q = 1/(r₀ + r₁), d₀ = (D₀ − D₁)/r₀), expanded per D
        q = 1.0 / (r0 + r1)
        w = phi2 * r0 * q - phi3 * scale * q  # the weight of δ
        c0 = -phi1 + phi2 / r0 + w / r0
        c1 = -phi2 / r0 - w * (1.0 / r0 + 1.0 / r1)
        c2 = w / r1
        return lincomb([(ratio, xbar), (c0, e0.x0), (c1, e1.x0), (c2, e2.x0)]), new_state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(order={self.steps_order}, warmup={self.warmup!r}, "
            f"third_order_term={self.third_order_term!r}, lower_order_final={self.lower_order_final})"
        )

    def init(self, field: ProbabilityFlowODE, xbar: Tensor, sigmas: Tensor) -> Any:
        """No history; with ``lower_order_final``, a :class:`FinalStepState` recording where the grid ends."""
        return FinalStepState((), float(sigmas[-1])) if self.lower_order_final else None


@register("dpm-solver++2m")
class DPMSolverPlusPlus2M(DPMSolverPlusPlus):
    """DPM-Solver++(2M): multistep, data prediction, second-order steps in λ. Order 2, 1 NFE/step.

    First step first order (or DPM-Solver-2 with ``warmup="singlestep"``); a step touching σ = 0
    is x̄' = D (DDIM), and with ``lower_order_final=True`` the last step of the grid is a DDIM step
    wherever it ends (diffusers' ``lower_order_final`` / ``euler_at_final`` for a grid ending at
    σ_min > 0). n NFE for n steps.
    """

    name = "dpm-solver++2m"

    def __init__(self, warmup: Warmup = "lower-order", lower_order_final: bool = False) -> None:
        super().__init__(order=2, warmup=warmup, lower_order_final=lower_order_final)


@register("dpm-solver++3m")
class DPMSolverPlusPlus3M(DPMSolverPlusPlus):
    """DPM-Solver++(3M): multistep, data prediction, 3rd-order steps in λ. Order 2 (3 with warm-up), 1 NFE/step.

    Global order 2 with the default lower-order warm-up (its first-order first step dominates as
    h → 0), 3 with ``warmup="singlestep"`` (first two steps DPM-Solver-3, 3 NFE each). See
    :class:`DPMSolverPlusPlus` for ``third_order_term``. A step touching σ = 0 is x̄' = D (DDIM).
    """

    name = "dpm-solver++3m"

    def __init__(
        self, warmup: Warmup = "lower-order", third_order_term: Literal["taylor", "published"] = "taylor"
    ) -> None:
        super().__init__(order=3, warmup=warmup, third_order_term=third_order_term)
