"""Saving and loading ε-networks: the package's own format, diffusers UNets, plain state dicts.

The package's format is a directory holding two files:

* ``model.safetensors`` — the weights (safetensors: no code is ever executed on load);
* ``config.json`` — ``format`` (``"ddim_ode.model"``), ``format_version``, ``architecture``
  (``"UNet"``), ``unet`` (the :class:`~ddim_ode.unet.UNetConfig`), ``schedule`` (see
  :func:`schedule_to_dict`), ``prediction`` (``"eps"``, ``"x0"`` or ``"v"``, the names of
  :class:`ddim_ode.field.ProbabilityFlowODE`) and free-form entries such as ``data`` (scaling) and
  ``training`` (command, steps, wall time, loss).

Loaders return a :class:`LoadedModel` ``(model, schedule, metadata)``: ``model(x_t, t)`` follows
the ε-model contract of the package (for a diffusers model, whatever ``metadata["prediction"]``
says the network predicts), ``schedule`` is the training schedule, ``metadata`` a dict.
Loaded models are in eval mode with gradients of the parameters switched off (gradients with
respect to the input still flow).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .schedules import CosineVPSchedule, DiscreteSchedule, LinearVPSchedule, Schedule
from .unet import UNet, UNetConfig

__all__ = [
    "LoadedModel",
    "ModelFormatError",
    "DiffusersEpsModel",
    "save_model",
    "load_model",
    "load_default",
    "load_diffusers_unet",
    "load_torch_state_dict",
    "load_any",
    "schedule_to_dict",
    "schedule_from_dict",
    "DEFAULT_MODEL_DIR",
]

FORMAT = "ddim_ode.model"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights" / "digits"
PREDICTIONS = ("eps", "x0", "v")
_RESERVED = ("format", "format_version", "architecture", "unet", "schedule", "prediction")
#: diffusers' names of what a network predicts, mapped to the package's names
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
DIFFUSERS_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class ModelFormatError(ValueError):
    """A model file exists but cannot be used: corrupted, truncated, or for another architecture."""


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
    if isinstance(schedule, LinearVPSchedule):
        return {
            "type": "continuous",
            "kind": "linear",
            "beta_min": schedule.beta_min,
            "beta_max": schedule.beta_max,
            "t_min": schedule.t_min,
            "t_max": schedule.t_max,
        }
    if isinstance(schedule, CosineVPSchedule):
        return {
            "type": "continuous",
            "kind": "cosine",
            "s": schedule.s,
            "t_min": schedule.t_min,
            "t_max": schedule.t_max,
        }
    raise TypeError(
        f"cannot describe a {type(schedule).__name__} in JSON; "
        "supported: DiscreteSchedule, LinearVPSchedule, CosineVPSchedule"
    )


def schedule_from_dict(spec: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule from :func:`schedule_to_dict`'s description.

    Discrete kinds: ``linear`` (``beta_start``, ``beta_end``, ``num_timesteps``), ``cosine``
    (``num_timesteps``, optional ``s``), ``betas`` (``betas``), ``alphas_cumprod``
    (``alphas_cumprod``). Continuous kinds: ``linear`` (``beta_min``, ``beta_max``, ``t_min``,
    ``t_max``), ``cosine`` (``s``, ``t_min``, ``t_max``).
    """
    kind, typ = spec.get("kind"), spec.get("type", "discrete")
    try:
        if typ == "discrete":
            if kind == "linear":
                return DiscreteSchedule.linear(
                    float(spec["beta_start"]), float(spec["beta_end"]), int(spec["num_timesteps"])
                )
            if kind == "cosine":
                return DiscreteSchedule.cosine(int(spec["num_timesteps"]), s=float(spec.get("s", 0.008)))
            if kind == "betas":
                return DiscreteSchedule(betas=torch.tensor(spec["betas"], dtype=torch.float64))
            if kind == "alphas_cumprod":
                return DiscreteSchedule(alphas_cumprod=torch.tensor(spec["alphas_cumprod"], dtype=torch.float64))
            raise ValueError(f"unknown discrete schedule kind {kind!r}; allowed: linear, cosine, betas, alphas_cumprod")
        if typ == "continuous":
            t_range = {k: float(spec[k]) for k in ("t_min", "t_max") if k in spec}
            if kind == "linear":
                return LinearVPSchedule(float(spec["beta_min"]), float(spec["beta_max"]), **t_range)
            if kind == "cosine":
                return CosineVPSchedule(float(spec.get("s", 0.008)), **t_range)
            raise ValueError(f"unknown continuous schedule kind {kind!r}; allowed: linear, cosine")
    except KeyError as err:
        raise ValueError(f"schedule description {dict(spec)} lacks the entry {err.args[0]!r}") from None
    raise ValueError(f"unknown schedule type {typ!r}; allowed: discrete, continuous")


