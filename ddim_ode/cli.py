"""The ``ddim-ode`` command line.

Subcommands: ``demo``, ``sample``, ``encode``, ``decode``, ``roundtrip``, ``interpolate``,
``train`` and ``solvers``. Every command uses the built-in model unless ``--model`` names
another, and exits non-zero with a one-line message on bad input. Output files are written
atomically (nothing half-written is left behind on failure or Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._files import save_npz, save_png
from .images import image_grid, slerp, to_unit
from .integrate import Solution, decode, encode
from .solvers import SOLVERS, get_solver, list_solvers
from .solvers.reversible import concat_states, state_from_arrays, state_to_arrays

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# helpers shared by the subcommands


def _device(name: str | None) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise CLIError(f"bad --device {name!r}: {err}; use e.g. cpu, cuda, cuda:1 or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda requested but CUDA is not available; use --device cpu")
    return dev


def _load(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any], torch.device]:
    from .io import load_any

    dev = _device(args.device)
    try:
        model, schedule, meta = load_any(args.model, device=dev)
    except (FileNotFoundError, ValueError, ImportError) as err:  # ModelFormatError is a ValueError
        raise CLIError(str(err)) from None
    model.eval()
    if getattr(args, "half", False):  # the network runs in half precision; the solver state stays float32
        model = model.to(torch.bfloat16 if dev.type == "cpu" else torch.float16)
    if getattr(args, "compile", False):
        model = torch.compile(model)
    return model, schedule, meta, dev


def _solver_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise CLIError(f"bad --solver-option {pair!r}; use KEY=VALUE, e.g. eta=0.5")
        key, val = pair.split("=", 1)
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out


def _run_kwargs(args: argparse.Namespace, model: Any, schedule: Any, meta: dict[str, Any]) -> dict[str, Any]:
    if args.solver not in SOLVERS:
        raise CLIError(f"unknown solver {args.solver!r}; available: {', '.join(sorted(SOLVERS))}")
    return dict(
        model=model,
        schedule=schedule,
        grid=args.grid,
        prediction=meta.get("prediction", "eps"),
        solver_options=_solver_options(args.solver_option),
    )


def _event_shape(meta: dict[str, Any]) -> tuple[int, ...]:
    from .io import sample_shape

    try:
        return sample_shape(meta)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _noise(num: int, shape: tuple[int, ...], seed: int, device: torch.device) -> Tensor:
    """Per-index seeded noise (sample i depends only on (seed, i)), the same as sharded runs use."""
    from .distributed import index_noise

    return index_noise(seed, 0, num, shape, device=device)


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr)


def _batched(fn: Any, x: Tensor, batch_size: int, desc: str, show: bool) -> list[Solution]:
    outs = []
    with _progress(x.shape[0], desc, show) as bar:
        for start in range(0, x.shape[0], batch_size):
            outs.append(fn(x[start : start + batch_size]))
            bar.update(min(batch_size, x.shape[0] - start))
    return outs


def _stem(out: str) -> Path:
    p = Path(out)
    return p.with_suffix("") if p.suffix.lower() in (".png", ".npz") else p


def _load_images(path: str, shape: tuple[int, ...]) -> Tensor:
    from .data import load_dataset

    if path in ("digits", "digits:heldout"):
        from .data import load_digits

        x = load_digits("heldout" if path.endswith("heldout") else "train")
    else:
        if not Path(path).exists():
            raise CLIError(f"no such file or folder: {path}")
        x = load_dataset(path)
    if tuple(x.shape[1:]) != shape:
        raise CLIError(f"images have shape {tuple(x.shape[1:])}, the model needs {shape} (C, H, W)")
    if float(x.min()) < -1.0001 or float(x.max()) > 1.0001:
        raise CLIError("images must be scaled to [-1, 1]")
    return x


# ---------------------------------------------------------------------------------------------
# subcommands


def _to_dir(args: argparse.Namespace, kind: str) -> None:
    """``sample``/``encode`` with ``--out-dir``: resumable shards, on every rank of a torchrun job."""
    from .distributed import encode_to_dir, process_group, sample_to_dir

    with process_group() as info:
        model, schedule, meta, dev = _load(args)
        kw: dict[str, Any] = dict(
            model=model,
            schedule=schedule,
            solver=args.solver,
            n=args.steps,
            grid=args.grid,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            device=dev,
            prediction=meta.get("prediction", "eps"),
            solver_options=_solver_options(args.solver_option),
            progress=not args.quiet and info.rank == 0,
        )
        if kind == "sample":
            res = sample_to_dir(args.shard_dir, args.num, seed=args.seed, shape=_event_shape(meta), **kw)
        else:
            res = encode_to_dir(_load_images(args.input, _event_shape(meta)), args.shard_dir, **kw)
    if info.rank == 0:
        print(
            f"{res.num} {'samples' if kind == 'sample' else 'latents'} in {res.out_dir}: "
            f"{res.shards_skipped} of {res.shards_total} shards were already complete, "
            f"{res.world_size} process(es), {res.seconds:.1f}s -> {res.merged}"
        )


def cmd_merge(args: argparse.Namespace) -> None:
    from .distributed import merge_dir

    print(f"merged {args.out_dir} -> {merge_dir(args.out_dir)}")


def cmd_sample(args: argparse.Namespace) -> None:
    if getattr(args, "shard_dir", None) is not None:
        _to_dir(args, "sample")
        return
    model, schedule, meta, dev = _load(args)
    kw = _run_kwargs(args, model, schedule, meta)
    x_T = _noise(args.num, _event_shape(meta), args.seed, dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        sols = _batched(
            lambda xb: decode(xb, args.solver, args.steps, return_solution=True, **kw),
            x_T,
            args.batch_size,
            "sampling",
            not args.quiet,
        )
    x0 = torch.cat([s.x for s in sols])
    wall = time.perf_counter() - t0
    stem = _stem(args.out)
    save_png(stem.with_suffix(".png"), image_grid(to_unit(x0), ncol=int(np.ceil(np.sqrt(args.num)))))
    save_npz(stem.with_suffix(".npz"), samples=x0.cpu().numpy(), latents=x_T.cpu().numpy())
    nfe = sum(s.nfe for s in sols) // len(sols)
    print(f"{args.num} samples, solver={args.solver}, n={args.steps}, NFE={nfe}, {wall:.1f}s -> {stem}.png, {stem}.npz")


def cmd_encode(args: argparse.Namespace) -> None:
    if getattr(args, "shard_dir", None) is not None:
        _to_dir(args, "encode")
        return
    model, schedule, meta, dev = _load(args)
    kw = _run_kwargs(args, model, schedule, meta)
    x0 = _load_images(args.input, _event_shape(meta)).to(dev)
    with torch.no_grad():
        sols = _batched(
            lambda xb: encode(xb, args.solver, args.steps, return_solution=True, **kw),
            x0,
            args.batch_size,
            "encoding",
            not args.quiet,
        )
    latents = torch.cat([s.x for s in sols])
    stem = _stem(args.out)
    arrays = {"latents": latents.cpu().numpy()}
    if sols[0].state is not None:  # a reversible solver: store its auxiliary state for an exact decode
        arrays.update(state_to_arrays(concat_states([s.state for s in sols])))
    save_npz(stem.with_suffix(".npz"), solver=np.array(args.solver), steps=np.array(args.steps), **arrays)
    print(f"encoded {x0.shape[0]} images with {args.solver}, n={args.steps} -> {stem}.npz")


def cmd_decode(args: argparse.Namespace) -> None:
    model, schedule, meta, dev = _load(args)
    kw = _run_kwargs(args, model, schedule, meta)
    if not Path(args.input).is_file():
        raise CLIError(f"no such file: {args.input}")
    with np.load(args.input) as data:
        if "latents" not in data:
            raise CLIError(f"{args.input} has no 'latents' array (write it with `ddim-ode encode`)")
        lat = torch.from_numpy(data["latents"]).to(dev)
        # the auxiliary state of a reversible solver, used when decoding with a reversible solver
        aux = state_from_arrays(data, device=dev, dtype=lat.dtype) if get_solver(args.solver).reversible else None
    if tuple(lat.shape[1:]) != _event_shape(meta):
        raise CLIError(f"latents have shape {tuple(lat.shape[1:])}, the model needs {_event_shape(meta)}")
    with torch.no_grad():
        if aux is not None:
            outs = [decode(lat, args.solver, args.steps, state=aux, **kw)]
        else:
            outs = [
                s.x
                for s in _batched(
                    lambda xb: decode(xb, args.solver, args.steps, return_solution=True, **kw),
                    lat,
                    args.batch_size,
                    "decoding",
                    not args.quiet,
                )
            ]
    x0 = torch.cat(outs)  # type: ignore[arg-type]
    stem = _stem(args.out)
    save_png(stem.with_suffix(".png"), image_grid(to_unit(x0), ncol=int(np.ceil(np.sqrt(len(x0))))))
    save_npz(stem.with_suffix(".npz"), samples=x0.cpu().numpy())
    print(f"decoded {len(x0)} latents -> {stem}.png, {stem}.npz")


def _roundtrip(args: argparse.Namespace, model: Any, schedule: Any, meta: dict[str, Any], dev: torch.device):  # type: ignore[no-untyped-def]
    kw = _run_kwargs(args, model, schedule, meta)
    x0 = _load_images(args.input, _event_shape(meta))[: args.num].to(dev)
    with torch.no_grad():
        enc = encode(x0, args.solver, args.steps, return_solution=True, **kw)
        rec = decode(enc.x, args.solver, args.steps, state=enc.state, **kw)
    # per-dimension MSE with data scaled to [0, 1], as the DDIM paper's Table 2
    mse = float(((rec - x0) / 2).pow(2).mean())
    return x0, rec, mse


def cmd_roundtrip(args: argparse.Namespace) -> None:
    model, schedule, meta, dev = _load(args)
    x0, rec, mse = _roundtrip(args, model, schedule, meta, dev)
    diff = (rec - x0).abs() - 1.0  # |difference| shown on the same [-1, 1] → [0, 1] map
    panel = np.concatenate([to_unit(x0), to_unit(rec), to_unit(diff)])
    stem = _stem(args.out)
    save_png(stem.with_suffix(".png"), image_grid(panel, ncol=len(x0)))
    print(
        f"round trip of {len(x0)} images, solver={args.solver}, n={args.steps}: "
        f"per-dimension MSE (data in [0, 1]) = {mse:.3e} -> {stem}.png "
        "(rows: originals | reconstructions | |difference|)"
    )


def cmd_interpolate(args: argparse.Namespace) -> None:
    model, schedule, meta, dev = _load(args)
    kw = _run_kwargs(args, model, schedule, meta)
    shape = _event_shape(meta)
    ends = _noise(2, shape, args.seed, dev)
    alphas = torch.linspace(0, 1, args.frames)
    lat = slerp(ends[:1], ends[1:], alphas).to(dev)
    with torch.no_grad():
        strip = decode(lat, args.solver, args.steps, **kw)
        consistency = [decode(ends[:1], args.solver, n, **kw) for n in args.consistency_steps]
    stem = _stem(args.out)
    save_png(stem.with_suffix(".png"), image_grid(to_unit(strip), ncol=args.frames))
    cons = Path(f"{stem}_consistency.png")
    save_png(cons, image_grid(to_unit(torch.cat(consistency)), ncol=len(consistency)))
    steps = ", ".join(str(n) for n in args.consistency_steps)
    print(f"slerp strip of {args.frames} frames -> {stem}.png; same x_T decoded with n = {steps} -> {cons}")


def cmd_demo(args: argparse.Namespace) -> None:
    """Sample a grid of digits, then round-trip real digits with the chosen solver and with the
    exactly reversible BELM solver, all with the built-in model."""
    out = Path(args.out_dir)
    t0 = time.perf_counter()
    sample_args = argparse.Namespace(**{**vars(args), "num": 64, "out": str(out / "samples.png")})
    cmd_sample(sample_args)
    rt = {**vars(args), "num": 10, "input": "digits:heldout", "out": str(out / "roundtrip.png")}
    cmd_roundtrip(argparse.Namespace(**rt))
    if args.solver != "belm":
        cmd_roundtrip(argparse.Namespace(**{**rt, "solver": "belm", "out": str(out / "roundtrip_belm.png")}))
    print(f"demo done in {time.perf_counter() - t0:.1f}s; open {out / 'samples.png'} and {out / 'roundtrip.png'}")


def cmd_likelihood(args: argparse.Namespace) -> None:
    from ._files import atomic_path
    from .likelihood import log_likelihood

    model, schedule, meta, dev = _load(args)
    x = _load_images(args.input, _event_shape(meta))[: args.num].to(dev, torch.float64)
    bin_width = args.bin_width
    if bin_width is None and args.input.startswith("digits"):
        bin_width = 2.0 / 16.0  # digits pixels are integers 0..16 mapped to [-1, 1]
    if args.dequantize == "uniform" and bin_width is None:
        raise CLIError("--dequantize uniform needs --bin-width (e.g. 2/255 = 0.00784 for 8-bit images)")
    res = log_likelihood(
        x,
        model,
        schedule,
        method=args.method,
        rtol=args.rtol,
        atol=args.atol,
        divergence=args.divergence,
        probes=args.probes,
        probe_dist=args.probe_dist,
        sigma_min=args.sigma_min,
        dequantize=args.dequantize,
        bin_width=bin_width,
        generator=torch.Generator(device=dev).manual_seed(args.seed),
        prediction=meta.get("prediction", "eps"),
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
    },
    "steps": {"roundtrip": "steps", "inversion": "steps", "quality": "steps", "speed": "steps", "consistency": "steps"},
    "num": {"roundtrip": "num", "accuracy": "num", "inversion": "num", "quality": "num"},
    "dtype": {"roundtrip": "dtype", "quality": "dtype", "speed": "dtype", "consistency": "dtype"},
    "suite": {"accuracy": "suite"},
    "problems": {"accuracy": "problems"},
    "grids": {"accuracy": "grids", "inversion": "grids"},
    "nfes": {"accuracy": "nfes"},
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


def cmd_solvers(args: argparse.Namespace) -> None:
    rows = list_solvers()
    print(f"{'name':<18} {'order':>5} {'NFE/step':>8} {'encode':>6}  paper")
    for s in rows:
        print(f"{s.name:<18} {s.order:>5} {s.nfe_per_step:>8g} {('yes' if s.can_encode else 'no'):>6}  {s.paper}")


# ---------------------------------------------------------------------------------------------
# the parser


def _common(p: argparse.ArgumentParser, steps: int = 20) -> None:
    p.add_argument("--model", default="default", help="'default' (built-in), a model directory or a diffusers UNet dir")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--solver", default="euler", help="solver name; see `ddim-ode solvers` (default euler = DDIM)")
    p.add_argument("-n", "--steps", type=int, default=steps, help=f"number of steps (default {steps})")
    p.add_argument("--grid", default="uniform", help="uniform, quad, logsnr or karras (default uniform)")
    p.add_argument("--solver-option", action="append", metavar="KEY=VALUE", help="solver constructor option")
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


STUDY_NAMES = ("roundtrip", "accuracy", "orders", "inversion", "quality", "speed", "consistency")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddim-ode", description=__doc__.splitlines()[0])
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
    p.add_argument("--out", default="samples.png", help="output PNG; the arrays go to the same name .npz")
    _sharded(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("encode", help="images -> latents (.npz)")
    _common(p)
    p.add_argument("--input", required=True, help="'digits', 'digits:heldout', a .npy/.npz file or a PNG folder")
    p.add_argument("--out", default="latents.npz", help="output .npz (default latents.npz)")
    _sharded(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="latents (.npz from `encode`) -> images (PNG + .npz)")
    _common(p)
    p.add_argument("--input", required=True, help=".npz with a 'latents' array")
    p.add_argument("--out", default="decoded.png", help="output PNG (default decoded.png)")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("roundtrip", help="encode then decode real digits; print the reconstruction MSE")
    _common(p)
    p.add_argument("--input", default="digits:heldout", help="images (default: held-out digits)")
    p.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--out", default="roundtrip.png", help="output PNG (default roundtrip.png)")
    p.set_defaults(func=cmd_roundtrip)

    p = sub.add_parser("interpolate", help="slerp between two latents, and one latent decoded with several n")
    _common(p)
    p.add_argument("--frames", type=int, default=9, help="frames in the strip (default 9)")
    p.add_argument(
        "--consistency-steps", type=int, nargs="+", default=[10, 20, 50, 100], help="n values for the consistency strip"
    )
    p.add_argument("--out", default="interpolation.png", help="output PNG (default interpolation.png)")
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("train", help="train a DDPM UNet (see `ddim-ode train --help`)", add_help=False)
    p.set_defaults(func=None)

    p = sub.add_parser("likelihood", help="exact log-likelihood (bits/dim) of images through the ODE")
    p.add_argument("--model", default="default", help="'default' (built-in), a model directory or a diffusers UNet dir")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the Hutchinson probes and dequantisation noise")
    p.add_argument("--input", default="digits:heldout", help="images (default: held-out digits)")
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
    p.add_argument("--replot", metavar="JSON", help="redraw the plots and tables from a results JSON and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("merge", help="check that an --out-dir run is complete and merge its shards")
    p.add_argument("out_dir", help="the folder given as --out-dir")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("solvers", help="list the solvers with order, NFE per step and paper")
    p.set_defaults(func=cmd_solvers)
    return parser


def _validate(args: argparse.Namespace) -> None:
    for name in ("steps", "num", "batch_size", "frames", "shard_size"):
        val = getattr(args, name, None)
        if isinstance(val, list):
            val = min(val)
        if val is not None and val < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {val}")
    for n in getattr(args, "consistency_steps", None) or []:
        if n < 1:
            raise CLIError(f"--consistency-steps values must be >= 1, got {n}")
    grid = getattr(args, "grid", None)
    if grid is not None:
        from .grids import GRIDS

        if grid not in GRIDS:
            raise CLIError(f"unknown grid {grid!r}; allowed: {', '.join(GRIDS)}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from .train import main as train_main

        train_main(argv[1:], prog="ddim-ode train")
        return 0
    args = build_parser().parse_args(argv)
    try:
        _validate(args)
        args.func(args)
    except CLIError as err:
        print(f"ddim-ode {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"ddim-ode {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddim-ode {args.command}: interrupted; no partial output was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
