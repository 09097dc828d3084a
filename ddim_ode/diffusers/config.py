"""What a diffusers scheduler configuration says about the probability-flow ODE.

A diffusers scheduler config (``scheduler.config``, or a ``scheduler_config.json``) names two
things. The first is the model's Gaussian path and what the network predicts (:func:`path_from_config`),
all :mod:`ddim_ode.io` needs to load a model:

* a DDPM-type (variance-preserving) path: ``beta_schedule`` (``"linear"``, ``"scaled_linear"`` or
  ``"squaredcos_cap_v2"``) with ``beta_start``, ``beta_end`` and ``num_train_timesteps``, or
  ``trained_betas``; the prediction is ``prediction_type`` (``"epsilon"``, ``"v_prediction"``,
  ``"sample"``);
* a rectified-flow path (the ``FlowMatch*`` schedulers of SD3 / Flux-type models): ``shift``, or
  ``use_dynamic_shifting`` with ``base_shift``, ``max_shift``, ``base_image_seq_len``,
  ``max_image_seq_len`` and ``time_shift_type``, over ``num_train_timesteps``
  (:class:`~ddim_ode.schedules.FlowSchedule`); the network predicts the velocity ε − x0
  (prediction ``"flow"``).

The second is how the scheduler samples (:func:`read_scheduler_config`): where its timesteps come
from (``timestep_spacing`` and ``steps_offset``, applied by the scheduler class itself, its
``_class_name``), where a decoding grid ends (``set_alpha_to_one`` in the DDIM family: ``True``
ends at ᾱ = 1, σ = 0, ``False`` at ᾱ of timestep 0; ``final_sigmas_type`` in the DPM-Solver /
Euler family: ``"zero"`` or ``"sigma_min"``; σ = 0 without either and for flow matching), and
whether ``DPMSolverMultistepScheduler`` takes its last step at first order (``lower_order_final``
below 15 steps, ``euler_at_final``).

Unsupported values raise a one-line ``ValueError`` naming the allowed ones; numbers are checked
for type and range before anything is built. Schedules are built in float64 from the config
(diffusers computes them in float32, which makes a relative difference of about 1e-6 in ᾱ).
Options that are not part of the ODE — ``clip_sample``, ``thresholding``, ``eta`` — have no
counterpart and are not read. Nothing here imports diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..field import Prediction
from ..io.schedule_json import MAX_TIMESTEPS
from ..ranges import OPEN_UNIT, check_bool, check_choice, check_float, check_float_list, check_int
from ..schedules import DiscreteSchedule, FlowSchedule, Schedule

__all__ = [
    "SchedulerSpec",
    "read_scheduler_config",
    "path_from_config",
    "schedule_from_config",
    "flow_schedule",
    "is_flow_matching",
    "jsonable_config",
    "DIFFUSERS_PREDICTIONS",
    "BETA_SCHEDULES",
    "TIMESTEP_SPACINGS",
    "FINAL_SIGMAS_TYPES",
    "FLOW_MATCHING_CLASSES",
    "DEFAULT_SOURCE",
]

#: diffusers' ``prediction_type`` names mapped to the package's names
DIFFUSERS_PREDICTIONS: dict[str, Prediction] = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
#: the flow-matching scheduler classes whose configs describe a :class:`~ddim_ode.schedules.FlowSchedule`
FLOW_MATCHING_CLASSES = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
#: the scheduler class whose timesteps a config without ``_class_name`` is given
DEFAULT_SOURCE = "DDIMScheduler"
#: ``DPMSolverMultistepScheduler`` with ``lower_order_final`` takes a first-order last step below this many steps
LOWER_ORDER_FINAL_STEPS = 15


@dataclass(frozen=True)
class SchedulerSpec:
    """The ODE a diffusers scheduler config describes, and how that scheduler samples it.

    Attributes:
        class_name: the diffusers scheduler class the config belongs to (its ``_class_name``,
            default ``"DDIMScheduler"``); its ``set_timesteps`` gives the default timesteps.
        schedule: the path, in float64: a :class:`~ddim_ode.schedules.DiscreteSchedule`, or a
            :class:`~ddim_ode.schedules.FlowSchedule` (without μ when its shift is dynamic).
        prediction: what the network predicts, in the package's names (``eps``, ``v``, ``x0``, ``flow``).
        final_sigma: the σ at which a decoding grid of the scheduler's timesteps ends (0: clean data).
        num_train_timesteps: the number of training timesteps T.
        lower_order_final_below: a grid of fewer steps than this takes its last step at first order
            (``DPMSolverMultistepScheduler``: 15 with ``lower_order_final``, ``inf`` with
            ``euler_at_final``; 0 otherwise).
    """

    class_name: str
    schedule: Schedule
    prediction: Prediction
    final_sigma: float
    num_train_timesteps: int
    lower_order_final_below: float = 0.0

    @property
    def flow_matching(self) -> bool:
        """Whether the path is rectified flow (a ``FlowMatch*`` config)."""
        return self.schedule.rectified_flow


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


def _config_choice(config: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    """``config[key]`` (``default`` when missing or null), one of ``allowed``."""
    return str(check_choice(f"scheduler config {key}", _get(config, key, default), allowed))


def _get(config: Mapping[str, Any], key: str, default: Any) -> Any:
    """``config[key]``, or ``default`` when it is missing or null (diffusers' defaults)."""
    value = config.get(key)
    return default if value is None else value


def _num_train_timesteps(config: Mapping[str, Any]) -> int:
    return check_int("num_train_timesteps", _get(config, "num_train_timesteps", 1000), 2, MAX_TIMESTEPS)


def _vp_schedule(config: Mapping[str, Any]) -> DiscreteSchedule:
    """The float64 DDPM schedule of a config (diffusers' defaults: linear β from 1e-4 to 0.02, T = 1000)."""
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(
            "unsupported rescale_betas_zero_snr=True in the scheduler config (alpha_bar = 0, sigma infinite, at the "
            "last timestep); allowed: False"
        )
    trained = config.get("trained_betas")
    if trained is not None:
        if isinstance(trained, (torch.Tensor, np.ndarray)):
            trained = trained.tolist()
        betas = check_float_list("trained_betas", trained, min_len=2, max_len=MAX_TIMESTEPS, **OPEN_UNIT)
        return DiscreteSchedule(betas=torch.tensor(betas, dtype=torch.float64))
    kind = _config_choice(config, "beta_schedule", BETA_SCHEDULES, "linear")
    n = _num_train_timesteps(config)
    b0 = check_float("beta_start", _get(config, "beta_start", 1e-4), **OPEN_UNIT)
    b1 = check_float("beta_end", _get(config, "beta_end", 0.02), **OPEN_UNIT)
    if kind == "linear":
        return DiscreteSchedule.linear(b0, b1, n)
    if kind == "scaled_linear":
        return DiscreteSchedule(betas=torch.linspace(math.sqrt(b0), math.sqrt(b1), n, dtype=torch.float64) ** 2)
    return DiscreteSchedule.cosine(n)  # diffusers' betas_for_alpha_bar: s = 0.008, β ≤ 0.999


def flow_schedule(config: Mapping[str, Any], mu: float | None = None) -> FlowSchedule:
    """The :class:`~ddim_ode.schedules.FlowSchedule` of a ``FlowMatch*`` config (diffusers' defaults
    for missing keys: shift 1, T = 1000), with ``mu`` when its shift is dynamic.

    The network's timesteps are τ · ``num_train_timesteps``, as these schedulers' ``timesteps``.
    """
    name = config.get("_class_name") or "this scheduler"
    if config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction":
        raise ValueError(
            f"{name}: flow sigmas in a multistep scheduler (use_flow_sigmas / flow_prediction) are not supported; "
            f"allowed flow-matching configs: {', '.join(FLOW_MATCHING_CLASSES)}"
        )
    if name not in FLOW_MATCHING_CLASSES:
        raise ValueError(f"unsupported flow-matching scheduler {name!r}; allowed: {', '.join(FLOW_MATCHING_CLASSES)}")
    if config.get("invert_sigmas"):
        raise ValueError(
            "unsupported invert_sigmas=True in the scheduler config (timesteps run against the noise level); "
            "allowed: False"
        )
    dynamic = check_bool("use_dynamic_shifting", _get(config, "use_dynamic_shifting", False))
    shift_type = _config_choice(config, "time_shift_type", ("exponential", "linear"), "exponential")
    return FlowSchedule(
        check_float("shift", _get(config, "shift", 1.0), 0.0, low_open=True),
        _num_train_timesteps(config),
        use_dynamic_shifting=dynamic,
        base_shift=check_float("base_shift", _get(config, "base_shift", 0.5)),
        max_shift=check_float("max_shift", _get(config, "max_shift", 1.15)),
        base_image_seq_len=check_int("base_image_seq_len", _get(config, "base_image_seq_len", 256), 1),
        max_image_seq_len=check_int("max_image_seq_len", _get(config, "max_image_seq_len", 4096), 2),
        time_shift_type=shift_type,  # type: ignore[arg-type]
        mu=mu if dynamic else None,
    )


def schedule_from_config(config: Mapping[str, Any]) -> Schedule:
    """The float64 path of a scheduler config: a DDPM schedule, or a flow schedule for ``FlowMatch*``
    configs (without μ when its shift is dynamic; see :func:`flow_schedule`).

    DDPM: ``scaled_linear`` is β = linspace(√β₀, √β₁, T)², ``squaredcos_cap_v2`` the cosine schedule
    of Nichol & Dhariwal 2021 (s = 0.008, β ≤ 0.999), as in diffusers; ``trained_betas`` are used as
    given. Every number is checked (β in (0, 1), 2 ≤ T ≤ :data:`~ddim_ode.io.MAX_TIMESTEPS`).
    """
    if is_flow_matching(config):
        return flow_schedule(config)
    if "sigma_data" in config or ("sigma_max" in config and "beta_schedule" not in config):
        name = config.get("_class_name") or "this scheduler"
        raise ValueError(
            f"{name}: a variance-exploding (EDM / score-SDE) config has no DDPM noise schedule; "
            "allowed: DDPM-type configs (beta_schedule or trained_betas) or flow matching "
            f"({', '.join(FLOW_MATCHING_CLASSES)})"
        )
    return _vp_schedule(config)


def path_from_config(config: Mapping[str, Any], image_seq_len: int | None = None) -> tuple[Schedule, Prediction]:
    """The model's path (:func:`schedule_from_config`) and what its network predicts: ``"flow"`` for
    flow matching, else ``prediction_type`` (``epsilon``, ``v_prediction``, ``sample``) in the
    package's names. A dynamically shifted flow schedule gets the μ of ``image_seq_len`` latent
    tokens when it is given (:meth:`~ddim_ode.schedules.FlowSchedule.for_image_seq_len`)."""
    schedule = schedule_from_config(config)
    if isinstance(schedule, FlowSchedule):
        if schedule.use_dynamic_shifting and image_seq_len is not None:
            schedule = schedule.for_image_seq_len(image_seq_len)
        return schedule, "flow"
    name = _config_choice(config, "prediction_type", tuple(DIFFUSERS_PREDICTIONS), "epsilon")
    return schedule, DIFFUSERS_PREDICTIONS[name]


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


def _lower_order_final_below(config: Mapping[str, Any], class_name: str) -> float:
    """Below how many steps ``DPMSolverMultistepScheduler`` takes its last step at first order."""
    if class_name != "DPMSolverMultistepScheduler":
        return 0.0
    if check_bool("euler_at_final", _get(config, "euler_at_final", False)):
        return math.inf
    lower = check_bool("lower_order_final", _get(config, "lower_order_final", True))
    return float(LOWER_ORDER_FINAL_STEPS) if lower else 0.0


def _flow_spec(config: Mapping[str, Any]) -> SchedulerSpec:
    """The spec of a flow-matching config: its flow schedule, prediction ``"flow"``, a grid ending at 0."""
    schedule = flow_schedule(config)
    if config.get("stochastic_sampling"):
        raise ValueError(
            "unsupported stochastic_sampling=True in the scheduler config (it re-noises every step: not the ODE); "
            "allowed: False"
        )
    return SchedulerSpec(
        class_name=str(config["_class_name"]),
        schedule=schedule,
        prediction="flow",
        final_sigma=0.0,
        num_train_timesteps=schedule.num_train_timesteps,
    )


def read_scheduler_config(config: Mapping[str, Any]) -> SchedulerSpec:
    """The :class:`SchedulerSpec` of a diffusers scheduler config, or a ``ValueError`` naming what is
    unsupported and the allowed values."""
    if is_flow_matching(config):
        return _flow_spec(config)
    schedule, prediction = path_from_config(config)
    _config_choice(config, "timestep_spacing", TIMESTEP_SPACINGS, "leading")
    if config.get("timestep_type", "discrete") != "discrete":
        raise ValueError(
            f"unsupported timestep_type {config.get('timestep_type')!r} in the scheduler config (the network "
            "would not take DDPM timesteps); allowed: discrete"
        )
    offset = config.get("steps_offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"unsupported steps_offset {offset!r} in the scheduler config; allowed: an int >= 0")
    class_name = str(config.get("_class_name") or DEFAULT_SOURCE)
    return SchedulerSpec(
        class_name=class_name,
        schedule=schedule,
        prediction=prediction,
        final_sigma=_final_sigma(config, schedule),
        num_train_timesteps=_num_train_timesteps(config),
        lower_order_final_below=_lower_order_final_below(config, class_name),
    )
