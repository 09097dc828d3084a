"""One resolver turns whatever a caller names as "the model" into what the field needs.

:func:`resolve_model` is the only place that decides what ``model=None``, a built-in name
(``"digits"``, ``"digits-cond"``, ``"digits-flow"``), a model directory, an ``nn.Module``, a plain
callable or an exact oracle means; the driver, the likelihood, the sharded sampler, the studies
and the command line all call it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .field import PREDICTIONS, EpsModel, Prediction, SigmaModel
from .schedules import Schedule

__all__ = ["ResolvedModel", "resolve_model", "check_prediction"]


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for :class:`~ddim_ode.field.ProbabilityFlowODE`.

    Attributes:
        model: an ε-model ``model(x_t, t)`` or an exact :class:`~ddim_ode.field.SigmaModel`.
        schedule: the schedule it was trained with.
        prediction: what it predicts (``eps``, ``x0``, ``v`` or ``flow``).
        metadata: what its loader recorded (``sample_shape``, ``source``, …); empty for a model
            object passed in by the caller.
    """

    model: EpsModel | SigmaModel
    schedule: Schedule
    prediction: Prediction
    metadata: dict[str, Any] = field(default_factory=dict)


def check_prediction(prediction: Any) -> Prediction:
    """``prediction`` if it is one of :data:`~ddim_ode.field.PREDICTIONS`, else a ``ValueError``."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
    return prediction  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=8)
def _load_cached(source: str, device: str) -> tuple[Any, Schedule, dict[str, Any]]:
    from .io import load_any  # loading weights is paid for only when a model is named

    model, schedule, meta = load_any(None if source == "default" else source, device)
    model.eval().requires_grad_(False)  # loaded weights are frozen: no autograd graph unless x needs one
    return model, schedule, meta


def resolve_model(
    model: EpsModel | SigmaModel | str | Path | None = None,
    schedule: Schedule | None = None,
    prediction: str | None = None,
    device: str | torch.device | None = None,
) -> ResolvedModel:
    """What ``model`` names, with its schedule and prediction type.

    Args:
        model: ``None`` or ``"default"`` (the default built-in model), the name of a built-in
            model (``"digits"``, ``"digits-cond"``, ``"digits-flow"``: :data:`ddim_ode.io.BUILTIN_MODELS`),
            a model directory (the package's format or a diffusers UNet / pipeline directory), an
            ``nn.Module`` or callable ``model(x_t, t, **model_kwargs)``, or an exact oracle
            (:mod:`ddim_ode.analytic`).
        schedule: required with a model object; must be omitted with a name or directory (a
            loaded model brings the schedule it was trained with).
        prediction: what the network predicts; ``None`` takes the loaded model's own (``eps`` for
            a model object). Naming a different one than a loaded model's is an error.
        device: where a named model is loaded (a model object is left where it is).

    Loaded models are cached per (source, device), in eval mode with frozen parameters.
    """
    if model is None or isinstance(model, (str, Path)):
        if schedule is not None:
            raise ValueError(
                "schedule given with a named model: a loaded model comes with its own schedule; "
                "pass a model object together with its schedule, or neither"
            )
        source = "default" if model is None else str(model)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        loaded, loaded_schedule, meta = _load_cached(source, str(dev))
        own = check_prediction(meta.get("prediction", "eps"))
        if prediction is not None and check_prediction(prediction) != own:
            raise ValueError(
                f"prediction={prediction!r} contradicts the loaded model, which predicts {own!r}; "
                "omit prediction for a loaded model"
            )
        return ResolvedModel(loaded, loaded_schedule, own, dict(meta))
    if schedule is None:
        raise ValueError("schedule is required when a model is given, e.g. schedule=ddim_ode.DiscreteSchedule.linear()")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a ddim_ode Schedule, got {type(schedule).__name__}")
    if not callable(model) and not isinstance(model, SigmaModel):
        raise TypeError(f"model must be callable as model(x_t, t), got {type(model).__name__}")
    return ResolvedModel(model, schedule, check_prediction(prediction if prediction is not None else "eps"))
