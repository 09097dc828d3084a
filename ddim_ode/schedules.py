"""Noise schedules: Gaussian paths x_t = a(t) x0 + s(t) ε, their σ̄(t) = s/a and its inverse t(σ̄).

Any Gaussian path becomes one ODE in DDIM coordinates: with x̄ = x_t/a and σ̄ = s/a,

    x̄ = x0 + σ̄ ε,      dx̄/dσ̄ = ε̂(x̄, σ̄)   (the probability-flow ODE, exactly),

whatever a and s are; DDIM is its Euler method. A path enters only through σ̄(t), its inverse
t(σ̄) (the time the network is called with) and a(σ̄) (:meth:`Schedule.scale`, the factor between
the network's input x_t and x̄), so every solver, grid, inversion and likelihood serves every path.
The σ of the rest of the package is this σ̄.

A schedule knows the forward process and nothing about networks. Every time-like value it
returns is float64. All methods accept a Python float (and then return a float) or a tensor
(and then return a float64 tensor on the same device).

Three kinds of path share one interface (:class:`Schedule`):

* variance preserving (VP), a = √ᾱ, s = √(1 − ᾱ), σ̄ = √((1 − ᾱ)/ᾱ), a = 1/√(1 + σ̄²);
* variance exploding (VE, EDM), a = 1, s = σ: :class:`VESchedule`;
* rectified flow, a = 1 − τ, s = τ, σ̄ = τ/(1 − τ), a = 1/(1 + σ̄): :class:`FlowSchedule`. A time
  shift τ ↦ shift·τ/(1 + (shift − 1)τ) is σ̄ ↦ shift·σ̄: it changes the grids, not the ODE.

The VP schedules come in two families:

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

Constructors refuse non-finite or out-of-range parameters with a one-line ``ValueError`` naming the
parameter and its allowed range.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, TypeVar, overload

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "DiscreteSchedule",
    "ContinuousSchedule",
    "LinearVPSchedule",
    "CosineVPSchedule",
    "VESchedule",
    "FlowSchedule",
]

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


def _check_number(name: str, value: Any, allowed: str, ok: Callable[[float], bool]) -> float:
    """``float(value)`` if it is a finite number with ``ok(value)``, else a one-line ``ValueError``
    naming ``name`` and the ``allowed`` range."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}") from None
    if not (math.isfinite(v) and ok(v)):
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")
    return v


