"""Turning batches of images into grids and strips a person can look at."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["to_unit", "image_grid", "slerp"]


def to_unit(x: Tensor) -> np.ndarray:
    """Model-scale images in [−1, 1] → numpy ``(N, H, W[, 3])`` in [0, 1] (clipped)."""
    arr = ((x.detach().to(torch.float32).cpu().clamp(-1, 1) + 1) / 2).numpy()
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(arr.shape)}")
    return arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)


def image_grid(images: np.ndarray, ncol: int, scale: int = 8, pad: int = 3, pad_value: float = 1.0) -> np.ndarray:
    """Tile ``(N, H, W[, 3])`` images in [0, 1] into one array, each pixel enlarged ``scale`` times."""
    n = images.shape[0]
    if n == 0:
        raise ValueError("no images to tile")
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    big = np.kron(images, np.ones((1, scale, scale) + ((1,) if images.ndim == 4 else ())))
    h, w = big.shape[1:3]
    shape = (nrow * (h + pad) + pad, ncol * (w + pad) + pad) + big.shape[3:]
    out = np.full(shape, pad_value, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = big[i]
    return out


def slerp(a: Tensor, b: Tensor, alpha: Tensor) -> Tensor:
    """Spherical interpolation between latents ``a`` and ``b`` (one per row) at weights ``alpha``.

    Returns ``(len(alpha), *a.shape[1:])`` for single latents ``a``, ``b`` of shape ``(1, ...)``;
    used by the DDIM paper's interpolation experiment (its Section 5.3).
    """
    af, bf = a.reshape(-1).to(torch.float64), b.reshape(-1).to(torch.float64)
    cos = torch.clamp(af @ bf / (af.norm() * bf.norm()), -1.0, 1.0)
    theta = torch.arccos(cos)
    al = alpha.to(torch.float64)[:, None]
    if float(theta) < 1e-6:
        out = (1 - al) * af + al * bf
    else:
        out = (torch.sin((1 - al) * theta) * af + torch.sin(al * theta) * bf) / torch.sin(theta)
    return out.reshape(len(alpha), *a.shape[1:]).to(a.dtype)
