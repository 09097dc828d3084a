"""The ``ddim-ode`` command line.

Subcommands: ``demo``, ``sample``, ``encode``, ``decode``, ``roundtrip``, ``interpolate``,
``likelihood``, ``train``, ``bench``, ``merge``, ``solvers`` and ``models``. Every command uses the
default built-in model unless ``--model`` names another built-in model or a model directory
(``--prediction``/``--schedule`` and the class conditioning ``--class``/``--guidance`` are
described in :mod:`ddim_ode.cli_model`). Each command reads the files the others write (the array
names and the decoding settings stored beside latents are described in :mod:`ddim_ode.cli_io`).

Errors: a problem the user can fix (bad arguments or files, an output that cannot be written, an
unavailable device, a run that produced NaN) is reported on one line and exits with status 2,
before any work when it can be known before; outputs are checked to be writable first and written
atomically, so a failed or interrupted run leaves nothing behind. Anything else is a bug and shows
its traceback; ``DDIM_ODE_DEBUG=1`` shows the traceback of user errors too. Warnings are printed
when a command ends, so a refused command prints its one line only.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._files import atomic_path
from .cli_io import (
    LatentFile,
    ModelRecord,
    check_writable,
    check_writable_dir,
    latent_arrays,
    output_paths,
    read_images,
    read_latents,
    write_outputs,
)
from .cli_model import (
    LABELS_KEYWORD,
    Conditioning,
    builtin_rows,
    choose_model,
    conditioning,
    parse_classes,
    parse_schedule,
    schedule_help,
)
from .cli_plan import Plan, describe_record, make_plan, mismatches, solver_options
from .core import Solution
from .diffusers.prompts import PromptConditioning, add_prompt_arguments, prompt_conditioning
from .driver import decode, encode
from .field import PREDICTIONS
from .grids import GRIDS
from .images import image_grid, slerp, to_unit
from .schedules import Schedule
from .solvers import SOLVERS, list_solvers
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


def _warn(args: argparse.Namespace, text: str) -> None:
    """A warning of the running command, printed when it ends without a user error (a refused
    command prints its one line only)."""
    args.warnings.append(text)


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
    source: str  # "default", a built-in name or the resolved model directory: what latent files record
    schedule_spec: str | None  # the --schedule that replaced the model's own
    num_classes: int  # 0: unconditional
    text: PromptConditioning | None = None  # a text-conditioned pipeline directory's prompt (sample --prompt)

    def record(self, cond: Conditioning) -> ModelRecord:
        """What a latent file made with this model and ``cond`` records about them."""
        return ModelRecord(self.source, self.prediction, self.schedule_spec, cond.labels, cond.guidance)


def _load(args: argparse.Namespace, batch: int, stored: LatentFile | None = None) -> _Model:
    """The model of ``--model`` (else the one ``stored`` latents record, else the default) with
    ``--prediction``/``--schedule`` (else, for the recorded model, the recorded ones), on ``--device``;
    sets the CLI's threads."""
    from .io import sample_shape

    dev = _device(args.device)
    same = stored is not None and (args.model is None or stored.model in (args.model, str(Path(args.model).resolve())))
    recorded = stored if same else None
    name = args.model or (recorded.model if recorded is not None else None) or "default"
    prediction = args.prediction or (recorded.prediction if recorded is not None else None)
    schedule = args.schedule or (recorded.schedule if recorded is not None else None)
    choice = choose_model(name, prediction, schedule, dev, lambda text: _warn(args, text))
    res = choice.resolved
    text = prompt_conditioning(args, res.metadata, dev)
    net = res.model
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
    return _Model(
        net, res.schedule, res.prediction, shape, dev, choice.source, choice.schedule, choice.num_classes, text
    )


def _conditioning(args: argparse.Namespace, m: _Model, n: int, stored: LatentFile | None = None) -> Conditioning:
    """The class labels of ``n`` samples and the guidance of ``--class``/``--guidance`` (else ``stored``'s);
    none for a text-conditioned pipeline, whose ``--guidance`` weighs its prompt."""
    if m.text is not None:
        return conditioning(None, None, classes_of_model=0, model=m.source, n=n, stored=None)
    classes = parse_classes(args.classes) if args.classes is not None else None
    return conditioning(classes, args.guidance, classes_of_model=m.num_classes, model=m.source, n=n, stored=stored)


