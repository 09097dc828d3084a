"""Saving and loading ε-networks: the package's own format, diffusers UNets, plain state dicts.

The package's format is a directory holding two files:

* ``model.safetensors`` — the weights (safetensors: no code is ever executed on load);
* ``config.json`` — ``format`` (``"ddim_ode.model"``), ``format_version``, ``architecture``
  (``"UNet"``), ``unet`` (the :class:`~ddim_ode.unet.UNetConfig`), ``schedule`` (see
  :func:`schedule_to_dict`), ``prediction`` (``"eps"``, ``"x0"``, ``"v"`` or ``"flow"``, the names of
  :class:`ddim_ode.field.ProbabilityFlowODE`) and free-form entries such as ``data`` (scaling) and
  ``training`` (command, steps, wall time, loss).

Loading checks before it builds: every field of ``config.json`` is checked for type and range
(:class:`~ddim_ode.unet.UNetConfig`'s bounds, and :data:`MAX_TIMESTEPS` etc. for the schedule),
and the parameter shapes that the architecture implies (worked out on the ``meta`` device) are
compared with the shapes in the safetensors header, so a hostile or broken config is refused with
a :class:`ModelFormatError` before any memory is spent on it. Weights holding NaN or infinite
values are refused too.

Loaders return a :class:`LoadedModel` ``(model, schedule, metadata)``: ``model(x_t, t)`` follows
the ε-model contract of the package (for a diffusers model, whatever ``metadata["prediction"]``
says the network predicts), ``schedule`` is the training schedule, ``metadata`` a dict.
Loaded models are in eval mode with gradients of the parameters switched off (gradients with
respect to the input still flow).

Built-in models (:data:`BUILTIN_MODELS`, listed with a description by :func:`builtin_models`) load
by name: ``"digits"`` (the default), ``"digits-cond"`` (class-conditional) and ``"digits-flow"``
(rectified flow); see ``docs/model.md``.
"""

from __future__ import annotations

import json
import pickle
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ._files import atomic_write, read_json, write_json
from .field import PREDICTIONS
from .ranges import check_bool, check_float, check_float_list, check_int
from .schedules import CosineVPSchedule, DiscreteSchedule, FlowSchedule, LinearVPSchedule, Schedule, VESchedule
from .unet import UNet, UNetConfig

__all__ = [
    "LoadedModel",
    "ModelFormatError",
    "DiffusersEpsModel",
    "DIFFUSERS_NETWORKS",
    "save_model",
    "load_model",
    "load_default",
    "load_diffusers_unet",
    "load_torch_state_dict",
    "load_weights_only",
    "load_any",
    "load_builtin",
    "builtin_models",
    "BUILTIN_MODELS",
    "schedule_to_dict",
    "schedule_from_dict",
    "check_extra_metadata",
    "DEFAULT_MODEL_DIR",
    "MAX_TIMESTEPS",
    "MAX_COSINE_S",
    "MAX_CONTINUOUS_BETA",
    "MAX_FLOW_SHIFT",
    "MAX_FLOW_MU",
    "MAX_IMAGE_SEQ_LEN",
    "MAX_VE_SIGMA",
]

FORMAT = "ddim_ode.model"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: the models shipped with the package, by name: their directories (see ``docs/model.md``)
BUILTIN_MODELS: dict[str, Path] = {
    "digits": _WEIGHTS_DIR / "digits",
    "digits-cond": _WEIGHTS_DIR / "digits-cond",
    "digits-flow": _WEIGHTS_DIR / "digits-flow",
}
#: one line on each built-in model, for listings
_BUILTIN_DESCRIPTIONS = {
    "digits": "8x8 digits, unconditional UNet, eps-prediction, DDPM linear schedule (T = 1000); the default",
    "digits-cond": "8x8 digits conditioned on the class (model_kwargs={'y': labels 0..9}, 10 = null class), "
    "eps-prediction, DDPM linear schedule; classifier-free guidance without uncond_kwargs",
    "digits-flow": "8x8 digits, unconditional UNet, rectified flow (prediction 'flow'), FlowSchedule(shift=1.0)",
}
#: the name ``"default"`` (and ``None``) stands for
DEFAULT_MODEL = "digits"
DEFAULT_MODEL_DIR = BUILTIN_MODELS[DEFAULT_MODEL]
_RESERVED = ("format", "format_version", "architecture", "unet", "schedule", "prediction")

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
#: the open interval (0, 1) of every beta and alpha_bar, as keywords of check_float
_OPEN_UNIT: dict[str, Any] = {"low": 0.0, "high": 1.0, "low_open": True, "high_open": True}