# ----------------------------------------------------------------------------------------------
# the package's own format


def _atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place."""
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # permissions follow the umask
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_json(path: Path, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, allow_nan=False)
            f.write("\n")

    _atomic_write_bytes(path, write)


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
            ``training``); they may not override the reserved keys ``format``, ``format_version``,
            ``architecture``, ``unet``, ``schedule``, ``prediction``.
        prediction: what the network outputs: ``"eps"``, ``"x0"`` or ``"v"``.

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
    extra = dict(extra_metadata or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"extra_metadata may not set the reserved keys {clash}")
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": "UNet",
        "unet": cfg.to_dict(),
        "schedule": schedule_to_dict(schedule),
        "prediction": prediction,
        **extra,
    }
    json.dumps(doc, allow_nan=False)  # fail before writing anything if not serialisable

    from safetensors.torch import save_file

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    _atomic_write_bytes(directory / MODEL_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    _atomic_write_json(directory / CONFIG_FILE, doc)
    return directory


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path.name}: expected {path}")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFormatError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise ModelFormatError(f"{path} must hold a JSON object, got {type(doc).__name__}")
    return doc


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"missing weights file: expected {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelFormatError(f"{path} is not a readable safetensors file (corrupted or truncated?): {err}") from None


def _load_checked(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` after checking names and shapes, with errors naming the parameter."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} parameters (first: {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected parameters (first: {unexpected[:3]})")
        raise ModelFormatError(f"{source}: the weights are for another architecture: " + "; ".join(parts))
    for name in own:  # in the model's order, so the first mismatch reported is the earliest layer
        tensor = state[name]
        if not isinstance(tensor, Tensor):
            raise ModelFormatError(f"{source}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ModelFormatError(
                f"{source}: the weights are for another architecture: parameter {name!r} has shape "
                f"{tuple(tensor.shape)} in the file but {tuple(own[name].shape)} in the model"
            )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


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


def load_model(path: str | Path, device: str | torch.device | None = None) -> LoadedModel:
    """Load a model saved by :func:`save_model`.

    Args:
        path: the model directory (or its ``config.json`` / ``model.safetensors``).
        device: where to put the model (default: CPU).

    Raises:
        FileNotFoundError: a file is missing.
        ModelFormatError: unreadable JSON or safetensors (corrupted/truncated), an unknown format,
            or weights for another architecture (the message names the parameter).
    """
    directory = _model_dir(path)
    doc = _read_json(directory / CONFIG_FILE)
    if doc.get("format") != FORMAT:
        raise ModelFormatError(
            f"{directory / CONFIG_FILE} is not a ddim_ode model config "
            f"(format {doc.get('format')!r}, expected {FORMAT!r}); "
            "for a diffusers model use load_diffusers_unet"
        )
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFormatError(
            f"{directory}: format_version {doc['format_version']} is newer than supported ({FORMAT_VERSION})"
        )
    if doc.get("architecture") != "UNet":
        raise ModelFormatError(f"{directory}: unknown architecture {doc.get('architecture')!r}; allowed: 'UNet'")
    prediction = doc.get("prediction", "eps")
    if prediction not in PREDICTIONS:
        raise ModelFormatError(f"{directory}: unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
    try:
        config = UNetConfig.from_dict(doc["unet"])
        schedule = schedule_from_dict(doc["schedule"])
    except KeyError as err:
        raise ModelFormatError(f"{directory / CONFIG_FILE} lacks the entry {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise ModelFormatError(f"{directory / CONFIG_FILE}: {err}") from None
    state = _read_safetensors(directory / MODEL_FILE)
    model = UNet(config, generator=torch.Generator())  # a private generator: the global RNG is left alone
    _load_checked(model, state, str(directory / MODEL_FILE))
    metadata = dict(doc)
    metadata["source"] = str(directory)
    metadata["sample_shape"] = [config.in_channels, config.resolution, config.resolution]
    return LoadedModel(_finish(model, device), schedule, metadata)


def load_default(device: str | torch.device | None = None) -> LoadedModel:
    """The built-in model: a small UNet trained on the 8×8 digits, DDPM linear schedule, T = 1000.

    See ``docs/model.md`` for how it was trained. Data scale: ``pixel / 16 * 2 − 1``, shape (1, 8, 8).
    """
    return load_model(DEFAULT_MODEL_DIR, device=device)


# ----------------------------------------------------------------------------------------------
# plain PyTorch state dicts


def _torch_load_safe(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelFormatError(
            f"refusing to load {path}: it is a pickle holding objects other than tensors and plain containers, "
            "which could execute code. Only weights-only checkpoints (torch.load(..., weights_only=True)) "
            "are accepted; re-save the state dict with torch.save(model.state_dict(), ...) or as safetensors. "
            f"({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ModelFormatError(
            f"{path} is not a readable PyTorch checkpoint (corrupted or truncated?): {err}"
        ) from None


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

    The file is read with ``torch.load(..., weights_only=True)`` only: a pickle that would run
    code is refused with :class:`ModelFormatError`. It may hold a state dict, or a dict with the
    state dict under ``"ema"`` (preferred), ``"state_dict"`` or ``"model"`` (as the training
    checkpoints of :func:`ddim_ode.train.train` do). The schedule is not part of a state dict.
    """
    p = Path(path)
    state = _state_from_checkpoint(_torch_load_safe(p), str(p))
    model = UNet(config, generator=torch.Generator())
    _load_checked(model, state, str(p))
    return _finish(model, device)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# diffusers