def _plan(args: argparse.Namespace, m: _Model, stored: LatentFile | None = None, encoding: bool = False) -> Plan:
    """The plan of this command line (see :func:`~ddim_ode.cli_plan.make_plan`)."""
    return make_plan(
        m.schedule,
        solver=args.solver,
        solver_option=args.solver_option,
        steps=args.steps,
        grid=args.grid,
        sigmas=args.sigmas,
        timesteps=args.timesteps,
        stored=stored,
        encoding=encoding,
    )


def _run_kwargs(plan: Plan, m: _Model) -> dict[str, Any]:
    """The keyword arguments of decode/encode for ``plan`` with the model ``m``."""
    return dict(
        model=m.model, schedule=m.schedule, sigmas=plan.sigmas, prediction=m.prediction, solver_options=plan.options
    )


def _check_settings(args: argparse.Namespace, stored: LatentFile, plan: Plan, record: ModelRecord) -> bool:
    """Whether ``plan`` and ``record`` decode ``stored`` with its recorded settings; refuses a mismatch
    on encoded latents.

    Encoded latents reconstruct their images only with the settings they were encoded with, so a
    different solver, n, grid, model, prediction, schedule, class labels or guidance is refused
    unless ``--allow-mismatch`` (then a warning). Noise (from ``sample``) decodes to a valid sample
    with any settings.
    """
    diffs = mismatches(stored, plan, record)
    if not diffs:
        return True
    if stored.kind == "encoded":
        text = f"{args.input} was encoded with {describe_record(stored)}; this run differs: {'; '.join(diffs)}"
        if not args.allow_mismatch:
            raise CLIError(
                f"{text}. Omit --solver/-n/--grid/--sigmas/--timesteps/--model/--prediction/--schedule/--class/"
                "--guidance to use the recorded settings, or pass --allow-mismatch to decode anyway"
            )
        _warn(args, f"{text}; the result will not reconstruct the encoded images")
    return False


def _noise(num: int, shape: tuple[int, ...], seed: int, device: torch.device) -> Tensor:
    """Per-index seeded noise (sample i depends only on (seed, i)), the same as sharded runs use."""
    from .distributed import index_noise

    return index_noise(seed, 0, num, shape, device=device)


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr)


