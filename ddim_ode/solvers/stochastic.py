"""The stochastic DDIM family (η ≥ 0), DDPM ancestral sampling at η = 1.

The DDIM update from σ to σ' with noise level η (Song, Meng & Ermon 2021, eq. 12 and 16) adds
σ_t(η) = η √((1 − ᾱ_s)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_s) of fresh noise. Divided by √ᾱ_s and written
with σ = √((1 − ᾱ)/ᾱ) it becomes

    x̄' = D + σ_down ε̂ + σ_up z,      σ_up = η σ' √(σ² − σ'²)/σ,   σ_down = √(σ'² − σ_up²),

with D = x̄ − σ ε̂ and z ~ N(0, I): an Euler step to σ_down plus noise of std σ_up — the
"ancestral step" of k-diffusion, which uses these same σ and x̄. η = 0 gives σ_down = σ' and the
deterministic Euler/DDIM step; η = 1 is DDPM's posterior variance β̃ (Ho et al. 2020) on any
(strided) grid. At σ' = 0 both vanish: the last step is x̄' = D, noise-free.

For η > 0 this is a discretisation of a reverse-time SDE, not of the ODE: it cannot encode (the
added noise is not a function of x̄, so the map is not invertible).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..field import ProbabilityFlowODE
from .base import Solver, register

__all__ = ["DDIM", "DDPM", "ancestral_sigmas"]

_DDIM = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models (ICLR), eq. 12 and 16"
_NO_ENCODE = (
    "with eta > 0 each step adds fresh Gaussian noise, so the sampler is a discretised SDE, not an ODE: "
    "the noise cannot be recovered from the result and the map from x_T to x_0 is not invertible. "
    "Encode with eta=0 ('ddim' default, identical to 'euler') or another ODE solver"
)


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up) of the η-DDIM step from σ to σ' < σ (host floats)."""
    if eta == 0.0 or sigma_next == 0.0:
        return sigma_next, 0.0
    sigma_up = eta * sigma_next * math.sqrt(max(sigma * sigma - sigma_next * sigma_next, 0.0)) / sigma
    sigma_down = math.sqrt(max(sigma_next * sigma_next - sigma_up * sigma_up, 0.0))
    return sigma_down, sigma_up


@register("ddim")
class DDIM(Solver):
    """DDIM with stochasticity η ∈ [0, 1] (η = 0: deterministic, equals ``euler``). Order 1, 1 NFE/step.

    Args:
        eta: η of the DDIM paper (0 = ODE/Euler, 1 = DDPM).
        generator: a ``torch.Generator`` on the state's device for reproducible noise; ``None``
            uses torch's global generator. The generator is advanced by every step (that is the
            only state the sampler touches besides its inputs).

    η > 0 is decode-only: see the module docstring. Weak order 1 (the noise is exact, the drift
    an Euler step); at η = 0 strong order 1 as Euler.
    """

    name = "ddim"
    paper = _DDIM

    def __init__(self, eta: float = 0.0, generator: torch.Generator | None = None) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1] (0 = deterministic DDIM, 1 = DDPM), got {eta!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.eta = float(eta)
        self.generator = generator
        self.order = 1
        self.nfe_per_step = 1.0
        self.can_encode = self.eta == 0.0
        self.stochastic = self.eta > 0.0
        self.why_no_encode = _NO_ENCODE

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: Any
    ) -> tuple[Tensor, Any]:
        eps = field(xbar, sigma)
        if self.eta == 0.0:  # deterministic DDIM: the Euler step
            return torch.add(xbar, eps, alpha=sigma_next - sigma), state
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, self.eta)
        out = torch.add(xbar, eps, alpha=sigma_down - sigma)
        if sigma_up > 0.0:
            noise = torch.randn(xbar.shape, generator=self.generator, dtype=xbar.dtype, device=xbar.device)
            out.add_(noise, alpha=sigma_up)  # out is this step's fresh tensor
        return out, state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eta={self.eta})"


@register("ddpm")
class DDPM(DDIM):
    """DDPM ancestral sampling, i.e. DDIM with η = 1 on any grid; decode only. Weak order 1, 1 NFE/step."""

    name = "ddpm"
    paper = "Ho, Jain & Abbeel 2020, Denoising Diffusion Probabilistic Models (NeurIPS); " + _DDIM

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__(eta=1.0, generator=generator)
