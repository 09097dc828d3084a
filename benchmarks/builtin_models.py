"""Sample quality of the built-in models ``digits-cond`` and ``digits-flow`` (numbers for docs/model.md).

* **Class conditioning** (``digits-cond``): ``--per-class`` samples of every digit 0..9 decoded with
  classifier-free guidance (Ho & Salimans 2022) at each ``--guidance`` weight (w = 1: the
  conditional model alone, one network call per step) by deterministic DDIM (``euler``, 20 steps)
  and DPM-Solver++(2M) (10 steps); the shipped digit classifier (:mod:`ddim_ode.features`) names
  the class of each sample, and the share recognised as the class asked for is reported per class
  and on average, with the Fréchet distance of all samples to the held-out digits (guidance trades
  diversity for fidelity).
* **Rectified flow** (``digits-flow``): ``--num`` samples decoded with ``euler`` from pure noise
  (τ = 1, σ̄ = ∞, the first point of the flow's "uniform" grid) at each of ``--steps``, beside the
  VP model ``digits`` at the same number of network evaluations (NFE), scored by the Fréchet
  distance in the classifier's 64-dimensional features to the 297 held-out digits; the FD of as
  many training digits is the floor.
* **Round trip** (both unconditional models): the first ``--num-roundtrip`` held-out digits encoded
  and decoded on the same grid with a finite top (the "uniform" grid without its first point for the
  flow, whose top σ̄ = ∞ no multistep inverter can start from), with ``euler`` (DDIM inversion,
  not exact) and ``belm`` (exactly invertible; Wang et al. 2024); the error is reported as the
  root-mean-square and the maximum of ``decode(encode(x0)) − x0`` over pixels in [−1, 1].

Everything is seeded and runs on the CPU::

    OMP_NUM_THREADS=1 python benchmarks/builtin_models.py --json docs/results/builtin_models.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddim_ode import decode, encode
from ddim_ode.data import load_digits
from ddim_ode.features import features, frechet_distance, load_classifier
from ddim_ode.grids import make_grid
from ddim_ode.models import resolve_model

#: (solver, steps) of the class-conditional evaluation
COND_SAMPLERS = (("euler", 20), ("dpm-solver++2m", 10))


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def class_accuracy(
    model: str, per_class: int, guidance: list[float], seed: int, clf: torch.nn.Module, ref: np.ndarray
) -> list[dict[str, Any]]:
    """Per-class share of guided samples the classifier recognises as the class asked for."""
    labels = torch.arange(10).repeat_interleave(per_class)
    x_T = _noise(len(labels), seed)
    rows = []
    for solver, steps in COND_SAMPLERS:
        for w in guidance:
            t0 = time.perf_counter()
            sol = decode(
                x_T,
                solver,
                steps,
                model=model,
                model_kwargs={"y": labels},
                guidance_scale=None if w == 1.0 else w,
                return_solution=True,
            )
            x0 = sol.x.clamp(-1, 1)
            with torch.no_grad():
                pred = clf(x0).argmax(1)
            per = [float((pred[labels == k] == k).float().mean()) for k in range(10)]
            rows.append(
                {
                    "solver": solver,
                    "steps": steps,
                    "guidance_scale": w,
                    "nfe": sol.nfe,
                    "samples": len(labels),
                    "accuracy_per_class": [round(a, 4) for a in per],
                    "accuracy_mean": round(float(np.mean(per)), 4),
                    "frechet_distance": round(frechet_distance(features(x0, clf), ref), 3),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(f"cond {solver:>15} n={steps:<3} w={w:<4} accuracy {rows[-1]['accuracy_mean']:.3f}", file=sys.stderr)
    return rows


def flow_quality(
    flow: str, vp: str, num: int, steps: list[int], seed: int, clf: torch.nn.Module, ref: np.ndarray
) -> list[dict[str, Any]]:
    """FD to the held-out digits of Euler samples of the flow model (from τ = 1) and of the VP model."""
    x_T = _noise(num, seed + 1)
    rows = []
    for model in (flow, vp):
        for n in steps:
            sol = decode(x_T, "euler", n, model=model, return_solution=True)
            top = float(sol.sigmas[0])
            fd = frechet_distance(features(sol.x.clamp(-1, 1), clf), ref)
            rows.append({"model": model, "solver": "euler", "steps": n, "nfe": sol.nfe, "sigma_top": top, "fd": fd})
            print(f"fd {model:>12} euler n={n:<3} top={top:<8.4g} FD {fd:.3f}", file=sys.stderr)
    return rows


def round_trip(models: list[str], num: int, steps: list[int]) -> list[dict[str, Any]]:
    """RMS and max error of decode(encode(x0)) on a grid with a finite top, with euler and belm."""
    x0 = load_digits("heldout")[:num]
    rows = []
    for model in models:
        schedule = resolve_model(model).schedule
        for n in steps:
            sigmas = make_grid(schedule, "uniform", n)
            if not torch.isfinite(sigmas[0]):
                sigmas = sigmas[1:]
            for solver in ("euler", "belm"):
                latent = encode(x0, solver, sigmas=sigmas, model=model)
                back = decode(latent, solver, sigmas=sigmas, model=model)
                err = (back - x0).double()
                rows.append(
                    {
                        "model": model,
                        "solver": solver,
                        "steps": len(sigmas) - 1,
                        "sigma_top": float(sigmas[0]),
                        "rms_error": float(err.square().mean().sqrt()),
                        "max_error": float(err.abs().max()),
                    }
                )
                r = rows[-1]
                print(f"roundtrip {model:>12} {solver:>6} n={r['steps']:<3} rms {r['rms_error']:.3g}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cond-model", default="digits-cond", help="built-in name or model directory")
    ap.add_argument("--flow-model", default="digits-flow", help="built-in name or model directory")
    ap.add_argument("--vp-model", default="digits", help="the VP model to compare the flow with")
    ap.add_argument("--per-class", type=int, default=64, help="samples per class")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    ap.add_argument("--num", type=int, default=512, help="samples per FD")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50], help="Euler steps of the FD comparison")
    ap.add_argument("--num-roundtrip", type=int, default=128, help="held-out digits to encode and decode")
    ap.add_argument("--roundtrip-steps", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    clf = load_classifier()
    ref = features(load_digits("heldout"), clf)
    train = load_digits("train")
    floor = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: args.num]]
    doc = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "reference": "features of the 297 held-out digits (ddim_ode.features, the shipped classifier)",
        "train_digits_fd": frechet_distance(features(floor, clf), ref),
        "conditional": class_accuracy(args.cond_model, args.per_class, args.guidance, args.seed, clf, ref),
        "flow_vs_vp": flow_quality(args.flow_model, args.vp_model, args.num, args.steps, args.seed, clf, ref),
        "round_trip": round_trip([args.flow_model, args.vp_model], args.num_roundtrip, args.roundtrip_steps),
    }
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(doc, indent=2)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