def _batched(
    fn: Callable[[Tensor, slice], Solution], x: Tensor, batch_size: int, desc: str, show: bool
) -> list[Solution]:
    """``fn(batch, rows)`` on consecutive batches of ``x`` (a ``ReversibleLatent`` hands each batch
    its rows of the state; ``rows`` selects the batch's conditioning)."""
    outs = []
    with _progress(x.shape[0], desc, show) as bar:
        for start in range(0, x.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            outs.append(fn(x[rows], rows))
            bar.update(min(batch_size, x.shape[0] - start))
    return outs


def _cat(sols: list[Solution]) -> Tensor:
    return torch.cat([s.x.as_subclass(Tensor) for s in sols])


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
            _warn(args, f"{path} stores no auxiliary state: {lf.solver} decodes afresh, not exactly")
        return lat
    if any(isinstance(v, Tensor) and v.shape != lat.shape for v in vars(state).values()):
        raise CLIError(f"{path}: the auxiliary state does not match the latents' shape {tuple(lat.shape)}")
    return ReversibleLatent.wrap(lat, state)


# ---------------------------------------------------------------------------------------------
# subcommands


def _to_dir(args: argparse.Namespace, kind: str) -> None:
    """``sample``/``encode`` with ``--out-dir``: resumable shards, on every rank of a torchrun job.

    Sample (or image) ``i`` gets the class label ``labels[i % len(labels)]`` whatever the shard
    size, the number of processes or the interruptions; the manifest records the labels' hash and
    the guidance (and an explicit ``--sigmas``/``--timesteps`` grid), so a resume with others is
    refused. An encoding run's merged ``latents.npz`` records what ``decode`` needs, as ``encode
    --out`` does: the solver and grid, the model and its conditioning.
    """
    from .distributed import encode_to_dir, process_group, sample_to_dir

    check_writable_dir(args.shard_dir)
    with process_group() as info:
        m = _load(args, args.shard_size)
        if m.text is not None:
            raise CLIError("--prompt cannot be combined with --out-dir")
        plan = _plan(args, m, encoding=kind == "encode")
        images = read_images(args.input, m.shape) if kind == "encode" else None
        cond = _conditioning(args, m, args.num if images is None else len(images))
        kw: dict[str, Any] = dict(
            model=m.model,
            schedule=m.schedule,
            solver=plan.solver,
            **plan.grid_arguments(),
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            device=m.device,
            prediction=m.prediction,
            solver_options=plan.options,
            progress=not args.quiet and info.rank == 0,
        )
        if cond.labels is not None:
            kw["model_kwargs"] = {LABELS_KEYWORD: torch.from_numpy(cond.labels)}
        if cond.guidance is not None:
            kw["guidance_scale"] = cond.guidance
        if images is None:
            res = sample_to_dir(args.shard_dir, args.num, seed=args.seed, shape=m.shape, **kw)
        else:
            settings = plan.arrays("encoded") | m.record(cond).arrays()
            res = encode_to_dir(images, args.shard_dir, decode_settings=settings, **kw)
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


def _conditioned(cond: Conditioning) -> str:
    """``, classes …, guidance w`` for the summary line of a class-conditioned run (else nothing)."""
    if cond.labels is None:
        return ""
    labels = ",".join(str(int(v)) for v in np.unique(cond.labels))
    return f", classes {labels}" + (f", guidance {cond.guidance:g}" if cond.guidance is not None else "")


def cmd_sample(args: argparse.Namespace) -> None:
    if getattr(args, "shard_dir", None) is not None:
        _to_dir(args, "sample")
        return
    png, npz = output_paths(args.out, ".png", ".npz")
    m = _load(args, args.num)
    cond = _conditioning(args, m, args.num)
    plan = _plan(args, m)
    x_T = _noise(args.num, m.shape, args.seed, m.device)
    t0 = time.perf_counter()
    text = m.text.decode_kwargs if m.text is not None else lambda batch: {}
    with torch.no_grad():
        sols = _batched(
            lambda xb, rows: decode(
                xb,
                plan.solver,
                plan.steps,
                return_solution=True,
                **_run_kwargs(plan, m),
                **cond.run_kwargs(rows, m.device),
                **text(xb.shape[0]),
            ),
            x_T,
            args.batch_size,
            "sampling",
            not args.quiet,
        )
    x0 = _cat(sols)
    if m.text is not None:  # latents -> images through the pipeline's VAE
        x0 = m.text.to_images(x0, args.batch_size)
    wall = time.perf_counter() - t0
    arrays = latent_arrays(x_T.cpu().numpy(), plan.arrays("noise"), m.record(cond))
    write_outputs(
        png, image_grid(to_unit(x0), ncol=int(np.ceil(np.sqrt(args.num)))), npz, samples=x0.cpu().numpy(), **arrays
    )
    nfe = sum(s.nfe for s in sols) // len(sols)
    print(
        f"{args.num} samples, solver={plan.solver}, n={plan.steps}, NFE={nfe}{_conditioned(cond)}, "
        f"{wall:.1f}s -> {png}, {npz}"
    )


def cmd_encode(args: argparse.Namespace) -> None:
    if getattr(args, "shard_dir", None) is not None:
        _to_dir(args, "encode")
        return
    (npz,) = output_paths(args.out, ".npz")
    m = _load(args, args.batch_size)
    x0 = read_images(args.input, m.shape).to(m.device)
    cond = _conditioning(args, m, len(x0))
    plan = _plan(args, m, encoding=True)
    with torch.no_grad():
        sols = _batched(
            lambda xb, rows: encode(
                xb,
                plan.solver,
                plan.steps,
                return_solution=True,
                **_run_kwargs(plan, m),
                **cond.run_kwargs(rows, m.device),
            ),
            x0,
            args.batch_size,
            "encoding",
            not args.quiet,
        )
    # a reversible solver: store its auxiliary state for an exact decode
    state = state_to_arrays(concat_states([s.state for s in sols])) if plan.reversible else None
    arrays = latent_arrays(_cat(sols).cpu().numpy(), plan.arrays("encoded"), m.record(cond), state)
    write_outputs(npz=npz, **arrays)
    print(f"encoded {x0.shape[0]} images with {plan.solver}, n={plan.steps}{_conditioned(cond)} -> {npz}")


def cmd_decode(args: argparse.Namespace) -> None:
    lf = read_latents(args.input)
    png, npz = output_paths(args.out, ".png", ".npz")
    m = _load(args, len(lf.latents), stored=lf)
    lat = _latents(lf, m, args.input)
    cond = _conditioning(args, m, len(lat), lf)
    plan = _plan(args, m, lf)
    if _check_settings(args, lf, plan, m.record(cond)) and plan.reversible:
        lat = _with_state(lat, lf, args)
    with torch.no_grad():
        sols = _batched(
            lambda xb, rows: decode(
                xb,
                plan.solver,
                plan.steps,
                return_solution=True,
                **_run_kwargs(plan, m),
                **cond.run_kwargs(rows, m.device),
            ),
            lat,
            args.batch_size,
            "decoding",
            not args.quiet,
        )
    x0 = _cat(sols)
    write_outputs(png, image_grid(to_unit(x0), ncol=int(np.ceil(np.sqrt(len(x0))))), npz, samples=x0.cpu().numpy())
    print(f"decoded {len(x0)} latents with {plan.solver}, n={plan.steps}{_conditioned(cond)} -> {png}, {npz}")


def _roundtrip(args: argparse.Namespace, m: _Model) -> tuple[Tensor, Tensor, float, Plan, Conditioning]:
    plan = _plan(args, m, encoding=True)
    x0 = read_images(args.input, m.shape)[: args.num].to(m.device)
    cond = _conditioning(args, m, len(x0))
    kw = _run_kwargs(plan, m) | cond.run_kwargs(slice(None), m.device)
    with torch.no_grad():
        enc = encode(x0, plan.solver, plan.steps, return_solution=True, **kw)
        state = enc.state if plan.reversible else None  # other solvers' final state is no start for decoding
        rec = decode(enc.x.as_subclass(Tensor), plan.solver, plan.steps, state=state, **kw)
    # per-dimension MSE with data scaled to [0, 1], as the DDIM paper's Table 2
    mse = float(((rec - x0) / 2).pow(2).mean())
    return x0, rec, mse, plan, cond


def cmd_roundtrip(args: argparse.Namespace) -> None:
    (png,) = output_paths(args.out, ".png")
    m = _load(args, args.num)
    x0, rec, mse, plan, cond = _roundtrip(args, m)
    diff = (rec - x0).abs() - 1.0  # |difference| shown on the same [-1, 1] → [0, 1] map
    panel = np.concatenate([to_unit(x0), to_unit(rec), to_unit(diff)])
    write_outputs(png, image_grid(panel, ncol=len(x0)))
    print(
        f"round trip of {len(x0)} images, solver={plan.solver}, n={plan.steps}{_conditioned(cond)}: "
        f"per-dimension MSE (data in [0, 1]) = {mse:.3e} -> {png} "
        "(rows: originals | reconstructions | |difference|)"
    )


def cmd_interpolate(args: argparse.Namespace) -> None:
    """Without class labels: a class-conditional model decodes its null class (unconditionally)."""
    png, cons = output_paths(args.out, ".png", "_consistency.png")
    lf = read_latents(args.input) if args.input else None
    m = _load(args, args.frames, stored=lf)
    plan = _plan(args, m, lf)
    if lf is not None:
        _check_settings(args, lf, plan, m.record(Conditioning()))
        if len(lf.latents) < 2:
            raise CLIError(f"{args.input} holds {len(lf.latents)} latent(s); interpolation needs two")
        ends = _latents(lf, m, args.input)[:2]
        if lf.kind == "encoded" and plan.reversible:
            _warn(
                args,
                f"{args.input} was encoded with the reversible {plan.solver}: its latents decode exactly only with "
                "their auxiliary state, which interpolated latents do not have, so even the end frames are not the "
                "images; encode with euler (DDIM inversion) to interpolate",
            )
    else:
        ends = _noise(2, m.shape, args.seed, m.device)
    lat = slerp(ends[:1], ends[1:], torch.linspace(0, 1, args.frames)).to(m.device)
    # the same x_T decoded with several n means something for noise, not for latents encoded with one n
    noise = lf is None or lf.kind != "encoded"
    grid = plan.grid if plan.named else "uniform"
    kw = {k: v for k, v in _run_kwargs(plan, m).items() if k != "sigmas"}
    with torch.no_grad():
        strip = decode(lat, plan.solver, plan.steps, sigmas=plan.sigmas, **kw)
        consistency = (
            [decode(ends[:1], plan.solver, n, grid=grid, **kw) for n in args.consistency_steps] if noise else []
        )
    if consistency:
        write_outputs(png, image_grid(to_unit(strip), ncol=args.frames))
        write_outputs(cons, image_grid(to_unit(torch.cat(consistency)), ncol=len(consistency)))
        steps = ", ".join(str(n) for n in args.consistency_steps)
        print(f"slerp strip of {args.frames} frames -> {png}; same x_T decoded with n = {steps} -> {cons}")
    else:
        write_outputs(png, image_grid(to_unit(strip), ncol=args.frames))
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
    x = read_images(args.input, m.shape)[: args.num].to(m.device, torch.float64)
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


#: the ``bench`` options each study takes: option → {study: keyword argument of the study function}
BENCH_OPTIONS: dict[str, dict[str, str]] = {
    "solvers": {
        "roundtrip": "solvers",
        "accuracy": "solvers",
        "orders": "solvers",
        "inversion": "solvers",
        "quality": "higher",
        "speed": "solvers",
        "consistency": "solver",
        "guided-inversion": "solvers",
        "fewstep": "solvers",
    },
    "steps": {
        "roundtrip": "steps",
        "inversion": "steps",
        "quality": "steps",
        "speed": "steps",
        "consistency": "steps",
        "guided-inversion": "steps",
    },
    "num": {"roundtrip": "num", "accuracy": "num", "inversion": "num", "quality": "num", "guided-inversion": "num"},
    "dtype": {
        "roundtrip": "dtype",
        "quality": "dtype",
        "speed": "dtype",
        "consistency": "dtype",
        "guided-inversion": "dtype",
    },
    "suite": {"accuracy": "suite"},
    "problems": {"accuracy": "problems", "fewstep": "problems"},
    "grids": {"accuracy": "grids", "inversion": "grids"},
    "nfes": {"accuracy": "nfes"},
    "model": {"roundtrip": "model", "quality": "model", "speed": "model", "consistency": "model"},
}
#: options that take a single value in some studies
_SINGLE = {("steps", "speed"), ("solvers", "consistency")}


def _bench_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The study function's keyword arguments from the ``bench`` options given."""
    kw: dict[str, Any] = {}
    for option, takers in BENCH_OPTIONS.items():
        value = vars(args)[option]
        if value is None:
            continue
        if args.study not in takers:
            raise CLIError(f"--{option} does not apply to the {args.study} study; it applies to: {', '.join(takers)}")
        if isinstance(value, str) and option in ("solvers", "problems", "grids"):
            value = [v for v in value.split(",") if v]
        if isinstance(value, list):
            if option == "nfes" and min(value) < 1:
                raise CLIError(f"--nfes values must be >= 1, got {min(value)}")
            if (option, args.study) in _SINGLE:
                if len(value) != 1:
                    raise CLIError(f"--{option} takes one value for the {args.study} study, got {len(value)}")
                value = value[0]
            else:
                value = tuple(value)
        kw[takers[args.study]] = value
    return kw


def cmd_bench(args: argparse.Namespace) -> None:
    from . import studies

    if args.replot:
        print(f"re-plotted {studies.replot(args.replot)}")
        return
    kw = _bench_kwargs(args)
    run = studies.StudyRun(
        out_dir=args.out_dir,
        device=_device(args.device),
        seed=args.seed,
        quick=args.quick,
        show_progress=not args.quiet,
    )
    t0 = time.perf_counter()
    studies.STUDIES[args.study](**kw, run=run)
    print(f"{args.study} study done in {time.perf_counter() - t0:.1f}s; results in {run.folder(args.study)}/")


def cmd_tune_grid(args: argparse.Namespace) -> None:
    """Tune a σ grid to a model and solver (:func:`ddim_ode.tune_grid`) and save it as JSON."""
    from .tuning import tune_grid

    if (args.steps is None) == (args.nfe is None):
        raise CLIError("give exactly one of -n/--steps and --nfe")
    out = Path(args.out)
    check_writable(out)
    options = solver_options(args.solver, args.solver_option) if args.solver_option else None
    grid = tune_grid(
        args.steps,
        args.solver,
        nfe=args.nfe,
        model=None if args.model in (None, "default") else args.model,
        solver_options=options,
        num_samples=args.num_samples,
        heldout_samples=args.heldout_samples,
        seed=args.seed,
        candidates=args.candidates,
        reference_steps=args.reference_steps,
        refine=not args.no_refine,
        keep_top=args.keep_top,
        device=_device(args.device),
    )
    grid.save(out)
    print(repr(grid))
    print(f"held-out RMS error of {grid.heldout_samples} samples, n = {grid.n}:")
    rows = [("tuned", grid.tuned_heldout_error), *sorted(grid.default_heldout_errors.items())]
    for name, err in rows:
        print(f"  {name:<10} {err:.4g}")
    print(
        f"returned: {grid.chosen} (gain {grid.gain:.3g} over the best standard grid); tuning cost {grid.tuning_nfe} "
        f"NFE, {grid.tuning_seconds:.1f}s -> {out}  (use it with --sigmas {out})"
    )


def cmd_solvers(args: argparse.Namespace) -> None:
    rows = list_solvers()
    print(f"{'name':<18} {'order':>5} {'NFE/step':>8} {'encode':>6}  paper")
    for s in rows:
        print(f"{s.name:<18} {s.order:>5} {s.nfe_per_step:>8g} {('yes' if s.can_encode else 'no'):>6}  {s.paper}")


def cmd_models(args: argparse.Namespace) -> None:
    rows = builtin_rows()
    width = max(len(r.name) for r in rows)
    print(f"{'name':<{width}}  {'prediction':<10}  {'shape':<7}  {'classes':<7}  schedule")
    for r in rows:
        if r.error:
            print(f"{r.name:<{width}}  cannot be loaded: {r.error}")
        else:
            classes = str(r.classes) if r.classes else "-"
            print(f"{r.name:<{width}}  {r.prediction:<10}  {r.shape:<7}  {classes:<7}  {r.schedule}")
        print(f"{'':<{width}}  {r.description}")
    print(
        "use one with --model NAME; a class-conditional one (classes > 0) takes --class and --guidance; "
        "your own model: --model DIR (with --prediction/--schedule if its config lacks them or is wrong)"
    )


# ---------------------------------------------------------------------------------------------
# the parser


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit status 2)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _model_flags(p: argparse.ArgumentParser, recorded: bool = False) -> None:
    """``--model``, ``--prediction`` and ``--schedule`` (see :mod:`ddim_ode.cli_model`)."""
    rec = " (default: the one recorded in --input, else {})" if recorded else " (default {})"
    p.add_argument(
        "--model",
        metavar="NAME|DIR",
        help="a built-in model by name (`ddim-ode models` lists them) or a model directory (this package's "
        "format, a diffusers UNet or pipeline dir)" + rec.format("default"),
    )
    p.add_argument(
        "--prediction",
        choices=PREDICTIONS,
        help="what a model directory's network predicts, replacing what its config says (a warning names it); "
        "a built-in model's prediction is fixed" + rec.format("the model's own"),
    )
    p.add_argument(
        "--schedule",
        metavar="SPEC",
        help="a model directory's schedule, replacing its own (not for a built-in model). SPEC: "
        + schedule_help().replace("%", "%%"),
    )


