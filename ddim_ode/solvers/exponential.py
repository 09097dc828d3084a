"""Exponential integrators in λ = −log σ: DPM-Solver, DPM-Solver++ and UniPC, in DDIM coordinates.

In x̄ = x/√ᾱ the probability-flow ODE has two exact integral forms (λ = −log σ, so dσ = −σ dλ):

* noise prediction (ε):  x̄(σ') = x̄(σ) − ∫_λ^λ' e^{−τ} ε(τ) dτ          (= x̄ + ∫_σ^σ' ε dσ)
* data prediction (D = x̄ − σε):  x̄(σ') = (σ'/σ) x̄(σ) + σ' ∫_λ^λ' e^{τ} D(τ) dτ

The VP-scale formulas of Lu et al. divide by α_t and become these: α_t/α_s and σ_t/α_t disappear
into x̄ and σ, and their λ = log(α/σ_VP) is exactly −log σ. Expanding ε or D as a polynomial in λ
and integrating against e^{∓τ} in closed form gives the φ-function coefficients
(φ₁ = expm1(∓h), h = λ' − λ); keeping only the constant term gives x̄' = x̄ + (σ' − σ) ε(x̄, σ),
which is Euler in σ, i.e. DDIM, in *both* forms (Lu et al. 2022, Prop. 4.1; Lu et al. 2022b, §4).

σ = 0 is λ = ∞: a step with an endpoint at σ = 0 (the last step of a decoding grid, the first of an
encoding grid) has h = ±∞, where intermediate points, λ-differences and polynomial extrapolation
in λ are meaningless. Every solver here takes that step at order 1, which equals DDIM: decoding it
is x̄' = x̄ − σ ε = D(x̄, σ), the data-prediction form's exact limit; encoding from σ = 0 it is
x̄' = x̄ + σ' ε(x̄, 0). History entries at σ = 0 are never used for extrapolation.

All coefficients are computed in float64 on the host from the grid actually used (variable steps).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..field import ProbabilityFlowODE
from ..ranges import check_bool
from .base import Evaluation, Solver, evaluate, lincomb, register, touches_zero
from .options import check_choice

__all__ = [
    "DPMSolver",
    "DPMSolver1",
    "DPMSolver2",
    "DPMSolver3",
    "DPMSolverPlusPlus",
    "DPMSolverPlusPlus2M",
    "DPMSolverPlusPlus3M",
    "FinalStepState",
    "UniPC",
    "UniPCState",
    "dpm_solver_step",
]

Warmup = Literal["lower-order", "singlestep"]

_LU_2022 = (
    "Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling "
    "in Around 10 Steps (NeurIPS)"
)
_LU_2022B = (
    "Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic "
    "Models (arXiv:2211.01095)"
)
_ZHAO_2023 = (
    "Zhao, Bai, Rao, Zhou & Lu 2023, UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion "
    "Models (NeurIPS)"
)


# ---------------------------------------------------------------------------------------------
# DPM-Solver: single step, noise prediction


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


# ---------------------------------------------------------------------------------------------
# DPM-Solver++: multistep, data prediction


@dataclass(frozen=True)
class FinalStepState:
    """DPM-Solver++'s state with ``lower_order_final``: past evaluations (most recent last) and the σ
    at which the grid ends (its last step is first order)."""

    history: tuple[Evaluation, ...]
    sigma_end: float


def _usable(history: tuple[Evaluation, ...], count: int, sigma: float, sigma_next: float) -> list[Evaluation]:
    """The last ``count`` history entries behind σ (w.r.t. the direction to σ') with σ > 0, most recent first.

    Entries at σ = 0 (λ = ∞) cannot enter a polynomial in λ; entries on the wrong side (a state
    carried over from a run in the other direction) are ignored, which restarts at lower order.
    """
    if count <= 0:
        return []
    behind = [e for e in history if e.sigma > 0.0 and (e.sigma - sigma) * (sigma_next - sigma) < 0.0]
    return behind[-count:][::-1]


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
        prev = [] if last else _usable(history, k - 1, sigma, sigma_next)
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


# ---------------------------------------------------------------------------------------------
# UniPC: unified predictor-corrector


@dataclass(frozen=True)
class UniPCState:
    """UniPC's state: past evaluations (most recent last) and the σ at which the grid ends."""

    history: tuple[Evaluation, ...]
    sigma_end: float


@register("unipc")
class UniPC(Solver):
    """UniPC (UniP-p predictor + UniC corrector), variable step, in λ = −log σ. Order 3 (p = 2), 1 NFE/step.

    Each step predicts x̄' with UniP-p from the current and p − 1 previous model outputs, evaluates
    the model once at the prediction and corrects x̄' with UniC using that evaluation, which is
    then reused by the next step (so the corrector costs no extra NFE); coefficients solve
    Zhao et al.'s linear system on the actual λ-steps. ``variant="bh2"`` is B(h) = e^{h} − 1
    (their recommended choice for few steps), ``"bh1"`` is B(h) = h.

    Args:
        order: predictor order p (1–3, default 2). Lower orders are used while history builds up.
        variant: ``"bh2"`` (default) or ``"bh1"``.
        prediction: ``"data"`` (D, default, as UniPC with predict_x0) or ``"noise"`` (ε).
        corrector: apply UniC (default ``True``); ``False`` gives the plain UniP-p multistep.

    Global order (measured): p + 1 for p ≤ 2 (the first step is UniP-1 + UniC-1, locally O(h³)),
    3 for p = 3. The final step of the grid has no corrector (it would need an extra NFE); a step
    touching σ = 0 is first order, x̄' = x̄ − σ ε with the ε stored for σ (DDIM form, so the last
    correction is kept). NFE = n for n steps.
    """

    name = "unipc"
    paper = _ZHAO_2023

    def __init__(
        self,
        order: int = 2,
        variant: Literal["bh1", "bh2"] = "bh2",
        prediction: Literal["data", "noise"] = "data",
        corrector: bool = True,
    ) -> None:
        check_choice("UniPC order", order, (1, 2, 3))
        check_choice("variant", variant, ("bh1", "bh2"))
        check_choice("prediction", prediction, ("data", "noise"))
        self.predictor_order = order
        self.variant = variant
        self.prediction = prediction
        self.corrector = bool(corrector)
        self.order = min(order + 1, 3) if self.corrector else min(order, 2)
        self.nfe_per_step = 1.0

    def init(self, field: ProbabilityFlowODE, xbar: Tensor, sigmas: Tensor) -> UniPCState:
        return UniPCState((), float(sigmas[-1]))

    def _model(self, e: Evaluation) -> Tensor:
        return e.x0 if self.prediction == "data" else e.eps

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: UniPCState
    ) -> tuple[Tensor, UniPCState]:
        history = state.history
        if not history or history[-1].sigma != sigma:
            history = history + (evaluate(field, xbar, sigma),)
        e0 = history[-1]
        keep = self.predictor_order
        if touches_zero(sigma, sigma_next):
            return torch.add(xbar, e0.eps, alpha=sigma_next - sigma), UniPCState(history[-keep:], state.sigma_end)
        prev = _usable(history[:-1], self.predictor_order - 1, sigma, sigma_next)
        h = math.log(sigma / sigma_next)
        rks = tuple((e.lam - e0.lam) / h for e in prev)
        correct = self.corrector and sigma_next != state.sigma_end
        a, c_pred, c_corr = _unipc_coefficients(
            rks, h, sigma_next / sigma, sigma_next, self.variant, self.prediction, correct
        )
        models = [self._model(e0)] + [self._model(e) for e in prev]
        x_pred = lincomb([(a, xbar)] + list(zip(c_pred, models)))
        if not correct:
            return x_pred, UniPCState(history[-keep:], state.sigma_end)
        e_t = evaluate(field, x_pred, sigma_next)
        # corrected = predicted + Σ (corrector − predictor weight) · model output
        delta = [(cc - cp, m) for cc, cp, m in zip(c_corr, c_pred, models)] + [(c_corr[-1], self._model(e_t))]
        return lincomb([(1.0, x_pred)] + delta), UniPCState((history + (e_t,))[-keep:], state.sigma_end)

    def __repr__(self) -> str:
        return (
            f"UniPC(order={self.predictor_order}, variant={self.variant!r}, prediction={self.prediction!r}, "
            f"corrector={self.corrector})"
        )


