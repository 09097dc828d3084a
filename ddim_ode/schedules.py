"""Noise schedules: ᾱ(t), σ(t) = √((1 − ᾱ)/ᾱ) and its inverse t(σ).

A schedule knows the forward process and nothing about networks. Every time-like value it
returns is float64. All methods accept a Python float (and then return a float) or a tensor
(and then return a float64 tensor on the same device).

Two families share one interface (:class:`Schedule`):

* :class:`DiscreteSchedule` — a DDPM with integer timesteps ``t = 0 .. T−1`` and
  ``ᾱ_t = Π_{i≤t} (1 − β_i)``. Fractional ``t`` (needed by solvers that evaluate between grid
  points) is defined by interpolating ``log σ`` linearly in ``t`` between neighbouring integers,
  as k-diffusion does. The map is exact on the integer grid and strictly monotone, and ``t(σ)``
  is its exact inverse (piecewise linear in ``log σ``).
* :class:`ContinuousSchedule` — a VP SDE schedule on ``t ∈ [t_min, t_max]`` with closed-form
  ``σ(t)`` and ``t(σ)`` (Song et al. 2021, "Score-Based Generative Modeling through SDEs";
  Nichol & Dhariwal 2021, "Improved DDPMs").

``t(σ)`` clamps to ``[t_min, t_max]``: in particular σ = 0 (clean data, ᾱ = 1) maps to the
smallest timestep ``t_min``, which is where an ε-network is evaluated at σ = 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, TypeVar, overload

import numpy as np
import torch
from torch import Tensor

__all__ = ["Schedule", "DiscreteSchedule", "ContinuousSchedule", "LinearVPSchedule", "CosineVPSchedule"]

T = TypeVar("T", float, Tensor)


def _to64(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(torch.float64)
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def _out(result: Tensor, like: Any) -> Any:
    if isinstance(like, Tensor) or (isinstance(like, np.ndarray) and like.ndim > 0):
        return result
    if isinstance(like, (list, tuple)):
        return result
    return float(result)


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation like ``numpy.interp`` (clamped at the ends), in torch.

    Host tensors outside autograd go through ``numpy.interp`` itself (a dozen times faster on the
    short grids a solve tabulates); device tensors and tensors that need gradients stay in torch.
    """
    if x.device.type == "cpu" and xp.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled()):
        xn = x.detach().numpy()
        return torch.from_numpy(np.asarray(np.interp(xn, xp.numpy(), fp.numpy()), dtype=np.float64).reshape(xn.shape))
    xp = xp.to(x.device)
    fp = fp.to(x.device)
    x = x.clamp(xp[0], xp[-1])
    idx = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, len(xp) - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    f0, f1 = fp[idx - 1], fp[idx]
    w = (x - x0) / (x1 - x0)
    return f0 + w * (f1 - f0)


class Schedule(ABC):
    """Common interface of all noise schedules.

    Subclasses implement :meth:`sigma` and :meth:`t`; ``ᾱ = 1 / (1 + σ²)`` follows.
    """

    #: smallest and largest timestep, in the schedule's own units
    t_min: float
    t_max: float

    @overload
    def sigma(self, t: float) -> float: ...
    @overload
    def sigma(self, t: Tensor) -> Tensor: ...
    @abstractmethod
    def sigma(self, t):  # type: ignore[no-untyped-def]
        """σ(t) = √((1 − ᾱ_t)/ᾱ_t)."""

    @overload
    def t(self, sigma: float) -> float: ...
    @overload
    def t(self, sigma: Tensor) -> Tensor: ...
    @abstractmethod
    def t(self, sigma):  # type: ignore[no-untyped-def]
        """The inverse t(σ), clamped to ``[t_min, t_max]`` (σ = 0 maps to ``t_min``)."""

    def scale(self, sigma: T) -> T:
        """a(σ) with x_t = a · x̄: the factor between the model's input scale and DDIM coordinates.

        For a variance-preserving path a = √ᾱ = 1/√(1 + σ²).
        """
        s = _to64(sigma)
        return _out(torch.rsqrt(1.0 + s * s), sigma)

    def alpha_bar(self, t: T) -> T:
        """ᾱ_t = 1 / (1 + σ(t)²)."""
        s = _to64(self.sigma(_to64(t)))
        return _out(1.0 / (1.0 + s * s), t)

    @property
    def sigma_min(self) -> float:
        """σ at the smallest timestep ``t_min`` (the last noisy point of a decoding grid)."""
        return float(self.sigma(float(self.t_min)))

    @property
    def sigma_max(self) -> float:
        """σ at the largest timestep ``t_max`` (pure noise)."""
        return float(self.sigma(float(self.t_max)))

    @property
    def is_discrete(self) -> bool:
        return False