def _class_flags(p: argparse.ArgumentParser, recorded: bool = False) -> None:
    """``--class`` and ``--guidance`` of a class-conditional model (see :mod:`ddim_ode.cli_model`)."""
    rec = " (default: the ones recorded in --input)" if recorded else ""
    p.add_argument(
        "--class",
        dest="classes",
        metavar="LIST",
        help="class labels for a class-conditional model: 3, 0,1,2,3 or 0-9 (ranges and labels, comma-separated); "
        "sample i gets the (i mod length)-th label" + (rec or " (default: none, the null class)"),
    )
    p.add_argument(
        "--guidance",
        type=float,
        metavar="W",
        help="classifier-free guidance weight w >= 0 with --class: out_u + w (out_c - out_u); "
        "0 unconditional, 1 conditional" + (rec or " (default: none, the conditional model alone)"),
    )


def _common(p: argparse.ArgumentParser, steps: int = 20, recorded: bool = False) -> None:
    """The model, device, solver and grid options; with ``recorded``, unset ones come from the input file."""
    rec = " (default: the one recorded in --input, else {})" if recorded else " (default {})"
    _model_flags(p, recorded)
    p.add_argument("--device", default="auto", help=f"one of {DEVICES} (default auto: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--solver", help="solver name; see `ddim-ode solvers`" + rec.format("euler = DDIM"))
    p.add_argument("-n", "--steps", type=int, help="number of steps" + rec.format(steps))
    p.add_argument("--grid", help=f"one of {', '.join(GRIDS)}" + rec.format("uniform"))
    p.add_argument(
        "--sigmas",
        metavar="S0,S1,...,0|FILE.json",
        help="explicit decoding grid of sigmas, decreasing to 0 (a flow model may start at inf), "
        "or a JSON file of them (e.g. from `tune-grid`)",
    )
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


