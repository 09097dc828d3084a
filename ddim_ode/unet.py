"""A small DDPM-style UNet ε-network.

The architecture family of Ho, Jain & Abbeel 2020 ("Denoising Diffusion Probabilistic Models"),
also used by Song, Meng & Ermon 2021 ("Denoising Diffusion Implicit Models"):

* a sinusoidal embedding of the timestep (Vaswani et al. 2017) followed by a two-layer MLP;
* residual blocks ``GroupNorm → SiLU → conv3×3`` twice, the time embedding added in between,
  dropout before the second convolution, a 1×1 convolution on the skip path when the width changes;
* single-head self-attention at the lowest resolution (and in the middle block);
* ``len(channel_mults) − 1`` downsamplings (strided 3×3 convolution) and as many upsamplings
  (nearest neighbour + 3×3 convolution), with the activation after every block of the encoder
  concatenated into the decoder (skip connections).

Weights are initialised as in DDPM: Xavier-uniform (fan-average) everywhere, zero biases, and the
last layer of every residual branch, of the attention output and of the network zero-initialised,
so that every residual block starts as the identity.

The network follows the model contract of the package: ``model(x_t, t) -> prediction`` with
``x_t`` of shape ``(B, C, H, W)`` in the schedule's input scale and ``t`` a float tensor of shape
``(B,)`` (or a scalar) in the schedule's units; fractional ``t`` is fine, the embedding is
evaluated in float32. What the output means (ε, x0, v or the flow velocity) is the training
objective's choice, recorded with the weights.

**Class conditioning** (``num_classes = K > 0``): a learned embedding of the label, from a table
of K + 1 rows whose last row (index K) is the *null class*, is added to the time embedding, as in
the class-conditional UNets of Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image
Synthesis"). Training with a share of labels replaced by the null class gives one network that is
both conditional and unconditional, which classifier-free guidance combines (Ho & Salimans 2022,
"Classifier-Free Diffusion Guidance"): ``forward(x, t, y)`` with ``y`` the labels (``None``: the
null class), and :meth:`UNet.null_kwargs` the unconditional call for the guided field.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ranges import check_bool, check_float, check_int

__all__ = [
    "UNet",
    "UNetConfig",
    "timestep_embedding",
    "MAX_IMAGE_CHANNELS",
    "MAX_BASE_CHANNELS",
    "MAX_WIDTH",
    "MAX_LEVELS",
    "MAX_RES_BLOCKS",
    "MAX_RESOLUTION",
    "MAX_CLASSES",
]

#: bounds of a :class:`UNetConfig`: image channels, first-level width, width of any level,
#: resolution levels (``len(channel_mults)``), residual blocks per level, image side
MAX_IMAGE_CHANNELS = 64
MAX_BASE_CHANNELS = 1024
MAX_WIDTH = 4096
MAX_LEVELS = 8
MAX_RES_BLOCKS = 16
MAX_RESOLUTION = 1024
#: bound of :attr:`UNetConfig.num_classes`
MAX_CLASSES = 100_000


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`.

    Attributes:
        in_channels: image channels of ``x_t``.
        out_channels: channels of the prediction (equal to ``in_channels`` for ε-prediction).
        base_channels: width of the first level; level ``i`` has ``base_channels * channel_mults[i]``.
        channel_mults: width multiplier per resolution level; ``len(channel_mults) − 1`` downsamplings.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention: self-attention at the lowest resolution (in addition to the middle block's).
        dropout: dropout rate inside residual blocks (DDPM used 0.1 on CIFAR-10).
        resolution: the image side the model is trained for; must be divisible by the total
            downsampling factor ``2**(len(channel_mults) − 1)``. The network is convolutional and
            runs on any side with that divisibility.
        norm_groups: groups of every GroupNorm; must divide every width.
        num_classes: class labels ``0 … num_classes − 1`` the network is conditioned on, plus the
            null class ``num_classes``; ``0`` (the default) is an unconditional network.

    Every field is checked on construction, type and range (``ValueError`` naming the field):
    ``in_channels``/``out_channels`` in ``[1, MAX_IMAGE_CHANNELS]``, ``base_channels`` in
    ``[1, MAX_BASE_CHANNELS]``, one to ``MAX_LEVELS`` ``channel_mults`` with every width at most
    ``MAX_WIDTH``, ``num_res_blocks`` in ``[1, MAX_RES_BLOCKS]``, ``resolution`` in
    ``[1, MAX_RESOLUTION]``, ``num_classes`` in ``[0, MAX_CLASSES]``, ``dropout`` in ``[0, 1)``,
    ``attention`` a bool. The bounds are generous
    for this architecture and keep a hostile description from asking for gigabytes.
    """

    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention: bool = True
    dropout: float = 0.0
    resolution: int = 8
    norm_groups: int = 8
    num_classes: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field_name, high in (
            ("in_channels", MAX_IMAGE_CHANNELS),
            ("out_channels", MAX_IMAGE_CHANNELS),
            ("base_channels", MAX_BASE_CHANNELS),
            ("num_res_blocks", MAX_RES_BLOCKS),
            ("resolution", MAX_RESOLUTION),
            ("norm_groups", MAX_WIDTH),
        ):
            object.__setattr__(self, field_name, check_int(f"{name}.{field_name}", getattr(self, field_name), 1, high))
        object.__setattr__(self, "num_classes", check_int(f"{name}.num_classes", self.num_classes, 0, MAX_CLASSES))
        mults = self.channel_mults
        if isinstance(mults, (list, tuple)) and 1 <= len(mults) <= MAX_LEVELS:
            mults = tuple(check_int(f"{name}.channel_mults[{i}]", m, 1, MAX_WIDTH) for i, m in enumerate(mults))
        else:
            raise ValueError(
                f"{name}.channel_mults must be a list of 1 to {MAX_LEVELS} positive integers, got {reprlib.repr(mults)}"
            )
        object.__setattr__(self, "channel_mults", mults)
        check_bool(f"{name}.attention", self.attention)
        object.__setattr__(self, "dropout", check_float(f"{name}.dropout", self.dropout, 0.0, 1.0, high_open=True))
        if max(self.widths) > MAX_WIDTH:
            raise ValueError(
                f"{name}: every width base_channels * channel_mults must be <= {MAX_WIDTH}, got {list(self.widths)}"
            )
        for width in self.widths:
            if width % self.norm_groups:
                raise ValueError(
                    f"{name}.norm_groups={self.norm_groups} must divide every width {list(self.widths)} "
                    f"(base_channels * channel_mults)"
                )
        if self.resolution % self.downsample_factor:
            raise ValueError(
                f"{name}.resolution={self.resolution} must be divisible by the downsampling factor "
                f"{self.downsample_factor} = 2**(len(channel_mults) - 1)"
            )

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of every resolution level."""
        return tuple(self.base_channels * m for m in self.channel_mults)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists; ``num_classes`` only when the network is conditional,
        so an unconditional description reads as before the field existed)."""
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        if not self.num_classes:
            del d["num_classes"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming the allowed ones."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a UNetConfig is described by a mapping of its fields, got {type(d).__name__}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - allowed, key=str)
        if unknown:
            raise ValueError(f"unknown UNetConfig keys {unknown}; allowed: {sorted(allowed)}")
        return cls(**d)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t ω_k), sin(t ω_k)]`` with ``ω_k = max_period^(−k/(dim/2))``.

    ``t`` of shape ``(B,)``, any float (fractional values are fine); the result is float32 ``(B, dim)``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _Attention(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (b, hw, c)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class _Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM UNet ε-network (Ho et al. 2020), sized by a :class:`UNetConfig`.

    Args:
        config: the architecture.
        generator: optional ``torch.Generator`` (CPU) for a reproducible initialisation that does
            not touch the global RNG.

    ``forward(x, t, y=None)``: ``x`` of shape ``(B, in_channels, H, W)`` with ``H, W`` divisible by
    ``config.downsample_factor``; ``t`` of shape ``(B,)`` or a scalar, any real dtype, in the
    schedule's units; ``y`` (class-conditional networks only) integer labels of shape ``(B,)`` or
    a scalar in ``[0, num_classes]``, ``num_classes`` being the null class, and ``None`` the null
    class for every sample. Returns ``(B, out_channels, H, W)`` in ``x``'s dtype.
    """

    def __init__(self, config: UNetConfig | None = None, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else UNetConfig()
        self.config = cfg
        # the layers' default initialisation draws from the global RNG: with a generator, undo that afterwards
        with torch.random.fork_rng(devices=[], enabled=generator is not None):
            self._build(cfg)
        self.reset_parameters(generator)

    @classmethod
    def state_dict_shapes(cls, config: UNetConfig) -> dict[str, tuple[int, ...]]:
        """The names and shapes of the state dict of a UNet of architecture ``config``, in order.

        The network is built on the ``meta`` device, so nothing is allocated: a loader compares
        these with the shapes in a weights file's header before it builds anything.
        """
        with torch.device("meta"):
            net = cls(config)
        return {name: tuple(tensor.shape) for name, tensor in net.state_dict().items()}

    def _build(self, cfg: UNetConfig) -> None:
        widths, groups = cfg.widths, cfg.norm_groups
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes:
            self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim)  # row num_classes: the null class
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        last = len(widths) - 1
        self.down = nn.ModuleList()
        skip_widths = [ch]
        c = ch
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks = [_ResBlock(c, width, emb_dim, cfg.dropout, groups)]
                c = width
                if level == last and cfg.attention:
                    blocks.append(_Attention(c, groups))
                self.down.append(nn.ModuleList(blocks))
                skip_widths.append(c)
            if level != last:
                self.down.append(nn.ModuleList([_Downsample(c)]))
                skip_widths.append(c)

        self.mid = nn.ModuleList(
            [
                _ResBlock(c, c, emb_dim, cfg.dropout, groups),
                _Attention(c, groups),
                _ResBlock(c, c, emb_dim, cfg.dropout, groups),
            ]
        )

        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            for _ in range(cfg.num_res_blocks + 1):
                blocks = [_ResBlock(c + skip_widths.pop(), width, emb_dim, cfg.dropout, groups)]
                c = width
                if level == last and cfg.attention:
                    blocks.append(_Attention(c, groups))
                self.up.append(nn.ModuleList(blocks))
            if level != 0:
                self.up.append(nn.ModuleList([_Upsample(c)]))

        self.norm_out = nn.GroupNorm(groups, c)
        self.conv_out = nn.Conv2d(c, cfg.out_channels, 3, padding=1)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """DDPM initialisation: Xavier-uniform weights, zero biases, zero last layer of each branch.

        The class embedding starts at zero, so a conditional network starts as its unconditional one.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = module.weight
                receptive = w[0][0].numel() if w.ndim > 2 else 1
                std = math.sqrt(2.0 / float((w.shape[0] + w.shape[1]) * receptive))  # Xavier (Glorot) fan-average
                w.uniform_(-math.sqrt(3.0) * std, math.sqrt(3.0) * std, generator=generator)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, _ResBlock):
                nn.init.zeros_(module.conv2.weight)
            elif isinstance(module, _Attention):
                nn.init.zeros_(module.proj.weight)
        nn.init.zeros_(self.conv_out.weight)
        if self.config.num_classes:
            nn.init.zeros_(self.class_emb.weight)

    @property
    def null_class(self) -> int:
        """The label of the null class, ``num_classes`` (``ValueError`` for an unconditional network)."""
        if not self.config.num_classes:
            raise ValueError("this UNet is unconditional (num_classes=0): it has no class labels and no null class")
        return self.config.num_classes

    def null_kwargs(self, model_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of the unconditional call: ``model_kwargs`` with ``y`` the null class.

        ``y`` keeps the shape (and device) of the given labels; without labels it is ``None``, which
        :meth:`forward` reads as the null class. Makes the network a
        :class:`~ddim_ode.field.NullConditionModel`, so classifier-free guidance needs no ``uncond_kwargs``.
        An unconditional network (``num_classes=0``) raises ``ValueError``.
        """
        null = self.null_class
        y = model_kwargs.get("y")
        return {**model_kwargs, "y": torch.full_like(torch.as_tensor(y), null) if y is not None else None}

    def _class_embedding(self, y: Tensor | int | None, batch: int, device: torch.device) -> Tensor | None:
        """The class embedding of labels ``y`` (checked: integers in ``[0, num_classes]``), or None if unconditional."""
        k = self.config.num_classes
        if not k:
            if y is not None:
                raise ValueError("this UNet is unconditional (num_classes=0): y must be None")
            return None
        if y is None:
            y = torch.full((batch,), k, dtype=torch.long, device=device)
        y = torch.as_tensor(y, device=device)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"class labels y must be integers in [0, {k}] ({k} = the null class), got dtype {y.dtype}")
        if y.ndim == 0:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise ValueError(f"y must be a scalar or have shape ({batch},) to match the batch, got {tuple(y.shape)}")
        if batch and (int(y.min()) < 0 or int(y.max()) > k):
            raise ValueError(
                f"class labels y must lie in [0, {k}] ({k} = the null class), got values in "
                f"[{int(y.min())}, {int(y.max())}]"
            )
        return self.class_emb(y.long())

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | int | None = None) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must have shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        f = cfg.downsample_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"the image sides {tuple(x.shape[2:])} must be divisible by the downsampling factor {f}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"t must be a scalar or have shape ({x.shape[0]},) to match the batch, got {tuple(t.shape)}"
            )

        dtype = self.conv_in.weight.dtype
        emb = self.time_mlp(timestep_embedding(t, cfg.base_channels).to(dtype))
        class_emb = self._class_embedding(y, x.shape[0], x.device)
        if class_emb is not None:
            emb = emb + class_emb.to(dtype)
        h = self.conv_in(x.to(dtype))
        skips = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            skips.append(h)
        h = self._run(self.mid, h, emb)
        for blocks in self.up:
            if isinstance(blocks[0], _ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(blocks, h, emb)
        return self.conv_out(F.silu(self.norm_out(h))).to(x.dtype)

    @staticmethod
    def _run(blocks: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for block in blocks:
            h = block(h, emb) if isinstance(block, _ResBlock) else block(h)
        return h