class DiffusersEpsModel(nn.Module):
    """A diffusers ``UNet2DModel`` behind the package's model contract ``model(x_t, t) -> Tensor``.

    ``t`` (a scalar or shape ``(B,)``, any float) is passed as the diffusers ``timestep``; the
    input is cast to the network's dtype and the output back to the input's dtype. When the
    network predicts a learned variance as well (``2·C`` output channels) only the first ``C``
    channels are returned. The output is what the network was trained to predict:
    :attr:`prediction` (``"eps"``, ``"x0"`` or ``"v"``).
    """

    def __init__(self, unet: nn.Module, prediction: str = "eps") -> None:
        super().__init__()
        self.unet = unet
        self.prediction = prediction

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        out = self.unet(x.to(dtype), t.to(torch.float32)).sample
        if out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        return out.to(x.dtype)


def _diffusers_schedule(cfg: Mapping[str, Any], source: str) -> DiscreteSchedule:
    n = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError(
            f"{source}: rescale_betas_zero_snr=True gives alpha_bar = 0 (sigma infinite) at the last step; unsupported"
        )
    trained = cfg.get("trained_betas")
    if trained is not None:
        return DiscreteSchedule(betas=torch.tensor(trained, dtype=torch.float64))
    kind = cfg.get("beta_schedule", "linear")
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if kind == "linear":
        return DiscreteSchedule.linear(b0, b1, n)
    if kind == "scaled_linear":
        return DiscreteSchedule(betas=torch.linspace(math.sqrt(b0), math.sqrt(b1), n, dtype=torch.float64) ** 2)
    if kind == "squaredcos_cap_v2":
        return DiscreteSchedule.cosine(n)  # same formula as diffusers' betas_for_alpha_bar (s = 0.008, β ≤ 0.999)
    raise ValueError(
        f"{source}: unsupported beta_schedule {kind!r}; allowed: {', '.join(DIFFUSERS_BETA_SCHEDULES)} or trained_betas"
    )


def _diffusers_weights(unet_dir: Path) -> dict[str, Tensor]:
    st = unet_dir / "diffusion_pytorch_model.safetensors"
    if st.is_file():
        return _read_safetensors(st)
    variants = sorted(unet_dir.glob("diffusion_pytorch_model.*.safetensors"))
    if len(variants) == 1:
        return _read_safetensors(variants[0])
    pt = unet_dir / "diffusion_pytorch_model.bin"
    if pt.is_file():
        return _state_from_checkpoint(_torch_load_safe(pt), str(pt))
    if list(unet_dir.glob("*.index.json")):
        raise ModelFormatError(f"{unet_dir}: sharded weights are not supported")
    raise FileNotFoundError(
        f"{unet_dir}: no weights found; expected diffusion_pytorch_model.safetensors (or a single "
        "diffusion_pytorch_model.<variant>.safetensors, or diffusion_pytorch_model.bin)"
    )


