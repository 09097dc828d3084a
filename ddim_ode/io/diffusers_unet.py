"""diffusers networks and pipeline directories: :func:`load_diffusers_unet` and :class:`DiffusersEpsModel`.

A ``UNet2DModel``, a Stable-Diffusion-type ``UNet2DConditionModel`` or an ``SD3Transformer2DModel``
is loaded from its own directory or from the ``unet/`` or ``transformer/`` folder of a pipeline
directory, with the path and prediction that its ``scheduler_config.json`` describes
(:func:`ddim_ode.diffusers.config.path_from_config`); the network is wrapped in
:class:`DiffusersEpsModel`, which speaks the package's model contract. The config is checked
before the network is built, and the weights' names, shapes and finiteness before they are loaded.
diffusers itself is imported only when a network is built.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..ranges import check_float, check_int
from ..schedules import Schedule
from .loading import (
    CONFIG_FILE,
    LoadedModel,
    ModelFormatError,
    finish_loading,
    load_checked,
    read_json_object,
    read_safetensors,
)
from .state_dict import load_weights_only, state_from_checkpoint

__all__ = ["DIFFUSERS_NETWORKS", "DiffusersEpsModel", "load_diffusers_unet"]

#: the diffusers networks :func:`load_diffusers_unet` loads, with the keyword arguments their call
#: takes beyond ``(x_t, t)`` (the conditioning, passed as ``model_kwargs``)
DIFFUSERS_NETWORKS: dict[str, tuple[str, ...]] = {
    "UNet2DModel": (),
    "UNet2DConditionModel": ("encoder_hidden_states",),
    "SD3Transformer2DModel": ("encoder_hidden_states", "pooled_projections"),
}
#: the folders of a pipeline directory that hold its network, in the order they are looked for
NETWORK_FOLDERS = ("unet", "transformer")
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
    """The weights in a diffusers network directory: safetensors (one variant at most) or a weights-only ``.bin``."""
    st = unet_dir / "diffusion_pytorch_model.safetensors"
    if st.is_file():
        return read_safetensors(st)
    variants = sorted(unet_dir.glob("diffusion_pytorch_model.*.safetensors"))
    if len(variants) == 1:
        return read_safetensors(variants[0])
    pt = unet_dir / "diffusion_pytorch_model.bin"
    if pt.is_file():
        return state_from_checkpoint(load_weights_only(pt), str(pt))
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
    index = read_json_object(pipe_dir / _PIPELINE_INDEX)
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
        vae = read_json_object(vae_config)
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
    from ..diffusers.config import path_from_config  # reads configs only: diffusers is imported below

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such diffusers model directory: {root}")
    net_dir = next((root / f for f in NETWORK_FOLDERS if (root / f / CONFIG_FILE).is_file()), root)
    cfg = read_json_object(net_dir / CONFIG_FILE)
    cls = _check_network_config(cfg, net_dir)
    sched_path = next(
        (
            p
            for p in (net_dir / "scheduler_config.json", net_dir.parent / "scheduler" / "scheduler_config.json")
            if p.is_file()
        ),
        None,
    )
    sched_cfg = read_json_object(sched_path) if sched_path is not None else {}
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
    load_checked(net, _diffusers_weights(net_dir), str(net_dir))
    model = finish_loading(DiffusersEpsModel(net, prediction), device)
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
