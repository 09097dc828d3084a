"""Exponential integrators in λ = −log σ, in DDIM coordinates: what DPM-Solver, DPM-Solver++ and UniPC share.

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
in λ are meaningless. Every solver of these families takes that step at order 1, which equals
DDIM: decoding it is x̄' = x̄ − σ ε = D(x̄, σ), the data-prediction form's exact limit; encoding
from σ = 0 it is x̄' = x̄ + σ' ε(x̄, 0). History entries at σ = 0 are never used for extrapolation.

All coefficients are computed in float64 on the host from the grid actually used (variable steps).

The families live in :mod:`.dpm_solver` (single step, ε), :mod:`.dpm_solver_pp` (multistep, D)
and :mod:`.unipc` (predictor–corrector); the multistep ones extrapolate from the history that
:func:`usable_history` selects.
"""

from __future__ import annotations

from .base import Evaluation

__all__: list[str] = []


def usable_history(history: tuple[Evaluation, ...], count: int, sigma: float, sigma_next: float) -> list[Evaluation]:
    """The last ``count`` history entries behind σ (w.r.t. the direction to σ') with σ > 0, most recent first.

    Entries at σ = 0 (λ = ∞) cannot enter a polynomial in λ; entries on the wrong side (a state
    carried over from a run in the other direction) are ignored, which restarts at lower order.
    """
    if count <= 0:
        return []
    behind = [e for e in history if e.sigma > 0.0 and (e.sigma - sigma) * (sigma_next - sigma) < 0.0]
    return behind[-count:][::-1]
