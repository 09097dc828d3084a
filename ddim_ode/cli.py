"""The ``ddim-ode`` command line.

Subcommands: ``demo``, ``sample``, ``encode``, ``decode``, ``roundtrip``, ``interpolate``,
``likelihood``, ``train``, ``bench``, ``merge`` and ``solvers``. Every command uses the built-in
model unless ``--model`` names another. Each command reads the files the others write (the array
names and the decoding settings stored beside latents are described in :mod:`ddim_ode.cli_io`).

Errors: a problem the user can fix (bad arguments or files, an output that cannot be written, an
unavailable device, a run that produced NaN) is reported on one line and exits with status 2,
before any work when it can be known before; outputs are checked to be writable first and written
atomically, so a failed or interrupted run leaves nothing behind. Anything else is a bug and shows
its traceback; ``DDIM_ODE_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import math
import os
import struct
import sys
import time
import types
import typing
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._files import atomic_path, save_npz, save_png
from .cli_io import (
    SAMPLES_KEY,
    LatentFile,
    check_writable,
    check_writable_dir,
    image_array_key,
    latent_arrays,
    read_latents,
    read_samples,
)
from .grids import GRIDS, make_grid, sigmas_from_timesteps
from .images import image_grid, slerp, to_unit
from .integrate import Solution, decode, encode
from .models import resolve_model
from .schedules import Schedule
from .solvers import SOLVERS, get_solver, list_solvers
from .solvers.reversible import ReversibleLatent, concat_states, state_from_arrays, state_to_arrays
from .threads import set_threads_for

__all__ = ["main", "build_parser", "CLIError", "DEBUG_VARIABLE"]

#: set to 1 to see the traceback of a user error instead of the one-line message
DEBUG_VARIABLE = "DDIM_ODE_DEBUG"

EPILOG = f"""\
exit status: 0 on success; 2 on a usage or input error, reported on one line naming the problem
(set {DEBUG_VARIABLE}=1 for its traceback); 130 when interrupted. Any other failure is a bug and
prints a Python traceback. Outputs are checked to be writable before the work starts and written
atomically. CPU threads: idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) and the number of
threads follows the batch size and the idle cores, unless OMP_WAIT_POLICY, OMP_NUM_THREADS or
MKL_NUM_THREADS is set.
"""


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


#: what the user can fix: bad arguments or files, an unwritable output, a missing optional
#: package, a device that is not there, a run that diverged or did not fit in memory
USER_ERRORS: tuple[type[BaseException], ...] = (
    CLIError,
    ValueError,
    OSError,
    FloatingPointError,
    ImportError,
    MemoryError,
    torch.OutOfMemoryError,
)


def _message(err: BaseException) -> str:
    """One line describing a user error."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        first = (str(err).strip().splitlines() or [""])[0]
        return f"out of memory ({first or type(err).__name__}); lower --batch-size or --num"
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.strerror or err}: {err.filename}"
        return text if err.filename2 is None else f"{text} -> {err.filename2}"
    return " ".join((str(err) or type(err).__name__).split())


