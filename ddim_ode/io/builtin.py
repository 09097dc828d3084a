"""The models shipped with the package, loaded by name.

Built-in models (:data:`BUILTIN_MODELS`, listed with a description by :func:`builtin_models`) load
by name: ``"digits"`` (the default), ``"digits-cond"`` (class-conditional) and ``"digits-flow"``
(rectified flow); see ``docs/model.md``. Each is a directory in the package's own format
(:mod:`ddim_ode.io.native`) under ``ddim_ode/weights/``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .loading import LoadedModel
from .native import load_model

__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "DEFAULT_MODEL_DIR", "builtin_models", "load_builtin", "load_default"]

_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
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