def load_diffusers_unet(
    path: str | Path, device: str | torch.device | None = None, schedule: Schedule | None = None
) -> LoadedModel:
    """Load a diffusers ``UNet2DModel`` (needs the ``diffusers`` extra).

    Args:
        path: the UNet directory (``config.json`` + ``diffusion_pytorch_model.safetensors`` or
            ``.bin``), or a pipeline directory holding it as ``unet/``.
        device: where to put the model (default: CPU).
        schedule: overrides the schedule read from ``scheduler_config.json``; required when there
            is none.

    The schedule comes from ``scheduler_config.json`` in the UNet directory or in the ``scheduler/``
    folder beside it: ``trained_betas``, or ``beta_schedule`` ``"linear"``, ``"scaled_linear"``
    (β = linspace(√β₀, √β₁, T)²) or ``"squaredcos_cap_v2"`` (Nichol & Dhariwal's cosine), with
    ``num_train_timesteps``, ``beta_start``, ``beta_end``. ``metadata["prediction_type"]`` is
    diffusers' name (``"epsilon"``, ``"v_prediction"``, ``"sample"``) and ``metadata["prediction"]``
    the package's (``"eps"``, ``"v"``, ``"x0"``), to pass to
    :class:`~ddim_ode.field.ProbabilityFlowODE`. ``.bin`` weights are read weights-only.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such diffusers model directory: {root}")
    unet_dir = root / "unet" if (root / "unet" / CONFIG_FILE).is_file() else root
    cfg = _read_json(unet_dir / CONFIG_FILE)
    cls = cfg.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ModelFormatError(
            f"{unet_dir / CONFIG_FILE}: unsupported diffusers class {cls!r}; allowed: 'UNet2DModel' "
            "(unconditional image UNets; text- or class-conditional models need their conditioning)"
        )
    if cfg.get("num_class_embeds") or cfg.get("class_embed_type"):
        raise ModelFormatError(
            f"{unet_dir}: class-conditional UNet2DModel is not supported (no class labels in model(x_t, t))"
        )
    if cfg.get("time_embedding_type", "positional") != "positional":
        raise ModelFormatError(
            f"{unet_dir}: time_embedding_type {cfg['time_embedding_type']!r} (a variance-exploding score model) is not "
            "supported; allowed: 'positional' (DDPM-style timesteps)"
        )
    sched_path = next(
        (
            p
            for p in (unet_dir / "scheduler_config.json", unet_dir.parent / "scheduler" / "scheduler_config.json")
            if p.is_file()
        ),
        None,
    )
    sched_cfg = _read_json(sched_path) if sched_path is not None else {}
    pred_name = sched_cfg.get("prediction_type", "epsilon")
    if pred_name not in DIFFUSERS_PREDICTIONS:
        raise ModelFormatError(
            f"{sched_path}: unknown prediction_type {pred_name!r}; allowed: {', '.join(DIFFUSERS_PREDICTIONS)}"
        )
    if schedule is None:
        if sched_path is None:
            raise FileNotFoundError(
                f"no scheduler_config.json in {unet_dir} or {unet_dir.parent / 'scheduler'}; "
                "pass schedule=... explicitly"
            )
        try:
            schedule = _diffusers_schedule(sched_cfg, str(sched_path))
        except ValueError as err:
            raise ModelFormatError(str(err)) from None

    try:
        from diffusers import UNet2DModel
    except ImportError as err:
        raise ImportError(
            "loading diffusers models needs diffusers; install it with `pip install ddim_ode[diffusers]`"
        ) from err
    with torch.random.fork_rng(devices=[]):  # the random initialisation is overwritten: leave the global RNG alone
        unet = UNet2DModel.from_config(cfg)
    _load_checked(unet, _diffusers_weights(unet_dir), str(unet_dir))
    prediction = DIFFUSERS_PREDICTIONS[pred_name]
    model = _finish(DiffusersEpsModel(unet, prediction), device)
    side = cfg.get("sample_size")
    hw = list(side) if isinstance(side, (list, tuple)) else [side, side]
    metadata = {
        "format": "diffusers",
        "source": str(unet_dir),
        "sample_shape": [int(cfg.get("in_channels", 3)), *hw] if side is not None else None,
        "prediction_type": pred_name,
        "prediction": prediction,
        "unet_config": cfg,
        "scheduler_config": sched_cfg or None,
        "scheduler_config_path": str(sched_path) if sched_path is not None else None,
    }
    return LoadedModel(model, schedule, metadata)


def load_any(path: str | Path | None = None, device: str | torch.device | None = None) -> LoadedModel:
    """Load a model from whatever ``path`` holds.

    ``None`` or ``"default"``: the built-in model (:func:`load_default`); a directory with a
    ddim_ode ``config.json``: :func:`load_model`; a diffusers UNet or pipeline directory:
    :func:`load_diffusers_unet` (with its scheduler config).
    """
    if path is None or str(path) == "default":
        return load_default(device)
    p = Path(path)
    if p.is_dir():
        config = p / CONFIG_FILE
        if config.is_file() and _read_json(config).get("format") == FORMAT:
            return load_model(p, device)
        if config.is_file() or (p / "unet" / CONFIG_FILE).is_file():
            return load_diffusers_unet(p, device)
    elif p.is_file() and p.name in (MODEL_FILE, CONFIG_FILE):
        return load_model(p, device)
    if not p.exists():
        raise FileNotFoundError(f"no such model: {p}")
    raise ModelFormatError(
        f"{p} is not a model this package can load; allowed: 'default', a ddim_ode model directory "
        f"({MODEL_FILE} + {CONFIG_FILE}), or a diffusers UNet2DModel / pipeline directory"
    )


def sample_shape(metadata: Mapping[str, Any]) -> tuple[int, ...]:
    """The (C, H, W) of a loaded model's samples, from the ``sample_shape`` every loader records."""
    shape = metadata.get("sample_shape")
    if not shape:
        raise ValueError("cannot tell the sample shape of this model: its metadata has no 'sample_shape'")
    return tuple(int(v) for v in shape)
