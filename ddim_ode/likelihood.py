"""Exact log-likelihoods through the probability-flow ODE.

Along a solution of dx̄/dσ = f(x̄, σ) = ε(x̄, σ) the log-density of the x̄-marginal changes by the
instantaneous change of variables (Chen et al. 2018, "Neural Ordinary Differential Equations")

    d log p_σ(x̄(σ)) / dσ = −div_x̄ f(x̄(σ), σ),

so encoding a data point x0 from σ_min up to σ_max while integrating the divergence gives

    log p_σmin(x0) = log p_prior(x̄(σ_max)) + ∫_{σ_min}^{σ_max} div_x̄ f(x̄(σ), σ) dσ

(Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations",
Appendix D.2). :func:`log_likelihood` does this with a torchdiffeq solver (adaptive ``dopri5`` by
default) on the augmented state (x, ℓ).

Time variable and scale. The integration runs in ``s = asinh σ`` (so σ = sinh s, √(1 + σ²) = cosh s,
s ≈ σ near the data and s ≈ log 2σ at the top: σ ∈ [0, 157] becomes s ∈ [0, 5.75]) on the VP-scale
state ``x = x̄/√(1 + σ²) = x̄/cosh s``, which stays O(1) throughout:

    dx/ds = ε(x cosh s, sinh s) − tanh(s) x,        dℓ/ds = div_x [ε(x cosh s, sinh s)] = cosh(s) div_x̄ ε,

and ℓ(s_max) = ∫ div_x̄ f dσ. Every evaluation goes through :class:`~ddim_ode.ProbabilityFlowODE`
(one NFE each) and the divergence is taken by autograd through it:

* ``divergence="exact"``: the trace of the Jacobian, ``d`` vector–Jacobian products per NFE
  (d = number of dimensions; batched with ``is_grads_batched`` where the model allows it).
* ``divergence="hutchinson"``: the Skilling–Hutchinson estimator ``vᵀ (∂ε/∂x) v`` with ``probes``
  Rademacher or Gaussian vectors drawn once and held fixed along the trajectory (Grathwohl et al.
  2019, "FFJORD"), ``probes`` vector–Jacobian products per NFE. Each probe carries its own ℓ, so
  the spread of the per-probe log-likelihoods gives the estimator's standard error.

Prior. ``prior="vp"`` (default) is what an ε-network assumes: x_T = x̄/√(1 + σ_max²) is standard
normal, i.e. x̄(σ_max) ~ N(0, (1 + σ_max²) I), so
``log p(x̄) = log N(x_T; 0, I) − (d/2) log(1 + σ_max²)``. It is exact for N(0, I) data; otherwise
it differs from the true σ_max-marginal per sample by O(|μ|/σ_max) (μ the data mean, random sign)
and on average over the data by O(1/σ_max²) (σ_max = 157.4 for the DDPM linear schedule).
Any callable ``prior(xbar, sigma) -> log density (batch,)`` can be given instead, e.g. an exact
oracle's ``log_prob_xbar``.

Discrete data. Integer-valued images (the digits have pixels 0..16, scaled as ``pixel/16·2 − 1``)
live on a lattice of spacing Δ (``bin_width``: 2/16 for the digits, 2/255 for 8-bit images scaled
as x/255·2 − 1) and have probability masses, not densities. Bits per dimension of such data are reported as

    bpd = −(log p(x) + d log Δ) / (d ln 2),

the density times the bin volume Δ^d. With ``dequantize="uniform"``, x = x0 + u, u ~ U(−Δ/2, Δ/2)^d,
and by Jensen's inequality E_u[log p(x0 + u)] + d log Δ ≤ log P(x0), where P(x0) = ∫_bin p is the
mass the model puts on x0's bin: the reported bpd is then a stochastic *upper bound* on the model's
discrete negative log-likelihood (Theis et al. 2016; Ho et al. 2019). With ``dequantize="none"``
the density is evaluated at the lattice point itself — a point estimate of the mass, not a bound.
A uniform model over the 17 digit levels scores log2 17 = 4.09 bits/dim.

σ_min. ``sigma_min=None`` (or 0) starts at the data, σ = 0, and returns log p_0(x0) (an ε-network
is then evaluated at the schedule's smallest timestep for σ below σ(t_min), see
:class:`~ddim_ode.ProbabilityFlowODE`). ``sigma_min > 0`` starts at x̄ = x0 at σ = σ_min and
returns log p_σmin(x0), the density of the data blurred by N(0, σ_min² I) — the practice of
Song et al. 2021 (ε = 1e-5), which avoids the region below the smallest noise level the network was
trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .checks import check_batch_size, check_x
from .divergence import exact_divergence, hutchinson_divergence
from .field import EpsModel, Prediction, ProbabilityFlowODE, SigmaModel
from .models import resolve_model
from .ranges import check_choice
from .schedules import Schedule

__all__ = [
    "LikelihoodResult",
    "log_likelihood",
    "vp_prior_log_prob",
    "DIVERGENCES",
    "PROBE_DISTS",
    "DEQUANTIZE",
    "DIGITS_BIN_WIDTH",
    "ODE_METHODS",
]

DIVERGENCES = ("exact", "hutchinson")
PROBE_DISTS = ("rademacher", "gaussian")
DEQUANTIZE = ("none", "uniform")
#: the digits' lattice spacing in the model's [−1, 1] scale: pixels 0..16 map to pixel/16·2 − 1
DIGITS_BIN_WIDTH = 2.0 / 16.0
_FIXED_GRID_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
#: the torchdiffeq methods the augmented ODE may be integrated with (adaptive, then fixed-grid)
ODE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", *_FIXED_GRID_METHODS, "scipy_solver")
Prior = Literal["vp"] | Callable[[Tensor, float], Tensor]


@dataclass
class LikelihoodResult:
    """Per-sample log-likelihoods from :func:`log_likelihood`.

    Attributes:
        log_prob: log-density in nats of the model at the evaluated points (x0, or x0 + u when
            dequantised), shape ``(batch,)``; the mean over probes for Hutchinson.
        bits_per_dim: ``−(log_prob + d log Δ)/(d ln 2)`` with Δ = ``bin_width`` (no Δ term when
            ``bin_width`` is None), shape ``(batch,)``.
        log_prob_std_err: standard error of ``log_prob`` from the Hutchinson estimator (the spread
            over probes / √probes); ``None`` for the exact divergence or a single probe.
        bits_per_dim_std_err: the same in bits/dim.
        prior_log_prob: log p_prior(x̄(σ_max)) in x̄ coordinates, shape ``(batch,)``.
        delta_log_prob: ∫ div_x̄ f dσ from σ_min to σ_max (mean over probes), shape ``(batch,)``.
        latent: the encoded state at σ_max in VP scale, x_T = x̄/√(1 + σ_max²).
        nfe: network evaluations (forward passes); the divergence adds ``d`` (exact) or ``probes``
            (Hutchinson) vector–Jacobian products per evaluation.
        dim: dimensions per sample, d.
        sigma_min, sigma_max: the integration range in σ.
        bin_width: Δ used for bits/dim (None: continuous density).
        dequantize, divergence, probes, method: the settings used.
    """

    log_prob: Tensor
    bits_per_dim: Tensor
    log_prob_std_err: Tensor | None
    bits_per_dim_std_err: Tensor | None
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    latent: Tensor
    nfe: int
    dim: int
    sigma_min: float
    sigma_max: float
    bin_width: float | None
    dequantize: str
    divergence: str
    probes: int
    method: str

    def summary(self) -> dict[str, Any]:
        """Data-set averages as plain Python numbers (JSON-ready).

        ``bits_per_dim_sem_data`` is the standard error of the mean over the samples (std/√N, the
        uncertainty from the finite data set); ``bits_per_dim_sem_estimator`` is the Hutchinson
        estimator's standard error of that mean (√(Σ se_i²)/N), 0 for the exact divergence;
        ``bits_per_dim_sem`` combines both in quadrature.
        """
        bpd = self.bits_per_dim.detach().double().cpu()
        num = int(bpd.numel())
        sem_data = float(bpd.std(unbiased=True) / math.sqrt(num)) if num > 1 else float("nan")
        if self.bits_per_dim_std_err is not None:
            se = self.bits_per_dim_std_err.detach().double().cpu()
            sem_est = float(torch.sqrt((se * se).sum()) / num)
        else:
            sem_est = 0.0
        return {
            "num_samples": num,
            "dim": self.dim,
            "bits_per_dim": float(bpd.mean()),
            "bits_per_dim_sem_data": sem_data,
            "bits_per_dim_sem_estimator": sem_est,
            "bits_per_dim_sem": math.sqrt(sem_data**2 + sem_est**2) if num > 1 else float("nan"),
            "nats": float(self.log_prob.detach().double().mean()),
            "nats_per_dim": float(self.log_prob.detach().double().mean()) / self.dim,
            "nfe": self.nfe,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "bin_width": self.bin_width,
            "dequantize": self.dequantize,
            "divergence": self.divergence,
            "probes": self.probes,
            "method": self.method,
        }


def vp_prior_log_prob(xbar: Tensor, sigma: float) -> Tensor:
    """log-density in x̄ of the VP prior at σ: x̄ ~ N(0, (1 + σ²) I), i.e. x̄/√(1 + σ²) ~ N(0, I).

    Returns shape ``(batch,)`` in xbar's dtype: ``log N(x_T; 0, I) − (d/2) log(1 + σ²)``.
    """
    x_t = xbar.reshape(xbar.shape[0], -1) / math.sqrt(1.0 + sigma * sigma)
    d = x_t.shape[1]
    return -0.5 * (x_t * x_t).sum(1) - 0.5 * d * math.log(2 * math.pi) - 0.5 * d * math.log1p(sigma * sigma)


class _AugmentedField(torch.nn.Module):
    """The right-hand side in s = asinh σ of the augmented state (x, ℓ) (see the module docstring)."""

    def __init__(self, field: ProbabilityFlowODE, divergence: str, probes: Tensor | None, chunk: int) -> None:
        super().__init__()
        self.field = field
        self.divergence = divergence
        self.probes = probes
        self.chunk = chunk

    def forward(self, s: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, _ = state
        s_val = float(s)
        sigma, scale = math.sinh(s_val), math.cosh(s_val)
        with torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            eps = self.field(x_req * scale, sigma)
            if self.divergence == "exact":
                div = exact_divergence(eps, x_req, self.chunk)
            else:
                assert self.probes is not None
                div = hutchinson_divergence(eps, x_req, self.probes)
        if not bool(torch.isfinite(eps.detach().sum() + div.detach().sum())):
            raise FloatingPointError(
                f"the model's output or its divergence is NaN/Inf at sigma={sigma:.6g}; "
                "the likelihood is undefined there"
            )
        dx = eps.detach() - math.tanh(s_val) * x
        return dx, div.detach().to(x.dtype)


@dataclass(frozen=True)
class _Settings:
    """The validated settings of one :func:`log_likelihood` call."""

    method: str
    rtol: float
    atol: float
    options: dict[str, Any]
    divergence: str
    probes: int
    probe_dist: str
    sigma_min: float
    sigma_max: float
    prior: Prior
    dequantize: str
    bin_width: float | None


def _check_solver_settings(method: str, rtol: float, atol: float, options: dict[str, Any] | None) -> dict[str, Any]:
    if method not in ODE_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed (torchdiffeq): {', '.join(ODE_METHODS)}")
    if not (math.isfinite(rtol) and math.isfinite(atol) and rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be finite and > 0, got rtol={rtol}, atol={atol}")
    opts = dict(options or {})
    if method in _FIXED_GRID_METHODS and not (opts.get("step_size") or opts.get("grid_constructor")):
        raise ValueError(f"the fixed-grid method {method!r} needs options={{'step_size': h}} (a step in s = asinh σ)")
    return opts


def _check_range(schedule: Schedule, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    s_lo = 0.0 if sigma_min is None else float(sigma_min)
    s_hi = schedule.sigma_max if sigma_max is None else float(sigma_max)
    if not (0.0 <= s_lo < s_hi) or not math.isfinite(s_hi):
        raise ValueError(f"need 0 <= sigma_min < sigma_max < inf, got sigma_min={s_lo}, sigma_max={s_hi}")
    if s_hi > schedule.sigma_max * (1 + 1e-9):
        raise ValueError(f"sigma_max={s_hi:.6g} is above the schedule's sigma_max={schedule.sigma_max:.6g}")
    return s_lo, s_hi


def _check_x0(x0: Any, generator: torch.Generator | None) -> None:
    check_x(x0, "x0")
    if x0.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x0 must be float32 or float64 (the ODE state's dtype), got {x0.dtype}")
    if generator is not None and generator.device.type != x0.device.type:
        raise ValueError(f"generator is on {generator.device} but x0 is on {x0.device}; they must match")


def _dequantized(x0: Tensor, settings: _Settings, generator: torch.Generator | None) -> Tensor:
    """x0, or x0 + Δ·u with u ~ U(−½, ½)^d for uniform dequantisation."""
    x = x0.detach()
    if settings.dequantize == "uniform":
        assert settings.bin_width is not None
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5
        x = x + settings.bin_width * u
    return x


def _draw_probes(xb: Tensor, settings: _Settings, generator: torch.Generator | None) -> Tensor | None:
    if settings.divergence != "hutchinson":
        return None
    shape = (settings.probes, *xb.shape)
    if settings.probe_dist == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, device=xb.device).to(xb.dtype) * 2 - 1
    return torch.randn(shape, generator=generator, dtype=xb.dtype, device=xb.device)


def _solve_chunk(
    field: ProbabilityFlowODE, xb: Tensor, settings: _Settings, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(x at σ_max, ℓ per probe, log prior) for one chunk: one ODE solve of the augmented state."""
    from torchdiffeq import odeint  # the integrator of the augmented (x, ℓ) state, loaded when used

    d = xb[0].numel()
    chunk = max(1, min(d, 2**22 // max(1, xb.shape[0] * d)))
    func = _AugmentedField(field, settings.divergence, _draw_probes(xb, settings, generator), chunk)
    width = 1 if settings.divergence == "exact" else settings.probes
    ell0 = torch.zeros(xb.shape[0], width, dtype=xb.dtype, device=xb.device)
    s_lo, s_hi = settings.sigma_min, settings.sigma_max
    s_grid = torch.tensor([math.asinh(s_lo), math.asinh(s_hi)], dtype=torch.float64, device=xb.device)
    x_t0 = xb / math.sqrt(1.0 + s_lo * s_lo)  # VP scale at σ_min (x̄ = x0 there)
    xs, ells = odeint(
        func,
        (x_t0, ell0),
        s_grid,
        method=settings.method,
        rtol=settings.rtol,
        atol=settings.atol,
        options=settings.options,
    )
    x_top, ell = xs[-1], ells[-1]
    xbar_top = x_top * math.sqrt(1.0 + s_hi * s_hi)
    prior = settings.prior
    log_prior = vp_prior_log_prob(xbar_top, s_hi) if prior == "vp" else prior(xbar_top, s_hi)  # type: ignore[operator]
    return x_top, ell, log_prior.to(xb.dtype)


def _result(x_top: Tensor, ell: Tensor, log_prior: Tensor, d: int, nfe: int, settings: _Settings) -> LikelihoodResult:
    """Per-sample log p, bits/dim and standard errors from the solves' (ℓ, log prior)."""
    per_probe = log_prior[:, None] + ell  # (B, P)
    log_prob = per_probe.mean(1)
    offset = d * math.log(settings.bin_width) if settings.bin_width is not None else 0.0
    to_bpd = 1.0 / (d * math.log(2.0))
    std_err = None
    if settings.divergence == "hutchinson" and settings.probes > 1:
        std_err = per_probe.std(1, unbiased=True) / math.sqrt(settings.probes)
    return LikelihoodResult(
        log_prob=log_prob,
        bits_per_dim=-(log_prob + offset) * to_bpd,
        log_prob_std_err=std_err,
        bits_per_dim_std_err=None if std_err is None else std_err * to_bpd,
        prior_log_prob=log_prior,
        delta_log_prob=ell.mean(1),
        latent=x_top,
        nfe=nfe,
        dim=d,
        sigma_min=settings.sigma_min,
        sigma_max=settings.sigma_max,
        bin_width=settings.bin_width,
        dequantize=settings.dequantize,
        divergence=settings.divergence,
        probes=1 if settings.divergence == "exact" else settings.probes,
        method=settings.method,
    )


def log_likelihood(
    x0: Tensor,
    model: EpsModel | SigmaModel | str | None = None,
    schedule: Schedule | None = None,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    options: dict[str, Any] | None = None,
    divergence: Literal["exact", "hutchinson"] = "exact",
    probes: int = 4,
    probe_dist: Literal["rademacher", "gaussian"] = "rademacher",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    prior: Prior = "vp",
    dequantize: Literal["none", "uniform"] = "none",
    bin_width: float | None = None,
    generator: torch.Generator | None = None,
    prediction: Prediction | None = None,
    batch_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond_kwargs: dict[str, Any] | None = None,
) -> LikelihoodResult:
    """log p(x0) of the model's probability-flow ODE, per sample, in nats and bits/dim.

    Encodes x0 from σ_min to σ_max with torchdiffeq's ``method`` while integrating the divergence
    of the field (instantaneous change of variables, Chen et al. 2018), and adds the prior's
    log-density at σ_max (Song et al. 2021, score SDE, App. D.2). See the module docstring for the
    time variable, the prior and the treatment of discrete data.

    Args:
        x0: data, shape ``(batch, ...)`` in the model's scale (the digits: [−1, 1]); float32 or
            float64, the state's dtype (use float64 for tight tolerances).
        model: an ε-model ``model(x_t, t)`` or an exact oracle of :mod:`ddim_ode.analytic`
            (evaluated at the exact σ), a model directory or built-in name; ``None`` is the
            built-in digits model with its schedule (see :func:`~ddim_ode.models.resolve_model`).
        schedule: the model's noise schedule (σ_max is its top); required with a model.
        method: a torchdiffeq method: adaptive (``"dopri5"``, ``"dopri8"``, ``"bosh3"``,
            ``"fehlberg2"``, ``"adaptive_heun"``) or fixed-grid (``"rk4"``, ``"midpoint"``,
            ``"euler"``, … with ``options={"step_size": h}`` in s = asinh σ).
        rtol, atol: tolerances of an adaptive method, on x (VP scale) and ℓ.
        options: extra torchdiffeq options (e.g. ``{"step_size": 0.05}`` for a fixed grid).
        divergence: ``"exact"`` (Jacobian trace, d vector–Jacobian products per NFE) or
            ``"hutchinson"`` (``probes`` products per NFE, unbiased, with a standard error).
        probes: number of Hutchinson probe vectors (≥ 2 to estimate the standard error).
        probe_dist: ``"rademacher"`` (±1, lower variance) or ``"gaussian"``.
        sigma_min: where to start; None or 0 is the data (σ = 0). See the module docstring.
        sigma_max: where to stop, at most the schedule's σ_max (the default).
        prior: ``"vp"`` (x_T ~ N(0, I)) or a callable ``prior(xbar, sigma) -> (batch,)`` log-density
            of x̄ at σ_max (e.g. ``oracle.log_prob_xbar`` for an exact prior).
        dequantize: ``"none"`` or ``"uniform"`` (adds U(−Δ/2, Δ/2) noise; needs a bin width).
        bin_width: lattice spacing Δ of discrete data in the model's scale, used for bits/dim;
            default 2/16 for the built-in digits model, else None (continuous density).
        generator: torch.Generator for the probes and the dequantisation noise (on x0's device).
        prediction: what ``model`` predicts (``"eps"``, ``"x0"``, ``"v"``); default the loaded
            model's own, else ``"eps"``.
        batch_size: evaluate in chunks of this many samples (each chunk is one ODE solve).
        model_kwargs, guidance_scale, uncond_kwargs: the conditioning of every network call and
            classifier-free guidance, as in :func:`~ddim_ode.integrate`; the likelihood is then
            that of the conditional (or guided) probability-flow ODE.

    Returns:
        A :class:`LikelihoodResult` (``log_prob``, ``bits_per_dim``, standard errors, NFE, …).

    Cost: NFE is chosen by the adaptive controller (typically 100–300 for dopri5 at rtol 1e-5);
    each NFE adds d (exact) or ``probes`` (Hutchinson) backward passes through the network.

    Raises:
        ValueError / TypeError: bad input, naming the allowed values.
    """
    _check_x0(x0, generator)
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("probe_dist", probe_dist, PROBE_DISTS)
    check_choice("dequantize", dequantize, DEQUANTIZE)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an int >= 1, got {probes!r}")
    if not (prior == "vp" or callable(prior)):
        raise ValueError(f"unknown prior {prior!r}; allowed: 'vp' or a callable prior(xbar, sigma) -> log density")
    opts = _check_solver_settings(method, rtol, atol, options)
    bs = check_batch_size(batch_size)
    resolved = resolve_model(model, schedule, prediction, x0.device)
    if bin_width is None and resolved.metadata.get("bin_width") is not None:
        bin_width = float(resolved.metadata["bin_width"])
    elif bin_width is None and model is None:
        bin_width = DIGITS_BIN_WIDTH
    if bin_width is not None and not (bin_width > 0 and math.isfinite(bin_width)):
        raise ValueError(f"bin_width must be finite and > 0, got {bin_width}")
    if dequantize == "uniform" and bin_width is None:
        raise ValueError("dequantize='uniform' needs bin_width (the data's lattice spacing, e.g. 2/16 for the digits)")
    s_lo, s_hi = _check_range(resolved.schedule, sigma_min, sigma_max)
    settings = _Settings(
        method, float(rtol), float(atol), opts, divergence, probes, probe_dist, s_lo, s_hi, prior, dequantize, bin_width
    )

    field = ProbabilityFlowODE(
        resolved.model,
        resolved.schedule,
        prediction=resolved.prediction,
        model_kwargs=model_kwargs,
        guidance_scale=guidance_scale,
        uncond_kwargs=uncond_kwargs,
        batch_size=x0.shape[0],
    )
    x = _dequantized(x0, settings, generator)
    size = x.shape[0] if bs is None else bs
    chunks = [slice(i, i + size) for i in range(0, x.shape[0], size)]
    parts = [_solve_chunk(field.select(c) if len(chunks) > 1 else field, x[c], settings, generator) for c in chunks]
    x_top, ell, log_prior = (torch.cat([p[k] for p in parts]) for k in range(3))
    return _result(x_top, ell, log_prior, x[0].numel(), field.nfe, settings)
