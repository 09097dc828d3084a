"""UniPC: the unified predictor–corrector exponential integrator, in λ = −log σ.

A UniP-p predictor and a UniC corrector (:class:`UniPC`) at 1 NFE per step: the evaluation at the
predicted point serves the corrector of this step and the predictor of the next. Global order 3
at the default predictor order p = 2 (measured p + 1 for p ≤ 2 and 3 for p = 3; at most 2
without the corrector). A step with an endpoint at σ = 0 is first order (DDIM). The integral
forms it discretises and the σ = 0 rule are in :mod:`.exponential`.

Source: Zhao, Bai, Rao, Zhou & Lu 2023, UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models (NeurIPS), Algorithms 2 and 3.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..field import ProbabilityFlowODE
from ..ranges import check_choice
from .base import Evaluation, Solver, evaluate, lincomb, register, touches_zero
from .exponential import usable_history

__all__ = ["UniPC", "UniPCState"]

_ZHAO_2023 = (
    "Zhao, Bai, Rao, Zhou & Lu 2023, UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion "
    "Models (NeurIPS)"
)


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
        prev = usable_history(history[:-1], self.predictor_order - 1, sigma, sigma_next)
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
