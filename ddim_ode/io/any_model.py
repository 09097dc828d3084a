"""One loader for every format: :func:`load_any` tells them apart by what a name or path holds."""

from __future__ import annotations

from pathlib import Path

import torch

from .builtin import BUILTIN_MODELS, load_builtin, load_default
from .diffusers_unet import DIFFUSERS_NETWORKS, NETWORK_FOLDERS, load_diffusers_unet
from .loading import CONFIG_FILE, LoadedModel, ModelFormatError, read_json_object
from .native import FORMAT, MODEL_FILE, load_model

__all__ = ["load_any"]


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
        if config.is_file() and read_json_object(config).get("format") == FORMAT:
            return load_model(p, device)
        if config.is_file() or any((p / f / CONFIG_FILE).is_file() for f in NETWORK_FOLDERS):
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
