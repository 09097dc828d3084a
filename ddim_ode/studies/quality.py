"""Sample quality versus steps S and η (the DDIM paper's Table 1 analogue).

* The built-in digits model (or any image model): the Fréchet distance between generated
  samples and the held-out digits in the feature space of the shipped digit classifier
  (:mod:`ddim_ode.features`).
* An analytic mixture (:mod:`ddim_ode.analytic`): the mean exact log-likelihood of the samples
  under the data distribution and the sliced Wasserstein-2 distance to exact samples.

η > 0 uses the stochastic ``ddim`` solver (η = 1 is DDPM ancestral sampling); the higher-order
solvers are compared at equal NFE.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..analytic import AnalyticModel
from ..driver import decode
from ..solvers import SOLVERS, get_solver
from .common import (
    check_dtype,
    environment,
    event_shape,
    finish,
    markdown_table,
    progress,
    pyplot,
    resolve_model,
    save_figure,
)

__all__ = ["quality_study", "plot_quality", "quality_table", "sliced_wasserstein"]

DEFAULT_STEPS = (10, 20, 50, 100, 1000)
DEFAULT_ETAS = (0.0, 0.2, 0.5, 1.0)
DEFAULT_HIGHER = ("heun", "dpm-solver++2m", "dpm-solver++3m", "unipc", "plms")
DEFAULT_NFES = (10, 20, 50)


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two equal-size point sets (rows are points)."""
    a2, b2 = a.reshape(len(a), -1).double().cpu(), b.reshape(len(b), -1).double().cpu()
    m = min(len(a2), len(b2))
    a2, b2 = a2[:m], b2[:m]
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a2.shape[1], projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a2 @ dirs, dim=0)
    pb, _ = torch.sort(b2 @ dirs, dim=0)
    return float((pa - pb).pow(2).mean().sqrt())


def _runs(steps: tuple[int, ...], etas: tuple[float, ...], higher: tuple[str, ...], nfes: tuple[int, ...]):  # type: ignore[no-untyped-def]
    runs: list[dict[str, Any]] = []
    for eta in etas:
        for n in steps:
            if eta == 0.0:
                runs.append({"solver": "euler", "eta": 0.0, "steps": n})
            elif "ddim" in SOLVERS:
                runs.append({"solver": "ddim", "eta": eta, "steps": n})
    for name in higher:
        if name not in SOLVERS:
            continue
        per = get_solver(name).nfe_per_step
        for nfe in nfes:
            n = int(round(nfe / per))
            if n >= 2:
                runs.append({"solver": name, "eta": 0.0, "steps": n})
    return runs


