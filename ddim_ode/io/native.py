"""The package's own model format: :func:`save_model` and :func:`load_model`.

The package's format is a directory holding two files:

* ``model.safetensors`` — the weights (safetensors: no code is ever executed on load);
* ``config.json`` — ``format`` (``"ddim_ode.model"``), ``format_version``, ``architecture``
  (``"UNet"``), ``unet`` (the :class:`~ddim_ode.unet.UNetConfig`), ``schedule`` (see
  :func:`~ddim_ode.io.schedule_to_dict`), ``prediction`` (``"eps"``, ``"x0"``, ``"v"`` or ``"flow"``,
  the names of :class:`ddim_ode.field.ProbabilityFlowODE`) and free-form entries such as ``data``
  (scaling) and ``training`` (command, steps, wall time, loss).

Loading checks before it builds: every field of ``config.json`` is checked for type and range
(:class:`~ddim_ode.unet.UNetConfig`'s bounds, and :data:`~ddim_ode.io.MAX_TIMESTEPS` etc. for the
schedule), and the parameter shapes that the architecture implies (worked out on the ``meta``
device) are compared with the shapes in the safetensors header, so a hostile or broken config is
refused with a :class:`~ddim_ode.io.ModelFormatError` before any memory is spent on it. Weights
holding NaN or infinite values are refused too.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .._files import atomic_write, write_json
from ..field import PREDICTIONS
from ..ranges import check_int
from ..schedules import Schedule
from ..unet import UNet, UNetConfig
from .loading import (
    CONFIG_FILE,
    LoadedModel,
    ModelFormatError,
    check_shapes,
    finish_loading,
    read_json_object,
    read_safetensors,
    safetensors_shapes,
    unet_with_weights,
)
from .schedule_json import build_schedule, check_schedule_spec, schedule_to_dict

__all__ = ["save_model", "load_model", "check_extra_metadata", "FORMAT", "FORMAT_VERSION", "MODEL_FILE"]

#: the ``format`` entry of ``config.json`` and the newest ``format_version`` this version reads
FORMAT = "ddim_ode.model"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
#: the entries of ``config.json`` that ``extra_metadata`` may not set
_RESERVED = ("format", "format_version", "architecture", "unet", "schedule", "prediction")


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
    doc = read_json_object(path)
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
        return _ModelConfig(doc, UNetConfig.from_dict(doc["unet"]), check_schedule_spec(doc["schedule"]), prediction)
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
    check_shapes(UNet.state_dict_shapes(cfg.unet), safetensors_shapes(weights), str(weights))
    model = unet_with_weights(cfg.unet, read_safetensors(weights), str(weights))
    try:
        schedule = build_schedule(*cfg.schedule)
    except ValueError as err:  # a checked description the schedule still refuses (alphas_cumprod not decreasing)
        raise ModelFormatError(f"{directory / CONFIG_FILE}: {err}") from None
    metadata = dict(cfg.doc)
    metadata["source"] = str(directory)
    metadata["sample_shape"] = [cfg.unet.in_channels, cfg.unet.resolution, cfg.unet.resolution]
    return LoadedModel(finish_loading(model, device), schedule, metadata)
