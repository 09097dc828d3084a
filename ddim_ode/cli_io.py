"""The files of the ``ddim-ode`` command line: what each command reads and writes, checked up front.

Every ``.npz`` the commands write uses one set of array names, and every command reads what the
others write:

* ``samples`` — images in the model's data scale (``sample`` and ``decode`` write them; ``encode``,
  ``roundtrip`` and ``likelihood`` read them, as they read an ``images`` array of a data set). They
  are the network's output as it is, so they may overshoot [−1, 1] a little; they are read as
  they are, whereas a data set's float images must lie in [−1, 1].
* ``latents`` — x_T in the model's input scale (``encode`` writes encoded latents, ``sample`` the
  noise it decoded; ``decode`` and ``interpolate --input`` read them).
* beside ``latents``, how to decode them (:class:`LatentFile`): ``kind`` (``"noise"`` or
  ``"encoded"``), ``solver``, ``solver_options`` (JSON), ``grid`` (its name, or ``"sigmas"`` /
  ``"timesteps"`` when given explicitly), ``steps`` (n), ``sigmas`` (the float64 decoding grid
  actually used, ending at 0), the model (:class:`ModelRecord`: ``model``, ``"default"``, a
  built-in name or the model directory; ``prediction``; ``schedule``, the ``--schedule`` SPEC
  when one replaced the model's own; ``labels``, the class label of each latent, and
  ``guidance``, the classifier-free guidance weight, when conditioned) and, for a reversible
  solver, its auxiliary state as ``aux_*`` arrays (:func:`~ddim_ode.solvers.reversible.state_to_arrays`).

Readers (:func:`read_images`, :func:`read_latents`) raise ``ValueError`` naming the file and what
is wrong with it; :func:`output_paths` and :func:`check_writable` tell before any work is done
whether the outputs can be written, and :func:`write_outputs` writes a command's files together
(each to a temporary name first, renamed only when all are written).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ._files import TMP_MARK, atomic_path, save_npz, save_png
from .field import PREDICTIONS

__all__ = [
    "IMAGE_KEYS",
    "LATENT_KEY",
    "LatentFile",
    "ModelRecord",
    "decoding_arrays",
    "check_writable",
    "check_writable_dir",
    "output_paths",
    "read_images",
    "write_outputs",
    "image_array_key",
    "latent_arrays",
    "read_latents",
    "read_samples",
    "SAMPLES_KEY",
]

#: the array name of latents
LATENT_KEY = "latents"
#: the array name of the images the commands write
SAMPLES_KEY = "samples"
#: array names read as images, in order of preference (a data set's, then the commands' own)
IMAGE_KEYS = ("images", SAMPLES_KEY)
LatentKind = Literal["noise", "encoded", "unknown"]


@dataclass(frozen=True)
class ModelRecord:
    """The model that decodes a latent file, and how it is conditioned.

    Attributes:
        model: ``"default"``, a built-in name or the resolved model directory.
        prediction: what the network predicts (as run: the model's own or ``--prediction``).
        schedule: the ``--schedule`` SPEC that replaced the model's own schedule, else ``None``.
        labels: the class label of each latent (``int64``, one per row), or ``None``.
        guidance: the classifier-free guidance weight, or ``None``.
    """

    model: str
    prediction: str | None = None
    schedule: str | None = None
    labels: np.ndarray | None = None
    guidance: float | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The named arrays of this record in a latent file (absent settings are not written)."""
        out = {"model": np.array(self.model)}
        if self.prediction is not None:
            out["prediction"] = np.array(self.prediction)
        if self.schedule is not None:
            out["schedule"] = np.array(self.schedule)
        if self.labels is not None:
            out["labels"] = np.asarray(self.labels, dtype=np.int64)
        if self.guidance is not None:
            out["guidance"] = np.array(self.guidance, dtype=np.float64)
        return out


@dataclass
class LatentFile:
    """Latents read from a file, with what the file records about how to decode them.

    Attributes:
        latents: x_T in VP scale, ``(N, C, H, W)``.
        kind: ``"noise"`` (drawn by ``sample``: any solver decodes it to a valid sample),
            ``"encoded"`` (made by ``encode``: only the recorded settings reconstruct the images)
            or ``"unknown"`` (a bare array).
        solver, solver_options, steps, grid, sigmas, model: the recorded settings (``None`` if
            absent; files of earlier versions record only ``solver`` and ``steps``).
        prediction, schedule, labels, guidance: the rest of the :class:`ModelRecord` (``None``
            if absent: the model's own prediction and schedule, no labels, no guidance).
        state_arrays: the ``aux_*`` arrays of a reversible solver's auxiliary state.
    """

    latents: np.ndarray
    kind: LatentKind = "unknown"
    solver: str | None = None
    solver_options: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    grid: str | None = None
    sigmas: np.ndarray | None = None
    model: str | None = None
    prediction: str | None = None
    schedule: str | None = None
    labels: np.ndarray | None = None
    guidance: float | None = None
    state_arrays: dict[str, np.ndarray] = field(default_factory=dict)


def latent_arrays(
    latents: np.ndarray,
    decoding: dict[str, np.ndarray],
    model: ModelRecord,
    state_arrays: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The named arrays of a latents file (to pass to :func:`~ddim_ode._files.save_npz`): the
    latents, their decoding settings (:func:`decoding_arrays`), the model record and a reversible
    solver's state."""
    return {LATENT_KEY: latents, **decoding, **model.arrays(), **(state_arrays or {})}


def decoding_arrays(
    *,
    kind: Literal["noise", "encoded"],
    solver: str,
    solver_options: dict[str, Any],
    grid: str,
    steps: int,
    sigmas: np.ndarray,
) -> dict[str, np.ndarray]:
    """The named arrays of the solver settings a latent file records (without the model's)."""
    return {
        "kind": np.array(kind),
        "solver": np.array(solver),
        "solver_options": np.array(json.dumps(solver_options, sort_keys=True)),
        "steps": np.array(steps),
        "grid": np.array(grid),
        "sigmas": np.asarray(sigmas, dtype=np.float64),
    }


def _open_npz(path: Path) -> Any:
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a .npz file")
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .npz/.npy file (truncated or corrupted?): {err}") from None


def read_latents(path: str | Path) -> LatentFile:
    """The latents of a ``.npz`` written by ``encode`` or ``sample`` (or a bare ``.npy`` array)."""
    p = Path(path)
    data = _open_npz(p)
    if isinstance(data, np.ndarray):  # a .npy file: latents without provenance
        return LatentFile(_check_latents(data, p))
    try:
        with data:
            names = list(data.files)
            if LATENT_KEY not in names:
                made = " (images: encode them first with `ddim-ode encode`)" if set(IMAGE_KEYS) & set(names) else ""
                raise ValueError(f"{p} has no '{LATENT_KEY}' array{made}; it holds {names}")
            arrays = {k: data[k] for k in names}
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{p} is not a readable .npz file (truncated or corrupted?): {err}") from None
    lat = _check_latents(arrays[LATENT_KEY], p)
    out = LatentFile(lat, state_arrays={k: v for k, v in arrays.items() if k.startswith("aux_")})
    try:
        if "kind" in arrays:
            kind = str(arrays["kind"])
            if kind not in ("noise", "encoded"):
                raise ValueError(f"unknown kind {kind!r}")
            out.kind = kind  # type: ignore[assignment]
        elif "solver" in arrays:  # written by an earlier version of `encode`
            out.kind = "encoded"
        if "solver" in arrays:
            out.solver = str(arrays["solver"])
        if "solver_options" in arrays:
            opts = json.loads(str(arrays["solver_options"]))
            if not isinstance(opts, dict):
                raise ValueError("solver_options is not a JSON object")
            out.solver_options = opts
        if "grid" in arrays:
            out.grid = str(arrays["grid"])
        if "sigmas" in arrays:
            out.sigmas = np.asarray(arrays["sigmas"], dtype=np.float64).reshape(-1)
        if "steps" in arrays:
            out.steps = int(arrays["steps"])
        elif out.sigmas is not None:
            out.steps = len(out.sigmas) - 1
        if "model" in arrays:
            out.model = str(arrays["model"])
        _read_record(arrays, out)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{p}: unreadable decoding settings ({err}); re-create it with `ddim-ode encode`") from None
    return out


def _read_record(arrays: dict[str, np.ndarray], out: LatentFile) -> None:
    """The prediction, schedule, labels and guidance of a latent file into ``out``, each checked."""
    if "prediction" in arrays:
        pred = str(arrays["prediction"])
        if pred not in PREDICTIONS:
            raise ValueError(f"unknown prediction {pred!r}")
        out.prediction = pred
    if "schedule" in arrays:
        out.schedule = str(arrays["schedule"])
    if "labels" in arrays:
        labels = arrays["labels"]
        if labels.dtype.kind not in "iu" or labels.shape != (len(out.latents),) or (labels < 0).any():
            raise ValueError(
                f"labels must be {len(out.latents)} integers >= 0 (one per latent), got {labels.dtype} {labels.shape}"
            )
        out.labels = labels.astype(np.int64)
    if "guidance" in arrays:
        w = arrays["guidance"]
        if w.shape != () or w.dtype.kind != "f" or not (math.isfinite(float(w)) and float(w) >= 0):
            raise ValueError(f"guidance must be one number >= 0, got {w!r}")
        out.guidance = float(w)


def _check_latents(arr: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{path}: latents must be floating point, got {arr.dtype}")
    if arr.ndim != 4 or arr.shape[0] < 1:
        raise ValueError(f"{path}: latents must have shape (N, C, H, W), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: the latents contain NaN or infinite values")
    return arr


def read_samples(path: str | Path) -> np.ndarray:
    """The ``samples`` array of a file written by ``sample`` or ``decode``, as float32 ``(N, C, H, W)``."""
    p = Path(path)
    data = _open_npz(p)
    try:
        with data:
            arr = data[SAMPLES_KEY]
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as err:
        raise ValueError(f"{p} is not a readable .npz file (truncated or corrupted?): {err}") from None
    if not np.issubdtype(arr.dtype, np.floating) or arr.ndim != 4 or arr.shape[0] < 1:
        raise ValueError(f"{p}: '{SAMPLES_KEY}' must be floating point (N, C, H, W), got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{p}: '{SAMPLES_KEY}' contains NaN or infinite values")
    return np.ascontiguousarray(arr, dtype=np.float32)


def image_array_key(path: str | Path) -> str | None:
    """The array of a ``.npz`` to read as images: ``images``, ``samples``, or the only array.

    ``None`` for a ``.npy`` file (one array). ``ValueError`` when the file holds latents only or
    several arrays none of which is named as images.
    """
    p = Path(path)
    if p.suffix.lower() != ".npz":
        return None
    data = _open_npz(p)
    if isinstance(data, np.ndarray):  # a .npy file under another name
        return None
    with data:
        names = list(data.files)
    for key in IMAGE_KEYS:
        if key in names:
            return key
    if names == [LATENT_KEY] or (LATENT_KEY in names and "kind" in names):
        raise ValueError(f"{p} holds latents, not images: decode them with `ddim-ode decode --input {p}`")
    if len(names) == 1:
        return names[0]
    raise ValueError(f"{p} holds several arrays {names} and none is named {' or '.join(IMAGE_KEYS)}")


def check_writable(path: str | Path, what: str = "--out") -> None:
    """Check, before any work, that ``path`` can be written (the folders above it may not exist yet).

    ``ValueError`` if ``path`` is a folder, if one of the folders it needs is a file, or if files
    cannot be created where the missing folders would go. Nothing is left on disk.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what} {p} is a folder; give a file name")
    _check_folder_writable(p.parent, f"{what} {p}")


def check_writable_dir(path: str | Path, what: str = "--out-dir") -> None:
    """Like :func:`check_writable` for an output folder (which may exist already)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {p} is a file; give a folder")
    _check_folder_writable(p, f"{what} {p}")


def _check_folder_writable(folder: Path, what: str) -> None:
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"cannot write {what}: {existing} is a file, not a folder")
    try:  # the only sure test: create (and remove) a file there, as the output will
        fd, probe = tempfile.mkstemp(prefix=f".probe{TMP_MARK}", suffix=".tmp", dir=existing)
    except OSError as err:
        raise ValueError(f"cannot write {what}: cannot create files in {existing} ({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)


#: suffixes that name another file format than the .png/.npz the commands write
_OTHER_FORMATS = (".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".npy", ".pt", ".pth", ".json")


def output_paths(out: str, *suffixes: str) -> list[Path]:
    """The files of ``--out NAME[.png|.npz]``: NAME + each suffix, checked to be writable."""
    if not out.strip():
        raise ValueError("--out is empty; give a file name")
    p = Path(out)
    if out.endswith(("/", os.sep)) or p.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {p / ('out' + suffixes[0])}")
    suffix = p.suffix.lower()
    if suffix in _OTHER_FORMATS:
        raise ValueError(f"--out {out}: this command writes {' and '.join(suffixes)}; give NAME{suffixes[0]}")
    stem = str(p.with_suffix("")) if suffix in (".png", ".npz") else out
    paths = [Path(stem + s) for s in suffixes]
    for path in paths:
        check_writable(path)
    return paths


def write_outputs(
    png: Path | None = None, image: np.ndarray | None = None, npz: Path | None = None, **arrays: Any
) -> None:
    """Write a PNG and/or an .npz, both or neither: each goes to a temporary name first."""
    with contextlib.ExitStack() as stack:
        if png is not None and image is not None:
            save_png(stack.enter_context(atomic_path(png)), image)
        if npz is not None:
            save_npz(stack.enter_context(atomic_path(npz)), **arrays)


def read_images(path: str, shape: tuple[int, ...]) -> Tensor:
    """Images from 'digits', 'digits:heldout', a .npy/.npz (``images`` or ``samples``) or a PNG folder."""
    from .data import load_array, load_digits, load_png_folder

    samples = False
    if path in ("digits", "digits:heldout"):
        x = load_digits("heldout" if path.endswith("heldout") else "train")
    else:
        p = Path(path)
        if not p.exists():
            raise ValueError(f"no such file or folder: {path}")
        try:
            if p.is_dir():
                x = load_png_folder(p)
            elif p.suffix.lower() in (".npy", ".npz"):
                key = image_array_key(p)
                samples = key == SAMPLES_KEY
                if samples:  # the commands' own output, read as it is
                    x = torch.from_numpy(read_samples(p))
                else:
                    x = load_array(p) if key is None else load_array(p, key=key)
            else:
                raise ValueError(
                    f"{path}: unsupported input; allowed: digits, digits:heldout, .npy, .npz, a PNG folder"
                )
        # unreadable files: a truncated or corrupted archive, a broken PNG (Pillow raises SyntaxError for some)
        except (OSError, EOFError, KeyError, SyntaxError, zipfile.BadZipFile, struct.error) as err:
            raise ValueError(f"cannot read images from {path}: {' '.join(str(err).split())}") from None
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"images have shape {tuple(x.shape[1:])}, the model needs {shape} (C, H, W)")
    if not samples and (float(x.min()) < -1.0001 or float(x.max()) > 1.0001):
        raise ValueError("images must be scaled to [-1, 1]")
    return x