class Schedule(ABC):
    """Common interface of all noise schedules.

    Subclasses implement :meth:`sigma` and :meth:`t`; paths other than VP also override
    :meth:`scale` and :meth:`noise_scale`. ``ᾱ = 1 / (1 + σ²)`` follows for VP paths.
    """

    #: smallest and largest timestep, in the schedule's own units (the network's time argument)
    t_min: float
    t_max: float
    #: whether the path is rectified flow, x_τ = (1 − τ) x0 + τ ε, on which the prediction "flow"
    #: (the velocity dx_τ/dτ = ε − x0) is defined
    rectified_flow: ClassVar[bool] = False

    @overload
    def sigma(self, t: float) -> float: ...
    @overload
    def sigma(self, t: Tensor) -> Tensor: ...
    @abstractmethod
    def sigma(self, t):  # type: ignore[no-untyped-def]
        """σ̄(t) = s(t)/a(t) (for VP paths √((1 − ᾱ_t)/ᾱ_t))."""

    @overload
    def t(self, sigma: float) -> float: ...
    @overload
    def t(self, sigma: Tensor) -> Tensor: ...
    @abstractmethod
    def t(self, sigma):  # type: ignore[no-untyped-def]
        """The inverse t(σ), clamped to ``[t_min, t_max]`` (σ = 0 maps to ``t_min``)."""

    def scale(self, sigma: T) -> T:
        """a(σ) with x_t = a · x̄: the factor between the model's input scale and DDIM coordinates.

        For a variance-preserving path a = √ᾱ = 1/√(1 + σ²) (0 at σ = ∞).
        """
        if isinstance(sigma, float):  # host floats in plain arithmetic: the driver calls this per solve
            return 0.0 if math.isinf(sigma) else (1.0 + sigma * sigma) ** -0.5  # type: ignore[return-value]
        s = _to64(sigma)
        return _out(torch.rsqrt(1.0 + s * s), sigma)

    def noise_scale(self, sigma: T) -> T:
        """s(σ) = σ · a(σ), the noise coefficient of x_t = a x0 + s ε, with its limit at σ = ∞.

        For a variance-preserving path s = √(1 − ᾱ) = σ/√(1 + σ²) (1 at σ = ∞).
        """
        if isinstance(sigma, float):
            return 1.0 if math.isinf(sigma) else sigma * (1.0 + sigma * sigma) ** -0.5  # type: ignore[return-value]
        s = _to64(sigma)
        return _out(torch.where(torch.isinf(s), torch.ones_like(s), s * torch.rsqrt(1.0 + s * s)), sigma)

    def alpha_bar(self, t: T) -> T:
        """ᾱ_t = 1 / (1 + σ(t)²) (on a VP path a²; on other paths the VP ᾱ with the same σ)."""
        s = _to64(self.sigma(_to64(t)))
        return _out(1.0 / (1.0 + s * s), t)

    def grid_time(self, t: Tensor) -> Tensor:
        """The time u in which the "uniform" and "quad" grids are spaced, from t (default: u = t)."""
        return t

    def from_grid_time(self, u: Tensor) -> Tensor:
        """The inverse of :meth:`grid_time`: the timestep t of a grid time u (default: t = u)."""
        return u

    @property
    def grid_span(self) -> tuple[float, float]:
        """(top, bottom) of the default range of the "uniform" and "quad" grids, in grid time.

        Default: ``(t_max, t_min)``; :class:`FlowSchedule` follows diffusers' flow scheduler.
        """
        return float(self.t_max), float(self.t_min)

    @functools.cached_property
    def sigma_min(self) -> float:
        """σ at the smallest timestep ``t_min`` (the last noisy point of a decoding grid)."""
        return float(self.sigma(float(self.t_min)))

    @functools.cached_property
    def sigma_max(self) -> float:
        """σ at the largest timestep ``t_max`` (pure noise; ``inf`` for a path that reaches a = 0)."""
        return float(self.sigma(float(self.t_max)))

    @property
    def sigma_top(self) -> float:
        """The largest finite σ: where the grids spaced in σ ("logsnr", "karras") start.

        ``sigma_max`` when it is finite; a path that reaches pure noise at σ = ∞ names its own
        (:class:`FlowSchedule`: the top of diffusers' flow-σ grids).
        """
        return self.sigma_max

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
        name = "betas" if betas is not None else "alphas_cumprod"
        if betas is not None:
            b = _to64(betas).cpu().reshape(-1)
            if b.numel() < 2 or not bool(torch.all((b > 0) & (b < 1))):
                raise ValueError("`betas` must hold at least 2 values, each finite and in the open interval (0, 1)")
            ab = torch.cumprod(1.0 - b, dim=0)
        else:
            ab = _to64(alphas_cumprod).cpu().reshape(-1)
            if ab.numel() < 2 or not bool(torch.all((ab > 0) & (ab < 1))):
                raise ValueError("`alphas_cumprod` must hold at least 2 values, each finite and in (0, 1)")
            if not bool(torch.all(ab[1:] < ab[:-1])):
                raise ValueError("`alphas_cumprod` must be strictly decreasing in t")
        sigmas = torch.sqrt((1.0 - ab) / ab)
        if not bool(torch.isfinite(sigmas).all()):
            k = int(torch.isfinite(sigmas).logical_not().nonzero()[0])
            raise ValueError(
                f"`{name}` give alphas_cumprod = {float(ab[k]):.3g} at t={k}, where sigma is infinite; allowed: "
                "alphas_cumprod in (0, 1) with finite sigma = sqrt((1 - a)/a) at every t (no zero terminal SNR)"
            )
        self.alphas_cumprod: Tensor = ab
        self.betas: Tensor = 1.0 - ab / torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        self.num_timesteps: int = int(ab.numel())
        self.sigmas: Tensor = sigmas
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
        s = _check_number("s (the cosine schedule's offset)", s, ">= 0", lambda v: v >= 0)
        max_beta = _check_number("max_beta", max_beta, "in (0, 1)", lambda v: 0 < v < 1)
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
        if not (math.isfinite(t_min) and math.isfinite(t_max) and 0.0 <= t_min < t_max):
            raise ValueError(f"need finite 0 <= t_min < t_max, got t_min={t_min}, t_max={t_max}")
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
        if not (math.isfinite(beta_min) and math.isfinite(beta_max) and 0 < beta_min < beta_max):
            raise ValueError(f"need finite 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
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
        s = _check_number("s (the cosine schedule's offset)", s, ">= 0", lambda v: v >= 0)
        if not (0 < t_max < 1):
            raise ValueError(f"the cosine schedule needs 0 < t_max < 1 (sigma is infinite at t = 1), got {t_max}")
        super().__init__(t_min, t_max)
        self.s = s
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


class VESchedule(Schedule):
    """The variance-exploding path x_t = x0 + σ ε (a = 1, σ̄ = σ) of Song et al. 2021 (VE SDE) and
    EDM (Karras et al. 2022), on σ ∈ [sigma_min, sigma_max].

    The network is called with t = σ itself (EDM's convention: ``t(σ) = σ`` clamped to
    ``[sigma_min, sigma_max]``) on x_t = x̄ (no input scaling). An EDM-style denoiser
    ``D(x, sigma)`` — for example a raw network wrapped in :class:`~ddim_ode.precond.EDMPrecond` —
    is then a model with ``prediction="x0"``, and an ε-network ``eps(x, sigma)`` one with
    ``prediction="eps"``.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        lo = _check_number("sigma_min", sigma_min, "> 0", lambda v: v > 0)
        hi = _check_number("sigma_max", sigma_max, f"> sigma_min = {lo}", lambda v: v > lo)
        self.t_min = lo
        self.t_max = hi

    def sigma(self, t):  # type: ignore[no-untyped-def]
        return _out(_to64(t).clone(), t)

    def t(self, sigma):  # type: ignore[no-untyped-def]
        return _out(_to64(sigma).clamp(self.t_min, self.t_max), sigma)

    def scale(self, sigma: T) -> T:
        """a = 1: the network sees x̄ itself."""
        if isinstance(sigma, float):
            return 1.0  # type: ignore[return-value]
        return _out(torch.ones_like(_to64(sigma)), sigma)

    def noise_scale(self, sigma: T) -> T:
        """s = σ."""
        if isinstance(sigma, float):
            return sigma  # type: ignore[return-value]
        return _out(_to64(sigma).clone(), sigma)

    def __repr__(self) -> str:
        return f"VESchedule(sigma_min={self.t_min}, sigma_max={self.t_max})"


TimeShift = Literal["exponential", "linear"]


class FlowSchedule(Schedule):
    """Rectified flow, x_τ = (1 − τ) x0 + τ ε on τ ∈ [0, 1] (Liu et al. 2023; Lipman et al. 2023;
    Esser et al. 2024, SD3), with the conventions of diffusers' flow-matching schedulers.

    a = 1 − τ, s = τ, so σ̄ = τ/(1 − τ), τ = σ̄/(1 + σ̄) and a(σ̄) = 1/(1 + σ̄). τ = 1 is pure noise,
    σ̄ = ∞: ``sigma_max`` is ``inf`` and a decoding grid may start there (the first DDIM step from
    σ̄ = ∞ is x̄₁ = x̂0 + σ̄₁ ε̂, see :meth:`~ddim_ode.field.ProbabilityFlowODE.evaluate_x`).

    **Time units.** The network is called with ``t = τ · timestep_scale``; ``timestep_scale``
    defaults to ``num_train_timesteps`` (1000), the timestep diffusers' flow transformers take by
    default (SD3's transformer; its pipelines pass ``scheduler.timesteps``). A network that takes τ
    itself (diffusers' Flux pipelines divide by 1000 before the call) needs ``timestep_scale=1``.
    ``t_min`` is ``timestep_scale`` times the smallest τ the scheduler uses, ``t_max = timestep_scale``.

    **Shift.** A time shift τ = shift·u/(1 + (shift − 1) u) is σ̄ = shift · σ̄(u): it moves grid
    points, the ODE in (x̄, σ̄) is unchanged, so it lives in the grids (:meth:`grid_time`): the
    "uniform" grid is uniform in the unshifted time u. The shift is ``shift`` or, with
    ``use_dynamic_shifting``, resolution dependent: μ = ``mu`` or, from an image sequence length
    (:meth:`for_image_seq_len`), μ interpolated linearly between ``base_shift`` at
    ``base_image_seq_len`` and ``max_shift`` at ``max_image_seq_len``; the shift is then e^μ
    (``time_shift_type="exponential"``) or μ (``"linear"``).

    **Default grid** (``make_grid(schedule, "uniform", n)``): diffusers'
    ``FlowMatchEulerDiscreteScheduler.set_timesteps(n)``: u from 1 down to τ_floor in n points,
    shifted, then 0. τ_floor is that scheduler's smallest training noise level: shift(1/N) with a
    static shift (its training levels are stored shifted, so the last grid point is shifted twice,
    as diffusers does) and 1/N with dynamic shifting (N = ``num_train_timesteps``).
    """

    rectified_flow: ClassVar[bool] = True

    def __init__(
        self,
        shift: float = 1.0,
        num_train_timesteps: int = 1000,
        *,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: TimeShift = "exponential",
        mu: float | None = None,
        timestep_scale: float | None = None,
    ) -> None:
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, (int, np.integer)):
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps}")
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {time_shift_type!r}")
        self.shift = _check_number("shift", shift, "> 0", lambda v: v > 0)
        self.num_train_timesteps = int(num_train_timesteps)
        self.use_dynamic_shifting = bool(use_dynamic_shifting)
        self.base_shift = _check_number("base_shift", base_shift, "", lambda v: True)
        self.max_shift = _check_number("max_shift", max_shift, "", lambda v: True)
        self.base_image_seq_len = int(_check_number("base_image_seq_len", base_image_seq_len, ">= 1", lambda v: v >= 1))
        self.max_image_seq_len = int(
            _check_number(
                "max_image_seq_len",
                max_image_seq_len,
                f"> base_image_seq_len = {self.base_image_seq_len}",
                lambda v: v > self.base_image_seq_len,
            )
        )
        self.time_shift_type: TimeShift = time_shift_type
        self.mu: float | None = None
        if mu is not None:
            if not self.use_dynamic_shifting:
                raise ValueError("mu applies only with use_dynamic_shifting=True; use shift= for a static shift")
            allowed = "> 0 (the linear time shift divides by it)" if time_shift_type == "linear" else ""
            self.mu = _check_number("mu", mu, allowed, lambda v: v > 0 or time_shift_type == "exponential")
        scale = float(num_train_timesteps) if timestep_scale is None else timestep_scale
        self.timestep_scale = _check_number("timestep_scale", scale, "> 0", lambda v: v > 0)
        # the scheduler's smallest training noise level (its `sigma_min`): stored shifted when static
        floor = 1.0 / self.num_train_timesteps
        self.tau_floor = floor if self.use_dynamic_shifting else self._shift_tau(floor, self.shift)
        lowest = self.tau_floor
        if not self.use_dynamic_shifting or self.mu is not None:  # a shift < 1 puts the grid's end lower
            lowest = min(lowest, self._shift_tau(self.tau_floor, self.effective_shift))
        self.t_min = lowest * self.timestep_scale
        self.t_max = self.timestep_scale

    @staticmethod
    def _shift_tau(u: float, shift: float) -> float:
        return shift * u / (1.0 + (shift - 1.0) * u)

    @property
    def effective_shift(self) -> float:
        """The factor σ̄ ↦ shift·σ̄ of the grids: ``shift``, or e^μ / μ with dynamic shifting."""
        if not self.use_dynamic_shifting:
            return self.shift
        if self.mu is None:
            raise ValueError(
                "this FlowSchedule uses dynamic shifting and has no mu yet: pass mu=... or use "
                "schedule.for_image_seq_len(image_seq_len) before building a grid"
            )
        return math.exp(self.mu) if self.time_shift_type == "exponential" else self.mu

    def mu_for(self, image_seq_len: int) -> float:
        """μ for an image of ``image_seq_len`` latent tokens: linear between (base_image_seq_len,
        base_shift) and (max_image_seq_len, max_shift), as diffusers' flow pipelines compute it."""
        n = _check_number("image_seq_len", image_seq_len, ">= 1", lambda v: v >= 1)
        slope = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return self.base_shift + slope * (n - self.base_image_seq_len)

    def for_image_seq_len(self, image_seq_len: int) -> FlowSchedule:
        """This dynamically shifted schedule with μ set for ``image_seq_len`` tokens (:meth:`mu_for`)."""
        if not self.use_dynamic_shifting:
            raise ValueError("for_image_seq_len needs use_dynamic_shifting=True; this schedule has a static shift")
        return FlowSchedule(
            self.shift,
            self.num_train_timesteps,
            use_dynamic_shifting=True,
            base_shift=self.base_shift,
            max_shift=self.max_shift,
            base_image_seq_len=self.base_image_seq_len,
            max_image_seq_len=self.max_image_seq_len,
            time_shift_type=self.time_shift_type,
            mu=self.mu_for(image_seq_len),
            timestep_scale=self.timestep_scale,
        )

    def sigma(self, t):  # type: ignore[no-untyped-def]
        tau = _to64(t) / self.timestep_scale
        return _out(tau / (1.0 - tau), t)  # τ = 1 gives inf

    def t(self, sigma):  # type: ignore[no-untyped-def]
        s = _to64(sigma)
        tau = 1.0 / (1.0 + 1.0 / s)  # τ = σ̄/(1 + σ̄), also at σ̄ = 0 and σ̄ = ∞
        return _out((tau * self.timestep_scale).clamp(self.t_min, self.t_max), sigma)

    def scale(self, sigma: T) -> T:
        """a = 1 − τ = 1/(1 + σ̄) (0 at σ̄ = ∞)."""
        if isinstance(sigma, float):
            return 1.0 / (1.0 + sigma)  # type: ignore[return-value]
        return _out(1.0 / (1.0 + _to64(sigma)), sigma)

    def noise_scale(self, sigma: T) -> T:
        """s = τ = σ̄/(1 + σ̄) (1 at σ̄ = ∞)."""
        if isinstance(sigma, float):
            return 0.0 if sigma == 0.0 else 1.0 / (1.0 + 1.0 / sigma)  # type: ignore[return-value]
        return _out(1.0 / (1.0 + 1.0 / _to64(sigma)), sigma)

    def grid_time(self, t: Tensor) -> Tensor:
        """The unshifted time u = σ̄_u/(1 + σ̄_u) with σ̄_u = σ̄(t)/shift."""
        sigma_u = self.sigma(_to64(t)) / self.effective_shift
        return 1.0 / (1.0 + 1.0 / sigma_u)

    def from_grid_time(self, u: Tensor) -> Tensor:
        """t of the shifted time τ = shift·u/(1 + (shift − 1) u)."""
        k = self.effective_shift
        u = _to64(u)
        return k * u / (1.0 + (k - 1.0) * u) * self.timestep_scale

    @property
    def grid_span(self) -> tuple[float, float]:
        """u from 1 (pure noise) down to τ_floor, the span of diffusers' ``set_timesteps``."""
        return 1.0, self.tau_floor

    @property
    def sigma_top(self) -> float:
        """σ̄ at the unshifted time u = 1 − 1/N (N = ``num_train_timesteps``), shifted: shift · (N − 1).

        The first point of diffusers' flow-σ grids (``DPMSolverMultistepScheduler(use_flow_sigmas=True)``
        starts at u = 1 − 1/N); the "logsnr" and "karras" grids of a flow start here, one training
        level below pure noise, as σ_min sits one level above the data.
        """
        return self.effective_shift * (self.num_train_timesteps - 1.0)

    def __repr__(self) -> str:
        if self.use_dynamic_shifting:
            shift = f"use_dynamic_shifting=True, mu={self.mu}, time_shift_type={self.time_shift_type!r}"
        else:
            shift = f"shift={self.shift}"
        n = f"num_train_timesteps={self.num_train_timesteps}, timestep_scale={self.timestep_scale}"
        return f"FlowSchedule({shift}, {n})"
