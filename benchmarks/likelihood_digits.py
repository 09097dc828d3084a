"""Bits/dim of the held-out digits under the built-in model, through the probability-flow ODE.

Runs :func:`ddim_ode.likelihood.log_likelihood` on the 297 held-out digits (or ``--num`` of them)
and prints/writes the summary: mean bits/dim with its standard error (data sampling and, for
Hutchinson, the estimator's), NFE and wall time. Pixels are integers 0..16 scaled as
``pixel/16·2 − 1``, so the bin width is Δ = 2/16; with ``--dequantize uniform`` (default) the
result is an upper bound on the model's discrete negative log-likelihood.

``--model gmm`` uses the exact Gaussian-mixture digits model of ``benchmarks/inpaint_example.py``
instead, whose log-density is also known in closed form: the output then includes the exact
bits/dim of the same dequantised points, a check of the whole pipeline.

    python benchmarks/likelihood_digits.py --json docs/results/likelihood_digits.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from record import command_line

from ddim_ode._files import write_json
from ddim_ode.likelihood import DIGITS_BIN_WIDTH, log_likelihood

#: the command-line options passed to :func:`ddim_ode.likelihood.log_likelihood` as they are
SOLVE_OPTIONS = (
    "method",
    "rtol",
    "atol",
    "divergence",
    "probes",
    "probe_dist",
    "sigma_min",
    "dequantize",
    "batch_size",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin", choices=("builtin", "gmm"))
    ap.add_argument("--num", type=int, default=None, help="first NUM held-out digits (default all 297)")
    ap.add_argument("--divergence", default="hutchinson", choices=("exact", "hutchinson"))
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--probe-dist", default="rademacher", choices=("rademacher", "gaussian"))
    ap.add_argument("--dequantize", default="uniform", choices=("none", "uniform"))
    ap.add_argument("--sigma-min", type=float, default=None)
    ap.add_argument("--method", default="dopri5")
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ddim_ode.data import load_digits

    x0 = load_digits("heldout").double()
    if args.num is not None:
        x0 = x0[: args.num]
    model = schedule = None
    if args.model == "gmm":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from inpaint_example import digits_gmm

        import ddim_ode

        model, schedule = digits_gmm(), ddim_ode.DiscreteSchedule.linear()
    options = {name: getattr(args, name) for name in SOLVE_OPTIONS}
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    res = log_likelihood(x0, model, schedule, bin_width=DIGITS_BIN_WIDTH, generator=g, **options)
    seconds = time.perf_counter() - t0
    out = {"command": command_line(__file__, argv), "model": args.model}
    out.update(res.summary())
    out["seconds"] = seconds
    out["uniform_baseline_bits_per_dim"] = math.log2(17)
    if args.model == "gmm":
        g2 = torch.Generator().manual_seed(args.seed)  # the same dequantisation noise as inside log_likelihood
        x = x0 + DIGITS_BIN_WIDTH * (torch.rand(x0.shape, generator=g2, dtype=x0.dtype) - 0.5)
        if args.dequantize == "none":
            x = x0
        exact = model.log_prob(x)  # type: ignore[union-attr]
        d = res.dim
        out["exact_bits_per_dim"] = float((-(exact + d * math.log(DIGITS_BIN_WIDTH)) / (d * math.log(2))).mean())
        out["max_abs_error_nats_per_dim"] = float((res.log_prob - exact).abs().max() / d)
    print(json.dumps(out, indent=2))
    if args.json is not None:
        write_json(args.json, out, allow_nan=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
