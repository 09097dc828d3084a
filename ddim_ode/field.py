"""The probability-flow ODE of an ε-network in DDIM coordinates.

With x̄ = x_t/√ᾱ_t and σ = √((1 − ᾱ_t)/ᾱ_t) the deterministic (η = 0) DDIM process is

    dx̄/dσ = ε_θ(x̄/√(1 + σ²), t(σ))            (Song, Meng & Ermon 2021, eq. 14)

and its denoiser form is dx̄/dσ = (x̄ − D(x̄, σ))/σ with D = x̄ − σ ε (Karras et al. 2022).
:class:`ProbabilityFlowODE` is the only place the network is called; it counts the calls (NFE).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from .schedules import Schedule

__all__ = ["ProbabilityFlowODE", "EpsModel", "SigmaModel", "PREDICTIONS"]

PREDICTIONS = ("eps", "x0", "v")
Prediction = Literal["eps", "x0", "v"]
EpsModel = Callable[[Tensor, Tensor], Tensor]


@runtime_checkable
class SigmaModel(Protocol):
    """A model defined directly in DDIM coordinates: ``eps_xbar(xbar, sigma) -> ε``.

    The exact oracles of :mod:`ddim_ode.analytic` implement it; the field then evaluates ε at the
    exact σ (also at σ = 0) instead of going through a schedule's timesteps.
    """

    def eps_xbar(self, xbar: Tensor, sigma: float) -> Tensor: ...


def _model_dtype(model: Any) -> torch.dtype | None:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


class ProbabilityFlowODE:
    """The vector field ``f(x̄, σ) = dx̄/dσ`` defined by an ε-model and a schedule.

    Args:
        model: an ε-model ``model(x_t, t)`` with ``x_t`` in the usual VP scale and ``t`` a 1-D
            float tensor of length batch in the schedule's units, or a :class:`SigmaModel`
            (evaluated at the exact σ; the schedule then only maps σ to t for reporting).
        schedule: the schedule the model was trained with.
        prediction: what the model outputs: ``"eps"`` (noise), ``"x0"`` (clean data) or ``"v"``
            (v = √ᾱ ε − √(1−ᾱ) x0, Salimans & Ho 2022). ``x0`` and ``v`` are converted to ε with
            the ᾱ of the timestep the model was evaluated at.
        model_dtype: dtype the model input is cast to (default: the dtype of the module's first
            floating parameter, else the state's dtype). Output is cast back to the state dtype,
            so an fp16 network drives a float32/float64 solver state.

    At σ = 0 (clean data, ᾱ = 1) the network is evaluated at the schedule's smallest timestep
    ``t_min`` with ``x_t = x̄``; more generally ``t(σ)`` clamps into ``[t_min, t_max]``.

    The attribute :attr:`nfe` counts network evaluations (one per call, whatever the batch).
    """

    def __init__(
        self,
        model: EpsModel | SigmaModel,
        schedule: Schedule,
        prediction: Prediction = "eps",
        model_dtype: torch.dtype | None = None,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a ddim_ode Schedule, got {type(schedule).__name__}")
        # a SigmaModel is anything with a callable eps_xbar (the protocol's runtime check, without its cost)
        exact = callable(getattr(model, "eps_xbar", None))
        if not callable(model) and not exact:
            raise TypeError(f"model must be callable as model(x_t, t), got {type(model).__name__}")
        self.model = model
        self.schedule = schedule
        self.prediction: Prediction = prediction
        self.model_dtype = model_dtype if model_dtype is not None else _model_dtype(model)
        self.exact = exact
        self.nfe = 0
        self._checked = False
        # per σ: (t(σ), 1/√(1+σ²), √ᾱ, √(1−ᾱ)); filled by prepare() and memoised per σ
        self._coef_of: dict[float, tuple[float, float, float, float]] = {}

    def prepare(self, sigmas: Tensor) -> None:
        """Tabulate t(σ) (and the input scaling) at the points of a grid with one vectorised call.

        The solver loop then looks them up instead of calling the schedule once per network
        evaluation (a scalar schedule call costs about as much as a small network's step).
        Off-grid σ (Runge–Kutta stages) are computed on first use and memoised.
        """
        sig = sigmas.detach().to(torch.float64).cpu().reshape(-1)
        ts = self.schedule.t(sig)
        ab = self.schedule.alpha_bar(ts) if self.prediction != "eps" else torch.zeros_like(ts)
        for s, t, a in zip(sig.tolist(), ts.tolist(), ab.tolist()):
            if s not in self._coef_of:
                self._remember(s, t, a)

    def _coefficients(self, sigma: float) -> tuple[float, float, float, float]:
        """The table entry of σ, computed with scalar schedule calls (and remembered) when missing."""
        sigma = float(sigma)
        c = self._coef_of.get(sigma)
        if c is None:
            t = float(self.schedule.t(sigma))
            c = self._remember(sigma, t, float(self.schedule.alpha_bar(t)) if self.prediction != "eps" else 0.0)
        return c

    def _remember(self, sigma: float, t: float, alpha_bar: float) -> tuple[float, float, float, float]:
        """Store (t, 1/√(1+σ²), √ᾱ, √(1−ᾱ)) for σ; the table is emptied past 65536 entries (adaptive
        solvers visit ever new σ)."""
        if len(self._coef_of) >= 65536:
            self._coef_of.clear()
        c = (t, (1.0 + sigma * sigma) ** -0.5, alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5)
        self._coef_of[sigma] = c
        return c

    def __call__(self, xbar: Tensor, sigma: float) -> Tensor:
        """ε at (x̄, σ), which is dx̄/dσ; same shape and dtype as ``xbar``."""
        self.nfe += 1
        if self.exact:
            out = self.model.eps_xbar(xbar, float(sigma))  # type: ignore[union-attr]
            return self._check(out.to(xbar.dtype), xbar)
        c = self._coef_of.get(sigma)
        t, c_in, a, s = c if c is not None else self._coefficients(sigma)
        x_t = xbar * c_in
        dtype = self.model_dtype
        if dtype is None or dtype == x_t.dtype:
            dtype, x_in = x_t.dtype, x_t
        else:
            x_in = x_t.to(dtype)
        t_vec = torch.full(
            (xbar.shape[0],), t, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=xbar.device
        )
        if not self._checked:
            self._check_device(xbar)
            out = self._check(self.model(x_in, t_vec), xbar)  # type: ignore[operator]
        else:
            out = self.model(x_in, t_vec)  # type: ignore[operator]
        if out.dtype != xbar.dtype:
            out = out.to(xbar.dtype)
        if self.prediction == "eps":
            return out
        if self.prediction == "v":  # ε = √(1−ᾱ) x_t + √ᾱ v
            return torch.add(s * x_t, out, alpha=a)
        return torch.add(x_t, out, alpha=-a) / s  # x0-prediction: ε = (x_t − √ᾱ x0)/√(1−ᾱ)

    def denoise(self, xbar: Tensor, sigma: float) -> Tensor:
        """The denoiser D(x̄, σ) = x̄ − σ ε(x̄, σ): the model's estimate of x0 (one NFE)."""
        return xbar - float(sigma) * self(xbar, sigma)

    def _check_device(self, xbar: Tensor) -> None:
        if isinstance(self.model, torch.nn.Module):
            p = next(self.model.parameters(), None)
            if p is not None and p.device != xbar.device:
                raise ValueError(
                    f"the model's parameters are on {p.device} but the input is on {xbar.device}; "
                    "move one of them (e.g. model.to(x.device))"
                )

    def _check(self, out: Any, xbar: Tensor) -> Tensor:
        if self._checked:
            return out
        if not isinstance(out, Tensor):
            raise TypeError(f"the model must return a Tensor, got {type(out).__name__}")
        if out.shape != xbar.shape:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input shape {tuple(xbar.shape)}; they must match"
            )
        if not out.is_floating_point():
            raise TypeError(f"the model returned dtype {out.dtype}; a floating dtype is required")
        if out.device != xbar.device:
            raise ValueError(f"the model returned a tensor on {out.device} for input on {xbar.device}; they must match")
        self._checked = True
        return out
