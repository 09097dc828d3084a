"""Saving and loading ε-networks: the package's own format, diffusers UNets, plain state dicts.

Every loader returns a :class:`LoadedModel` ``(model, schedule, metadata)`` whose model follows
the package's ε-model contract, in eval mode with its parameters' gradients switched off, and
refuses a file it cannot use with a one-line :class:`ModelFormatError`. The modules:

* :mod:`.native` — the package's format, a directory with ``model.safetensors`` and
  ``config.json``: :func:`save_model`, :func:`load_model`, :func:`check_extra_metadata`;
* :mod:`.builtin` — the models shipped with the package, by name: :data:`BUILTIN_MODELS`,
  :func:`load_builtin`, :func:`load_default`, :func:`builtin_models`;
* :mod:`.schedule_json` — schedules as JSON descriptions, checked before anything is built:
  :func:`schedule_to_dict`, :func:`schedule_from_dict` and their bounds (:data:`MAX_TIMESTEPS`, …);
* :mod:`.state_dict` — PyTorch checkpoints read weights-only: :func:`load_weights_only`,
  :func:`load_torch_state_dict`;
* :mod:`.diffusers_unet` — diffusers networks and pipeline directories: :func:`load_diffusers_unet`,
  :class:`DiffusersEpsModel`;
* :mod:`.any_model` — :func:`load_any`, which tells these apart by what a name or path holds;
* :mod:`.loading` — what the loaders share: :class:`LoadedModel`, :class:`ModelFormatError`,
  :func:`sample_shape` and the checks on JSON, safetensors and parameter shapes.

The package exports what each module lists in its ``__all__``; a module's other public names are
shared between the modules of the package.
"""

from __future__ import annotations

from . import any_model, builtin, diffusers_unet, loading, native, schedule_json, state_dict
from .any_model import *  # noqa: F403
from .builtin import *  # noqa: F403
from .diffusers_unet import *  # noqa: F403
from .loading import *  # noqa: F403
from .native import *  # noqa: F403
from .schedule_json import *  # noqa: F403
from .state_dict import *  # noqa: F403

__all__ = [
    *loading.__all__,
    *native.__all__,
    *builtin.__all__,
    *schedule_json.__all__,
    *state_dict.__all__,
    *diffusers_unet.__all__,
    *any_model.__all__,
]
