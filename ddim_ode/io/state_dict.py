"""Plain PyTorch checkpoints, read weights-only: :func:`load_weights_only`, :func:`load_torch_state_dict`.

``torch.load`` unpickles, and a pickle can run code; these readers accept tensors and plain
containers only, so a checkpoint that would construct anything else is refused with
:class:`~ddim_ode.io.ModelFormatError` before anything in it runs.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..unet import UNet, UNetConfig
from .loading import ModelFormatError, check_shapes, finish_loading, tensor_shapes, unet_with_weights

__all__ = ["load_weights_only", "load_torch_state_dict"]


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


def state_from_checkpoint(obj: Any, source: str) -> dict[str, Tensor]:
    """The state dict in a loaded checkpoint ``obj``: ``obj`` itself when it maps names to tensors, else the one
    under ``"ema"``, ``"state_dict"`` or ``"model"`` (first found); ``ModelFormatError`` naming ``source`` if none."""
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
    state = state_from_checkpoint(load_weights_only(p), str(p))
    check_shapes(UNet.state_dict_shapes(config), tensor_shapes(state), str(p))
    return finish_loading(unet_with_weights(config, state, str(p)), device)  # type: ignore[return-value]
