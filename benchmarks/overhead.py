"""Per-NFE overhead of the integration loop: every solver vs a hand-written Euler loop and diffusers.

    python benchmarks/overhead.py [--device cpu|cuda] [--batch-sizes 1 16 128] [--steps 50]
                                  [--repeats 9] [--threads 1] [--out docs/results/overhead.json]
                                  [--plot docs/img/overhead.png] [--profile SOLVER]

The ε-model costs next to nothing (ε = 0.1 x_t), so the time per network evaluation (NFE) is the
loop's own cost: grid and t(σ) look-ups, the field's scaling and casts, the solver's arithmetic,
the finite check. Every loop below integrates the same model from the same x_T on the same
timesteps (DDIM's ``range(0, T, T//n)`` from the top, then to ᾱ = 1):

* ``hand-euler`` — the minimal Euler loop in DDIM coordinates (x̄ = x/√ᾱ, σ = √((1−ᾱ)/ᾱ)), with
  the σ values and t tensors computed before the loop: the floor any driver can reach;
* ``ddim_ode:<solver>`` — :func:`ddim_ode.decode` with each registered solver (default
  ``check_finite=True``), ``...[check_finite=False]`` for the deterministic fixed-grid ones and
  ``...[engine=torchdiffeq]`` for the adaptive ones (the same pairs through ``torchdiffeq.odeint``);
* ``hand-dpm++2m`` — the minimal DPM-Solver++(2M) loop (coefficients computed before the loop,
  three fused operations per step): the floor of a two-term multistep method;
* ``diffusers:<scheduler>`` — diffusers' scheduler loop for the same algorithm as one of ours
  (``SAME_ALGORITHM``: DDIM, DDIM with η = 1, HeunDiscrete, DPMSolverMultistep, UniPCMultistep,
  PNDM; ``set_timesteps`` + ``step`` per timestep), when diffusers is installed.

All loops run side by side: each repeat times every loop once, in turn, and the table reports the
median over repeats of the wall time per NFE and its ratio to ``hand-euler`` in the same repeat
(median of the per-repeat ratios). The JSON holds the environment, the command line and every row.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import ddim_ode
from ddim_ode import DiscreteSchedule, decode, make_grid
from ddim_ode.solvers import SOLVERS, get_solver

ROOT = Path(__file__).resolve().parents[1]


class ZeroCost:
    """ε = 0.1 x_t: one elementwise product, the same in every loop. Counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return x_t * 0.1


# ---------------------------------------------------------------------------------------------
# the loops: each returns (final x, NFE)


def hand_euler(model: ZeroCost, schedule: DiscreteSchedule, n: int) -> Callable[[Tensor], tuple[Tensor, int]]:
    sig = [float(s) for s in make_grid(schedule, "uniform", n)]
    t_of = [float(schedule.t(s)) for s in sig[:-1]]

    def run(x: Tensor) -> tuple[Tensor, int]:
        ts = [torch.full((x.shape[0],), t, device=x.device) for t in t_of]
        xbar = x * math.sqrt(1.0 + sig[0] ** 2)
        for i in range(len(sig) - 1):
            eps = model(xbar * (1.0 + sig[i] ** 2) ** -0.5, ts[i])
            xbar = xbar + (sig[i + 1] - sig[i]) * eps
        return xbar, len(sig) - 1

    return run