class ModelFormatError(ValueError):
    """A model file exists but cannot be used: corrupted, truncated, out of range, or for another architecture."""


class LoadedModel(NamedTuple):
    """What every loader returns; unpacks as ``model, schedule, metadata``."""

    model: nn.Module
    schedule: Schedule
    metadata: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# schedules <-> JSON


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
        "time_shift_type": lambda v: _check_choice("schedule.time_shift_type", v, TIME_SHIFT_TYPES),
        "mu": lambda v: None if v is None else check_float("schedule.mu", v, -MAX_FLOW_MU, MAX_FLOW_MU),
        "timestep_scale": lambda v: check_float("schedule.timestep_scale", v, 0.0, MAX_TIMESTEPS, low_open=True),
    }
    return {key: checks[key](spec[key]) for key in _FLOW_ENTRIES if key in spec}


def _check_ve_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``sigma_min`` and ``sigma_max`` of a ``"ve"`` description, each in (0, :data:`MAX_VE_SIGMA`]."""
    _check_entries(spec, "ve schedule", _VE_ENTRIES, _VE_ENTRIES)
    return {key: check_float(f"schedule.{key}", spec[key], 0.0, MAX_VE_SIGMA, low_open=True) for key in _VE_ENTRIES}


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {reprlib.repr(value)}")
    return value


def _check_schedule_spec(spec: Any) -> tuple[str, str, dict[str, Any]]:
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
        return check_float(f"schedule.{key}", spec[key], **_OPEN_UNIT)

    out: dict[str, Any] = {}
    if typ == "discrete":
        if "num_timesteps" in names:
            out["num_timesteps"] = check_int("schedule.num_timesteps", spec["num_timesteps"], 2, MAX_TIMESTEPS)
        if kind == "linear":
            out["beta_start"], out["beta_end"] = prob("beta_start"), prob("beta_end")
        elif kind in ("betas", "alphas_cumprod"):
            out[kind] = check_float_list(f"schedule.{kind}", spec[kind], min_len=2, max_len=MAX_TIMESTEPS, **_OPEN_UNIT)
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


def _build_schedule(typ: str, kind: str, entries: Mapping[str, Any]) -> Schedule:
    """The schedule of a description checked by :func:`_check_schedule_spec`."""
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
    return _build_schedule(*_check_schedule_spec(spec))


# ----------------------------------------------------------------------------------------------
# the package's own format


def check_extra_metadata(extra_metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries :func:`save_model` may add to ``config.json``, checked: a mapping with string keys,
    none of them reserved (``format``, ``format_version``, ``architecture``, ``unet``, ``schedule``,
    ``prediction``), serialisable as strict JSON (no NaN or infinity). ``ValueError`` otherwise."""
    if extra_metadata is None:
        return {}
    if not isinstance(extra_metadata, Mapping) or not all(isinstance(k, str) for k in extra_metadata):
        raise ValueError(f"extra_metadata must be a mapping with string keys, got {type(extra_metadata).__name__}")
    extra = dict(extra_metadata)
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"extra_metadata may not set the reserved keys {clash}")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"extra_metadata must be strict JSON (no NaN or infinity): {err}") from None
    return extra


