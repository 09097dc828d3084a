"""Training data: the bundled 8×8 digits, a user's array file, or a folder of PNG images.

Every loader returns a float32 tensor of shape ``(N, C, H, W)`` scaled to ``[−1, 1]``, the data
scale of DDPM (Ho et al. 2020).

* Digits (:func:`load_digits`): scikit-learn's copy of the UCI optical-recognition digits,
  1,797 grayscale 8×8 images with integer pixels 0..16, scaled as ``pixel / 16 * 2 − 1``.
  The split is fixed: the first 1,500 images are the training set, the last
  :data:`DIGITS_HELDOUT` = 297 are held out.
* Arrays (:func:`load_array`): ``.npy``, or ``.npz`` with the images under the key ``"images"``
  (or the only array in the file). Shape ``(N, H, W)`` (one channel) or ``(N, C, H, W)``.
  ``uint8`` is scaled as ``x / 255 * 2 − 1``; ``uint16`` as ``x / 65535 * 2 − 1``; floating
  arrays are taken as already scaled and must lie in ``[−1, 1]``.
* PNG folders (:func:`load_png_folder`): every ``*.png`` in the folder (sorted by name, not
  recursive), all of the same size (no resizing). Grayscale images give one channel; if any image
  is colour, all are converted to RGB (alpha dropped). 8-bit pixels are scaled as ``x / 255 * 2 − 1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DIGITS_HELDOUT",
    "check_source",
    "load_digits",
    "load_digits_labels",
    "load_array",
    "load_png_folder",
    "load_dataset",
    "DIGITS_SCALING",
]

#: number of digits images held out (the last ones of scikit-learn's ordering)
DIGITS_HELDOUT = 297
#: the documented map from digits pixels (0..16) to the model's data scale
DIGITS_SCALING = "pixel / 16 * 2 - 1"
SPLITS = ("train", "heldout", "all")


def load_digits(split: str = "train") -> Tensor:
    """The 8×8 digits as a float32 tensor ``(N, 1, 8, 8)`` in ``[−1, 1]``.

    Args:
        split: ``"train"`` (first 1,500 images), ``"heldout"`` (last 297) or ``"all"`` (1,797).

    Needs scikit-learn (the ``digits`` extra); the data ship with it, nothing is downloaded.
    """
    return _digits(split)[0]


def load_digits_labels(split: str = "train") -> tuple[Tensor, Tensor]:
    """Images as in :func:`load_digits` and their labels 0..9 (int64), for classifier checks."""
    return _digits(split)


def _digits(split: str) -> tuple[Tensor, Tensor]:
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; allowed: {', '.join(SPLITS)}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:
        raise ImportError(
            "the digits data set needs scikit-learn; install it with `pip install ddim_ode[digits]`"
        ) from err
    bunch = sk_load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)) / 16.0 * 2.0 - 1.0
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    images = images[:, None]
    n_train = images.shape[0] - DIGITS_HELDOUT
    sl = {"train": slice(0, n_train), "heldout": slice(n_train, None), "all": slice(None)}[split]
    return images[sl].contiguous(), labels[sl].contiguous()


def _check_scaled(x: Tensor, source: str) -> Tensor:
    """``x`` if it holds at least one image and every value is finite and in [−1, 1]; else ``ValueError``."""
    if x.ndim != 4 or x.shape[0] < 1 or 0 in x.shape:
        raise ValueError(f"{source}: images must have shape (N, C, H, W) with every size >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{source}: the images contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 or hi > 1.0:
        raise ValueError(
            f"{source}: images given as floating-point values must already be scaled to [-1, 1], "
            f"found values in [{lo:.4g}, {hi:.4g}]; "
            "store uint8 (scaled as x/255*2-1) or rescale them"
        )
    return x


def _scale_integer(arr: np.ndarray, source: str) -> Tensor:
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.astype(np.float32) / 255.0 * 2.0 - 1.0)
    if arr.dtype == np.uint16:
        return torch.from_numpy(arr.astype(np.float32) / 65535.0 * 2.0 - 1.0)
    if np.issubdtype(arr.dtype, np.floating):
        return _check_scaled(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), source)
    raise ValueError(f"{source}: unsupported dtype {arr.dtype}; allowed: uint8, uint16, float16/32/64")


def load_array(path: str | Path, key: str = "images") -> Tensor:
    """Images from a ``.npy`` file or from the array ``key`` of a ``.npz`` file.

    Shape ``(N, H, W)`` or ``(N, C, H, W)``; scaling as described in the module docstring.
    Files are read with ``allow_pickle=False``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such array file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(p, allow_pickle=False) as npz:
            names = list(npz.files)
            if key in names:
                arr = npz[key]
            elif len(names) == 1:
                arr = npz[names[0]]
            else:
                raise KeyError(f"{p}: no array named {key!r}; the file holds {names} (pass key=...)")
    else:
        raise ValueError(f"{p}: unsupported array file type {suffix!r}; allowed: .npy, .npz")
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[0] < 1:
        raise ValueError(f"{p}: images must have shape (N, H, W) or (N, C, H, W), got {arr.shape}")
    return _scale_integer(arr, str(p))


