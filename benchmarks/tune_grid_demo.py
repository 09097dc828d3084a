"""Tuned grids against the standard ones: held-out error at n steps, tuned vs best default.

For each model (an exact 16-D Gaussian mixture on the DDPM linear schedule, and the built-in
digits models, VP and rectified flow), solver and number of steps it runs :func:`ddim_ode.tune_grid` and prints the
held-out RMS error at σ = 0 of the tuned grid and of the best standard grid with the same NFE,
their ratio, the tuning cost in NFE and the reference's error bound. Timings are not reported.

    OMP_NUM_THREADS=1 python benchmarks/tune_grid_demo.py --model mixture --json docs/results/tune_grid_mixture.json
    OMP_NUM_THREADS=1 python benchmarks/tune_grid_demo.py --model digits --json docs/results/tune_grid_digits.json
    OMP_NUM_THREADS=1 python benchmarks/tune_grid_demo.py --model digits-flow --json docs/results/tune_grid_flow.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

import ddim_ode
from ddim_ode import DiscreteSchedule
from ddim_ode._files import write_json
from ddim_ode.analytic import GaussianMixture

#: tuning set-ups: the model arguments and the sizes of the run
MODELS: dict[str, dict[str, Any]] = {
    "mixture": dict(
        model=GaussianMixture.random(k=10, dim=16, spread=1.0, seed=3),
        schedule=DiscreteSchedule.linear(),
        num_samples=256,
        heldout_samples=512,
        candidates=48,
        reference_steps=192,
        refine_solves=60,
    ),
    "digits": dict(
        model=None,
        num_samples=16,
        heldout_samples=32,
        candidates=16,
        reference_steps=96,
        refine_solves=30,
    ),
    "digits-flow": dict(
        model="digits-flow",
        num_samples=16,
        heldout_samples=32,
        candidates=16,
        reference_steps=96,
        refine_solves=30,
    ),
}


def run(model: str, solvers: list[str], steps: list[int]) -> list[dict[str, Any]]:
    rows = []
    for solver in solvers:
        for n in steps:
            g = ddim_ode.tune_grid(n, solver, **MODELS[model])
            best = g.best_default
            rows.append(
                {
                    "model": model,
                    "solver": solver,
                    "n": n,
                    "nfe": g.nfe,
                    "tuned_error": g.tuned_heldout_error,
                    "best_default": best,
                    "best_default_error": g.default_heldout_errors[best] if best else None,
                    "ratio": g.default_heldout_errors[best] / g.tuned_heldout_error if best else None,
                    "chosen": g.chosen,
                    "method": g.method,
                    "tuning_nfe": g.tuning_nfe,
                    "tuning_nfe_by_phase": g.tuning_nfe_by_phase,
                    "reference_error": g.reference_error,
                    "default_errors": g.default_heldout_errors,
                    "sigmas": g.to_json()["sigmas"],  # a first sigma = inf as "inf"
                }
            )
            r = rows[-1]
            print(
                f"| {model} | {solver} | {n} | {g.nfe} | {r['tuned_error']:.4f} | {best} {r['best_default_error']:.4f} "
                f"| {r['ratio']:.2f} | {g.chosen} | {g.tuning_nfe} | {g.reference_error:.1e} |",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="mixture")
    ap.add_argument("--solvers", nargs="+", default=["euler", "heun", "dpm-solver++2m"])
    ap.add_argument("--steps", nargs="+", type=int, default=[5, 10])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(
        "| model | solver | n | NFE | tuned error | best default error | ratio | returned | tuning NFE | ref. error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = run(args.model, args.solvers, args.steps)
    if args.json is not None:
        write_json(args.json, {"setup": {k: repr(v) for k, v in MODELS[args.model].items()}, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
