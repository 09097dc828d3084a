"""The arguments of the ``ddim-ode`` command line: the parser of every subcommand and the checks
of single arguments made before anything is loaded.

The parser stores the subcommand's name as ``command``; :func:`ddim_ode.cli.main` runs it. Usage
errors are one line and exit with status 2, like every user error (:mod:`ddim_ode.cli_errors`).
"""

from __future__ import annotations

import argparse
import math
import typing

from .cli_common import DEVICES
from .cli_errors import DEBUG_VARIABLE, CLIError
from .cli_model import parse_classes, parse_schedule, schedule_help
from .diffusers.prompts import add_prompt_arguments
from .field import PREDICTIONS
from .grids import GRIDS
from .solvers import SOLVERS

__all__ = ["build_parser", "check_arguments", "STUDY_NAMES", "EPILOG"]

EPILOG = f"""\
exit status: 0 on success; 2 on a usage or input error, reported on one line naming the problem
(set {DEBUG_VARIABLE}=1 for its traceback); 130 when interrupted. Any other failure is a bug and
prints a Python traceback. Outputs are checked to be writable before the work starts and written
atomically. CPU threads: idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) and the number of
threads follows the batch size and the idle cores, unless OMP_WAIT_POLICY, OMP_NUM_THREADS or
MKL_NUM_THREADS is set.
"""


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
    """The parser of ``ddim-ode``: one subparser per command, whose name it stores as ``command``
    (``train`` only names itself: its own parser is :func:`ddim_ode.train.main`'s)."""
    parser = _Parser(
        prog="ddim-ode",
        description="The ``ddim-ode`` command line.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="sample digits and show a round trip with the built-in model")
    _common(p)
    p.add_argument("--out-dir", default="ddim_ode_demo", help="output folder (default ddim_ode_demo)")
    p.set_defaults(classes=None, guidance=None)

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

    p = sub.add_parser("decode", help="latents (.npz from `encode` or `sample`) -> images (PNG + .npz)")
    _common(p, recorded=True)
    p.add_argument("--input", required=True, help=".npz with a 'latents' array (as `encode` and `sample` write)")
    p.add_argument("--out", default="decoded.png", help="output PNG; the .npz of the same name gets 'samples'")
    _class_flags(p, recorded=True)
    _mismatch_flag(p)

    p = sub.add_parser("roundtrip", help="encode then decode images; print the reconstruction MSE")
    _common(p)
    p.add_argument("--input", default="digits:heldout", help="images, as for `encode` (default: held-out digits)")
    p.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--out", default="roundtrip.png", help="output PNG (default roundtrip.png)")
    _class_flags(p)

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
    p.set_defaults(classes=None, guidance=None)

    sub.add_parser("train", help="train a DDPM UNet (see `ddim-ode train --help`)", add_help=False)

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

    p = sub.add_parser("merge", help="check that an --out-dir run is complete and merge its shards")
    p.add_argument("out_dir", help="the folder given as --out-dir")

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

    p = sub.add_parser("solvers", help="list the solvers with order, NFE per step and paper")

    p = sub.add_parser("models", help="list the built-in models with prediction, sample shape, classes and schedule")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Checks of single arguments, before anything is loaded (``CLIError`` naming the flag and what it allows)."""
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