def load_png_folder(path: str | Path) -> Tensor:
    """All ``*.png`` images of a folder (sorted by name), same size required, as ``(N, C, H, W)``."""
    from PIL import Image

    folder = Path(path)
    if not folder.is_dir():
        raise NotADirectoryError(f"no such image folder: {folder}")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() == ".png" and f.is_file())
    if not files:
        raise ValueError(f"{folder}: no .png images found")
    images = []
    for f in files:
        with Image.open(f) as im:
            im.load()
            images.append(im.copy())
    size = images[0].size
    for f, im in zip(files, images):
        if im.size != size:
            raise ValueError(
                f"all images must have the same size (no resizing is done): {files[0].name} is "
                f"{size[0]}x{size[1]} but {f.name} is {im.size[0]}x{im.size[1]}"
            )
    gray_modes = {"1", "L", "LA", "I", "I;16"}
    rgb = any(im.mode not in gray_modes for im in images)
    arrays = []
    for im in images:
        if rgb:
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
        elif im.mode in ("I", "I;16"):
            arrays.append(np.asarray(im, dtype=np.uint16)[None])
        else:
            arrays.append(np.asarray(im.convert("L"), dtype=np.uint8)[None])
    if any(a.dtype != arrays[0].dtype for a in arrays):
        arrays = [(a.astype(np.float32) / (65535.0 if a.dtype == np.uint16 else 255.0) * 2 - 1) for a in arrays]
    return _scale_integer(np.stack(arrays), str(folder))


def check_source(source: str | Path | Tensor | np.ndarray) -> None:
    """Refuse a training-data source :func:`load_dataset` cannot read, without reading it."""
    if isinstance(source, (Tensor, np.ndarray)):
        return
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"data must be 'digits', a path or an (N, C, H, W) array, got {type(source).__name__}")
    p = Path(source)
    if str(source) == "digits" or p.is_dir() or (p.suffix.lower() in (".npy", ".npz") and p.is_file()):
        return
    if p.suffix.lower() in (".npy", ".npz"):
        raise FileNotFoundError(f"no such data file: {str(source)!r}")
    raise ValueError(
        f"unknown data source {str(source)!r}; allowed: 'digits', a .npy/.npz file, a folder of PNG images"
    )


def load_dataset(source: str | Path | Tensor | np.ndarray) -> Tensor:
    """Training images from any supported source.

    ``source``: ``"digits"`` (the digits training split), a ``.npy``/``.npz`` file, a folder of
    PNG images, or an array/tensor already shaped ``(N, C, H, W)`` in ``[−1, 1]`` (checked: at
    least one image, every value finite and in range). Returned on the CPU.
    """
    check_source(source)
    if isinstance(source, Tensor):
        return _check_scaled(source.detach().to("cpu", torch.float32), "in-memory data")
    if isinstance(source, np.ndarray):
        return _check_scaled(torch.from_numpy(np.asarray(source, dtype=np.float32)), "in-memory data")
    if str(source) == "digits":
        return load_digits("train")
    p = Path(source)
    return load_png_folder(p) if p.is_dir() else load_array(p)