def save_model(
    path: str | Path,
    model: UNet,
    config: UNetConfig | None = None,
    schedule: Schedule | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    *,
    prediction: str = "eps",
) -> Path:
    """Save ``model`` as ``path/model.safetensors`` + ``path/config.json`` (each written atomically).

    Args:
        path: the model directory (created if missing).
        model: a :class:`~ddim_ode.unet.UNet`; its weights are stored as float32 on the CPU.
        config: its architecture (default: ``model.config``).
        schedule: the schedule it was trained with (required).
        extra_metadata: JSON-serialisable entries added to ``config.json`` (e.g. ``data``,
            ``training``); see :func:`check_extra_metadata`.
        prediction: what the network outputs: ``"eps"``, ``"x0"``, ``"v"`` or ``"flow"`` (the velocity
            ε − x0 of a rectified flow).

    Returns the directory.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"save_model stores ddim_ode UNet models, got {type(model).__name__}")
    if schedule is None:
        raise ValueError("save_model needs the schedule the model was trained with")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
    cfg = config if config is not None else model.config
    if cfg != model.config:
        raise ValueError(f"config {cfg} does not describe the model, whose config is {model.config}")
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": "UNet",
        "unet": cfg.to_dict(),
        "schedule": schedule_to_dict(schedule),
        "prediction": prediction,
        **check_extra_metadata(extra_metadata),
    }

    from safetensors.torch import save_file

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / MODEL_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    write_json(directory / CONFIG_FILE, doc)
    return directory


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``ModelFormatError`` (one line, naming the file) when it is not one."""
    if not path.is_file():
        raise FileNotFoundError(f"missing {path.name}: expected {path}")
    try:
        doc = read_json(path)
    except RecursionError:
        raise ModelFormatError(f"{path} is not valid JSON: it is nested too deeply") from None
    except ValueError as err:  # read_json names the file; a few decoder errors (huge integers) do not
        message = str(err).splitlines()[0]
        raise ModelFormatError(message if str(path) in message else f"{path} is not valid JSON: {message}") from None
    if not isinstance(doc, dict):
        raise ModelFormatError(f"{path} must hold a JSON object, got {type(doc).__name__}")
    return doc


def _safetensors_error(path: Path, err: Exception) -> ModelFormatError:
    return ModelFormatError(f"{path} is not a readable safetensors file (corrupted or truncated?): {err}")


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes in a safetensors header, read without loading any tensor."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"missing weights file: expected {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _safetensors_error(path, err) from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"missing weights file: expected {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _safetensors_error(path, err) from None


def _check_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: str) -> None:
    """``ModelFormatError`` naming the first parameter that is missing, unexpected or of another shape."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} parameters (first: {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected parameters (first: {reprlib.repr(unexpected[:3])})")
        raise ModelFormatError(f"{source}: the weights are for another architecture: " + "; ".join(parts))
    for name, shape in expected.items():  # in the model's order, so the first mismatch reported is the earliest layer
        if tuple(found[name]) != tuple(shape):
            raise ModelFormatError(
                f"{source}: the weights are for another architecture: parameter {name!r} has shape "
                f"{tuple(found[name])} in the file but {tuple(shape)} in the model"
            )


def _check_finite(state: Mapping[str, Tensor], source: str) -> None:
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFormatError(
                f"{source}: parameter {name!r} holds NaN or infinite values; these weights cannot be used "
                "(was the training run diverging?)"
            )


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _load_checked(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` after checking names, shapes and finiteness, with errors naming the parameter."""
    own = model.state_dict()
    _check_shapes(_shapes(own), _shapes(state), source)
    _check_finite(state, source)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _unet_with_weights(config: UNetConfig, state: Mapping[str, Tensor], source: str) -> UNet:
    """A :class:`UNet` of architecture ``config`` holding ``state``, whose names and shapes have been checked.

    The weights' finiteness is checked before the network is built.
    """
    _check_finite(state, source)
    model = UNet(config, generator=torch.Generator())  # a private generator: the global RNG is left alone
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model


def _finish(model: nn.Module, device: str | torch.device | None) -> nn.Module:
    if device is not None:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def _model_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (MODEL_FILE, CONFIG_FILE):
        return p.parent
    if not p.exists():
        raise FileNotFoundError(f"no such model directory: {p}")
    if not p.is_dir():
        raise ValueError(f"{p} is a file; pass the model directory (holding {MODEL_FILE} and {CONFIG_FILE})")
    return p