@functools.lru_cache(maxsize=4096)
def _unipc_coefficients(
    rks: tuple[float, ...], h: float, ratio: float, sigma_next: float, variant: str, prediction: str, correct: bool
) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    """UniPC's step as weights on x̄ and on the model outputs m₀, m₁, … (and, corrected, m(x̃')).

    ``rks`` are r_k = (λ_k − λ₀)/h of the previous outputs (most recent first), h = λ' − λ₀ and
    ``ratio`` = σ'/σ. With D_k = (m_k − m₀)/r_k the predictor is x̃' = base − scale Σ ρᵖ_k D_k and
    the corrector x̄' = base − scale (Σ ρᶜ_k D_k + ρᶜ_p (m' − m₀)), base = A x̄ − B m₀; ρ solve
    Zhao et al.'s linear system (their Alg. 2/3) on the r_k. Returns (A, predictor weights of
    (m₀, m₁, …), corrector weights of (m₀, m₁, …, m')). Pure and memoised: a grid used again costs
    no linear solves.
    """
    p = len(rks) + 1
    hh = -h if prediction == "data" else h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    big_r = np.array([[r ** (i - 1) for r in (*rks, 1.0)] for i in range(1, p + 1)])
    b = []
    h_phi_k, factorial = h_phi_1 / hh - 1.0, 1.0
    for i in range(1, p + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    if prediction == "data":
        a, base_m0, scale = ratio, -h_phi_1, b_h
    else:
        a, base_m0, scale = 1.0, -sigma_next * h_phi_1, sigma_next * b_h

    def weights(rhos: list[float], rs: tuple[float, ...]) -> list[float]:
        # base − scale Σ ρ_k (m_k − m₀)/r_k, as weights of (m₀, m_1, …)
        ws = [-scale * rho / r for rho, r in zip(rhos, rs)]
        return [base_m0 - sum(ws)] + ws

    if p <= 2:
        rhos_p = [0.5] * (p - 1)
    else:
        rhos_p = [float(v) for v in np.linalg.solve(big_r[:-1, :-1], np.array(b[:-1]))]
    c_pred = tuple(weights(rhos_p, rks))
    if not correct:
        return a, c_pred, ()
    rhos_c = [0.5] if p == 1 else [float(v) for v in np.linalg.solve(big_r, np.array(b))]
    c_corr = tuple(weights(rhos_c, (*rks, 1.0)))
    return a, c_pred, c_corr
