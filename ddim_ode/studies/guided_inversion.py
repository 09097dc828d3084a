"""Inversion under classifier-free guidance: encode with guidance weight w, decode with the same w.

Prompt-based editing inverts an image with DDIM under the guided field ε_u + w (ε_c − ε_u) and
finds that the reconstruction degrades as w grows (Mokady et al. 2023, "Null-text inversion"):
guidance makes the field stiffer and the first-order DDIM inversion step less accurate. This study
measures that on the built-in class-conditional model (``digits-cond``, held-out digits with their
true labels) for DDIM (``euler``), ``heun``, ``dpm-solver++2m`` and the exactly invertible ``belm``,
and, without guidance, on the rectified-flow model (``digits-flow``).

The error is the per-dimension mean squared error with data scaled to [0, 1] (model scale [−1, 1]
mapped by (x + 1)/2, so MSE_[0,1] = MSE_[−1,1] / 4), as in :mod:`.roundtrip`. NFE counts network
calls over both directions; a guided call evaluates the conditional and unconditional branches in
one doubled batch.

The flow model's time-uniform grid starts at pure noise (σ̄ = ∞), where ``belm`` cannot invert
exactly; every solver on that model therefore uses the same S-step grid: the (S + 1)-step uniform
grid without its infinite first point (top τ = S / (S + 1)).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..driver import decode, encode
from ..grids import make_grid
from ..models import ResolvedModel, resolve_model
from ..solvers import get_solver
from .common import (
    StudyRun,
    check_dtype,
    check_solvers,
    environment,
    finish,
    progress,
    pyplot,
    save_figure,
    write_markdown,
)

__all__ = [
    "guided_inversion_study",
    "plot_guided_inversion",
    "guided_inversion_table",
    "render_guided_inversion",
    "DEFAULT_SOLVERS",
    "DEFAULT_SCALES",
    "DEFAULT_STEPS",
]

STUDY = "guided-inversion"
COND_MODEL = "digits-cond"
FLOW_MODEL = "digits-flow"
DEFAULT_SOLVERS = ("euler", "heun", "dpm-solver++2m", "belm")
DEFAULT_SCALES = (1.0, 2.0, 4.0, 7.5)
DEFAULT_STEPS = (10, 20, 50)
#: the exactly invertible solver that is also run in float64 (at the smallest S) to show its rounding floor
EXACT_SOLVER = "belm"
QUICK_SOLVERS = ("euler", "belm")
QUICK_SCALES = (1.0, 4.0)
QUICK_STEPS = (10,)


def guided_inversion_study(
    *,
    solvers: Sequence[str] | None = None,
    steps: Sequence[int] = DEFAULT_STEPS,
    scales: Sequence[float] = DEFAULT_SCALES,
    num: int = 64,
    dtype: str = "float32",
    run: StudyRun | None = None,
) -> dict[str, Any]:
    """Round-trip MSE of guided inversion for every solver, guidance weight w and step count S.

    Args:
        solvers: solver names that can encode (default :data:`DEFAULT_SOLVERS`).
        steps: the step counts S of each direction.
        scales: the guidance weights w (w = 1 is the conditional model alone); the same w encodes
            and decodes.
        num: number of held-out digits (the first ``num`` of a permutation drawn with ``run.seed``),
            each conditioned on its true label. ``quick``: 8 images, S = 10, w ∈ {1, 4}, Euler and BELM.
        dtype: the state dtype. When it is float32 and ``belm`` is among the solvers, ``belm`` is
            also run in float64 at the smallest S, every w and on the flow model.

    Writes ``guided-inversion.json`` (every number, settings and environment), ``guided-inversion.png``
    (MSE against w, one panel per S, one line per solver; the flow model's unguided MSE as dashed
    levels) and ``guided-inversion.md`` (the table) to the output folder; returns the JSON document.
    """
    run = run or StudyRun()
    dev, dt = run.torch_device(), check_dtype(dtype)
    if run.quick:
        num, steps, scales = min(num, 8), QUICK_STEPS, QUICK_SCALES
        solvers = solvers or QUICK_SOLVERS
    names = check_solvers(solvers or DEFAULT_SOLVERS)
    for name in names:
        if not get_solver(name).can_encode:
            raise ValueError(f"solver {name!r} cannot encode; this study needs solvers that invert")
    if not steps or min(steps) < 1:
        raise ValueError(f"steps must be a non-empty list of positive step counts, got {list(steps)}")
    scale_list = [float(w) for w in scales]
    if not scale_list or not all(np.isfinite(w) for w in scale_list):
        raise ValueError(f"scales must be a non-empty list of finite guidance weights, got {list(scales)}")
    x0, labels = _heldout(num, run.seed_or(0))
    cond, flow = resolve_model(COND_MODEL, device=dev), resolve_model(FLOW_MODEL, device=dev)
    jobs: list[tuple[ResolvedModel, str, str, int, float | None, torch.dtype]] = [
        (cond, COND_MODEL, name, n, w, dt) for name in names for n in steps for w in scale_list
    ]
    jobs += [(flow, FLOW_MODEL, name, n, None, dt) for name in names for n in steps]
    if EXACT_SOLVER in names and dt != torch.float64:
        n_min = min(steps)
        jobs += [(cond, COND_MODEL, EXACT_SOLVER, n_min, w, torch.float64) for w in scale_list]
        jobs += [(flow, FLOW_MODEL, EXACT_SOLVER, n_min, None, torch.float64)]
    results = [
        _round_trip(x0.to(dev, d), labels.to(dev), resolved, label, name, n, w)
        for resolved, label, name, n, w, d in progress(jobs, len(jobs), "guided round trips", run.show_progress)
    ]
    doc = {
        "study": STUDY,
        "settings": {
            "solvers": names,
            "steps": list(steps),
            "scales": scale_list,
            "num": len(x0),
            "seed": run.seed_or(0),
            "models": {
                COND_MODEL: {"schedule": repr(cond.schedule), "grid": "uniform", "guided": True},
                FLOW_MODEL: {"schedule": repr(flow.schedule), "grid": "uniform (S+1 points)[1:]", "guided": False},
            },
            "data": "held-out digits with their true labels",
            "data_scale": "MSE per dimension with data mapped from [-1, 1] to [0, 1]",
            "dtype": str(dt).replace("torch.", ""),
            "quick": run.quick,
        },
        "environment": environment(dev, dt),
        "results": results,
    }
    return finish(doc, run.folder(STUDY), render_guided_inversion)


def _heldout(num: int, seed: int) -> tuple[Tensor, Tensor]:
    """``num`` held-out digits (model scale [−1, 1]) and their labels, drawn with ``seed``."""
    from ..data import load_digits_labels

    images, labels = load_digits_labels("heldout")
    if not 1 <= num <= len(images):
        raise ValueError(f"num must be between 1 and {len(images)} (the held-out digits), got {num}")
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num]
    return images[idx], labels[idx]


def _round_trip(
    x0: Tensor, labels: Tensor, resolved: ResolvedModel, label: str, name: str, n: int, w: float | None
) -> dict[str, Any]:
    """One result row: encode then decode ``x0`` with solver ``name``, S = ``n`` and guidance ``w``."""
    kw: dict[str, Any] = dict(model=resolved.model, schedule=resolved.schedule, prediction=resolved.prediction)
    if w is None:
        sigmas = make_grid(resolved.schedule, "uniform", n + 1)[1:]  # S steps from a finite top
        kw["sigmas"] = sigmas
        top = float(sigmas[0])
    else:
        kw.update(grid="uniform", model_kwargs={"y": labels}, guidance_scale=w)
        top = float(make_grid(resolved.schedule, "uniform", n)[0])
    t0 = time.perf_counter()
    with torch.no_grad():
        enc = encode(x0, name, n, return_solution=True, **kw)
        dec = decode(enc.x, name, n, return_solution=True, **kw)
    per_image = ((dec.x - x0) / 2).double().pow(2).flatten(1).mean(1)
    return {
        "model": label,
        "solver": name,
        "steps": n,
        "guidance_scale": w,
        "dtype": str(x0.dtype).replace("torch.", ""),
        "top_sigma": top,
        "nfe_round_trip": enc.nfe + dec.nfe,
        "mse": float(per_image.mean()),
        "mse_stderr": float(per_image.std() / np.sqrt(len(per_image))) if len(per_image) > 1 else 0.0,
        "max_abs": float((dec.x - x0).abs().max() / 2),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _rows(doc: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [r for r in doc["results"] if all(r.get(k) == v for k, v in match.items())]


def plot_guided_inversion(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """MSE against w (log scale), one panel per S and one line per solver; the flow model's unguided
    MSE as a dashed level in the solver's colour; float64 BELM as a dotted line. Re-plottable from the JSON."""
    plt = pyplot()
    settings = doc["settings"]
    steps, scales, dtype = settings["steps"], settings["scales"], settings["dtype"]
    fig, axes = plt.subplots(1, len(steps), figsize=(4.2 * len(steps), 4.0), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, n in zip(axes[0], steps):
        for i, name in enumerate(settings["solvers"]):
            c = colors[i % len(colors)]
            rows = _rows(doc, model=COND_MODEL, solver=name, steps=n, dtype=dtype)
            if rows:
                ax.semilogy(
                    [r["guidance_scale"] for r in rows], [max(r["mse"], 1e-35) for r in rows], "o-", c=c, label=name
                )
            for r in _rows(doc, model=FLOW_MODEL, solver=name, steps=n, dtype=dtype):
                ax.axhline(max(r["mse"], 1e-35), color=c, ls="--", lw=1, label=f"{name}, flow, unguided")
            hi = _rows(doc, model=COND_MODEL, solver=name, steps=n, dtype="float64")
            if hi and dtype != "float64":
                ax.semilogy(
                    [r["guidance_scale"] for r in hi],
                    [max(r["mse"], 1e-35) for r in hi],
                    "s:",
                    c=c,
                    label=f"{name}, float64",
                )
        ax.set_xticks(scales)
        ax.set_xlabel("guidance weight w (encode and decode)")
        ax.set_title(f"S = {n} steps each way")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("round-trip MSE per dimension, data in [0, 1]")
    axes[0][0].legend(fontsize=7, loc="center right")
    fig.suptitle(f"inversion under guidance: {COND_MODEL} (solid), {FLOW_MODEL} unguided (dashed)")
    fig.tight_layout()
    return save_figure(fig, Path(out_dir) / f"{STUDY}.png")


def guided_inversion_table(doc: dict[str, Any]) -> str:
    """The Markdown table: one row per (solver, S, dtype), MSE at each w, the flow model's MSE, and the NFE."""
    settings = doc["settings"]
    scales = settings["scales"]
    head = ["solver", "S", "dtype", "NFE (round trip)", *(f"w={w:g}" for w in scales), f"{FLOW_MODEL} (no guidance)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in settings["solvers"]:
        for dtype in dict.fromkeys([settings["dtype"], "float64"]):
            for n in settings["steps"]:
                cond = {r["guidance_scale"]: r for r in _rows(doc, model=COND_MODEL, solver=name, steps=n, dtype=dtype)}
                flow = _rows(doc, model=FLOW_MODEL, solver=name, steps=n, dtype=dtype)
                if not cond and not flow:
                    continue
                nfe = next(iter(cond.values()))["nfe_round_trip"] if cond else "–"
                cells = [f"{cond[w]['mse']:.2e}" if w in cond else "–" for w in scales]
                flow_cell = f"{flow[0]['mse']:.2e} (NFE {flow[0]['nfe_round_trip']})" if flow else "–"
                lines.append("| " + " | ".join([name, str(n), dtype, str(nfe), *cells, flow_cell]) + " |")
    return "\n".join(lines) + "\n"


def render_guided_inversion(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """Draw the plot and write the Markdown table; returns the plot's path."""
    write_markdown(Path(out_dir) / f"{STUDY}.md", guided_inversion_table(doc))
    return plot_guided_inversion(doc, out_dir)