def _guarded(command: str, run: Callable[[], Any]) -> int:
    """Run a command under the error policy (see the module docstring); returns the exit status."""
    try:
        run()
    except KeyboardInterrupt:
        print(f"ddim-ode {command}: interrupted; no partial output was written", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get(DEBUG_VARIABLE, "").strip() not in ("", "0"):
            raise
        print(f"ddim-ode {command}: error: {_message(err)}", file=sys.stderr)
        return 2
    return 0


def _warn(command: str, text: str) -> None:
    print(f"ddim-ode {command}: warning: {text}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# helpers shared by the subcommands

DEVICES = "auto, cpu, cuda, cuda:N, mps"


def _device(name: str | None) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CLIError(f"bad --device {name!r}; allowed: {DEVICES}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name} requested but CUDA is not available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise CLIError(f"--device {name} requested but MPS (Apple GPU) is not available; use --device cpu")
        return dev
    raise CLIError(f"unsupported --device {name!r}; allowed: {DEVICES}")


@dataclass(frozen=True)
class _Model:
    """A loaded model with what the commands need to know about it."""

    model: Any
    schedule: Schedule
    prediction: str
    shape: tuple[int, ...]
    device: torch.device
    source: str  # "default" or the resolved model directory: what latent files record


def _model_id(name: str | None) -> str:
    return "default" if name in (None, "default") else str(Path(str(name)).resolve())


def _load(args: argparse.Namespace, batch: int, model: str | None = None) -> _Model:
    """The model named by ``model`` (default ``--model``), on ``--device``; sets the CLI's threads."""
    from .io import sample_shape

    dev = _device(args.device)
    name = model or args.model or "default"
    res = resolve_model(name, device=dev)
    net = res.model
    if isinstance(net, torch.nn.Module):
        bad = [n for n, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise CLIError(f"the model {name!r} has NaN or infinite weights (in {bad[0]}, {len(bad)} tensor(s))")
    try:
        shape = sample_shape(res.metadata)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if getattr(args, "half", False):  # the network runs in half precision; the solver state stays float32
        net = copy.deepcopy(net).to(torch.bfloat16 if dev.type == "cpu" else torch.float16)  # loaded models are shared
    if getattr(args, "compile", False):
        net = torch.compile(net)
    if getattr(args, "choose_threads", False) and dev.type == "cpu":
        set_threads_for(min(batch, args.batch_size or batch) * math.prod(shape))
    return _Model(net, res.schedule, res.prediction, shape, dev, _model_id(name))


# --- typed solver options


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _kind(ann: Any) -> str:
    if ann is bool:
        return "true/false (or yes/no, 1/0)"
    if ann is int:
        return "an integer"
    if ann is float:
        return "a number"
    if ann is str:
        return "text"
    if ann is dict or typing.get_origin(ann) is dict:
        return "a JSON object"
    if typing.get_origin(ann) is typing.Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(ann))
    return getattr(ann, "__name__", str(ann))


def _settable(ann: Any) -> bool:
    """Whether a value of type ``ann`` can be written on the command line."""
    return ann in (bool, int, float, str, dict) or typing.get_origin(ann) in (typing.Literal, dict)


def _typed(text: str, ann: Any, what: str) -> Any:
    """``text`` converted to the annotated type ``ann`` of a constructor argument."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        alts = [a for a in typing.get_args(ann) if a is not type(None)]
        nullable = len(alts) < len(typing.get_args(ann))
        if nullable and text.lower() in ("none", "null"):
            return None
        settable = [a for a in alts if _settable(a)]
        if not settable:
            raise CLIError(f"{what} cannot be set from the command line (it takes {_kind(alts[0])})")
        for alt in settable:
            with contextlib.suppress(CLIError):
                return _typed(text, alt, what)
        alts = settable
        kinds = " or ".join([_kind(a) for a in alts] + (["none"] if nullable else []))
        raise CLIError(f"bad {what} {text!r}: expected {kinds}")
    if origin is typing.Literal:
        for v in typing.get_args(ann):
            if str(v) == text:
                return v
        raise CLIError(f"bad {what} {text!r}; allowed: {', '.join(str(v) for v in typing.get_args(ann))}")
    if ann is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise CLIError(f"bad {what} {text!r}: a boolean option takes true/false, yes/no or 1/0")
    if ann is int:
        try:
            return int(text)
        except ValueError:
            raise CLIError(f"bad {what} {text!r}: expected an integer") from None
    if ann is float:
        try:
            val = float(text)
        except ValueError:
            raise CLIError(f"bad {what} {text!r}: expected a number") from None
        if not math.isfinite(val):
            raise CLIError(f"bad {what} {text!r}: expected a finite number")
        return val
    if ann is str:
        return text
    if ann is dict or origin is dict:
        try:
            val = json.loads(text)
        except json.JSONDecodeError:
            val = None
        if not isinstance(val, dict):
            raise CLIError(f"bad {what} {text!r}: expected a JSON object, e.g. '{{\"key\": 1}}'")
        return val
    raise CLIError(f"{what} cannot be set from the command line (it takes {_kind(ann)})")


def _solver_options(solver: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``--solver-option KEY=VALUE`` pairs, each converted to the type its constructor declares."""
    factory = SOLVERS[solver]
    params = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"bad --solver-option {pair!r}; use KEY=VALUE, e.g. order=3")
        if key not in params:
            allowed = f"allowed: {', '.join(params)}" if params else "it takes no options"
            raise CLIError(f"unknown --solver-option {key!r} for solver {solver!r}; {allowed}")
        if key in out:
            raise CLIError(f"--solver-option {key} given twice")
        out[key] = _typed(text.strip(), hints.get(key, str), f"--solver-option {key} (solver {solver!r})")
    return out


# --- the grid and solver of a run


def _numbers(text: str, flag: str) -> list[float]:
    vals = []
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise CLIError(
                f"bad {flag} value {part!r}: give comma-separated numbers, e.g. {flag} 14.6,3,0.5,0"
            ) from None
        if not math.isfinite(v):
            raise CLIError(f"bad {flag} value {part!r}: values must be finite")
        vals.append(v)
    if not vals:
        raise CLIError(f"{flag} is empty: give comma-separated numbers")
    return vals


def _check_decoding_grid(sig: np.ndarray, schedule: Schedule, flag: str) -> None:
    if len(sig) < 2:
        raise CLIError(f"{flag} must give at least one step (2 values: start and 0)")
    if (sig < 0).any():
        raise CLIError(f"{flag} values must be >= 0")
    if not (np.diff(sig) < 0).all():
        raise CLIError(f"{flag} must be strictly decreasing (decoding order, noise to data)")
    if sig[-1] != 0.0:
        raise CLIError(f"{flag} must end at sigma = 0 (clean data)")
    if sig[0] > schedule.sigma_max * (1 + 1e-9):
        raise CLIError(f"{flag} starts at sigma={sig[0]:.6g}, above the model's sigma_max={schedule.sigma_max:.6g}")


@dataclass(frozen=True)
class _Plan:
    """How to integrate: solver, its options and the decoding σ grid (float64, decreasing to 0)."""

    solver: str
    options: dict[str, Any]
    grid: str  # a grid name, or "sigmas" / "timesteps" when the grid was given explicitly
    sigmas: np.ndarray
    steps: int  # the n of a named grid (which may hold a step more, see ddim_ode.grids), else len(sigmas) - 1

    @property
    def reversible(self) -> bool:
        return get_solver(self.solver, **self.options).reversible

    def run_kwargs(self, m: _Model) -> dict[str, Any]:
        return dict(
            model=m.model,
            schedule=m.schedule,
            sigmas=self.sigmas,
            prediction=m.prediction,
            solver_options=self.options,
        )


def _plan(
    args: argparse.Namespace, schedule: Schedule, stored: LatentFile | None = None, *, encoding: bool = False
) -> _Plan:
    """The plan asked for on the command line; what it leaves open comes from ``stored``, else defaults.

    ``encoding``: the plan is also run towards noise (``encode``, ``roundtrip``), which not every
    solver can do.
    """
    solver = args.solver or (stored.solver if stored is not None and stored.solver else "euler")
    if solver not in SOLVERS:
        raise CLIError(f"unknown solver {solver!r}; available: {', '.join(sorted(SOLVERS))}")
    if args.solver_option:
        options = _solver_options(solver, args.solver_option)
    elif stored is not None and stored.solver == solver:
        options = dict(stored.solver_options)
    else:
        options = {}
    slv = get_solver(solver, **options)  # the solver checks its option values now, before any work
    if encoding and not slv.can_encode:
        raise CLIError(f"solver {solver!r} cannot encode: {slv.why_no_encode}")
    if args.sigmas is not None:
        sig, grid = np.asarray(_numbers(args.sigmas, "--sigmas"), dtype=np.float64), "sigmas"
        _check_decoding_grid(sig, schedule, "--sigmas")
        n = len(sig) - 1
    elif args.timesteps is not None:
        ts = np.asarray(_numbers(args.timesteps, "--timesteps"), dtype=np.float64)
        lo, hi = float(schedule.t_min), float(schedule.t_max)
        if ts.min() < lo or ts.max() > hi:
            raise CLIError(f"--timesteps must lie in the model's range [{lo:g}, {hi:g}]")
        if not (np.diff(ts) < 0).all():
            raise CLIError("--timesteps must be strictly decreasing (decoding order, noise to data)")
        sig, grid = np.append(sigmas_from_timesteps(schedule, ts).numpy(), 0.0), "timesteps"
        _check_decoding_grid(sig, schedule, "--timesteps")
        n = len(sig) - 1
    elif args.steps is None and args.grid is None and stored is not None and stored.sigmas is not None:
        sig, grid = stored.sigmas, stored.grid or "sigmas"
        n = stored.steps or len(sig) - 1
    else:
        grid = args.grid or (stored.grid if stored is not None and stored.grid in GRIDS else "uniform")
        n = args.steps or (stored.steps if stored is not None and stored.steps else 20)
        sig = make_grid(schedule, grid, n).numpy()
    return _Plan(solver, options, grid, np.asarray(sig, dtype=np.float64), n)


def _mismatches(stored: LatentFile, plan: _Plan, model: str) -> list[str]:
    """How ``plan`` (and ``model``) differ from the settings recorded with the latents."""
    out = []
    if stored.solver is not None and plan.solver != stored.solver:
        out.append(f"solver {stored.solver} -> {plan.solver}")
    elif stored.solver is not None and plan.options != stored.solver_options:
        out.append(f"solver options {stored.solver_options} -> {plan.options}")
    if stored.steps is not None and plan.steps != stored.steps:
        out.append(f"n {stored.steps} -> {plan.steps}")
    elif stored.sigmas is not None and not np.allclose(plan.sigmas, stored.sigmas, rtol=1e-9, atol=1e-12):
        out.append(f"grid {stored.grid} -> {plan.grid} (other sigma values)")
    if stored.model is not None and model != stored.model:
        out.append(f"model {stored.model} -> {model}")
    return out


def _describe(stored: LatentFile) -> str:
    parts = [f"solver={stored.solver}"] if stored.solver else []
    parts += [f"n={stored.steps}"] if stored.steps is not None else []
    parts += [f"grid={stored.grid}"] if stored.grid else []
    return ", ".join(parts) or "unrecorded settings"


def _check_settings(args: argparse.Namespace, stored: LatentFile, plan: _Plan, m: _Model) -> bool:
    """Whether ``plan`` decodes ``stored`` with its recorded settings; refuses a mismatch on encoded latents.

    Encoded latents reconstruct their images only with the settings they were encoded with, so a
    different solver, n, grid or model is refused unless ``--allow-mismatch`` (then a warning).
    Noise (from ``sample``) decodes to a valid sample with any settings.
    """
    diffs = _mismatches(stored, plan, m.source)
    if not diffs:
        return True
    if stored.kind == "encoded":
        text = f"{args.input} was encoded with {_describe(stored)}; this run differs: {'; '.join(diffs)}"
        if not args.allow_mismatch:
            raise CLIError(
                f"{text}. Omit --solver/-n/--grid/--sigmas/--timesteps/--model to use the recorded settings, "
                "or pass --allow-mismatch to decode anyway"
            )
        _warn(args.command, f"{text}; the result will not reconstruct the encoded images")
    return False


def _noise(num: int, shape: tuple[int, ...], seed: int, device: torch.device) -> Tensor:
    """Per-index seeded noise (sample i depends only on (seed, i)), the same as sharded runs use."""
    from .distributed import index_noise

    return index_noise(seed, 0, num, shape, device=device)


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr)


def _batched(fn: Callable[[Tensor], Solution], x: Tensor, batch_size: int, desc: str, show: bool) -> list[Solution]:
    """``fn`` on consecutive batches of ``x`` (a ``ReversibleLatent`` hands each batch its rows of the state)."""
    outs = []
    with _progress(x.shape[0], desc, show) as bar:
        for start in range(0, x.shape[0], batch_size):
            outs.append(fn(x[start : start + batch_size]))
            bar.update(min(batch_size, x.shape[0] - start))
    return outs


def _cat(sols: list[Solution]) -> Tensor:
    return torch.cat([s.x.as_subclass(Tensor) for s in sols])


# --- inputs and outputs

#: suffixes that name another file format than the .png/.npz the commands write
_OTHER_FORMATS = (".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".npy", ".pt", ".pth", ".json")


def _outputs(out: str, *suffixes: str) -> list[Path]:
    """The files of ``--out NAME[.png|.npz]``: NAME + each suffix, checked to be writable."""
    if not out.strip():
        raise CLIError("--out is empty; give a file name")
    p = Path(out)
    if out.endswith(("/", os.sep)) or p.is_dir():
        raise CLIError(f"--out {out} is a folder; give a file name, e.g. {p / ('out' + suffixes[0])}")
    suffix = p.suffix.lower()
    if suffix in _OTHER_FORMATS:
        raise CLIError(f"--out {out}: this command writes {' and '.join(suffixes)}; give NAME{suffixes[0]}")
    stem = str(p.with_suffix("")) if suffix in (".png", ".npz") else out
    paths = [Path(stem + s) for s in suffixes]
    for path in paths:
        check_writable(path)
    return paths


def _write(png: Path | None = None, image: np.ndarray | None = None, npz: Path | None = None, **arrays: Any) -> None:
    """Write a PNG and/or an .npz, both or neither: each goes to a temporary name first."""
    with contextlib.ExitStack() as stack:
        if png is not None and image is not None:
            save_png(stack.enter_context(atomic_path(png)), image)
        if npz is not None:
            save_npz(stack.enter_context(atomic_path(npz)), **arrays)


def _load_images(path: str, shape: tuple[int, ...]) -> Tensor:
    """Images from 'digits', 'digits:heldout', a .npy/.npz (``images`` or ``samples``) or a PNG folder."""
    from .data import load_array, load_digits, load_png_folder

    samples = False
    if path in ("digits", "digits:heldout"):
        x = load_digits("heldout" if path.endswith("heldout") else "train")
    else:
        p = Path(path)
        if not p.exists():
            raise CLIError(f"no such file or folder: {path}")
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
                raise CLIError(f"{path}: unsupported input; allowed: digits, digits:heldout, .npy, .npz, a PNG folder")
        # unreadable files: a truncated or corrupted archive, a broken PNG (Pillow raises SyntaxError for some)
        except (OSError, EOFError, KeyError, SyntaxError, zipfile.BadZipFile, struct.error) as err:
            raise CLIError(f"cannot read images from {path}: {_message(err)}") from None
    if tuple(x.shape[1:]) != shape:
        raise CLIError(f"images have shape {tuple(x.shape[1:])}, the model needs {shape} (C, H, W)")
    if not samples and (float(x.min()) < -1.0001 or float(x.max()) > 1.0001):
        raise CLIError("images must be scaled to [-1, 1]")
    return x


def _latents(lf: LatentFile, m: _Model, path: str) -> Tensor:
    lat = torch.from_numpy(np.ascontiguousarray(lf.latents, dtype=np.float32)).to(m.device)
    if tuple(lat.shape[1:]) != m.shape:
        raise CLIError(f"{path}: latents have shape {tuple(lat.shape[1:])}, the model needs {m.shape} (C, H, W)")
    return lat


def _with_state(lat: Tensor, lf: LatentFile, args: argparse.Namespace) -> Tensor:
    """``lat`` carrying the stored auxiliary state of a reversible solver (checked against it)."""
    path = args.input
    try:
        state = state_from_arrays(lf.state_arrays, device=lat.device, dtype=lat.dtype)
    except (KeyError, ValueError, TypeError) as err:
        raise CLIError(
            f"{path}: unreadable auxiliary state ({_message(err)}); re-create it with `ddim-ode encode`"
        ) from None
    if state is None:
        if lf.kind == "encoded":
            _warn(args.command, f"{path} stores no auxiliary state: {lf.solver} decodes afresh, not exactly")
        return lat
    if any(isinstance(v, Tensor) and v.shape != lat.shape for v in vars(state).values()):
        raise CLIError(f"{path}: the auxiliary state does not match the latents' shape {tuple(lat.shape)}")
    return ReversibleLatent.wrap(lat, state)


# ---------------------------------------------------------------------------------------------
# subcommands


def _to_dir(args: argparse.Namespace, kind: str) -> None:
    """``sample``/``encode`` with ``--out-dir``: resumable shards, on every rank of a torchrun job."""
    from .distributed import encode_to_dir, process_group, sample_to_dir

    if args.sigmas is not None or args.timesteps is not None:
        raise CLIError("--sigmas/--timesteps cannot be combined with --out-dir; use -n and --grid")
    check_writable_dir(args.shard_dir)
    solver = args.solver or "euler"
    if solver not in SOLVERS:
        raise CLIError(f"unknown solver {solver!r}; available: {', '.join(sorted(SOLVERS))}")
    options = _solver_options(solver, args.solver_option or [])
    slv = get_solver(solver, **options)
    if kind == "encode" and not slv.can_encode:
        raise CLIError(f"solver {solver!r} cannot encode: {slv.why_no_encode}")
    with process_group() as info:
        m = _load(args, args.shard_size)
        kw: dict[str, Any] = dict(
            model=m.model,
            schedule=m.schedule,
            solver=solver,
            n=args.steps or 20,
            grid=args.grid or "uniform",
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            device=m.device,
            prediction=m.prediction,
            solver_options=options,
            progress=not args.quiet and info.rank == 0,
        )
        if kind == "sample":
            res = sample_to_dir(args.shard_dir, args.num, seed=args.seed, shape=m.shape, **kw)
        else:
            res = encode_to_dir(_load_images(args.input, m.shape), args.shard_dir, **kw)
    if info.rank == 0:
        print(
            f"{res.num} {'samples' if kind == 'sample' else 'latents'} in {res.out_dir}: "
            f"{res.shards_skipped} of {res.shards_total} shards were already complete, "
            f"{res.world_size} process(es), {res.seconds:.1f}s -> {res.merged}"
        )


def cmd_merge(args: argparse.Namespace) -> None:
    from .distributed import merge_dir

    if not Path(args.out_dir).is_dir():
        raise CLIError(f"no such folder: {args.out_dir} (give the folder of an --out-dir run)")
    print(f"merged {args.out_dir} -> {merge_dir(args.out_dir)}")


def cmd_sample(args: argparse.Namespace) -> None:
    if getattr(args, "shard_dir", None) is not None:
        _to_dir(args, "sample")
        return
    png, npz = _outputs(args.out, ".png", ".npz")
    m = _load(args, args.num)
    plan = _plan(args, m.schedule)
    x_T = _noise(args.num, m.shape, args.seed, m.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        sols = _batched(
            lambda xb: decode(xb, plan.solver, plan.steps, return_solution=True, **plan.run_kwargs(m)),
            x_T,
            args.batch_size,
            "sampling",
            not args.quiet,
        )
    x0 = _cat(sols)
    wall = time.perf_counter() - t0
    arrays = latent_arrays(
        x_T.cpu().numpy(),
        kind="noise",
        solver=plan.solver,
        solver_options=plan.options,
        grid=plan.grid,
        steps=plan.steps,
        sigmas=plan.sigmas,
        model=m.source,
    )
    _write(png, image_grid(to_unit(x0), ncol=int(np.ceil(np.sqrt(args.num)))), npz, samples=x0.cpu().numpy(), **arrays)
    nfe = sum(s.nfe for s in sols) // len(sols)
    print(f"{args.num} samples, solver={plan.solver}, n={plan.steps}, NFE={nfe}, {wall:.1f}s -> {png}, {npz}")


def cmd_encode(args: argparse.Namespace) -> None:
    if getattr(args, "shard_dir", None) is not None:
        _to_dir(args, "encode")
        return
    (npz,) = _outputs(args.out, ".npz")
    m = _load(args, args.batch_size)
    x0 = _load_images(args.input, m.shape).to(m.device)
    plan = _plan(args, m.schedule, encoding=True)
    with torch.no_grad():
        sols = _batched(
            lambda xb: encode(xb, plan.solver, plan.steps, return_solution=True, **plan.run_kwargs(m)),
            x0,
            args.batch_size,
            "encoding",
            not args.quiet,
        )
    # a reversible solver: store its auxiliary state for an exact decode
    state = state_to_arrays(concat_states([s.state for s in sols])) if plan.reversible else None
    arrays = latent_arrays(
        _cat(sols).cpu().numpy(),
        kind="encoded",
        solver=plan.solver,
        solver_options=plan.options,
        grid=plan.grid,
        steps=plan.steps,
        sigmas=plan.sigmas,
        model=m.source,
        state_arrays=state,
    )
    _write(npz=npz, **arrays)
    print(f"encoded {x0.shape[0]} images with {plan.solver}, n={plan.steps} -> {npz}")


def cmd_decode(args: argparse.Namespace) -> None:
    lf = read_latents(args.input)
    png, npz = _outputs(args.out, ".png", ".npz")
    m = _load(args, len(lf.latents), model=args.model or lf.model)
    lat = _latents(lf, m, args.input)
    plan = _plan(args, m.schedule, lf)
    if _check_settings(args, lf, plan, m) and plan.reversible:
        lat = _with_state(lat, lf, args)
    with torch.no_grad():
        sols = _batched(
            lambda xb: decode(xb, plan.solver, plan.steps, return_solution=True, **plan.run_kwargs(m)),
            lat,
            args.batch_size,
            "decoding",
            not args.quiet,
        )
    x0 = _cat(sols)
    _write(png, image_grid(to_unit(x0), ncol=int(np.ceil(np.sqrt(len(x0))))), npz, samples=x0.cpu().numpy())
    print(f"decoded {len(x0)} latents with {plan.solver}, n={plan.steps} -> {png}, {npz}")


def _roundtrip(args: argparse.Namespace, m: _Model) -> tuple[Tensor, Tensor, float, _Plan]:
    plan = _plan(args, m.schedule, encoding=True)
    x0 = _load_images(args.input, m.shape)[: args.num].to(m.device)
    kw = plan.run_kwargs(m)
    with torch.no_grad():
        enc = encode(x0, plan.solver, plan.steps, return_solution=True, **kw)
        state = enc.state if plan.reversible else None  # other solvers' final state is no start for decoding
        rec = decode(enc.x.as_subclass(Tensor), plan.solver, plan.steps, state=state, **kw)
    # per-dimension MSE with data scaled to [0, 1], as the DDIM paper's Table 2
    mse = float(((rec - x0) / 2).pow(2).mean())
    return x0, rec, mse, plan


def cmd_roundtrip(args: argparse.Namespace) -> None:
    (png,) = _outputs(args.out, ".png")
    m = _load(args, args.num)
    x0, rec, mse, plan = _roundtrip(args, m)
    diff = (rec - x0).abs() - 1.0  # |difference| shown on the same [-1, 1] → [0, 1] map
    panel = np.concatenate([to_unit(x0), to_unit(rec), to_unit(diff)])
    _write(png, image_grid(panel, ncol=len(x0)))
    print(
        f"round trip of {len(x0)} images, solver={plan.solver}, n={plan.steps}: "
        f"per-dimension MSE (data in [0, 1]) = {mse:.3e} -> {png} "
        "(rows: originals | reconstructions | |difference|)"
    )


def cmd_interpolate(args: argparse.Namespace) -> None:
    png, cons = _outputs(args.out, ".png", "_consistency.png")
    lf = read_latents(args.input) if args.input else None
    m = _load(args, args.frames, model=args.model or (lf.model if lf is not None else None))
    plan = _plan(args, m.schedule, lf)
    if lf is not None:
        _check_settings(args, lf, plan, m)
        if len(lf.latents) < 2:
            raise CLIError(f"{args.input} holds {len(lf.latents)} latent(s); interpolation needs two")
        ends = _latents(lf, m, args.input)[:2]
        if lf.kind == "encoded" and plan.reversible:
            _warn(
                args.command,
                f"{args.input} was encoded with the reversible {plan.solver}: its latents decode exactly only with "
                "their auxiliary state, which interpolated latents do not have, so even the end frames are not the "
                "images; encode with euler (DDIM inversion) to interpolate",
            )
    else:
        ends = _noise(2, m.shape, args.seed, m.device)
    lat = slerp(ends[:1], ends[1:], torch.linspace(0, 1, args.frames)).to(m.device)
    # the same x_T decoded with several n means something for noise, not for latents encoded with one n
    noise = lf is None or lf.kind != "encoded"
    grid = plan.grid if plan.grid in GRIDS else "uniform"
    kw = {k: v for k, v in plan.run_kwargs(m).items() if k != "sigmas"}
    with torch.no_grad():
        strip = decode(lat, plan.solver, plan.steps, sigmas=plan.sigmas, **kw)
        consistency = (
            [decode(ends[:1], plan.solver, n, grid=grid, **kw) for n in args.consistency_steps] if noise else []
        )
    if consistency:
        _write(png, image_grid(to_unit(strip), ncol=args.frames))
        _write(cons, image_grid(to_unit(torch.cat(consistency)), ncol=len(consistency)))
        steps = ", ".join(str(n) for n in args.consistency_steps)
        print(f"slerp strip of {args.frames} frames -> {png}; same x_T decoded with n = {steps} -> {cons}")
    else:
        _write(png, image_grid(to_unit(strip), ncol=args.frames))
        print(f"slerp strip of {args.frames} frames -> {png} (no consistency strip for encoded latents)")


def cmd_demo(args: argparse.Namespace) -> None:
    """Sample a grid of digits, then round-trip real digits with the chosen solver and with the
    exactly reversible BELM solver, all with the built-in model."""
    out = Path(args.out_dir)
    check_writable_dir(out)
    t0 = time.perf_counter()
    sample_args = argparse.Namespace(**{**vars(args), "num": 64, "out": str(out / "samples.png"), "shard_dir": None})
    cmd_sample(sample_args)
    rt = {**vars(args), "num": 10, "input": "digits:heldout", "out": str(out / "roundtrip.png")}
    cmd_roundtrip(argparse.Namespace(**rt))
    if (args.solver or "euler") != "belm":
        rt_belm = {**rt, "solver": "belm", "solver_option": None, "out": str(out / "roundtrip_belm.png")}
        cmd_roundtrip(argparse.Namespace(**rt_belm))
    print(f"demo done in {time.perf_counter() - t0:.1f}s; open {out / 'samples.png'} and {out / 'roundtrip.png'}")


def cmd_likelihood(args: argparse.Namespace) -> None:
    from .likelihood import log_likelihood

    if args.out:
        check_writable(args.out)
    m = _load(args, args.batch_size or args.num)
    x = _load_images(args.input, m.shape)[: args.num].to(m.device, torch.float64)
    bin_width = args.bin_width
    if bin_width is None and args.input.startswith("digits"):
        bin_width = 2.0 / 16.0  # digits pixels are integers 0..16 mapped to [-1, 1]
    if args.dequantize == "uniform" and bin_width is None:
        raise CLIError("--dequantize uniform needs --bin-width (e.g. 2/255 = 0.00784 for 8-bit images)")
    res = log_likelihood(
        x,
        m.model,
        m.schedule,
        method=args.method,
        rtol=args.rtol,
        atol=args.atol,
        divergence=args.divergence,
        probes=args.probes,
        probe_dist=args.probe_dist,
        sigma_min=args.sigma_min,
        dequantize=args.dequantize,
        bin_width=bin_width,
        generator=torch.Generator(device=m.device).manual_seed(args.seed),
        prediction=m.prediction,
        batch_size=args.batch_size,
    )
    summary = res.summary()
    print(
        f"{summary['num_samples']} images: {summary['bits_per_dim']:.4f} ± {summary['bits_per_dim_sem']:.4f} bits/dim "
        f"({summary['nats_per_dim']:.4f} nats/dim), divergence={args.divergence}, NFE={summary['nfe']}"
    )
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary -> {args.out}")


def cmd_bench(args: argparse.Namespace) -> None:
    from . import studies

    if args.replot:
        print(f"re-plotted {studies.replot(args.replot)}")
        return
    kw: dict[str, Any] = {"seed": args.seed, "quick": args.quick, "out_dir": args.out_dir or f"results/{args.study}"}
    dev = _device(args.device)
    kw["device"] = dev
    if args.study != "accuracy":
        kw["dtype"] = args.dtype
    if args.solvers:
        names = [n for n in args.solvers.split(",") if n]
        if args.study == "consistency":
            kw["solver"] = names[0]
        else:
            kw["solvers"] = tuple(names)
    if args.steps:
        kw["steps"] = args.steps[0] if args.study == "speed" else tuple(args.steps)
    if args.num is not None:
        if args.study in ("consistency", "speed"):
            raise CLIError(f"--num does not apply to the {args.study} study")
        kw["num"] = args.num
    if args.problems:
        if args.study != "accuracy":
            raise CLIError("--problems applies to the accuracy study only")
        kw["problems"] = tuple(args.problems.split(","))
    if args.study != "accuracy":
        kw["show_progress"] = not args.quiet
    elif args.quiet:
        kw["show_progress"] = False
    if args.study == "consistency":
        kw.pop("show_progress", None)
    t0 = time.perf_counter()
    studies.STUDIES[args.study](**kw)
    out = Path(kw["out_dir"])
    print(f"{args.study} study done in {time.perf_counter() - t0:.1f}s; results in {out}/ ({args.study}.json, PNG)")


def cmd_solvers(args: argparse.Namespace) -> None:
    rows = list_solvers()
    print(f"{'name':<18} {'order':>5} {'NFE/step':>8} {'encode':>6}  paper")
    for s in rows:
        print(f"{s.name:<18} {s.order:>5} {s.nfe_per_step:>8g} {('yes' if s.can_encode else 'no'):>6}  {s.paper}")


# ---------------------------------------------------------------------------------------------
# the parser


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit status 2)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _common(p: argparse.ArgumentParser, steps: int = 20, recorded: bool = False) -> None:
    """The model, device, solver and grid options; with ``recorded``, unset ones come from the input file."""
    rec = " (default: the one recorded in --input, else {})" if recorded else " (default {})"
    p.add_argument(
        "--model", help="'default' (built-in), a model directory or a diffusers UNet dir" + rec.format("default")
    )
    p.add_argument("--device", default="auto", help=f"one of {DEVICES} (default auto: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--solver", help="solver name; see `ddim-ode solvers`" + rec.format("euler = DDIM"))
    p.add_argument("-n", "--steps", type=int, help="number of steps" + rec.format(steps))
    p.add_argument("--grid", help=f"one of {', '.join(GRIDS)}" + rec.format("uniform"))
    p.add_argument("--sigmas", metavar="S0,S1,...,0", help="explicit decoding grid of sigmas, decreasing to 0")
    p.add_argument(
        "--timesteps", metavar="T0,T1,...", help="explicit decreasing timesteps (a final step to t=0 is added)"
    )
    p.add_argument(
        "--solver-option",
        action="append",
        metavar="KEY=VALUE",
        help="solver constructor option, typed as the constructor declares (booleans: true/false, yes/no, 1/0)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (pays off for many NFE)")
    p.add_argument(
        "--half", action="store_true", help="run the network in float16 (bfloat16 on CPU); solver state stays float32"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _sharded(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out-dir",
        dest="shard_dir",
        default=None,
        help="write resumable shards and a merged .npy into this folder instead of --out; "
        "run under `torchrun --nproc-per-node K -m ddim_ode ...` to use K processes (see docs/scaling.md)",
    )
    p.add_argument(
        "--shard-size", type=int, default=256, help="with --out-dir: indices per shard file and per network call"
    )


def _mismatch_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="decode encoded latents with other settings than they record (a warning; not a reconstruction)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ddim-ode",
        description=(__doc__ or "").splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="sample digits and show a round trip with the built-in model")
    _common(p)
    p.add_argument("--out-dir", default="ddim_ode_demo", help="output folder (default ddim_ode_demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sample", help="decode N noise samples to a PNG grid and a .npz")
    _common(p)
    p.add_argument(
        "--num",
        "--num-samples",
        dest="num",
        type=int,
        default=64,
        help="number of samples (default 64); spell it --num-samples under torchrun, which takes --num itself",
    )
    p.add_argument(
        "--out",
        default="samples.png",
        help="output PNG; the same name .npz gets 'samples', the noise 'latents' and how they were decoded",
    )
    _sharded(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("encode", help="images -> latents (.npz recording how to decode them)")
    _common(p)
    p.add_argument(
        "--input",
        required=True,
        help="'digits', 'digits:heldout', a .npy, a .npz (its 'images' or 'samples' array) or a PNG folder",
    )
    p.add_argument("--out", default="latents.npz", help="output .npz (default latents.npz)")
    _sharded(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="latents (.npz from `encode` or `sample`) -> images (PNG + .npz)")
    _common(p, recorded=True)
    p.add_argument("--input", required=True, help=".npz with a 'latents' array (as `encode` and `sample` write)")
    p.add_argument("--out", default="decoded.png", help="output PNG; the .npz of the same name gets 'samples'")
    _mismatch_flag(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("roundtrip", help="encode then decode images; print the reconstruction MSE")
    _common(p)
    p.add_argument("--input", default="digits:heldout", help="images, as for `encode` (default: held-out digits)")
    p.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--out", default="roundtrip.png", help="output PNG (default roundtrip.png)")
    p.set_defaults(func=cmd_roundtrip)

    p = sub.add_parser("interpolate", help="slerp between two latents, and one latent decoded with several n")
    _common(p, recorded=True)
    p.add_argument("--input", help="interpolate between the first two latents of this .npz (default: seeded noise)")
    p.add_argument("--frames", type=int, default=9, help="frames in the strip (default 9)")
    p.add_argument(
        "--consistency-steps", type=int, nargs="+", default=[10, 20, 50, 100], help="n values for the consistency strip"
    )
    p.add_argument("--out", default="interpolation.png", help="output PNG (default interpolation.png)")
    _mismatch_flag(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("train", help="train a DDPM UNet (see `ddim-ode train --help`)", add_help=False)
    p.set_defaults(func=None)

    p = sub.add_parser("likelihood", help="exact log-likelihood (bits/dim) of images through the ODE")
    p.add_argument("--model", default="default", help="'default' (built-in), a model directory or a diffusers UNet dir")
    p.add_argument("--device", default="auto", help=f"one of {DEVICES}")
    p.add_argument("--seed", type=int, default=0, help="seed of the Hutchinson probes and dequantisation noise")
    p.add_argument("--input", default="digits:heldout", help="images, as for `encode` (default: held-out digits)")
    p.add_argument("--num", type=int, default=32, help="number of images (default 32)")
    p.add_argument("--divergence", default="hutchinson", choices=("exact", "hutchinson"))
    p.add_argument("--probes", type=int, default=4, help="Hutchinson probes per evaluation (default 4)")
    p.add_argument("--probe-dist", default="rademacher", choices=("rademacher", "gaussian"))
    p.add_argument("--dequantize", default="uniform", choices=("none", "uniform"))
    p.add_argument("--bin-width", type=float, help="width of one intensity level in model scale (digits: 2/16)")
    p.add_argument("--sigma-min", type=float, help="start the flow at this sigma instead of 0")
    p.add_argument("--method", default="dopri5", help="torchdiffeq method (default dopri5)")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, help="images per integration")
    p.add_argument("--out", help="write the summary JSON here")
    p.set_defaults(func=cmd_likelihood)

    p = sub.add_parser("bench", help="run a study: roundtrip, accuracy, quality, speed or consistency")
    p.add_argument("study", choices=("roundtrip", "accuracy", "quality", "speed", "consistency"))
    p.add_argument("--quick", action="store_true", help="a small version that runs in under a minute")
    p.add_argument("--out-dir", help="output folder (default results/<study>)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="state dtype (default float32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solvers", help="comma-separated solver names (default: the study's own list)")
    p.add_argument("--steps", type=int, nargs="+", help="step counts (speed: one value)")
    p.add_argument("--num", type=int, help="number of samples/images")
    p.add_argument("--problems", help="accuracy only: comma-separated from ring, mix64, model")
    p.add_argument("--replot", metavar="JSON", help="redraw the plot from a results JSON and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("merge", help="check that an --out-dir run is complete and merge its shards")
    p.add_argument("out_dir", help="the folder given as --out-dir")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("solvers", help="list the solvers with order, NFE per step and paper")
    p.set_defaults(func=cmd_solvers)
    return parser


def _validate(args: argparse.Namespace) -> None:
    """Checks of single arguments, before anything is loaded."""
    for name in ("steps", "num", "batch_size", "frames", "shard_size", "probes"):
        val = getattr(args, name, None)
        if isinstance(val, list):
            val = min(val)
        if val is not None and val < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {val}")
    for n in getattr(args, "consistency_steps", None) or []:
        if n < 1:
            raise CLIError(f"--consistency-steps values must be >= 1, got {n}")
    seed = getattr(args, "seed", None)
    if seed is not None and not -(2**63) <= seed < 2**63:
        raise CLIError(f"--seed must fit in 64 bits, got {seed}")
    for name in ("rtol", "atol", "bin_width"):
        val = getattr(args, name, None)
        if val is not None and not (math.isfinite(val) and val > 0):
            raise CLIError(f"--{name.replace('_', '-')} must be a positive number, got {val}")
    sigma_min = getattr(args, "sigma_min", None)
    if sigma_min is not None and not (math.isfinite(sigma_min) and sigma_min >= 0):
        raise CLIError(f"--sigma-min must be a number >= 0, got {sigma_min}")
    grid = getattr(args, "grid", None)
    if grid is not None and grid not in GRIDS:
        raise CLIError(f"unknown grid {grid!r}; allowed: {', '.join(GRIDS)}")
    solver = getattr(args, "solver", None)
    if solver is not None and solver not in SOLVERS:
        raise CLIError(f"unknown solver {solver!r}; available: {', '.join(sorted(SOLVERS))}")
    explicit = [
        f for f, v in (("--sigmas", "sigmas"), ("--timesteps", "timesteps")) if getattr(args, v, None) is not None
    ]
    if explicit and (len(explicit) > 1 or args.steps is not None or args.grid is not None):
        raise CLIError(f"{explicit[0]} gives the whole grid: do not combine it with -n, --grid or {'/'.join(explicit)}")


def main(argv: Sequence[str] | None = None, *, choose_threads: bool = False) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    ``choose_threads``: set PyTorch's CPU threads for the work (see :mod:`ddim_ode.threads`), as
    the ``ddim-ode`` entry point does; off by default so that calling this function leaves the
    calling process's settings alone.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from .train import main as train_main

        return _guarded("train", lambda: train_main(argv[1:], prog="ddim-ode train"))
    args = build_parser().parse_args(argv)
    args.choose_threads = choose_threads

    def run() -> None:
        _validate(args)
        args.func(args)

    return _guarded(args.command, run)


if __name__ == "__main__":
    raise SystemExit(main())