def quality_study(
    model: Any = None,
    schedule: Any = None,
    *,
    analytic: AnalyticModel | None = None,
    steps: tuple[int, ...] = DEFAULT_STEPS,
    etas: tuple[float, ...] = DEFAULT_ETAS,
    higher: tuple[str, ...] = DEFAULT_HIGHER,
    nfes: tuple[int, ...] = DEFAULT_NFES,
    num: int = 300,
    grid: str = "uniform",
    batch_size: int = 300,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    prediction: str = "eps",
    out_dir: str | Path = "results/quality",
    quick: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Quality of ``num`` samples for S ∈ ``steps`` × η ∈ ``etas``, plus ``higher`` solvers at NFE ∈ ``nfes``.

    With ``analytic`` given (and ``schedule``), samples come from that exact oracle and the metrics
    are the exact mean log-likelihood and the sliced Wasserstein distance; otherwise from ``model``
    (default: the built-in model) and the metric is the Fréchet distance to the held-out digits in
    the shipped classifier's feature space. ``quick``: 64 samples, S ∈ {10, 20}, η ∈ {0, 1}.
    Writes ``quality.json`` and ``quality.png`` to ``out_dir``.
    """
    dev = torch.device(device)
    dt = check_dtype(dtype)
    if quick:
        num, steps, etas, nfes, higher = min(num, 64), (10, 20), (0.0, 1.0), (10,), higher[:2]
    if analytic is not None:
        if schedule is None:
            raise ValueError("an analytic study needs a schedule")
        model_, schedule_, prediction_ = analytic, schedule, "eps"
        shape: tuple[int, ...] = analytic.event_shape
        reference = analytic.sample(num, torch.Generator().manual_seed(seed + 1))
        metric = "sliced_wasserstein"
    else:
        model_, schedule_, prediction_, meta = resolve_model(model, schedule, dev, prediction)
        shape = event_shape(meta)
        from ..data import load_digits
        from ..features import features, load_classifier

        clf = load_classifier(dev)
        ref_feats = features(load_digits("heldout").to(dev), clf)
        metric = "frechet_distance"
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((num, *shape), generator=g).to(dev, dt)
    runs = _runs(tuple(steps), tuple(etas), tuple(higher), tuple(nfes))
    results = []
    for run in progress(runs, len(runs), "quality", show_progress):
        opts: dict[str, Any] = {}
        if run["solver"] == "ddim":
            opts = {"eta": run["eta"], "generator": torch.Generator(dev).manual_seed(seed + 7)}
        t0 = time.perf_counter()
        xs, nfe = [], 0
        with torch.no_grad():
            for i in range(0, num, batch_size):
                sol = decode(
                    x_T[i : i + batch_size],
                    run["solver"],
                    run["steps"],
                    model=model_,
                    schedule=schedule_,
                    grid=grid,
                    prediction=prediction_,  # type: ignore[arg-type]
                    solver_options=opts,
                    return_solution=True,
                )
                xs.append(sol.x)
                nfe = sol.nfe
        x0 = torch.cat(xs)
        row = {**run, "nfe": nfe, "seconds": round(time.perf_counter() - t0, 2)}
        if analytic is not None:
            row["log_likelihood"] = float(analytic.log_prob(x0.double()).mean())
            row["sliced_wasserstein"] = sliced_wasserstein(x0, reference, seed=seed)
        else:
            from ..features import features, frechet_distance

            row["frechet_distance"] = frechet_distance(features(x0.clamp(-1, 1), clf), ref_feats)
        results.append(row)
    baseline: dict[str, float] = {}
    if analytic is not None:
        baseline["exact_samples_log_likelihood"] = float(analytic.log_prob(reference).mean())
        other = analytic.sample(num, torch.Generator().manual_seed(seed + 2))
        baseline["exact_samples_sliced_wasserstein"] = sliced_wasserstein(other, reference, seed=seed)
    else:
        from ..data import load_digits
        from ..features import features, frechet_distance

        train = load_digits("train")
        sub = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:num]]
        baseline["train_digits_fd"] = frechet_distance(features(sub.to(dev), clf), ref_feats)
        baseline["uniform_noise_fd"] = frechet_distance(
            features(torch.rand((num, *shape), generator=g).to(dev) * 2 - 1, clf), ref_feats
        )
    doc = {
        "study": "quality",
        "settings": {
            "metric": metric,
            "steps": list(steps),
            "etas": list(etas),
            "higher": [h for h in higher if h in SOLVERS],
            "nfes": list(nfes),
            "num": num,
            "grid": grid,
            "seed": seed,
            "schedule": repr(schedule_),
            "model": repr(analytic)
            if analytic is not None
            else ("built-in" if model is None else type(model).__name__),
            "quick": quick,
        },
        "baseline": baseline,
        "environment": environment(dev, dt),
        "results": results,
    }
    return finish(doc, out_dir, plot_quality)


def plot_quality(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """Metric against NFE: one line per η (DDIM family) and one per higher-order solver."""
    plt = pyplot()
    metric = doc["settings"]["metric"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for eta in doc["settings"]["etas"]:
        rows = [r for r in doc["results"] if r["solver"] in ("euler", "ddim") and r["eta"] == eta]
        if rows:
            ax.plot([r["nfe"] for r in rows], [r[metric] for r in rows], "o-", label=f"DDIM η={eta:g}")
    for name in doc["settings"]["higher"]:
        rows = [r for r in doc["results"] if r["solver"] == name]
        if rows:
            ax.plot([r["nfe"] for r in rows], [r[metric] for r in rows], "s--", label=name)
    for key, val in doc.get("baseline", {}).items():
        if "fd" in key or "wasserstein" in key:
            ax.axhline(val, color="gray", lw=0.8, ls=":")
            ax.annotate(key.replace("_", " "), (ax.get_xlim()[0], val), fontsize=7, color="gray")
    ax.set_xscale("log")
    if metric != "log_likelihood":
        ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title("sample quality vs NFE and η")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out_dir) / "quality.png")


def quality_table(doc: dict[str, Any]) -> str:
    """Markdown: rows η, columns S (DDIM family), then one row per higher-order solver."""
    metric = doc["settings"]["metric"]
    steps = doc["settings"]["steps"]
    rows = []
    for eta in doc["settings"]["etas"]:
        by_s = {r["steps"]: r[metric] for r in doc["results"] if r["solver"] in ("euler", "ddim") and r["eta"] == eta}
        rows.append([f"DDIM η={eta:g}"] + [by_s.get(s) for s in steps])
    table = markdown_table(["sampler"] + [f"S={s}" for s in steps], rows)
    hrows = [
        [r["solver"], r["steps"], r["nfe"], r[metric]]
        for r in doc["results"]
        if r["solver"] in doc["settings"]["higher"]
    ]
    if hrows:
        table += "\n\n" + markdown_table(["solver", "steps", "NFE", metric.replace("_", " ")], hrows)
    return table