STUDY_NAMES = (
    "roundtrip",
    "accuracy",
    "orders",
    "inversion",
    "quality",
    "speed",
    "consistency",
    "guided-inversion",
    "fewstep",
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
    p.set_defaults(func=cmd_demo, classes=None, guidance=None)

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
    _class_flags(p)
    _sharded(p)
    add_prompt_arguments(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("encode", help="images -> latents (.npz recording how to decode them)")
    _common(p)
    p.add_argument(
        "--input",
        required=True,
        help="'digits', 'digits:heldout', a .npy, a .npz (its 'images' or 'samples' array) or a PNG folder",
    )
    p.add_argument("--out", default="latents.npz", help="output .npz (default latents.npz)")
    _class_flags(p)
    _sharded(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="latents (.npz from `encode` or `sample`) -> images (PNG + .npz)")
    _common(p, recorded=True)
    p.add_argument("--input", required=True, help=".npz with a 'latents' array (as `encode` and `sample` write)")
    p.add_argument("--out", default="decoded.png", help="output PNG; the .npz of the same name gets 'samples'")
    _class_flags(p, recorded=True)
    _mismatch_flag(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("roundtrip", help="encode then decode images; print the reconstruction MSE")
    _common(p)
    p.add_argument("--input", default="digits:heldout", help="images, as for `encode` (default: held-out digits)")
    p.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--out", default="roundtrip.png", help="output PNG (default roundtrip.png)")
    _class_flags(p)
    p.set_defaults(func=cmd_roundtrip)

    p = sub.add_parser(
        "interpolate",
        help="slerp between two latents, and one latent decoded with several n (a class-conditional model: "
        "its null class)",
    )
    _common(p, recorded=True)
    p.add_argument("--input", help="interpolate between the first two latents of this .npz (default: seeded noise)")
    p.add_argument("--frames", type=int, default=9, help="frames in the strip (default 9)")
    p.add_argument(
        "--consistency-steps", type=int, nargs="+", default=[10, 20, 50, 100], help="n values for the consistency strip"
    )
    p.add_argument("--out", default="interpolation.png", help="output PNG (default interpolation.png)")
    _mismatch_flag(p)
    p.set_defaults(func=cmd_interpolate, classes=None, guidance=None)

    p = sub.add_parser("train", help="train a DDPM UNet (see `ddim-ode train --help`)", add_help=False)
    p.set_defaults(func=None)

    p = sub.add_parser(
        "likelihood",
        help="exact log-likelihood (bits/dim) of images through the ODE (a class-conditional model: its null class)",
    )
    _model_flags(p)
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

    p = sub.add_parser("bench", help="run a study: " + ", ".join(STUDY_NAMES))
    p.add_argument("study", choices=STUDY_NAMES)
    p.add_argument("--quick", action="store_true", help="a small version that runs in under a minute")
    p.add_argument("--out-dir", help="output folder (default results/<study>)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=("float32", "float64"), help="state dtype (default float32)")
    p.add_argument("--seed", type=int, help="seed of the study's random draws (default: the study's own)")
    p.add_argument("--solvers", help="comma-separated solver names (default: the study's own list)")
    p.add_argument("--steps", type=int, nargs="+", help="step counts (speed: one value)")
    p.add_argument("--num", type=int, help="number of samples/images")
    p.add_argument("--suite", help="accuracy only: overview (default) or comparison")
    p.add_argument("--problems", help="accuracy only: comma-separated from ring, mixture64, model")
    p.add_argument("--grids", help="accuracy, inversion: comma-separated grids")
    p.add_argument("--nfes", type=int, nargs="+", help="accuracy only: NFE targets (overview) or budgets (comparison)")
    p.add_argument(
        "--model", metavar="NAME|DIR", help="roundtrip, quality, speed, consistency: a built-in model or a model dir"
    )
    p.add_argument("--replot", metavar="JSON", help="redraw the plots and tables from a results JSON and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("merge", help="check that an --out-dir run is complete and merge its shards")
    p.add_argument("out_dir", help="the folder given as --out-dir")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("tune-grid", help="tune a sigma grid to a model and solver at a step or NFE budget")
    p.add_argument("--model", help="'default' (built-in), a built-in name or a model directory (default: default)")
    p.add_argument("--device", default="auto", help=f"one of {DEVICES} (default auto: cuda if available)")
    p.add_argument("--solver", default="euler", help="solver name (default euler); see `ddim-ode solvers`")
    p.add_argument("--solver-option", action="append", metavar="KEY=VALUE", help="solver constructor option")
    p.add_argument("-n", "--steps", type=int, help="number of steps (or give --nfe)")
    p.add_argument("--nfe", type=int, help="network evaluations to spend: the most steps the solver can afford")
    p.add_argument("--out", required=True, help="the grid's JSON file (use it with --sigmas FILE)")
    p.add_argument("--num-samples", type=int, default=64, help="noises the grid is tuned on (default 64)")
    p.add_argument("--heldout-samples", type=int, default=64, help="other noises it is checked on (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tuning noises (held out: seed + 1)")
    p.add_argument("--candidates", type=int, default=48, help="candidate sigmas of the search (default 48)")
    p.add_argument("--reference-steps", type=int, default=192, help="RK4 steps of the reference solves (default 192)")
    p.add_argument("--no-refine", action="store_true", help="skip the Nelder-Mead refinement of the points")
    p.add_argument("--keep-top", action="store_true", help="start the grid at the schedule's sigma_max")
    p.set_defaults(func=cmd_tune_grid)

    p = sub.add_parser("solvers", help="list the solvers with order, NFE per step and paper")
    p.set_defaults(func=cmd_solvers)

    p = sub.add_parser("models", help="list the built-in models with prediction, sample shape, classes and schedule")
    p.set_defaults(func=cmd_models)
    return parser


def _validate(args: argparse.Namespace) -> None:
    """Checks of single arguments, before anything is loaded."""
    for name in (
        "steps",
        "num",
        "batch_size",
        "frames",
        "shard_size",
        "probes",
        "nfe",
        "num_samples",
        "heldout_samples",
        "candidates",
    ):
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
    guidance = getattr(args, "guidance", None)
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise CLIError(f"--guidance must be a number >= 0, got {guidance}")
    if getattr(args, "classes", None) is not None:
        parse_classes(args.classes)  # the syntax; the range is checked against the model's classes
    if getattr(args, "schedule", None) is not None:
        parse_schedule(args.schedule)
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
    args.warnings = []

    def run() -> None:
        _validate(args)
        args.func(args)
        for text in args.warnings:
            print(f"ddim-ode {args.command}: warning: {text}", file=sys.stderr)

    return _guarded(args.command, run)


if __name__ == "__main__":
    raise SystemExit(main())