class DiscreteSchedule(Schedule):
    """A DDPM schedule with ``T`` integer timesteps ``t = 0 .. T−1``.

    Build it from ``betas`` or ``alphas_cumprod`` (to wrap anyone's trained model), or with
    :meth:`linear` (DDPM, Ho et al. 2020) or :meth:`cosine` (Nichol & Dhariwal 2021).

    Fractional ``t`` interpolates ``log σ`` linearly between neighbouring integers; ``t(σ)`` is
    its exact inverse and clamps to ``[0, T − 1]``.
    """

    def __init__(
        self,
        *,
        betas: Sequence[float] | np.ndarray | Tensor | None = None,
        alphas_cumprod: Sequence[float] | np.ndarray | Tensor | None = None,
    ) -> None:
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("DiscreteSchedule needs exactly one of `betas` or `alphas_cumprod`")
        if betas is not None:
            b = _to64(betas).cpu().reshape(-1)
            if b.numel() < 2 or not bool(torch.all((b > 0) & (b < 1))):
                raise ValueError("`betas` must hold at least 2 values, each in the open interval (0, 1)")
            ab = torch.cumprod(1.0 - b, dim=0)
        else:
            ab = _to64(alphas_cumprod).cpu().reshape(-1)
            if ab.numel() < 2 or not bool(torch.all((ab > 0) & (ab < 1))):
                raise ValueError("`alphas_cumprod` must hold at least 2 values, each in (0, 1)")
            if not bool(torch.all(ab[1:] < ab[:-1])):
                raise ValueError("`alphas_cumprod` must be strictly decreasing in t")
        self.alphas_cumprod: Tensor = ab
        self.betas: Tensor = 1.0 - ab / torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        self.num_timesteps: int = int(ab.numel())
        self.sigmas: Tensor = torch.sqrt((1.0 - ab) / ab)
        self.log_sigmas: Tensor = torch.log(self.sigmas)
        self._ts = torch.arange(self.num_timesteps, dtype=torch.float64)
        self.t_min = 0.0
        self.t_max = float(self.num_timesteps - 1)

    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, num_timesteps: int = 1000) -> DiscreteSchedule:
        """DDPM's linear schedule: β = linspace(beta_start, beta_end, T) (Ho et al. 2020)."""
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
        return cls(betas=torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteSchedule:
        """The cosine schedule of Nichol & Dhariwal 2021: ᾱ_t = f(t)/f(0), β clipped at 0.999."""
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64)
        f = torch.cos((steps / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1.0 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(betas=betas)

    @property
    def is_discrete(self) -> bool:
        return True

    def sigma(self, t):  # type: ignore[no-untyped-def]
        tt = _to64(t)
        return _out(torch.exp(_interp(tt, self._ts, self.log_sigmas)), t)

    def t(self, sigma):  # type: ignore[no-untyped-def]
        s = _to64(sigma)
        log_s = torch.log(s.clamp(min=float(self.sigmas[0])))
        return _out(_interp(log_s, self.log_sigmas, self._ts), sigma)

    def __repr__(self) -> str:
        return (
            f"DiscreteSchedule(T={self.num_timesteps}, sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g})"
        )


class ContinuousSchedule(Schedule):
    """A variance-preserving schedule in continuous time ``t ∈ [t_min, t_max]``.

    Use :meth:`linear` (score-SDE VP) or :meth:`cosine`. ``σ(t)`` and ``t(σ)`` are closed form.
    """

    def __init__(self, t_min: float, t_max: float) -> None:
        if not (0.0 <= t_min < t_max):
            raise ValueError(f"need 0 <= t_min < t_max, got t_min={t_min}, t_max={t_max}")
        self.t_min = float(t_min)
        self.t_max = float(t_max)

    @classmethod
    def linear(
        cls, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0
    ) -> LinearVPSchedule:
        """Score-SDE VP: log ᾱ(t) = −(β_min t + ½(β_max − β_min) t²) (Song et al. 2021)."""
        return LinearVPSchedule(beta_min, beta_max, t_min, t_max)

    @classmethod
    def cosine(cls, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946) -> CosineVPSchedule:
        """Continuous cosine: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t + s)/(1 + s)) π/2).

        ᾱ(1) = 0 (σ = ∞), so ``t_max`` defaults to 0.9946 as in DPM-Solver.
        """
        return CosineVPSchedule(s, t_min, t_max)


class LinearVPSchedule(ContinuousSchedule):
    """Score-SDE VP schedule: σ(t)² = exp(β_min t + ½(β_max − β_min) t²) − 1."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        if not (0 < beta_min < beta_max):
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        super().__init__(t_min, t_max)
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def sigma(self, t):  # type: ignore[no-untyped-def]
        tt = _to64(t)
        integral = self.beta_min * tt + 0.5 * (self.beta_max - self.beta_min) * tt * tt
        return _out(torch.sqrt(torch.expm1(integral)), t)

    def t(self, sigma):  # type: ignore[no-untyped-def]
        s = _to64(sigma)
        big_l = torch.log1p(s * s)  # = β_min t + ½ Δ t²
        delta = self.beta_max - self.beta_min
        tt = 2.0 * big_l / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * delta * big_l))
        return _out(tt.clamp(self.t_min, self.t_max), sigma)

    def __repr__(self) -> str:
        b = f"beta_min={self.beta_min}, beta_max={self.beta_max}"
        return f"ContinuousSchedule.linear({b}, t=[{self.t_min}, {self.t_max}])"


class CosineVPSchedule(ContinuousSchedule):
    """Continuous cosine schedule (Nichol & Dhariwal 2021)."""

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        if not (0 < t_max < 1):
            raise ValueError(f"the cosine schedule needs t_max < 1 (sigma is infinite at t = 1), got {t_max}")
        super().__init__(t_min, t_max)
        self.s = float(s)
        self._a0 = self.s / (1 + self.s) * math.pi / 2

    def sigma(self, t):  # type: ignore[no-untyped-def]
        a = (_to64(t) + self.s) / (1 + self.s) * math.pi / 2
        # f(0)/f(t) − 1 = (cos² a0 − cos² a)/cos² a = sin(a − a0) sin(a + a0)/cos² a, without cancellation
        s2 = torch.sin(a - self._a0) * torch.sin(a + self._a0) / torch.cos(a) ** 2
        return _out(torch.sqrt(s2.clamp(min=0.0)), t)

    def t(self, sigma):  # type: ignore[no-untyped-def]
        s = _to64(sigma)
        # cos a = cos a0 / √(1+σ²), sin a = √((sin² a0 + σ²)/(1+σ²)); atan2 keeps full precision
        a = torch.atan2(torch.sqrt(math.sin(self._a0) ** 2 + s * s), torch.full_like(s, math.cos(self._a0)))
        tt = a * 2.0 * (1 + self.s) / math.pi - self.s
        return _out(tt.clamp(self.t_min, self.t_max), sigma)

    def __repr__(self) -> str:
        return f"ContinuousSchedule.cosine(s={self.s}, t=[{self.t_min}, {self.t_max}])"
