"""Exact oracles: data distributions whose ε, and so whose ODE, are known in closed form.

For data ``x0 ~ Σ_k w_k N(μ_k, diag(v_k))`` the x̄-marginal at noise level σ is
``Σ_k w_k N(μ_k, diag(v_k + σ²))``, the posterior mean (denoiser) is

    D(x̄, σ) = Σ_k r_k(x̄, σ) [μ_k + v_k/(v_k + σ²) (x̄ − μ_k)],   r_k ∝ w_k N(x̄; μ_k, v_k + σ²)

and the exact ε = (x̄ − D)/σ = Σ_k r_k σ (x̄ − μ_k)/(v_k + σ²), which is written without the
division by σ and so is defined at σ = 0 when every ``v_k > 0``.

* :class:`Gaussian` — one component; the ODE has the closed-form solution
  ``x̄(σ) = μ + (x̄(σ₀) − μ) √((v + σ²)/(v + σ₀²))`` (:meth:`Gaussian.solution`).
* :class:`GaussianMixture` — any weights, means and isotropic or diagonal variances.
* :class:`EmpiricalDistribution` — a finite data set (variances 0): the memorising denoiser.

Everything here lives in DDIM coordinates (x̄, σ̄), which every Gaussian path x_t = a x0 + s ε shares
(x̄ = x_t/a, σ̄ = s/a; see :mod:`ddim_ode.schedules`), so one oracle serves VP, VE and flow paths.
Each is a :class:`~ddim_ode.field.SigmaModel` (``eps_xbar(xbar, sigma)``), so ``integrate`` and
friends evaluate it at the exact σ; :meth:`AnalyticModel.as_model` turns it into an ordinary
network ``model(x_t, t)`` on any schedule's path that outputs any prediction (``eps``, ``x0``,
``v``, ``flow``), which checks the field's conversions exactly. :func:`reference_solve` is a
float64 DOP853 solve (scipy, rtol 1e-10) for problems without a closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .field import PREDICTIONS, Prediction
from .schedules import Schedule

__all__ = [
    "AnalyticModel",
    "GaussianMixture",
    "Gaussian",
    "EmpiricalDistribution",
    "ScheduledOracle",
    "reference_solve",
]

ArrayLike = Sequence[Any] | np.ndarray | Tensor | float


def _t64(x: ArrayLike) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(torch.float64).cpu()
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


class AnalyticModel:
    """Base of the exact oracles: a Gaussian mixture over events of shape ``event_shape``."""

    means: Tensor  # (K, d) float64
    weights: Tensor  # (K,)
    variances: Tensor  # (K, d)
    event_shape: tuple[int, ...]
    sigma_floor: float = 0.0

    def __init__(self, means: ArrayLike, weights: ArrayLike | None, variances: ArrayLike) -> None:
        mu = _t64(means)
        if mu.ndim < 2:
            raise ValueError(f"means must have shape (K, *event_shape), got {tuple(mu.shape)}")
        k = mu.shape[0]
        self.event_shape = tuple(mu.shape[1:])
        self.means = mu.reshape(k, -1)
        d = self.means.shape[1]
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else _t64(weights).reshape(-1)
        if w.shape != (k,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
        self.weights = w / w.sum()
        v = _t64(variances)
        if v.ndim == 0:
            v = v.expand(k)
        if v.shape == (k,):
            v = v[:, None].expand(k, d)
        v = v.reshape(k, -1)
        if v.shape != (k, d) or bool((v < 0).any()):
            raise ValueError(f"variances must be a scalar, shape ({k},) or ({k}, *event_shape), all >= 0")
        self.variances = v.contiguous()
        self._isotropic = bool((v == v[:, :1]).all())

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def mean(self) -> Tensor:
        """E[x0] = Σ_k w_k μ_k, shape ``event_shape`` (the denoiser's limit at σ = ∞)."""
        return (self.weights @ self.means).reshape(self.event_shape)

    # -- the exact field ---------------------------------------------------------------------

    def _sig(self, sigma: float | Tensor, batch: int) -> Tensor:
        s = _t64(sigma).reshape(-1)
        if s.numel() == 1:
            s = s.expand(batch)
        return s.clamp(min=self.sigma_floor)[:, None]  # (B, 1)

    def _posterior(self, xbar: Tensor, sigma: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x̄ flattened to float64 (B, d), σ as (B, 1), responsibilities (B, K)), on x̄'s device."""
        dev = xbar.device
        x = xbar.reshape(xbar.shape[0], -1).to(torch.float64)
        s = self._sig(sigma, x.shape[0]).to(dev)
        mu, v, w = self.means.to(dev), self.variances.to(dev), self.weights.to(dev)
        if self._isotropic:
            var = v[:, 0][None, :] + s * s  # (B, K)
            sq = (x * x).sum(1, keepdim=True) - 2.0 * x @ mu.T + (mu * mu).sum(1)[None, :]
            logn = -0.5 * (sq.clamp(min=0) / var + self.dim * torch.log(2 * math.pi * var))
        else:
            var = v[None] + (s * s)[:, :, None]  # (B, K, d)
            diff = x[:, None, :] - mu[None]
            logn = -0.5 * ((diff * diff) / var + torch.log(2 * math.pi * var)).sum(-1)
        logits = logn + torch.log(w)[None, :]
        r = torch.softmax(logits, dim=1)
        return x, s, r

    def eps_xbar(self, xbar: Tensor, sigma: float | Tensor) -> Tensor:
        """The exact ε(x̄, σ) = Σ_k r_k σ (x̄ − μ_k)/(v_k + σ²); σ a float or a (batch,) tensor."""
        x, s, r = self._posterior(xbar, sigma)
        mu, v = self.means.to(x.device), self.variances.to(x.device)
        if self._isotropic:
            a = r / (v[:, 0][None, :] + s * s)  # (B, K)
            eps = s * (x * a.sum(1, keepdim=True) - a @ mu)
        else:
            var = v[None] + (s * s)[:, :, None]
            eps = s * (r[:, :, None] * (x[:, None, :] - mu[None]) / var).sum(1)
        return eps.reshape(xbar.shape).to(xbar.dtype)

    def denoise(self, xbar: Tensor, sigma: float | Tensor) -> Tensor:
        """The exact posterior mean D(x̄, σ) = E[x0 | x̄] = x̄ − σ ε."""
        s = self._sig(sigma, xbar.shape[0]).to(xbar.device).reshape(-1, *([1] * (xbar.ndim - 1)))
        return xbar - s.to(xbar.dtype) * self.eps_xbar(xbar, sigma)

    def log_prob_xbar(self, xbar: Tensor, sigma: float | Tensor) -> Tensor:
        """log density (nats) of the x̄-marginal at σ, Σ_k w_k N(x̄; μ_k, v_k + σ²); shape (batch,)."""
        dev = xbar.device
        x = xbar.reshape(xbar.shape[0], -1).to(torch.float64)
        s = _t64(sigma).reshape(-1).to(dev)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        var = self.variances.to(dev)[None] + (s * s)[:, None, None]
        if bool((var == 0).any()):
            raise ValueError("the density of a distribution with zero-variance components is not defined at sigma = 0")
        diff = x[:, None, :] - self.means.to(dev)[None]
        logn = -0.5 * ((diff * diff) / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.logsumexp(logn + torch.log(self.weights.to(dev))[None], dim=1)

    def log_prob(self, x0: Tensor) -> Tensor:
        """log p_data(x0) in nats, shape (batch,)."""
        return self.log_prob_xbar(x0, 0.0)

    def sample(self, num: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """``num`` exact samples of x0, shape ``(num, *event_shape)``."""
        k = torch.multinomial(self.weights, num, replacement=True, generator=generator)
        z = torch.randn(num, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[k] + z * self.variances[k].sqrt()
        return x.reshape(num, *self.event_shape).to(dtype)

    def as_model(self, schedule: Schedule, prediction: Prediction = "eps") -> ScheduledOracle:
        """This oracle as a network ``model(x_t, t)`` on ``schedule``'s path predicting ``prediction``."""
        return ScheduledOracle(self, schedule, prediction)

    def as_eps_model(self, schedule: Schedule) -> ScheduledOracle:
        """This oracle as an ordinary ε-model ``eps(x_t, t)`` at the model scale of ``schedule``."""
        return ScheduledOracle(self, schedule)


class GaussianMixture(AnalyticModel):
    """``Σ_k w_k N(μ_k, diag(v_k))`` with means ``(K, *event_shape)``.

    ``variances`` may be a scalar, one per component ``(K,)`` (isotropic) or ``(K, *event_shape)``
    (diagonal); ``weights`` default to uniform.
    """

    def __init__(self, means: ArrayLike, variances: ArrayLike, weights: ArrayLike | None = None) -> None:
        super().__init__(means, weights, variances)
        if bool((self.variances == 0).any()):
            raise ValueError("GaussianMixture needs variances > 0; use EmpiricalDistribution for a finite data set")

    @classmethod
    def ring(cls, k: int = 8, radius: float = 4.0, std: float = 0.25) -> GaussianMixture:
        """``k`` equal isotropic 2-D Gaussians on a circle: a standard multimodal test problem."""
        ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
        return cls(means, std**2)

    @classmethod
    def random(cls, k: int = 8, dim: int = 64, spread: float = 2.0, seed: int = 0) -> GaussianMixture:
        """``k`` components in ``dim`` dimensions with seeded random means, diagonal variances and weights."""
        g = torch.Generator().manual_seed(seed)
        means = spread * torch.randn(k, dim, generator=g, dtype=torch.float64)
        variances = 0.05 + 0.45 * torch.rand(k, dim, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
        return cls(means, variances, weights)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.means.shape[0]}, event_shape={self.event_shape})"


class Gaussian(GaussianMixture):
    """Gaussian data ``N(mean, std²)`` (``std`` scalar or per coordinate), with the exact ODE solution."""

    def __init__(self, mean: ArrayLike, std: ArrayLike) -> None:
        mu = _t64(mean)
        sd = _t64(std)
        if mu.ndim == 0:
            raise ValueError("mean must have the event shape (at least 1-D), e.g. torch.zeros(2)")
        var = (sd * sd).expand(mu.shape) if sd.ndim == 0 else (sd * sd).reshape(mu.shape)
        super().__init__(mu[None], var[None])

    def solution(self, xbar: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """Exact x̄(σ_to) from x̄(σ_from): μ + (x̄ − μ) √((v + σ_to²)/(v + σ_from²))."""
        mu = self.means[0].to(xbar.device)
        v = self.variances[0].to(xbar.device)
        x = xbar.reshape(xbar.shape[0], -1).to(torch.float64)
        out = mu + (x - mu) * torch.sqrt((v + sigma_to**2) / (v + sigma_from**2))
        return out.reshape(xbar.shape).to(xbar.dtype)

    def __repr__(self) -> str:
        return f"Gaussian(event_shape={self.event_shape})"


class EmpiricalDistribution(AnalyticModel):
    """A finite data set (the mixture with zero variances): its exact ε is the memorising denoiser.

    That ε is singular at σ = 0, so σ below ``sigma_floor`` is evaluated at ``sigma_floor``.
    """

    def __init__(self, data: ArrayLike, weights: ArrayLike | None = None, sigma_floor: float = 1e-3) -> None:
        super().__init__(data, weights, 0.0)
        if sigma_floor <= 0:
            raise ValueError(f"sigma_floor must be > 0, got {sigma_floor}")
        self.sigma_floor = float(sigma_floor)

    def __repr__(self) -> str:
        return f"EmpiricalDistribution(N={self.means.shape[0]}, event_shape={self.event_shape})"


class ScheduledOracle(torch.nn.Module):
    """An exact oracle as a network ``model(x_t, t)`` on the path of ``schedule``.

    The input is at the model's scale, x_t = a(σ) x̄ with σ = σ(t); the output is the exact
    ``prediction`` at (x_t, t), from ε̂ = ``eps_xbar(x̄, σ)`` and x̂0 = x̄ − σ ε̂:
    ``eps`` ε̂, ``x0`` x̂0, ``v`` a ε̂ − s x̂0, ``flow`` ε̂ − x̂0 (rectified flow only). At σ = ∞
    (a = 0, pure noise) it returns the exact limit ε̂ = x_t/s, x̂0 = E[x0].
    """

    def __init__(self, oracle: AnalyticModel, schedule: Schedule, prediction: Prediction = "eps") -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
        if prediction == "flow" and not schedule.rectified_flow:
            raise ValueError(f"prediction 'flow' is defined on a FlowSchedule only, not on {schedule!r}")
        self.oracle = oracle
        self.schedule = schedule
        self.prediction: Prediction = prediction

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        sigma = self.schedule.sigma(t.to(torch.float64)).to(x_t.device)
        a = self.schedule.scale(sigma).reshape(shape)
        s = self.schedule.noise_scale(sigma).reshape(shape)
        x = x_t.to(torch.float64)
        noise = a == 0  # σ = ∞: the posterior is the prior
        finite = torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma)
        xbar = torch.where(noise, x, x / torch.where(noise, torch.ones_like(a), a))
        eps = self.oracle.eps_xbar(xbar, finite)
        x0 = xbar - finite.reshape(shape) * eps
        eps = torch.where(noise, x / s, eps)
        x0 = torch.where(noise, self.oracle.mean.to(x.device).expand_as(x0), x0)
        if self.prediction == "eps":
            out = eps
        elif self.prediction == "x0":
            out = x0
        elif self.prediction == "v":
            out = a * eps - s * x0
        else:
            out = eps - x0
        return out.to(x_t.dtype)


def reference_solve(
    field: Callable[[Tensor, float], Tensor],
    xbar: Tensor,
    sigma_from: float,
    sigma_to: float,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    method: str = "DOP853",
) -> tuple[Tensor, int]:
    """A float64 high-accuracy solve of dx̄/dσ = field(x̄, σ) with scipy's adaptive ``method``.

    ``field`` is any ``(xbar, sigma) -> eps`` callable (a :class:`~ddim_ode.ProbabilityFlowODE`, or
    an oracle's ``eps_xbar``). Returns x̄(σ_to) as float64 and the number of field evaluations.
    """
    shape, dev = xbar.shape, xbar.device
    count = [0]

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        count[0] += 1
        xb = torch.as_tensor(y, dtype=torch.float64, device=dev).reshape(shape)
        return field(xb, float(s)).to(torch.float64).reshape(-1).detach().cpu().numpy()

    y0 = xbar.detach().to(torch.float64).reshape(-1).cpu().numpy()
    from scipy.integrate import solve_ivp  # scipy is loaded only for a reference solve

    res = solve_ivp(rhs, (float(sigma_from), float(sigma_to)), y0, method=method, rtol=rtol, atol=atol)
    if not res.success:
        raise RuntimeError(f"reference solve failed: {res.message}")
    out = torch.as_tensor(res.y[:, -1], dtype=torch.float64, device=dev).reshape(shape)
    return out, count[0]
