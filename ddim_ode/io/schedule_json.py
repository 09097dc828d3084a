"""Schedules as JSON descriptions: :func:`schedule_to_dict` writes one, :func:`schedule_from_dict` rebuilds it.

A description is an object with a ``type`` — ``"discrete"`` or ``"continuous"`` (variance-preserving,
with a ``kind``), ``"flow"`` (:class:`~ddim_ode.schedules.FlowSchedule`) or ``"ve"``
(:class:`~ddim_ode.schedules.VESchedule`) — and the parameters of that schedule; the entries and
their ranges are listed under :func:`schedule_from_dict`. A model's ``config.json`` holds its
training schedule this way (:mod:`ddim_ode.io.native`), and training presets name theirs so.

Reading is in two parts so that a hostile description costs nothing: :func:`check_schedule_spec`
checks every entry for type and range (bounded by :data:`MAX_TIMESTEPS` and the other ``MAX_``
constants) without building anything, and :func:`build_schedule` builds what it checked.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any

import torch

from ..ranges import OPEN_UNIT, check_bool, check_choice, check_float, check_float_list, check_int
from ..schedules import CosineVPSchedule, DiscreteSchedule, FlowSchedule, LinearVPSchedule, Schedule, VESchedule

__all__ = [
    "schedule_to_dict",
    "schedule_from_dict",
    "MAX_TIMESTEPS",
    "MAX_COSINE_S",
    "MAX_CONTINUOUS_BETA",
    "MAX_FLOW_SHIFT",
    "MAX_FLOW_MU",
    "MAX_IMAGE_SEQ_LEN",
    "MAX_VE_SIGMA",
    "TIME_SHIFT_TYPES",
]

#: bounds of a schedule description: timesteps of a discrete schedule (also the length of a
#: ``betas`` or ``alphas_cumprod`` list), the offset ``s`` of a cosine schedule, and ``beta_max``
#: of the continuous linear schedule (σ overflows float64 beyond a few hundred)
MAX_TIMESTEPS = 100_000
MAX_COSINE_S = 1.0
MAX_CONTINUOUS_BETA = 100.0
#: bounds of a flow description: the static ``shift``, the dynamic shift's ``mu``, ``base_shift`` and
#: ``max_shift`` (e^μ must stay a finite float), the image sequence lengths; and the σ of a VE description
MAX_FLOW_SHIFT = 1000.0
MAX_FLOW_MU = 10.0
MAX_IMAGE_SEQ_LEN = 2**24
MAX_VE_SIGMA = 1e6
#: the entries of a ``"flow"`` description (all optional), the arguments of FlowSchedule; those of a ``"ve"`` one
_FLOW_ENTRIES = (
    "shift",
    "num_train_timesteps",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "time_shift_type",
    "mu",
    "timestep_scale",
)
_VE_ENTRIES = ("sigma_min", "sigma_max")
TIME_SHIFT_TYPES = ("exponential", "linear")

#: the entries of each schedule description, after ``type`` and ``kind``
_SCHEDULE_ENTRIES = {
    "discrete": {
        "linear": ("beta_start", "beta_end", "num_timesteps"),
        "cosine": ("num_timesteps", "s"),
        "betas": ("betas",),
        "alphas_cumprod": ("alphas_cumprod",),
    },
    "continuous": {"linear": ("beta_min", "beta_max", "t_min", "t_max"), "cosine": ("s", "t_min", "t_max")},
}
_OPTIONAL_ENTRIES = ("s", "t_min", "t_max")


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    """A JSON description of a schedule that :func:`schedule_from_dict` rebuilds exactly.

    A :class:`DiscreteSchedule` is recognised as DDPM-linear or cosine when it equals one (then
    only the parameters are stored), otherwise its ``alphas_cumprod`` are stored in full.
    """
    if isinstance(schedule, DiscreteSchedule):
        ab, n = schedule.alphas_cumprod, schedule.num_timesteps
        b0, b1 = (float(f"{float(b):.12g}") for b in (schedule.betas[0], schedule.betas[-1]))
        candidates = [
            (
                {"type": "discrete", "kind": "linear", "beta_start": b0, "beta_end": b1, "num_timesteps": n},
                lambda: DiscreteSchedule.linear(b0, b1, n),
            ),
            ({"type": "discrete", "kind": "cosine", "num_timesteps": n}, lambda: DiscreteSchedule.cosine(n)),
        ]
        for spec, build in candidates:
            try:
                other = build()
            except ValueError:
                continue
            if torch.allclose(other.alphas_cumprod, ab, rtol=1e-10, atol=0.0):
                return spec
        return {"type": "discrete", "kind": "alphas_cumprod", "alphas_cumprod": [float(a) for a in ab]}
    if isinstance(schedule, FlowSchedule):
        return {"type": "flow", **{key: getattr(schedule, key) for key in _FLOW_ENTRIES}}
    if isinstance(schedule, VESchedule):
        return {"type": "ve", "sigma_min": schedule.t_min, "sigma_max": schedule.t_max}
    if isinstance(schedule, LinearVPSchedule):
        kind, shape = "linear", {"beta_min": schedule.beta_min, "beta_max": schedule.beta_max}
    elif isinstance(schedule, CosineVPSchedule):
        kind, shape = "cosine", {"s": schedule.s}
    else:
        raise TypeError(
            f"cannot describe a {type(schedule).__name__} in JSON; supported: DiscreteSchedule, LinearVPSchedule, "
            "CosineVPSchedule, FlowSchedule, VESchedule"
        )
    return {"type": "continuous", "kind": kind, **shape, "t_min": schedule.t_min, "t_max": schedule.t_max}


def _check_entries(spec: Mapping[str, Any], what: str, names: tuple[str, ...], required: tuple[str, ...]) -> None:
    """``ValueError`` naming the first entry of ``spec`` not in ``type`` + ``names``, or the first missing one."""
    unknown = sorted(set(spec) - {"type", *names}, key=str)
    if unknown:
        raise ValueError(f"unknown entries {unknown} in a {what}; allowed: type, {', '.join(names)}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"a {what} lacks the entry {missing[0]!r}")


def _check_flow_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :class:`FlowSchedule` in a ``"flow"`` description, each checked; absent ones
    take the class's defaults."""
    _check_entries(spec, "flow schedule", _FLOW_ENTRIES, ())
    checks: dict[str, Any] = {
        "shift": lambda v: check_float("schedule.shift", v, 0.0, MAX_FLOW_SHIFT, low_open=True),
        "num_train_timesteps": lambda v: check_int("schedule.num_train_timesteps", v, 2, MAX_TIMESTEPS),
        "use_dynamic_shifting": lambda v: check_bool("schedule.use_dynamic_shifting", v),
        "base_shift": lambda v: check_float("schedule.base_shift", v, -MAX_FLOW_MU, MAX_FLOW_MU),
        "max_shift": lambda v: check_float("schedule.max_shift", v, -MAX_FLOW_MU, MAX_FLOW_MU),
        "base_image_seq_len": lambda v: check_int("schedule.base_image_seq_len", v, 1, MAX_IMAGE_SEQ_LEN),
        "max_image_seq_len": lambda v: check_int("schedule.max_image_seq_len", v, 2, MAX_IMAGE_SEQ_LEN),
        "time_shift_type": lambda v: check_choice("schedule.time_shift_type", v, TIME_SHIFT_TYPES),
        "mu": lambda v: None if v is None else check_float("schedule.mu", v, -MAX_FLOW_MU, MAX_FLOW_MU),
        "timestep_scale": lambda v: check_float("schedule.timestep_scale", v, 0.0, MAX_TIMESTEPS, low_open=True),
    }
    return {key: checks[key](spec[key]) for key in _FLOW_ENTRIES if key in spec}


