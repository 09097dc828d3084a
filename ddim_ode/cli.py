"""The ``ddim-ode`` command line.

Subcommands: ``demo``, ``sample``, ``encode``, ``decode``, ``roundtrip``, ``interpolate``,
``likelihood``, ``train``, ``bench``, ``merge``, ``tune-grid``, ``solvers`` and ``models``. Every
command uses the default built-in model unless ``--model`` names another built-in model or a
model directory (``--prediction``/``--schedule`` and the class conditioning ``--class``/
``--guidance`` are described in :mod:`ddim_ode.cli_model`). Each command reads the files the
others write (the array names and the decoding settings stored beside latents are described in
:mod:`ddim_ode.cli_io`).

This module holds the subcommands and :func:`main`; the arguments are parsed and checked by
:mod:`ddim_ode.cli_parser`, the pieces the subcommands share are in :mod:`ddim_ode.cli_common`,
and every command runs under the error policy of :mod:`ddim_ode.cli_errors`: a user error is
one line and exit status 2, anything else a bug with its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._files import atomic_path
from .cli_common import (
    LoadedModel,
    batched,
    cat_solutions,
    check_recorded_settings,
    command_conditioning,
    command_plan,
    latents_tensor,
    load_model,
    resolve_device,
    run_kwargs,
    seeded_noise,
    with_state,
)
from .cli_errors import DEBUG_VARIABLE, CLIError, guarded, warn
from .cli_io import (
    check_writable,
    check_writable_dir,
    latent_arrays,
    output_paths,
    read_images,
    read_latents,
    write_outputs,
)
from .cli_model import LABELS_KEYWORD, Conditioning, builtin_rows
from .cli_parser import build_parser, check_arguments
from .cli_plan import Plan, solver_options
from .driver import decode, encode
from .images import image_grid, slerp, to_unit
from .solvers import list_solvers
from .solvers.reversible import concat_states, state_to_arrays

__all__ = ["main", "build_parser", "CLIError", "DEBUG_VARIABLE"]


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
        m = load_model(args, args.shard_size)
        if m.text is not None:
            raise CLIError("--prompt cannot be combined with --out-dir")
        plan = command_plan(args, m, encoding=kind == "encode")
        images = read_images(args.input, m.shape) if kind == "encode" else None
        cond = command_conditioning(args, m, args.num if images is None else len(images))
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
    m = load_model(args, args.num)
    cond = command_conditioning(args, m, args.num)
    plan = command_plan(args, m)
    x_T = seeded_noise(args.num, m.shape, args.seed, m.device)
    t0 = time.perf_counter()
    text = m.text.decode_kwargs if m.text is not None else lambda batch: {}
    with torch.no_grad():
        sols = batched(
            lambda xb, rows: decode(
                xb,
                plan.solver,
                plan.steps,
                return_solution=True,
                **run_kwargs(plan, m),
                **cond.run_kwargs(rows, m.device),
                **text(xb.shape[0]),
            ),
            x_T,
            args.batch_size,
            "sampling",
            not args.quiet,
        )
    x0 = cat_solutions(sols)
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
    m = load_model(args, args.batch_size)
    x0 = read_images(args.input, m.shape).to(m.device)
    cond = command_conditioning(args, m, len(x0))
    plan = command_plan(args, m, encoding=True)
    with torch.no_grad():
        sols = batched(
            lambda xb, rows: encode(
                xb,
                plan.solver,
                plan.steps,
                return_solution=True,
                **run_kwargs(plan, m),
                **cond.run_kwargs(rows, m.device),
            ),
            x0,
            args.batch_size,
            "encoding",
            not args.quiet,
        )
    # a reversible solver: store its auxiliary state for an exact decode
    state = state_to_arrays(concat_states([s.state for s in sols])) if plan.reversible else None
    arrays = latent_arrays(cat_solutions(sols).cpu().numpy(), plan.arrays("encoded"), m.record(cond), state)
    write_outputs(npz=npz, **arrays)
    print(f"encoded {x0.shape[0]} images with {plan.solver}, n={plan.steps}{_conditioned(cond)} -> {npz}")


def cmd_decode(args: argparse.Namespace) -> None:
    lf = read_latents(args.input)
    png, npz = output_paths(args.out, ".png", ".npz")
    m = load_model(args, len(lf.latents), stored=lf)
    lat = latents_tensor(lf, m, args.input)
    cond = command_conditioning(args, m, len(lat), lf)
    plan = command_plan(args, m, lf)
    if check_recorded_settings(args, lf, plan, m.record(cond)) and plan.reversible:
        lat = with_state(lat, lf, args)
    with torch.no_grad():
        sols = batched(
            lambda xb, rows: decode(
                xb,
                plan.solver,
                plan.steps,
                return_solution=True,
                **run_kwargs(plan, m),
                **cond.run_kwargs(rows, m.device),
            ),
            lat,
            args.batch_size,
            "decoding",
            not args.quiet,
        )
    x0 = cat_solutions(sols)
    write_outputs(png, image_grid(to_unit(x0), ncol=int(np.ceil(np.sqrt(len(x0))))), npz, samples=x0.cpu().numpy())
    print(f"decoded {len(x0)} latents with {plan.solver}, n={plan.steps}{_conditioned(cond)} -> {png}, {npz}")


def _roundtrip(args: argparse.Namespace, m: LoadedModel) -> tuple[Tensor, Tensor, float, Plan, Conditioning]:
    plan = command_plan(args, m, encoding=True)
    x0 = read_images(args.input, m.shape)[: args.num].to(m.device)
    cond = command_conditioning(args, m, len(x0))
    kw = run_kwargs(plan, m) | cond.run_kwargs(slice(None), m.device)
    with torch.no_grad():
        enc = encode(x0, plan.solver, plan.steps, return_solution=True, **kw)
        state = enc.state if plan.reversible else None  # other solvers' final state is no start for decoding
        rec = decode(enc.x.as_subclass(Tensor), plan.solver, plan.steps, state=state, **kw)
    # per-dimension MSE with data scaled to [0, 1], as the DDIM paper's Table 2
    mse = float(((rec - x0) / 2).pow(2).mean())
    return x0, rec, mse, plan, cond


def cmd_roundtrip(args: argparse.Namespace) -> None:
    (png,) = output_paths(args.out, ".png")
    m = load_model(args, args.num)
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
    m = load_model(args, args.frames, stored=lf)
    plan = command_plan(args, m, lf)
    if lf is not None:
        check_recorded_settings(args, lf, plan, m.record(Conditioning()))
        if len(lf.latents) < 2:
            raise CLIError(f"{args.input} holds {len(lf.latents)} latent(s); interpolation needs two")
        ends = latents_tensor(lf, m, args.input)[:2]
        if lf.kind == "encoded" and plan.reversible:
            warn(
                args,
                f"{args.input} was encoded with the reversible {plan.solver}: its latents decode exactly only with "
                "their auxiliary state, which interpolated latents do not have, so even the end frames are not the "
                "images; encode with euler (DDIM inversion) to interpolate",
            )
    else:
        ends = seeded_noise(2, m.shape, args.seed, m.device)
    lat = slerp(ends[:1], ends[1:], torch.linspace(0, 1, args.frames)).to(m.device)
    # the same x_T decoded with several n means something for noise, not for latents encoded with one n
    noise = lf is None or lf.kind != "encoded"
    grid = plan.grid if plan.named else "uniform"
    kw = {k: v for k, v in run_kwargs(plan, m).items() if k != "sigmas"}
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
    m = load_model(args, args.batch_size or args.num)
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
        device=resolve_device(args.device),
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
        device=resolve_device(args.device),
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


def _commands() -> dict[str, Callable[[argparse.Namespace], None]]:
    """The function of each subcommand, looked up when a command line runs."""
    return {
        "demo": cmd_demo,
        "sample": cmd_sample,
        "encode": cmd_encode,
        "decode": cmd_decode,
        "roundtrip": cmd_roundtrip,
        "interpolate": cmd_interpolate,
        "likelihood": cmd_likelihood,
        "bench": cmd_bench,
        "merge": cmd_merge,
        "tune-grid": cmd_tune_grid,
        "solvers": cmd_solvers,
        "models": cmd_models,
    }


def main(argv: Sequence[str] | None = None, *, choose_threads: bool = False) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    ``choose_threads``: set PyTorch's CPU threads for the work (see :mod:`ddim_ode.threads`), as
    the ``ddim-ode`` entry point does; off by default so that calling this function leaves the
    calling process's settings alone.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from .train import main as train_main

        return guarded("train", lambda: train_main(argv[1:], prog="ddim-ode train"))
    args = build_parser().parse_args(argv)
    args.choose_threads = choose_threads
    args.warnings = []
    command = _commands()[args.command]

    def run() -> None:
        check_arguments(args)
        command(args)
        for text in args.warnings:
            print(f"ddim-ode {args.command}: warning: {text}", file=sys.stderr)

    return guarded(args.command, run)


if __name__ == "__main__":
    raise SystemExit(main())
