"""What a diffusers scheduler configuration says about the probability-flow ODE.

A diffusers scheduler config (``scheduler.config``, or a ``scheduler_config.json``) names

* the noise schedule: ``beta_schedule`` (``"linear"``, ``"scaled_linear"`` or
  ``"squaredcos_cap_v2"``) with ``beta_start``, ``beta_end`` and ``num_train_timesteps``, or
  ``trained_betas``;
* what the network predicts: ``prediction_type`` (``"epsilon"``, ``"v_prediction"``, ``"sample"``);
* where its timesteps come from: ``timestep_spacing`` (``"leading"``, ``"trailing"``,
  ``"linspace"``) and ``steps_offset``, applied by the scheduler class itself (its ``_class_name``);
* where a decoding grid ends: ``set_alpha_to_one`` (DDIM family: ``True`` ends at ᾱ = 1, σ = 0;
  ``False`` at ᾱ of timestep 0) or ``final_sigmas_type`` (DPM-Solver/Euler family: ``"zero"`` or
  ``"sigma_min"``); without either, σ = 0.

:func:`read_scheduler_config` turns it into a :class:`SchedulerSpec` and refuses what it cannot
map with a one-line ``ValueError`` naming the allowed values. Schedules are built in float64 from
the config (diffusers computes them in float32, which makes a relative difference of about 1e-6
in ᾱ). Options that are not part of the ODE — ``clip_sample``, ``thresholding``, ``eta`` — have
no counterpart and are not read. Nothing here imports diffusers.

Only variance-preserving (DDPM-type) configs map onto the schedules of this package so far. A
flow-matching config (``FlowMatch*`` schedulers: ``shift``, ``use_dynamic_shifting``) is
recognised by :func:`is_flow_matching` and handled by :func:`_flow_spec`, the one place that will
build its schedule once the package has a rectified-flow schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..field import Prediction
from ..schedules import DiscreteSchedule, Schedule

__all__ = [
    "SchedulerSpec",
    "read_scheduler_config",
    "schedule_from_config",
    "is_flow_matching",
    "jsonable_config",
    "DIFFUSERS_PREDICTIONS",
    "BETA_SCHEDULES",
    "TIMESTEP_SPACINGS",
    "FINAL_SIGMAS_TYPES",
    "DEFAULT_SOURCE",
]

#: diffusers' ``prediction_type`` names mapped to the package's names
DIFFUSERS_PREDICTIONS: dict[str, Prediction] = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
#: the scheduler class whose timesteps a config without ``_class_name`` is given
DEFAULT_SOURCE = "DDIMScheduler"


@dataclass(frozen=True)
class SchedulerSpec:
    """The ODE a diffusers scheduler config describes.

    Attributes:
        class_name: the diffusers scheduler class the config belongs to (its ``_class_name``,
            default ``"DDIMScheduler"``); its ``set_timesteps`` gives the default timesteps.
        schedule: the noise schedule, in float64.
        prediction: what the network predicts, in the package's names (``eps``, ``v``, ``x0``).
        final_sigma: the σ at which a decoding grid of the scheduler's timesteps ends (0: clean data).
        num_train_timesteps: the number of training timesteps T.
    """

    class_name: str
    schedule: Schedule
    prediction: Prediction
    final_sigma: float
    num_train_timesteps: int


def jsonable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A plain-dict copy of a scheduler config whose values ``json`` can write (arrays become lists)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().tolist()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def is_flow_matching(config: Mapping[str, Any]) -> bool:
    """Whether a config describes a rectified-flow (flow-matching) model rather than a DDPM-type one."""
    name = str(config.get("_class_name") or "")
    return (
        name.startswith("FlowMatch")
        or bool(config.get("use_flow_sigmas"))
        or config.get("prediction_type") == "flow_prediction"
    )


def _check_choice(config: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = config.get(key)
    value = default if value is None else value
    if value not in allowed:
        raise ValueError(f"unsupported {key} {value!r} in the scheduler config; allowed: {', '.join(allowed)}")
    return str(value)


def schedule_from_config(config: Mapping[str, Any]) -> Schedule:
    """The float64 noise schedule of a DDPM-type diffusers scheduler config (diffusers' defaults
    for missing keys: linear β from 1e-4 to 0.02 over T = 1000).

    ``scaled_linear`` is β = linspace(√β₀, √β₁, T)², ``squaredcos_cap_v2`` the cosine schedule of
    Nichol & Dhariwal 2021 (s = 0.008, β ≤ 0.999), as in diffusers.
    """
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(
            "unsupported rescale_betas_zero_snr=True in the scheduler config (alpha_bar = 0, sigma infinite, at the "
            "last timestep); allowed: False"
        )
    trained = config.get("trained_betas")
    if trained is not None:
        return DiscreteSchedule(betas=torch.as_tensor(np.asarray(trained, dtype=np.float64)))
    kind = _check_choice(config, "beta_schedule", BETA_SCHEDULES, "linear")
    n = int(config.get("num_train_timesteps") or 1000)
    b0 = float(config.get("beta_start", 1e-4))
    b1 = float(config.get("beta_end", 0.02))
    if kind == "linear":
        return DiscreteSchedule.linear(b0, b1, n)
    if kind == "scaled_linear":
        return DiscreteSchedule(betas=torch.linspace(math.sqrt(b0), math.sqrt(b1), n, dtype=torch.float64) ** 2)
    return DiscreteSchedule.cosine(n)


def _final_sigma(config: Mapping[str, Any], schedule: Schedule) -> float:
    """σ at the end of a decoding grid: ``final_sigmas_type``, else ``set_alpha_to_one``, else 0."""
    kind = config.get("final_sigmas_type")
    if kind is None:
        to_one = config.get("set_alpha_to_one")
        kind = "zero" if to_one is None or to_one else "sigma_min"
    elif kind not in FINAL_SIGMAS_TYPES:
        raise ValueError(
            f"unsupported final_sigmas_type {kind!r} in the scheduler config; allowed: {', '.join(FINAL_SIGMAS_TYPES)}"
        )
    return 0.0 if kind == "zero" else schedule.sigma_min


def _flow_spec(config: Mapping[str, Any]) -> SchedulerSpec:
    """The spec of a flow-matching config: its schedule (``shift``, ``use_dynamic_shifting``, …),
    ``prediction="flow"`` and a grid ending at 0, once the package has a rectified-flow schedule."""
    name = config.get("_class_name") or "flow-matching scheduler"
    raise ValueError(
        f"{name}: flow-matching configs need a rectified-flow schedule, which ddim_ode does not provide yet; "
        "allowed: DDPM-type configs (beta_schedule or trained_betas)"
    )


def read_scheduler_config(config: Mapping[str, Any]) -> SchedulerSpec:
    """The :class:`SchedulerSpec` of a diffusers scheduler config, or a ``ValueError`` naming what is
    unsupported and the allowed values."""
    if is_flow_matching(config):
        return _flow_spec(config)
    if "sigma_data" in config or ("sigma_max" in config and "beta_schedule" not in config):
        name = config.get("_class_name") or "this scheduler"
        raise ValueError(
            f"{name}: a variance-exploding (EDM / score-SDE) config has no DDPM noise schedule; "
            "allowed: DDPM-type configs (beta_schedule or trained_betas)"
        )
    schedule = schedule_from_config(config)
    pred_name = _check_choice(config, "prediction_type", tuple(DIFFUSERS_PREDICTIONS), "epsilon")
    _check_choice(config, "timestep_spacing", TIMESTEP_SPACINGS, "leading")
    if config.get("timestep_type", "discrete") != "discrete":
        raise ValueError(
            f"unsupported timestep_type {config.get('timestep_type')!r} in the scheduler config (the network "
            "would not take DDPM timesteps); allowed: discrete"
        )
    offset = config.get("steps_offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"unsupported steps_offset {offset!r} in the scheduler config; allowed: an int >= 0")
    return SchedulerSpec(
        class_name=str(config.get("_class_name") or DEFAULT_SOURCE),
        schedule=schedule,
        prediction=DIFFUSERS_PREDICTIONS[pred_name],
        final_sigma=_final_sigma(config, schedule),
        num_train_timesteps=int(config.get("num_train_timesteps") or 1000),
    )