class _ModelConfig(NamedTuple):
    """A checked ``config.json``: nothing in it has been built yet."""

    doc: dict[str, Any]
    unet: UNetConfig
    schedule: tuple[str, str, dict[str, Any]]
    prediction: str


def _read_model_config(path: Path) -> _ModelConfig:
    """Read and check every field of a ``config.json`` (type and range); ``ModelFormatError`` naming the field."""
    doc = _read_json(path)
    if doc.get("format") != FORMAT:
        raise ModelFormatError(
            f"{path} is not a ddim_ode model config (format {reprlib.repr(doc.get('format'))}, expected {FORMAT!r}); "
            "for a diffusers model use load_diffusers_unet"
        )
    for key in ("unet", "schedule"):
        if key not in doc:
            raise ModelFormatError(f"{path} lacks the entry {key!r}")
    try:
        version = check_int("format_version", doc.get("format_version", FORMAT_VERSION), 1)
        if version > FORMAT_VERSION:
            raise ModelFormatError(f"format_version {version} is newer than supported ({FORMAT_VERSION})")
        if doc.get("architecture") != "UNet":
            raise ModelFormatError(f"unknown architecture {reprlib.repr(doc.get('architecture'))}; allowed: 'UNet'")
        prediction = doc.get("prediction", "eps")
        if not isinstance(prediction, str) or prediction not in PREDICTIONS:
            raise ModelFormatError(f"unknown prediction {reprlib.repr(prediction)}; allowed: {', '.join(PREDICTIONS)}")
        return _ModelConfig(doc, UNetConfig.from_dict(doc["unet"]), _check_schedule_spec(doc["schedule"]), prediction)
    except ValueError as err:
        raise ModelFormatError(f"{path}: {err}") from None


def load_model(path: str | Path, device: str | torch.device | None = None) -> LoadedModel:
    """Load a model saved by :func:`save_model`.

    Args:
        path: the model directory (or its ``config.json`` / ``model.safetensors``).
        device: where to put the model (default: CPU).

    ``config.json`` is checked field by field, and the shapes its architecture implies against
    the safetensors header, before the network or the schedule is built.

    Raises:
        FileNotFoundError: a file is missing.
        ModelFormatError: unreadable JSON or safetensors (corrupted/truncated), an unknown format,
            a field of the wrong type or out of range (the message names the file, the field and
            the allowed range), weights for another architecture (the message names the
            parameter), or weights holding NaN or infinite values.
    """
    directory = _model_dir(path)
    cfg = _read_model_config(directory / CONFIG_FILE)
    weights = directory / MODEL_FILE
    _check_shapes(UNet.state_dict_shapes(cfg.unet), _safetensors_shapes(weights), str(weights))
    model = _unet_with_weights(cfg.unet, _read_safetensors(weights), str(weights))
    try:
        schedule = _build_schedule(*cfg.schedule)
    except ValueError as err:  # a checked description the schedule still refuses (alphas_cumprod not decreasing)
        raise ModelFormatError(f"{directory / CONFIG_FILE}: {err}") from None
    metadata = dict(cfg.doc)
    metadata["source"] = str(directory)
    metadata["sample_shape"] = [cfg.unet.in_channels, cfg.unet.resolution, cfg.unet.resolution]
    return LoadedModel(_finish(model, device), schedule, metadata)


def load_default(device: str | torch.device | None = None) -> LoadedModel:
    """The default built-in model (``"digits"``): a small UNet trained on the 8×8 digits, DDPM linear
    schedule, T = 1000.

    See ``docs/model.md`` for how it was trained. Data scale: ``pixel / 16 * 2 − 1``, shape (1, 8, 8).
    """
    return load_model(DEFAULT_MODEL_DIR, device=device)


def builtin_models() -> dict[str, str]:
    """The names of the built-in models (:data:`BUILTIN_MODELS`), each with a one-line description."""
    return {name: _BUILTIN_DESCRIPTIONS[name] for name in BUILTIN_MODELS}