def _check_ve_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``sigma_min`` and ``sigma_max`` of a ``"ve"`` description, each in (0, :data:`MAX_VE_SIGMA`]."""
    _check_entries(spec, "ve schedule", _VE_ENTRIES, _VE_ENTRIES)
    return {key: check_float(f"schedule.{key}", spec[key], 0.0, MAX_VE_SIGMA, low_open=True) for key in _VE_ENTRIES}


def check_schedule_spec(spec: Any) -> tuple[str, str, dict[str, Any]]:
    """``(type, kind, entries)`` of a schedule description, every entry checked for type and range.

    Nothing is built, so this is cheap whatever the description asks for; ``ValueError`` names
    the entry and its allowed range.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a schedule is described by an object with 'type' and 'kind', got {reprlib.repr(spec)}")
    typ = spec.get("type", "discrete")
    if typ == "flow":
        return typ, "", _check_flow_spec(spec)
    if typ == "ve":
        return typ, "", _check_ve_spec(spec)
    if not isinstance(typ, str) or typ not in _SCHEDULE_ENTRIES:
        allowed = ", ".join([*_SCHEDULE_ENTRIES, "flow", "ve"])
        raise ValueError(f"unknown schedule type {reprlib.repr(typ)}; allowed: {allowed}")
    kinds = _SCHEDULE_ENTRIES[typ]
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in kinds:
        raise ValueError(f"unknown {typ} schedule kind {reprlib.repr(kind)}; allowed: {', '.join(kinds)}")
    names = kinds[kind]
    unknown = sorted(set(spec) - {"type", "kind", *names}, key=str)
    if unknown:
        raise ValueError(
            f"unknown entries {unknown} in a {typ} {kind} schedule; allowed: type, kind, {', '.join(names)}"
        )
    missing = [k for k in names if k not in spec and k not in _OPTIONAL_ENTRIES]
    if missing:
        raise ValueError(f"a {typ} {kind} schedule lacks the entry {missing[0]!r}")

    def prob(key: str) -> float:
        return check_float(f"schedule.{key}", spec[key], **OPEN_UNIT)

    out: dict[str, Any] = {}
    if typ == "discrete":
        if "num_timesteps" in names:
            out["num_timesteps"] = check_int("schedule.num_timesteps", spec["num_timesteps"], 2, MAX_TIMESTEPS)
        if kind == "linear":
            out["beta_start"], out["beta_end"] = prob("beta_start"), prob("beta_end")
        elif kind in ("betas", "alphas_cumprod"):
            out[kind] = check_float_list(f"schedule.{kind}", spec[kind], min_len=2, max_len=MAX_TIMESTEPS, **OPEN_UNIT)
    else:
        for key in ("t_min", "t_max"):
            if key in spec:
                out[key] = check_float(f"schedule.{key}", spec[key], 0.0, 1.0)
        if kind == "linear":
            for key in ("beta_min", "beta_max"):
                out[key] = check_float(f"schedule.{key}", spec[key], 0.0, MAX_CONTINUOUS_BETA, low_open=True)
    if kind == "cosine" and "s" in spec:
        out["s"] = check_float("schedule.s", spec["s"], 0.0, MAX_COSINE_S, low_open=True)
    return typ, kind, out


