"""The probability-flow ODE of a diffusion or flow network in DDIM coordinates.

For any Gaussian path x_t = a(t) x0 + s(t) ε take x̄ = x_t/a and σ̄ = s/a (the σ of the rest of the
package). Then x̄ = x0 + σ̄ ε, and the deterministic (η = 0) process is

    dx̄/dσ̄ = ε̂(x̄, σ̄),   ε̂ = E[ε | x̄]        (Song, Meng & Ermon 2021, eq. 14, for VP paths)

exactly, whatever the path; DDIM is its Euler method, and its denoiser form is
dx̄/dσ̄ = (x̄ − D(x̄, σ̄))/σ̄ with D = x̄ − σ̄ ε̂ (Karras et al. 2022). A network enters through what
it predicts at its input x_t = a(σ̄) x̄ and time t(σ̄); :class:`ProbabilityFlowODE` converts every
prediction exactly to ε̂ with the path's a and s, so every solver, grid, inversion and likelihood
serves VP, VE/EDM and rectified-flow models alike. It is the only place the network is called;
it counts the evaluations (NFE).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from .schedules import Schedule

__all__ = ["ProbabilityFlowODE", "EpsModel", "SigmaModel", "NullConditionModel", "PREDICTIONS"]

PREDICTIONS = ("eps", "x0", "v", "flow")
Prediction = Literal["eps", "x0", "v", "flow"]
EpsModel = Callable[..., Tensor]
Index = slice | Tensor


@runtime_checkable
class SigmaModel(Protocol):
    """A model defined directly in DDIM coordinates: ``eps_xbar(xbar, sigma) -> ε``.

    The exact oracles of :mod:`ddim_ode.analytic` implement it; the field then evaluates ε at the
    exact σ (also at σ = 0) instead of going through a schedule's timesteps.
    """

    def eps_xbar(self, xbar: Tensor, sigma: float) -> Tensor: ...


@runtime_checkable
class NullConditionModel(Protocol):
    """A conditional network that knows its own unconditional call (for classifier-free guidance).

    ``null_kwargs(model_kwargs)`` returns the keyword arguments of the unconditional evaluation
    for the conditional ones, e.g. the class labels replaced by the null class, or the text
    embedding by that of the empty prompt. With it, ``guidance_scale`` needs no ``uncond_kwargs``.
    """

    def null_kwargs(self, model_kwargs: dict[str, Any]) -> dict[str, Any]: ...


def _model_dtype(model: Any) -> torch.dtype | None:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


@dataclass
class _Counts:
    """Evaluation counters shared by a field and the fields :meth:`ProbabilityFlowODE.select` makes."""

    nfe: int = 0
    extra_calls: int = 0  # network calls beyond one per evaluation (unbatched guidance)


def _conversion(prediction: str, a: float, s: float) -> tuple[float, float, float, float]:
    """(p, q, r, w) with ε̂ = p x_t + q m and x̂0 = r x_t + w m for a model output m at x_t = a x0 + s ε.

    ``eps``: ε = m, x0 = (x_t − s m)/a. ``x0``: ε = (x_t − a m)/s. ``v`` = a ε − s x0 (Salimans &
    Ho 2022 when a² + s² = 1): ε = (s x_t + a m)/(a² + s²), x0 = (a x_t − s m)/(a² + s²).
    ``flow`` = dx_τ/dτ = ε − x0 on x_τ = (1 − τ) x0 + τ ε (a + s = 1): ε = x_t + a m, x0 = x_t − s m.
    At a = 0 (σ̄ = ∞) every one but ``eps`` is finite.
    """
    if prediction == "eps":
        return 0.0, 1.0, (1.0 / a if a > 0 else math.nan), (-s / a if a > 0 else math.nan)
    if prediction == "x0":
        return 1.0 / s, -a / s, 0.0, 1.0
    if prediction == "v":
        n = a * a + s * s
        return s / n, a / n, a / n, -s / n
    return 1.0, a, 1.0, -s  # flow


def conditioning_arguments(
    model: Any,
    model_kwargs: dict[str, Any] | None,
    guidance_scale: float | None,
    uncond_kwargs: dict[str, Any] | None,
) -> tuple[dict[str, Any], float | None, dict[str, Any] | None]:
    """Checked copies of (model_kwargs, guidance weight, unconditional kwargs).

    Under guidance without ``uncond_kwargs``, a :class:`NullConditionModel` is asked for
    ``null_kwargs(model_kwargs)``; any other model is refused. ``uncond_kwargs`` without guidance
    is refused too.
    """
    for name, kw in (("model_kwargs", model_kwargs), ("uncond_kwargs", uncond_kwargs)):
        if kw is not None and not isinstance(kw, dict):
            raise TypeError(f"{name} must be a dict of keyword arguments, got {type(kw).__name__}")
    cond = dict(model_kwargs or {})
    if guidance_scale is None:
        if uncond_kwargs is not None:
            raise ValueError("uncond_kwargs given without guidance_scale; pass guidance_scale=w to guide")
        return cond, None, None
    w = float(guidance_scale)
    if not math.isfinite(w):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    if uncond_kwargs is None:
        if not isinstance(model, NullConditionModel):
            raise ValueError(
                "guidance_scale needs the unconditional call: pass uncond_kwargs=... (the keyword arguments "
                "of the unconditional model call), or give the model a null_kwargs(model_kwargs) method"
            )
        uncond_kwargs = model.null_kwargs(dict(cond))
    return cond, w, dict(uncond_kwargs)


class ProbabilityFlowODE:
    """The vector field ``f(x̄, σ) = dx̄/dσ = ε̂(x̄, σ)`` defined by a network and a schedule.

    Args:
        model: a network ``model(x_t, t, **model_kwargs)`` with ``x_t = a(σ) x̄`` at the model's
            scale and ``t`` a 1-D float tensor of length batch in the schedule's units, or a
            :class:`SigmaModel` (evaluated at the exact σ; the schedule then only maps σ to t).
        schedule: the schedule (the path) the model was trained with.
        prediction: what the model outputs at x_t = a x0 + s ε: ``"eps"`` (ε), ``"x0"`` (x0),
            ``"v"`` (a ε − s x0; Salimans & Ho 2022 on VP paths) or ``"flow"`` (the velocity
            dx_τ/dτ = ε − x0 of rectified flow, defined on a
            :class:`~ddim_ode.schedules.FlowSchedule` only). Each is converted exactly to ε̂ with
            the a and s of the noise level of the timestep the model is evaluated at (σ itself
            inside ``[sigma_min, sigma_max]``, the clamped end outside).
        model_dtype: dtype the model input is cast to (default: the dtype of the module's first
            floating parameter, else the state's dtype). Output is cast back to the state dtype,
            so an fp16 network drives a float32/float64 solver state.
        model_kwargs: keyword arguments passed on every network call (conditioning). A tensor
            whose first dimension is the batch size is per sample (sliced by :meth:`select`,
            concatenated for guidance); any other value is shared and passed as it is.
        guidance_scale: classifier-free guidance weight w (Ho & Salimans 2022): the network's
            output is out_u + w (out_c − out_u), in the model's own output space, with out_c from
            ``model_kwargs`` and out_u from ``uncond_kwargs``. ``None``: no guidance.
        uncond_kwargs: the unconditional call's keyword arguments. Without them a guided field
            asks the model (a :class:`NullConditionModel`) for ``null_kwargs(model_kwargs)``.
        batch_size: the batch the field will be evaluated on. It decides which ``model_kwargs``
            are per sample; without it the first evaluation's batch decides. :meth:`select`
            needs it to be known when per-sample tensors may be present.

    At σ = 0 (clean data) the network is evaluated at the schedule's smallest timestep ``t_min``
    with ``x_t = x̄``; more generally ``t(σ)`` clamps into ``[t_min, t_max]``.

    Counting: :attr:`nfe` counts evaluations of the field (one per call whatever the batch; a
    guided evaluation is one). :attr:`network_calls` counts calls of the network: equal to
    :attr:`nfe`, except that guidance whose keyword arguments cannot share one batch makes two
    calls per evaluation (when they can, conditional and unconditional inputs go through one call
    on the concatenated batch). Fields made by :meth:`select` share both counters.
    """

    def __init__(
        self,
        model: EpsModel | SigmaModel,
        schedule: Schedule,
        prediction: Prediction = "eps",
        model_dtype: torch.dtype | None = None,
        *,
        model_kwargs: dict[str, Any] | None = None,
        guidance_scale: float | None = None,
        uncond_kwargs: dict[str, Any] | None = None,
        batch_size: int | None = None,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a ddim_ode Schedule, got {type(schedule).__name__}")
        if prediction == "flow" and not schedule.rectified_flow:
            allowed = ", ".join(p for p in PREDICTIONS if p != "flow")
            raise ValueError(
                f"prediction 'flow' (the velocity eps - x0 of x = (1 - t) x0 + t eps) is defined on a FlowSchedule "
                f"only, not on {schedule!r}; allowed there: {allowed}"
            )
        # a SigmaModel is anything with a callable eps_xbar (the protocol's runtime check, without its cost)
        exact = callable(getattr(model, "eps_xbar", None))
        if not callable(model) and not exact:
            raise TypeError(f"model must be callable as model(x_t, t), got {type(model).__name__}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
        self.model = model
        self.schedule = schedule
        self.prediction: Prediction = prediction
        self.model_dtype = model_dtype if model_dtype is not None else _model_dtype(model)
        self.exact = exact
        self.model_kwargs, self.guidance_scale, self.uncond_kwargs = conditioning_arguments(
            model, model_kwargs, guidance_scale, uncond_kwargs
        )
        if exact and (self.model_kwargs or self.guidance_scale is not None):
            raise ValueError(
                "model_kwargs and guidance need a network model(x_t, t, **kwargs); an exact SigmaModel takes none"
            )
        self._counts = _Counts()
        self._checked = False
        lo, hi = schedule.sigma_min, schedule.sigma_max
        self._sigma_range = (lo, hi)
        # per σ: (t(σ), a(σ), p, q) with ε̂ = p x_t + q · output; filled by prepare() and memoised per σ
        self._coef_of: dict[float, tuple[float, float, float, float]] = {}
        # the network call: bound once the batch (hence the per-sample kwargs) is known
        self._batch: int | None = None
        # names of the per-sample keyword arguments of the conditional and the unconditional call
        self._per_sample: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self._net: Callable[[Tensor, Tensor], Tensor] | None = None
        if not self.model_kwargs and self.guidance_scale is None:
            self._net = model  # type: ignore[assignment]
        elif batch_size is not None or not self._may_be_per_sample():
            self._bind(batch_size)

    # -- counters ----------------------------------------------------------------------------

    @property
    def nfe(self) -> int:
        """Evaluations of the field (a guided evaluation is one), shared with :meth:`select` fields."""
        return self._counts.nfe

    @nfe.setter
    def nfe(self, value: int) -> None:
        self._counts.nfe = int(value)

    @property
    def network_calls(self) -> int:
        """Calls of the network: :attr:`nfe`, plus one per guided evaluation that needed two calls."""
        return self._counts.nfe + self._counts.extra_calls

    # -- per-σ coefficients --------------------------------------------------------------------

    def prepare(self, sigmas: Tensor) -> None:
        """Tabulate t(σ), a(σ) and the prediction's conversion at the points of a grid, vectorised.

        The solver loop then looks them up instead of calling the schedule once per network
        evaluation (a scalar schedule call costs about as much as a small network's step).
        Off-grid σ (Runge–Kutta stages) are computed on first use and memoised. σ = ∞ is not
        tabulated: there x̄ is infinite and the field is evaluated through :meth:`evaluate_x`.
        """
        sig = sigmas.detach().to(torch.float64).cpu().reshape(-1)
        sig = sig[torch.isfinite(sig)]
        ts = self.schedule.t(sig)
        c_in = self.schedule.scale(sig)
        if self.prediction == "eps":
            a = s = torch.zeros_like(sig)
        else:
            lo, hi = self._sigma_range
            sc = sig.clamp(lo, hi)
            a, s = self.schedule.scale(sc), self.schedule.noise_scale(sc)
        for key, t, ci, ai, si in zip(sig.tolist(), ts.tolist(), c_in.tolist(), a.tolist(), s.tolist()):
            if key not in self._coef_of:
                self._remember(key, t, ci, ai, si)

    def _coefficients(self, sigma: float) -> tuple[float, float, float, float]:
        """The table entry of σ, computed with scalar schedule calls (and remembered) when missing."""
        sigma = float(sigma)
        c = self._coef_of.get(sigma)
        if c is None:
            if not math.isfinite(sigma):
                raise ValueError(
                    f"the field is evaluated in DDIM coordinates, where x̄ is infinite at sigma = {sigma}; "
                    "evaluate the model-scale input with evaluate_x(x_t, sigma) instead"
                )
            a, s = self._path_coefficients(sigma)
            c = self._remember(sigma, float(self.schedule.t(sigma)), float(self.schedule.scale(sigma)), a, s)
        return c

    def _path_coefficients(self, sigma: float) -> tuple[float, float]:
        """(a, s) at the noise level of the timestep the model is evaluated at (σ clamped to its range)."""
        if self.prediction == "eps" and math.isfinite(sigma):
            return 0.0, 0.0  # not needed: ε̂ is the output
        lo, hi = self._sigma_range
        sc = min(max(sigma, lo), hi)
        return float(self.schedule.scale(sc)), float(self.schedule.noise_scale(sc))

    def _remember(self, sigma: float, t: float, c_in: float, a: float, s: float) -> tuple[float, float, float, float]:
        """Store (t, c_in = a(σ), p, q) for σ; the table is emptied past 65536 entries (adaptive solvers
        visit ever new σ)."""
        if len(self._coef_of) >= 65536:
            self._coef_of.clear()
        p, q, _, _ = _conversion(self.prediction, a, s)
        c = (t, c_in, p, q)
        self._coef_of[sigma] = c
        return c

    # -- evaluation ----------------------------------------------------------------------------

    def __call__(self, xbar: Tensor, sigma: float) -> Tensor:
        """ε̂ at (x̄, σ), which is dx̄/dσ; same shape and dtype as ``xbar`` (σ finite)."""
        self._counts.nfe += 1
        if self.exact:
            out = self.model.eps_xbar(xbar, float(sigma))  # type: ignore[union-attr]
            return self._check(out, xbar).to(xbar.dtype)
        c = self._coef_of.get(sigma)
        t, c_in, p, q = c if c is not None else self._coefficients(sigma)
        x_t = xbar if c_in == 1.0 else xbar * c_in
        out = self._output(x_t, t, xbar)
        if self.prediction == "eps":
            return out
        if p == 1.0:
            return torch.add(x_t, out, alpha=q)
        return out.mul(q).add_(x_t, alpha=p)

    def evaluate_x(self, x_t: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        """The model's (ε̂, x̂0) from a model-scale input x_t = a(σ) x̄ at σ (one NFE).

        Defined also at σ = ∞ (a = 0, x̄ infinite) for the predictions ``x0``, ``v`` and ``flow``:
        there x_t is pure noise and the first DDIM step of a decoding grid from σ = ∞ to σ₁ is
        x̄₁ = x̂0 + σ₁ ε̂, the exact limit of the Euler step. ``eps`` cannot give x̂0 at a = 0 and
        is refused there. An exact :class:`SigmaModel` is evaluated at x̄ = x_t/a (σ finite).
        """
        sigma = float(sigma)
        if math.isnan(sigma) or sigma < 0:
            raise ValueError(f"sigma must be >= 0 (inf allowed), got {sigma}")
        if math.isinf(sigma) and (self.exact or self.prediction == "eps"):
            what = "an exact SigmaModel is defined in x̄" if self.exact else "an eps-prediction gives no x0"
            raise ValueError(
                f"evaluate_x at sigma = inf (pure noise, a = 0): {what}; allowed there: predictions x0, v, flow"
            )
        a_in = float(self.schedule.scale(sigma))
        if self.exact:
            self._counts.nfe += 1
            xbar = x_t / a_in
            eps = self._check(self.model.eps_xbar(xbar, sigma), xbar).to(x_t.dtype)  # type: ignore[union-attr]
            return eps, xbar - sigma * eps
        self._counts.nfe += 1
        a, s = self._path_coefficients(sigma)
        if self.prediction == "eps":  # x̂0 from the noise level of the model's input
            a, s = a_in, float(self.schedule.noise_scale(sigma))
        p, q, r, w = _conversion(self.prediction, a, s)
        out = self._output(x_t, float(self.schedule.t(sigma)), x_t)
        eps = out if self.prediction == "eps" else out * q + x_t * p
        return eps, out * w + x_t * r

    def _output(self, x_t: Tensor, t: float, like: Tensor) -> Tensor:
        """The network's output at (x_t, t), checked and cast to ``like``'s dtype."""
        dtype = self.model_dtype
        if dtype is None or dtype == x_t.dtype:
            dtype, x_in = x_t.dtype, x_t
        else:
            x_in = x_t.to(dtype)
        t_vec = torch.full(
            (x_t.shape[0],), t, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=x_t.device
        )
        net = self._net if self._net is not None else self._bind(x_t.shape[0])
        if not self._checked:
            self._check_device(like)
            out = self._check(self._first_call(net, x_in, t_vec), like)
        else:
            out = net(x_in, t_vec)
            if out.shape != like.shape:
                raise self._shape_error(out, like)
        if out.dtype != like.dtype:
            out = out.to(like.dtype)
        return out

    def _first_call(self, net: Callable[[Tensor, Tensor], Tensor], x_in: Tensor, t_vec: Tensor) -> Tensor:
        """The first network call; a failure with a keyword tensor whose first dimension is neither
        the batch nor 1 is reported as the batch mismatch it most likely is."""
        try:
            return net(x_in, t_vec)
        except (RuntimeError, ValueError, IndexError) as err:
            batch = x_in.shape[0]
            for where, kwargs in (("model_kwargs", self.model_kwargs), ("uncond_kwargs", self.uncond_kwargs or {})):
                for key, value in kwargs.items():
                    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] not in (batch, 1):
                        raise ValueError(
                            f"the model failed on {where}[{key!r}], whose first dimension is {value.shape[0]} for a "
                            f"batch of {batch}; per-sample tensors must have the batch as first dimension "
                            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                        ) from err
            raise

    def denoise(self, xbar: Tensor, sigma: float) -> Tensor:
        """The denoiser D(x̄, σ) = x̄ − σ ε(x̄, σ): the model's estimate of x0 (one NFE)."""
        return xbar - float(sigma) * self(xbar, sigma)

    # -- conditioning, guidance and sub-batches --------------------------------------------------

    def select(self, index: Index) -> ProbabilityFlowODE:
        """This field over the samples ``index`` (a slice or a 1-D integer tensor) of the batch.

        Per-sample ``model_kwargs``/``uncond_kwargs`` are indexed, shared ones kept; the model,
        the coefficient table and the counters (:attr:`nfe`, :attr:`network_calls`) are shared,
        so after a micro-batched run this field's counters hold the total. Each sample's result
        does not depend on the batch it is evaluated in, so integrating the parts gives the
        bits of integrating the whole (for a network whose samples do not interact).
        """
        batch = self._batch
        if self._net is None:
            raise ValueError(
                "select() needs the batch size to tell per-sample model_kwargs: build the field with "
                "batch_size=... or evaluate it once first"
            )
        size: int | None = None  # unknown (and not needed) when no keyword argument is per sample
        if isinstance(index, slice):
            if batch is not None:
                size = len(range(batch)[index])
        elif (
            isinstance(index, Tensor)
            and index.ndim == 1
            and not index.is_floating_point()
            and index.dtype != torch.bool
        ):
            size = int(index.numel())
            if batch is not None and size and not bool(((index >= -batch) & (index < batch)).all()):
                raise IndexError(f"select index out of range for a batch of {batch}")
        else:
            raise TypeError(f"select takes a slice or a 1-D integer tensor of sample indices, got {index!r}")
        if size == 0:
            raise ValueError("select index picks no sample")
        sub = copy.copy(self)  # shares model, schedule, coefficient table and counters
        if batch is not None:
            keys_c, keys_u = self._per_sample
            sub.model_kwargs = {k: v[index] if k in keys_c else v for k, v in self.model_kwargs.items()}
            if self.uncond_kwargs is not None:
                sub.uncond_kwargs = {k: v[index] if k in keys_u else v for k, v in self.uncond_kwargs.items()}
            sub._bind(size, self._per_sample)
        return sub

    def _may_be_per_sample(self) -> bool:
        """Whether a keyword argument is a tensor with a first dimension (per sample for some batch)."""
        values = list(self.model_kwargs.values()) + list((self.uncond_kwargs or {}).values())
        return any(isinstance(v, Tensor) and v.ndim >= 1 for v in values)

    def _bind(
        self, batch: int | None, per_sample: tuple[frozenset[str], frozenset[str]] | None = None
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """Fix the batch size (``None``: no keyword argument can be per sample), tell per-sample
        keyword arguments (or take ``per_sample``, the names of a field this one was selected
        from), and build the network call."""
        self._batch = batch
        cond, uncond = self.model_kwargs, self.uncond_kwargs or {}
        if per_sample is None:
            per_sample = (
                frozenset(k for k, v in cond.items() if _per_sample(v, batch)),
                frozenset(k for k, v in uncond.items() if _per_sample(v, batch)),
            )
        self._per_sample = per_sample
        model = self.model
        if self.guidance_scale is None:
            net = self._with_kwargs(cond)
        else:
            w = self.guidance_scale
            joint = _concatenated(uncond, cond, *per_sample)
            if joint is not None:

                def net(x: Tensor, t: Tensor) -> Tensor:
                    self._check_batch(x)
                    out = model(torch.cat([x, x]), torch.cat([t, t]), **joint)  # type: ignore[operator]
                    if not isinstance(out, Tensor) or out.shape[:1] != (2 * x.shape[0],):
                        raise self._shape_error(out, torch.cat([x, x]))
                    out_u, out_c = out[: x.shape[0]], out[x.shape[0] :]
                    return out_u + w * (out_c - out_u)

            else:
                net_c, net_u = self._with_kwargs(cond), self._with_kwargs(uncond)
                counts = self._counts

                def net(x: Tensor, t: Tensor) -> Tensor:
                    counts.extra_calls += 1
                    out_c = net_c(x, t)
                    out_u = net_u(x, t)
                    if not isinstance(out_u, Tensor) or out_u.shape != out_c.shape:
                        raise self._shape_error(out_u, x)
                    return out_u + w * (out_c - out_u)

        self._net = net
        return net

    def _with_kwargs(self, kwargs: dict[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
        model = self.model
        if not kwargs:
            return model  # type: ignore[return-value]

        def net(x: Tensor, t: Tensor) -> Tensor:
            self._check_batch(x)
            return model(x, t, **kwargs)  # type: ignore[operator]

        return net

    def _check_batch(self, x: Tensor) -> None:
        if x.shape[0] != self._batch and (self._per_sample[0] or self._per_sample[1]):
            where = "model_kwargs" if self._per_sample[0] else "uncond_kwargs"
            key = min(self._per_sample[0] or self._per_sample[1])
            raise ValueError(
                f"{where}[{key!r}] holds {self._batch} samples (its first dimension) but the field is "
                f"evaluated on a batch of {x.shape[0]}; per-sample tensors must match the batch "
                "(use field.select(index) for part of it)"
            )

    # -- checks ----------------------------------------------------------------------------------

    def _check_device(self, xbar: Tensor) -> None:
        if isinstance(self.model, torch.nn.Module):
            p = next(self.model.parameters(), None)
            if p is not None and p.device != xbar.device:
                raise ValueError(
                    f"the model's parameters are on {p.device} but the input is on {xbar.device}; "
                    "move one of them (e.g. model.to(x.device))"
                )

    @staticmethod
    def _shape_error(out: Any, xbar: Tensor) -> Exception:
        if not isinstance(out, Tensor):
            return TypeError(f"the model must return a Tensor, got {type(out).__name__}")
        return ValueError(
            f"the model returned shape {tuple(out.shape)} for input shape {tuple(xbar.shape)}; they must match"
        )

    def _check(self, out: Any, xbar: Tensor) -> Tensor:
        """The full check of an output (type, shape, dtype, device) on the first call; shape after."""
        if self._checked:
            if out.shape != xbar.shape:
                raise self._shape_error(out, xbar)
            return out
        if not isinstance(out, Tensor) or out.shape != xbar.shape:
            raise self._shape_error(out, xbar)
        if not out.is_floating_point():
            raise TypeError(f"the model returned dtype {out.dtype}; a floating dtype is required")
        if out.device != xbar.device:
            raise ValueError(f"the model returned a tensor on {out.device} for input on {xbar.device}; they must match")
        self._checked = True
        return out


def _per_sample(value: Any, batch: int | None) -> bool:
    """Whether a keyword argument is per sample: a tensor whose first dimension is the batch size."""
    return batch is not None and isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == batch


def _concatenated(
    uncond: dict[str, Any], cond: dict[str, Any], keys_c: frozenset[str], keys_u: frozenset[str]
) -> dict[str, Any] | None:
    """Keyword arguments for one call on [unconditional; conditional] inputs, or ``None`` if they do
    not concatenate (different keys; a per-sample tensor against a shared value; shared values that
    differ; per-sample tensors of different trailing shape, dtype or device)."""
    if uncond.keys() != cond.keys():
        return None
    joint: dict[str, Any] = {}
    for key, vc in cond.items():
        vu = uncond[key]
        pc, pu = key in keys_c, key in keys_u
        if pc and pu:
            if vc.shape != vu.shape or vc.dtype != vu.dtype or vc.device != vu.device:
                return None
            joint[key] = torch.cat([vu, vc])
        elif pc or pu:
            return None
        elif vc is vu:
            joint[key] = vc
        elif isinstance(vc, Tensor) or isinstance(vu, Tensor):
            same = (
                isinstance(vc, Tensor)
                and isinstance(vu, Tensor)
                and vc.shape == vu.shape
                and vc.dtype == vu.dtype
                and vc.device == vu.device
                and bool(torch.equal(vc, vu))
            )
            if not same:
                return None
            joint[key] = vc
        else:
            try:
                same = bool(vc == vu)
            except Exception:  # values without a plain truth value: not concatenable
                return None
            if not same:
                return None
            joint[key] = vc
    return joint