def hand_dpmpp_2m(model: ZeroCost, schedule: DiscreteSchedule, n: int) -> Callable[[Tensor], tuple[Tensor, int]]:
    """The minimal DPM-Solver++(2M) loop in x̄ (coefficients computed before the loop, fused updates)."""
    sig = [float(s) for s in make_grid(schedule, "uniform", n)]
    t_of = [float(schedule.t(s)) for s in sig[:-1]]
    coef = []  # per step: (σ'/σ, weight of D₀, weight of D₋₁); first step first order, last step DDIM
    for i in range(len(sig) - 1):
        s, s1 = sig[i], sig[i + 1]
        if s1 == 0.0:
            coef.append((0.0, 1.0, 0.0))
            continue
        h = math.log(s / s1)
        phi1 = math.expm1(-h)
        if i == 0:
            coef.append((s1 / s, -phi1, 0.0))
        else:
            c = 0.5 * phi1 * h / math.log(sig[i - 1] / s)
            coef.append((s1 / s, -phi1 - c, c))

    def run(x: Tensor) -> tuple[Tensor, int]:
        ts = [torch.full((x.shape[0],), t, device=x.device) for t in t_of]
        xbar = x * math.sqrt(1.0 + sig[0] ** 2)
        d_prev = xbar
        for i in range(len(sig) - 1):
            eps = model(xbar * (1.0 + sig[i] ** 2) ** -0.5, ts[i])
            d = torch.add(xbar, eps, alpha=-sig[i])
            a, c0, c1 = coef[i]
            xbar = torch.add(torch.add(xbar * a, d, alpha=c0), d_prev, alpha=c1) if a else d
            d_prev = d
        return xbar, len(sig) - 1

    return run


def ours(  # type: ignore[no-untyped-def]
    model: ZeroCost,
    schedule: DiscreteSchedule,
    n: int,
    name: str,
    check_finite: bool = True,
    options: dict[str, Any] | None = None,
):
    def run(x: Tensor) -> tuple[Tensor, int]:
        sol = decode(
            x,
            name,
            n,
            model=model,
            schedule=schedule,
            check_finite=check_finite,
            solver_options=options,
            return_solution=True,
        )
        return sol.x, sol.nfe  # type: ignore[union-attr]

    return run


#: our solver → diffusers' scheduler for the same algorithm (DDPM: DDIM with η = 1 on the same grid)
SAME_ALGORITHM = {
    "euler": "DDIM",
    "ddim": "DDIM",
    "ddpm": "DDIM[eta=1]",
    "heun": "HeunDiscrete",
    "dpm-solver++2m": "DPMSolverMultistep",
    "unipc": "UniPCMultistep",
    "plms": "PNDM",
}


def diffusers_loop(model: ZeroCost, kind: str, n: int, timesteps: list[int]):  # type: ignore[no-untyped-def]
    import diffusers

    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    eta, scale_input, generator = 0.0, False, None
    if kind in ("DDIM", "DDIM[eta=1]"):
        sched = diffusers.DDIMScheduler(
            **common, clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"
        )
        setup = lambda dev: sched.set_timesteps(n, device=dev)
        if kind == "DDIM[eta=1]":
            eta, generator = 1.0, torch.Generator().manual_seed(0)
    elif kind == "DPMSolverMultistep":
        sched = diffusers.DPMSolverMultistepScheduler(**common)  # dpmsolver++, order 2, final sigma 0
        setup = lambda dev: sched.set_timesteps(device=dev, timesteps=timesteps)
    elif kind == "UniPCMultistep":
        # UniPC takes custom timesteps only for flow models: its own "leading" spacing is used
        # (other timesteps than the rest; the time per NFE does not depend on which)
        sched = diffusers.UniPCMultistepScheduler(**common, timestep_spacing="leading")  # bh2, order 2
        setup = lambda dev: sched.set_timesteps(n, device=dev)
    elif kind == "PNDM":  # PLMS (Adams–Bashforth 4 with its own warm-up), no Runge–Kutta steps
        sched = diffusers.PNDMScheduler(**common, skip_prk_steps=True, set_alpha_to_one=True)
        setup = lambda dev: sched.set_timesteps(n, device=dev)
    elif kind == "HeunDiscrete":  # EDM's Heun in σ (k-diffusion coordinates: the input is scaled)
        sched = diffusers.HeunDiscreteScheduler(**common, timestep_spacing="leading")
        setup = lambda dev: sched.set_timesteps(n, device=dev)
        scale_input = True
    else:
        raise ValueError(kind)
    kwargs = {"eta": eta, "generator": generator} if kind.startswith("DDIM") else {}

    def run(x: Tensor) -> tuple[Tensor, int]:
        setup(x.device)
        if scale_input:
            x = x * sched.init_noise_sigma
        calls = model.calls
        for t in sched.timesteps:
            eps = model(sched.scale_model_input(x, t) if scale_input else x, t)
            x = sched.step(eps, t, x, **kwargs).prev_sample
        return x, model.calls - calls

    return run


