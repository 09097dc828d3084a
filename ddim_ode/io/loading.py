"""What every loader of :mod:`ddim_ode.io` shares: the result, the error, and the checks on what it reads.

Loaders return a :class:`LoadedModel` ``(model, schedule, metadata)``: ``model(x_t, t)`` follows
the ε-model contract of the package (for a diffusers model, whatever ``metadata["prediction"]``
says the network predicts), ``schedule`` is the training schedule, ``metadata`` a dict.
Loaded models are in eval mode with gradients of the parameters switched off (gradients with
respect to the input still flow): :func:`finish_loading`.

A file that exists but cannot be used raises :class:`ModelFormatError` with one line naming the
file and the problem: JSON that is not an object (:func:`read_json_object`), a corrupted or
truncated safetensors file (:func:`read_safetensors`, :func:`safetensors_shapes`), parameters
missing, unexpected or of another shape (:func:`check_shapes`, compared before any weight is
loaded), or weights holding NaN or infinite values.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._files import read_json
from ..schedules import Schedule
from ..unet import UNet, UNetConfig

__all__ = ["CONFIG_FILE", "LoadedModel", "ModelFormatError", "sample_shape"]

#: the configuration file of a model directory, in the package's format and in diffusers' alike
CONFIG_FILE = "config.json"


class ModelFormatError(ValueError):
    """A model file exists but cannot be used: corrupted, truncated, out of range, or for another architecture."""


class LoadedModel(NamedTuple):
    """What every loader returns; unpacks as ``model, schedule, metadata``."""

    model: nn.Module
    schedule: Schedule
    metadata: dict[str, Any]


def read_json_object(path: Path) -> dict[str, Any]:
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


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes in a safetensors header, read without loading any tensor."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"missing weights file: expected {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _safetensors_error(path, err) from None


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, on the CPU; ``ModelFormatError`` when it is corrupted or truncated."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"missing weights file: expected {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _safetensors_error(path, err) from None


def check_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: str) -> None:
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


def tensor_shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor of a state dict, by name, as :func:`check_shapes` compares them."""
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def load_checked(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` after checking names, shapes and finiteness, with errors naming the parameter."""
    own = model.state_dict()
    check_shapes(tensor_shapes(own), tensor_shapes(state), source)
    _check_finite(state, source)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def unet_with_weights(config: UNetConfig, state: Mapping[str, Tensor], source: str) -> UNet:
    """A :class:`UNet` of architecture ``config`` holding ``state``, whose names and shapes have been checked.

    The weights' finiteness is checked before the network is built.
    """
    _check_finite(state, source)
    model = UNet(config, generator=torch.Generator())  # a private generator: the global RNG is left alone
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model


def finish_loading(model: nn.Module, device: str | torch.device | None) -> nn.Module:
    """``model`` on ``device`` (left where it is for ``None``), in eval mode, its parameters without gradients."""
    if device is not None:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def sample_shape(metadata: Mapping[str, Any]) -> tuple[int, ...]:
    """The (C, H, W) of a loaded model's samples, from the ``sample_shape`` every loader records."""
    shape = metadata.get("sample_shape")
    if not shape:
        raise ValueError("cannot tell the sample shape of this model: its metadata has no 'sample_shape'")
    return tuple(int(v) for v in shape)