def load_builtin(name: str, device: str | torch.device | None = None) -> LoadedModel:
    """A built-in model by name (``"digits"``, ``"digits-cond"``, ``"digits-flow"``; ``"default"`` is
    ``"digits"``); ``ValueError`` naming the allowed names for any other."""
    name = DEFAULT_MODEL if name == "default" else name
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; allowed: default, {', '.join(BUILTIN_MODELS)}")
    loaded = load_model(BUILTIN_MODELS[name], device=device)
    loaded.metadata["builtin"] = name
    return loaded


# ----------------------------------------------------------------------------------------------
# plain PyTorch state dicts


def load_weights_only(path: str | Path) -> Any:
    """The content of a PyTorch file, read with ``torch.load(..., weights_only=True)`` onto the CPU.

    Only tensors and plain containers are accepted: a pickle that would construct other objects
    (and could run code) is refused with :class:`ModelFormatError` before anything in it runs, as
    is a corrupted or truncated file. ``FileNotFoundError`` when there is no such file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelFormatError(
            f"refusing to load {p}: it is a pickle holding objects other than tensors and plain containers, "
            "which could execute code. Only weights-only checkpoints (torch.load(..., weights_only=True)) "
            "are accepted; re-save the state dict with torch.save(model.state_dict(), ...) or as safetensors. "
            f"({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ModelFormatError(f"{p} is not a readable PyTorch checkpoint (corrupted or truncated?): {err}") from None


def _state_from_checkpoint(obj: Any, source: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("ema", "state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                return dict(inner)
    raise ModelFormatError(
        f"{source} holds no state dict: expected a dict of tensors, or one under the key 'ema', 'state_dict' or 'model'"
    )


def load_torch_state_dict(path: str | Path, config: UNetConfig, device: str | torch.device | None = None) -> UNet:
    """A :class:`UNet` of architecture ``config`` with weights from a PyTorch checkpoint.

    The file is read with :func:`load_weights_only`: a pickle that would run code is refused with
    :class:`ModelFormatError`. It may hold a state dict, or a dict with the state dict under
    ``"ema"`` (preferred), ``"state_dict"`` or ``"model"`` (as the training checkpoints of
    :func:`ddim_ode.train.train` do). Names, shapes and finiteness are checked before the network
    is built. The schedule is not part of a state dict.
    """
    p = Path(path)
    state = _state_from_checkpoint(load_weights_only(p), str(p))
    _check_shapes(UNet.state_dict_shapes(config), _shapes(state), str(p))
    return _finish(_unet_with_weights(config, state, str(p)), device)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# diffusers


#: the diffusers networks :func:`load_diffusers_unet` loads, with the keyword arguments their call
#: takes beyond ``(x_t, t)`` (the conditioning, passed as ``model_kwargs``)
DIFFUSERS_NETWORKS: dict[str, tuple[str, ...]] = {
    "UNet2DModel": (),
    "UNet2DConditionModel": ("encoder_hidden_states",),
    "SD3Transformer2DModel": ("encoder_hidden_states", "pooled_projections"),
}
#: the folders of a pipeline directory that hold its network, in the order they are looked for
_NETWORK_FOLDERS = ("unet", "transformer")
_PIPELINE_INDEX = "model_index.json"
#: AutoencoderKL's default ``scaling_factor`` (Stable Diffusion 1.x/2.x)
_VAE_SCALING_FACTOR = 0.18215


class DiffusersEpsModel(nn.Module):
    """A diffusers network behind the package's model contract ``model(x_t, t, **kwargs) -> Tensor``.

    ``UNet2DModel`` (``model(x_t, t)``), ``UNet2DConditionModel``
    (``model(x_t, t, encoder_hidden_states=emb)``, so ``model_kwargs={"encoder_hidden_states": emb}``
    conditions :func:`ddim_ode.decode`) or ``SD3Transformer2DModel`` (``encoder_hidden_states`` and
    ``pooled_projections``). ``t`` (a scalar or shape ``(B,)``, any float) is passed as the diffusers
    ``timestep`` and keyword arguments as they are; the input and floating keyword tensors are cast
    to the network's dtype and the output back to the input's dtype. When the network predicts a
    learned variance as well (``2·C`` output channels) only the first ``C`` channels are returned.
    The output is what the network was trained to predict: :attr:`prediction` (``"eps"``,
    ``"x0"``, ``"v"`` or ``"flow"``, the velocity ε − x0 of rectified flow).
    """

    def __init__(self, unet: nn.Module, prediction: str = "eps") -> None:
        super().__init__()
        self.unet = unet
        self.prediction = prediction

    def forward(self, x: Tensor, t: Tensor | float, **kwargs: Any) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        cond = {k: v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in kwargs.items()}
        out = self.unet(x.to(dtype), timestep=t.to(torch.float32), return_dict=False, **cond)[0]
        if out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        return out.to(x.dtype)


def _diffusers_weights(unet_dir: Path) -> dict[str, Tensor]:
    st = unet_dir / "diffusion_pytorch_model.safetensors"
    if st.is_file():
        return _read_safetensors(st)
    variants = sorted(unet_dir.glob("diffusion_pytorch_model.*.safetensors"))
    if len(variants) == 1:
        return _read_safetensors(variants[0])
    pt = unet_dir / "diffusion_pytorch_model.bin"
    if pt.is_file():
        return _state_from_checkpoint(load_weights_only(pt), str(pt))
    if list(unet_dir.glob("*.index.json")):
        raise ModelFormatError(f"{unet_dir}: sharded weights are not supported")
    raise FileNotFoundError(
        f"{unet_dir}: no weights found; expected diffusion_pytorch_model.safetensors (or a single "
        "diffusion_pytorch_model.<variant>.safetensors, or diffusion_pytorch_model.bin)"
    )


def _check_network_config(cfg: Mapping[str, Any], net_dir: Path) -> str:
    """The class of a diffusers network config, if :func:`load_diffusers_unet` can use it."""
    cls = cfg.get("_class_name", "UNet2DModel")
    if cls not in DIFFUSERS_NETWORKS:
        allowed = ", ".join(repr(c) for c in DIFFUSERS_NETWORKS)
        raise ModelFormatError(
            f"{net_dir / CONFIG_FILE}: unsupported diffusers class {reprlib.repr(cls)}; allowed: {allowed}"
        )
    if cls == "UNet2DModel":
        if cfg.get("num_class_embeds") or cfg.get("class_embed_type"):
            raise ModelFormatError(
                f"{net_dir}: class-conditional UNet2DModel is not supported (no class labels in model(x_t, t))"
            )
        if cfg.get("time_embedding_type", "positional") != "positional":
            raise ModelFormatError(
                f"{net_dir}: time_embedding_type {cfg['time_embedding_type']!r} (a variance-exploding score model) is "
                "not supported; allowed: 'positional' (DDPM-style timesteps)"
            )
    if cls == "UNet2DConditionModel" and (cfg.get("addition_embed_type") or cfg.get("class_embed_type")):
        raise ModelFormatError(
            f"{net_dir}: a UNet2DConditionModel with added conditions (addition_embed_type / class_embed_type, as "
            "SDXL) is not supported; allowed: text-conditioned UNets of Stable Diffusion 1.x/2.x type"
        )
    return str(cls)


def _pipeline_components(net_dir: Path) -> dict[str, Any]:
    """What the pipeline directory around ``net_dir`` holds besides the network (metadata entries)."""
    pipe_dir = net_dir.parent
    if not (pipe_dir / _PIPELINE_INDEX).is_file():
        return {"pipeline": None, "pipeline_class": None, "components": {}}
    index = _read_json(pipe_dir / _PIPELINE_INDEX)
    components = {
        name: str(pipe_dir / name)
        for name in sorted(index)
        if not name.startswith("_") and name != net_dir.name and (pipe_dir / name).is_dir()
    }
    out: dict[str, Any] = {
        "pipeline": str(pipe_dir),
        "pipeline_class": index.get("_class_name"),
        "components": components,
    }
    vae_config = pipe_dir / "vae" / CONFIG_FILE
    if vae_config.is_file():
        vae = _read_json(vae_config)
        try:
            scaling = check_float("scaling_factor", vae.get("scaling_factor", _VAE_SCALING_FACTOR), 0.0, low_open=True)
            shift = check_float("shift_factor", vae.get("shift_factor") or 0.0)
        except ValueError as err:
            raise ModelFormatError(f"{vae_config}: {err}") from None
        out["vae_scaling_factor"], out["vae_shift_factor"] = scaling, shift
    return out


def load_diffusers_unet(
    path: str | Path, device: str | torch.device | None = None, schedule: Schedule | None = None
) -> LoadedModel:
    """Load a diffusers network: a ``UNet2DModel``, a Stable-Diffusion-type ``UNet2DConditionModel``
    or an ``SD3Transformer2DModel`` (needs the ``diffusers`` extra).

    Args:
        path: the network directory (``config.json`` + ``diffusion_pytorch_model.safetensors`` or
            ``.bin``), or a pipeline directory holding it as ``unet/`` or ``transformer/``.
        device: where to put the model (default: CPU).
        schedule: overrides the path read from ``scheduler_config.json``; required when there is none.

    The path and prediction come from ``scheduler_config.json`` in the network directory or in the
    ``scheduler/`` folder beside it (:func:`ddim_ode.diffusers.config.path_from_config`): a DDPM
    schedule (``trained_betas``, or ``beta_schedule`` ``"linear"``, ``"scaled_linear"`` or
    ``"squaredcos_cap_v2"`` with ``num_train_timesteps``, ``beta_start``, ``beta_end``) and
    ``prediction_type``, or, for a ``FlowMatch*`` scheduler, a
    :class:`~ddim_ode.schedules.FlowSchedule` (``shift``, ``use_dynamic_shifting``, …) with
    prediction ``"flow"``; a dynamic shift is set (μ) for the network's own sample size
    (``metadata["image_seq_len"]`` latent tokens), as the SD3 pipeline does at its default resolution.

    The model is a :class:`DiffusersEpsModel`: ``model(x_t, t, **model_kwargs)``, conditioned by
    ``metadata["conditioning"]`` (the keyword arguments the network takes: ``encoder_hidden_states``
    for a text-conditioned UNet, and ``pooled_projections`` for SD3). Metadata: ``prediction_type``
    (diffusers' name, ``None`` for flow matching) and ``prediction`` (the package's), ``sample_shape``,
    ``network_class``, ``unet_config``, ``scheduler_config`` and its path, and for a network inside a
    pipeline directory ``pipeline`` (the directory), ``pipeline_class``, ``components`` (the other
    folders by name: ``vae``, ``text_encoder``, ``tokenizer``, …) and, with a VAE, its
    ``vae_scaling_factor`` and ``vae_shift_factor`` (latents = (VAE mean − shift) · scaling).
    ``.bin`` weights are read weights-only.
    """
    from .diffusers.config import path_from_config  # reads configs only: diffusers is imported below

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such diffusers model directory: {root}")
    net_dir = next((root / f for f in _NETWORK_FOLDERS if (root / f / CONFIG_FILE).is_file()), root)
    cfg = _read_json(net_dir / CONFIG_FILE)
    cls = _check_network_config(cfg, net_dir)
    sched_path = next(
        (
            p
            for p in (net_dir / "scheduler_config.json", net_dir.parent / "scheduler" / "scheduler_config.json")
            if p.is_file()
        ),
        None,
    )
    sched_cfg = _read_json(sched_path) if sched_path is not None else {}
    side = cfg.get("sample_size")
    hw = [int(v) for v in side] if isinstance(side, (list, tuple)) else [side, side]
    try:  # the latent tokens of a transformer: (H / patch) (W / patch)
        patch = check_int("patch_size", cfg.get("patch_size") or 1, 1)
    except ValueError as err:
        raise ModelFormatError(f"{net_dir / CONFIG_FILE}: {err}") from None
    seq_len = (hw[0] // patch) * (hw[1] // patch) if side is not None else None
    try:
        own_schedule, prediction = path_from_config(sched_cfg, image_seq_len=seq_len)
    except ValueError as err:
        raise ModelFormatError(f"{sched_path}: {err}") from None
    if schedule is None and sched_path is None:
        raise FileNotFoundError(
            f"no scheduler_config.json in {net_dir} or {net_dir.parent / 'scheduler'}; pass schedule=... explicitly"
        )

    try:
        import diffusers
    except ImportError as err:
        raise ImportError(
            "loading diffusers models needs diffusers; install it with `pip install ddim_ode[diffusers]`"
        ) from err
    with torch.random.fork_rng(devices=[]):  # the random initialisation is overwritten: leave the global RNG alone
        net = getattr(diffusers, cls).from_config(cfg)
    _load_checked(net, _diffusers_weights(net_dir), str(net_dir))
    model = _finish(DiffusersEpsModel(net, prediction), device)
    metadata = {
        "format": "diffusers",
        "source": str(net_dir),
        "network_class": cls,
        "conditioning": list(DIFFUSERS_NETWORKS[cls]),
        "sample_shape": [int(cfg.get("in_channels", 3)), *hw] if side is not None else None,
        "prediction_type": None if prediction == "flow" else sched_cfg.get("prediction_type", "epsilon"),
        "prediction": prediction,
        "unet_config": cfg,
        "scheduler_config": sched_cfg or None,
        "scheduler_config_path": str(sched_path) if sched_path is not None else None,
        "image_seq_len": seq_len,
        **_pipeline_components(net_dir),
    }
    return LoadedModel(model, schedule if schedule is not None else own_schedule, metadata)


def load_any(path: str | Path | None = None, device: str | torch.device | None = None) -> LoadedModel:
    """Load a model from whatever ``path`` holds.

    ``None`` or ``"default"``: the default built-in model (:func:`load_default`); the name of a
    built-in model (:data:`BUILTIN_MODELS`: ``"digits"``, ``"digits-cond"``, ``"digits-flow"``;
    a name wins over a directory of the same name, which ``./digits`` reaches); a directory with
    a ddim_ode ``config.json``: :func:`load_model`; a diffusers network or pipeline directory (a
    ``unet/`` or ``transformer/`` folder): :func:`load_diffusers_unet` (with its scheduler config).
    """
    if path is None or str(path) == "default":
        return load_default(device)
    if isinstance(path, str) and path in BUILTIN_MODELS:
        return load_builtin(path, device)
    p = Path(path)
    if p.is_dir():
        config = p / CONFIG_FILE
        if config.is_file() and _read_json(config).get("format") == FORMAT:
            return load_model(p, device)
        if config.is_file() or any((p / f / CONFIG_FILE).is_file() for f in _NETWORK_FOLDERS):
            return load_diffusers_unet(p, device)
    elif p.is_file() and p.name in (MODEL_FILE, CONFIG_FILE):
        return load_model(p, device)
    if not p.exists():
        raise FileNotFoundError(f"no such model: {p} (built-in names: default, {', '.join(BUILTIN_MODELS)})")
    raise ModelFormatError(
        f"{p} is not a model this package can load; allowed: 'default', a built-in name "
        f"({', '.join(BUILTIN_MODELS)}), a ddim_ode model directory "
        f"({MODEL_FILE} + {CONFIG_FILE}), or a diffusers network ({', '.join(DIFFUSERS_NETWORKS)}) / pipeline "
        "directory"
    )


def sample_shape(metadata: Mapping[str, Any]) -> tuple[int, ...]:
    """The (C, H, W) of a loaded model's samples, from the ``sample_shape`` every loader records."""
    shape = metadata.get("sample_shape")
    if not shape:
        raise ValueError("cannot tell the sample shape of this model: its metadata has no 'sample_shape'")
    return tuple(int(v) for v in shape)