# ---------------------------------------------------------------------------------------------


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def environment(dev: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "load_average_1_5_15min_at_start": list(os.getloadavg()),
        "ddim_ode": ddim_ode.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # the C allocator's settings decide whether large CPU tensors are page-faulted in afresh
        "allocator_environment": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"},
    }
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        env["diffusers"] = None
    try:
        with open("/proc/cpuinfo") as fh:
            env["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
    except OSError:
        pass
    return env


def build_loops(
    model: ZeroCost, schedule: DiscreteSchedule, n: int, solvers: list[str], with_diffusers: bool
) -> dict[str, Callable[[Tensor], tuple[Tensor, int]]]:
    loops: dict[str, Callable[[Tensor], tuple[Tensor, int]]] = {"hand-euler": hand_euler(model, schedule, n)}
    if "dpm-solver++2m" in solvers:
        loops["hand-dpm++2m"] = hand_dpmpp_2m(model, schedule, n)
    for name in solvers:
        loops[f"ddim_ode:{name}"] = ours(model, schedule, n, name)
        slv = get_solver(name)
        if not slv.adaptive and not float(getattr(slv, "eta", 0.0) or 0.0) > 0:
            loops[f"ddim_ode:{name}[check_finite=False]"] = ours(model, schedule, n, name, check_finite=False)
        if slv.adaptive:  # the same method through torchdiffeq.odeint
            loops[f"ddim_ode:{name}[engine=torchdiffeq]"] = ours(
                model, schedule, n, name, options={"engine": "torchdiffeq"}
            )
    if with_diffusers:
        sig = make_grid(schedule, "uniform", n)
        ts = [int(round(float(schedule.t(float(s))))) for s in sig[:-1]]
        for kind in dict.fromkeys(SAME_ALGORITHM[name] for name in solvers if name in SAME_ALGORITHM):
            loops[f"diffusers:{kind}"] = diffusers_loop(model, kind, n, ts)
    return loops


def measure(
    loops: dict[str, Callable[[Tensor], tuple[Tensor, int]]], x: Tensor, repeats: int
) -> tuple[dict[str, list[float]], dict[str, int], dict[str, Tensor]]:
    """Seconds per NFE of every loop, per repeat (loops interleaved within each repeat)."""
    dev = x.device
    per_nfe: dict[str, list[float]] = {k: [] for k in loops}
    nfe: dict[str, int] = {}
    outs: dict[str, Tensor] = {}
    for name, run in loops.items():  # warm-up (lazy initialisation, caches, allocator)
        outs[name], nfe[name] = run(x.clone())
    for _ in range(repeats):
        for name, run in loops.items():
            xin = x.clone()
            _sync(dev)
            t0 = time.perf_counter()
            run(xin)
            _sync(dev)
            per_nfe[name].append((time.perf_counter() - t0) / nfe[name])
    return per_nfe, nfe, outs


def agreement_check(
    outs: dict[str, Tensor], model: ZeroCost, schedule: DiscreteSchedule, n: int, x: Tensor
) -> dict[str, float]:
    """Largest difference of the final states, relative to the largest |x0|, of loops that should agree."""
    scale = float(outs["hand-euler"].float().abs().max())
    rel = lambda a, b: float((a.float() - b.float()).abs().max()) / scale
    out = {}
    if "hand-dpm++2m" in outs and "ddim_ode:dpm-solver++2m" in outs:
        out["ddim_ode:dpm-solver++2m vs hand-dpm++2m"] = rel(outs["ddim_ode:dpm-solver++2m"], outs["hand-dpm++2m"])
    if "ddim_ode:euler" in outs:
        out["ddim_ode:euler vs hand-euler"] = rel(outs["ddim_ode:euler"], outs["hand-euler"])
    if "diffusers:DDIM" in outs and "ddim_ode:euler" in outs:
        out["ddim_ode:euler vs diffusers:DDIM"] = rel(outs["ddim_ode:euler"], outs["diffusers:DDIM"])
    if "diffusers:DPMSolverMultistep" in outs and "ddim_ode:dpm-solver++2m" in outs:
        out["ddim_ode:dpm-solver++2m vs diffusers:DPMSolverMultistep"] = rel(
            outs["ddim_ode:dpm-solver++2m"], outs["diffusers:DPMSolverMultistep"]
        )
    if "diffusers:UniPCMultistep" in outs and "unipc" in SOLVERS:
        import diffusers

        sched = diffusers.UniPCMultistepScheduler(
            num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, timestep_spacing="leading"
        )
        sched.set_timesteps(n)
        mine = decode(x, "unipc", n, model=model, schedule=schedule, timesteps=sched.timesteps.tolist())
        out["ddim_ode:unipc vs diffusers:UniPCMultistep (its timesteps)"] = rel(mine, outs["diffusers:UniPCMultistep"])
    return out


def count_ops(run: Callable[[Tensor], tuple[Tensor, int]], x: Tensor) -> tuple[float, float]:
    """(aten operations, operations producing a state-sized tensor) per NFE of one run.

    On a GPU each is a kernel launch; the state-sized ones are what costs at large batch.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = [0, 0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            counts[0] += 1
            if isinstance(out, Tensor) and out.numel() == x.numel():
                counts[1] += 1
            return out

    with Count():
        _, nfe = run(x.clone())
    return counts[0] / nfe, counts[1] / nfe


def profile(name: str, model: ZeroCost, schedule: DiscreteSchedule, n: int, x: Tensor, top: int = 18) -> str:
    """cProfile of ``decode`` with one solver: where the per-step time goes."""
    run = ours(model, schedule, n, name)
    run(x)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(20):
        run(x)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--shape", type=int, nargs="+", default=[3, 32, 32], help="event shape (default 3 32 32)")
    p.add_argument("--steps", type=int, default=50, help="n (default 50)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--solvers", nargs="*", default=None, help="default: every registered solver")
    p.add_argument("--no-diffusers", action="store_true")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "overhead.json"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "img" / "overhead.png"), help="'' for none")
    p.add_argument("--profile", default=None, metavar="SOLVER", help="also print a cProfile of this solver at batch 1")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    if args.device == "auto" and dev.type != "cuda":
        dev = torch.device("cpu")
    with_diffusers = not args.no_diffusers
    if with_diffusers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("diffusers is not installed: its loops are left out", file=sys.stderr)
            with_diffusers = False
    names = args.solvers if args.solvers is not None else sorted(SOLVERS)
    for name in names:
        if name not in SOLVERS:
            raise SystemExit(f"unknown solver {name!r}; available: {', '.join(sorted(SOLVERS))}")

    env = environment(dev)
    schedule = DiscreteSchedule.linear()
    model = ZeroCost()
    loops = build_loops(model, schedule, args.steps, names, with_diffusers)
    rows: list[dict[str, Any]] = []
    ops: dict[str, tuple[float, float]] = {}
    agreement: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for batch in args.batch_sizes:
            x = torch.randn(batch, *args.shape, generator=torch.Generator().manual_seed(0)).to(dev)
            per_nfe, nfe, outs = measure(loops, x, args.repeats)
            if not ops:
                ops = {name: count_ops(run, x) for name, run in loops.items()}
            base = per_nfe["hand-euler"]
            for name in loops:
                ratios = [a / b for a, b in zip(per_nfe[name], base)]
                rows.append(
                    {
                        "batch": batch,
                        "loop": name,
                        "nfe": nfe[name],
                        "us_per_nfe": 1e6 * statistics.median(per_nfe[name]),
                        "us_per_nfe_min": 1e6 * min(per_nfe[name]),
                        "ratio_of_min_vs_hand_euler": min(per_nfe[name]) / min(base),
                        "ratio_vs_hand_euler": statistics.median(ratios),
                        "aten_ops_per_nfe": ops[name][0],
                        "state_sized_ops_per_nfe": ops[name][1],
                    }
                )
            agreement[str(batch)] = agreement_check(outs, model, schedule, args.steps, x)
    result = {
        "command": "python "
        + " ".join(
            [os.path.relpath(sys.argv[0], ROOT) if argv is None else "benchmarks/overhead.py"]
            + (sys.argv[1:] if argv is None else argv)
        ),
        "environment": env,
        "config": {
            "model": "eps = 0.1 * x_t",
            "schedule": "DiscreteSchedule.linear() (T=1000)",
            "grid": "uniform (DDIM range(0, T, T//n), then to alpha_bar = 1)",
            "steps": args.steps,
            "shape": args.shape,
            "dtype": "float32",
            "repeats": args.repeats,
            "statistic": "median over repeats; ratio = median of per-repeat ratios to hand-euler",
        },
        "rows": rows,
        "load_average_1_5_15min_at_end": list(os.getloadavg()),
        "max_rel_difference_of_outputs": agreement,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(table(result))
    if args.plot:
        plot(result, Path(args.plot))
    if args.profile:
        x = torch.randn(1, *args.shape).to(dev)
        with torch.inference_mode():
            print(profile(args.profile, model, schedule, args.steps, x))
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown table: one row per loop, µs/NFE and ratio to hand-euler per batch size."""
    batches = sorted({r["batch"] for r in result["rows"]})
    loops = list(dict.fromkeys(r["loop"] for r in result["rows"]))
    by = {(r["loop"], r["batch"]): r for r in result["rows"]}
    head = "| loop | NFE | ops/NFE (state-sized) | " + " | ".join(f"B={b}: µs/NFE (× hand)" for b in batches) + " |"
    lines = [head, "|" + "---|" * (3 + len(batches))]
    for name in loops:
        r0 = by[name, batches[0]]
        cells = [f"{by[name, b]['us_per_nfe']:.1f} ({by[name, b]['ratio_vs_hand_euler']:.2f}×)" for b in batches]
        ops = f"{r0['aten_ops_per_nfe']:.1f} ({r0['state_sized_ops_per_nfe']:.1f})"
        lines.append(f"| {name} | {r0['nfe']} | {ops} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in result["rows"]})
    loops = list(dict.fromkeys(r["loop"] for r in result["rows"]))
    by = {(r["loop"], r["batch"]): r for r in result["rows"]}
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 0.28 * len(loops) + 1.5), sharey=True)
    for ax, b in zip(axes if len(batches) > 1 else [axes], batches):
        vals = [by[name, b]["ratio_vs_hand_euler"] for name in loops]
        colors = [
            "0.5" if n == "hand-euler" else ("tab:orange" if n.startswith("diffusers") else "tab:blue") for n in loops
        ]
        ax.barh(range(len(loops)), vals, color=colors)
        ax.axvline(1.5, color="red", lw=0.8, ls="--", label="1.5× target")
        ax.set_xscale("log")
        ax.set_title(f"batch {b}: time per NFE / hand-written Euler")
        ax.set_yticks(range(len(loops)), loops, fontsize=7)
        ax.invert_yaxis()
    axes_list = axes if len(batches) > 1 else [axes]
    axes_list[0].legend(fontsize=7)
    env = result["environment"]
    fig.suptitle(
        f"loop overhead, ε = 0.1 x, n = {result['config']['steps']}, {env['device_name']}, "
        f"{env['torch_threads']} thread(s)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