def build_schedule(typ: str, kind: str, entries: Mapping[str, Any]) -> Schedule:
    """The schedule of a description checked by :func:`check_schedule_spec`."""
    e = dict(entries)
    if typ == "flow":
        return FlowSchedule(**e)
    if typ == "ve":
        return VESchedule(**e)
    if typ == "continuous":
        return LinearVPSchedule(**e) if kind == "linear" else CosineVPSchedule(**e)
    if kind == "linear":
        schedule = DiscreteSchedule.linear(e["beta_start"], e["beta_end"], e["num_timesteps"])
    elif kind == "cosine":
        schedule = DiscreteSchedule.cosine(e["num_timesteps"], s=e.get("s", 0.008))
    else:
        schedule = DiscreteSchedule(**{kind: torch.tensor(e[kind], dtype=torch.float64)})
    if not bool(torch.isfinite(schedule.log_sigmas).all()):
        raise ValueError(
            f"the {kind} schedule gives sigma = 0 or infinity at some timestep (alpha_bar rounds to 1 or 0 in "
            "float64); use betas further from 0 and 1, or fewer timesteps"
        )
    return schedule


def schedule_from_dict(spec: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule from :func:`schedule_to_dict`'s description, after checking it.

    Discrete kinds: ``linear`` (``beta_start``, ``beta_end`` in (0, 1), ``num_timesteps``),
    ``cosine`` (``num_timesteps``, optional ``s`` in (0, :data:`MAX_COSINE_S`]), ``betas``
    (``betas``, each in (0, 1)), ``alphas_cumprod`` (``alphas_cumprod``, each in (0, 1), strictly
    decreasing); ``num_timesteps`` and the list lengths lie in [2, :data:`MAX_TIMESTEPS`].
    Continuous kinds: ``linear`` (``beta_min`` < ``beta_max`` in (0, :data:`MAX_CONTINUOUS_BETA`],
    optional ``t_min``, ``t_max`` in [0, 1]), ``cosine`` (optional ``s``, ``t_min``, ``t_max`` < 1).
    Type ``"flow"`` (no kind): the arguments of :class:`~ddim_ode.schedules.FlowSchedule`, each
    optional with the class's default: ``shift`` in (0, :data:`MAX_FLOW_SHIFT`],
    ``num_train_timesteps`` in [2, :data:`MAX_TIMESTEPS`], ``use_dynamic_shifting`` (bool),
    ``base_shift``, ``max_shift`` and ``mu`` (or null) in [−:data:`MAX_FLOW_MU`, :data:`MAX_FLOW_MU`],
    ``base_image_seq_len`` < ``max_image_seq_len`` in [1, :data:`MAX_IMAGE_SEQ_LEN`],
    ``time_shift_type`` (``"exponential"`` or ``"linear"``), ``timestep_scale`` in (0, :data:`MAX_TIMESTEPS`].
    Type ``"ve"`` (no kind): ``sigma_min`` < ``sigma_max`` in (0, :data:`MAX_VE_SIGMA`].
    Every number must be finite; anything else raises ``ValueError`` naming the entry and its
    range, before anything is allocated.
    """
    return build_schedule(*check_schedule_spec(spec))
