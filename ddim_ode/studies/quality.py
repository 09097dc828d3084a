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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..analytic import AnalyticModel
from ..driver import decode
from ..io import sample_shape
from ..models import ResolvedModel, resolve_model
from ..solvers import SOLVERS, get_solver
from .common import StudyRun, check_dtype, environment, finish, model_name, progress, pyplot, save_figure

__all__ = ["quality_study", "plot_quality", "sliced_wasserstein", "AnalyticMetric", "FrechetMetric"]

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


class AnalyticMetric:
    """Exact mean log-likelihood and sliced Wasserstein distance to ``num`` exact samples of an oracle."""

    name = "sliced_wasserstein"

    def __init__(self, oracle: AnalyticModel, num: int, seed: int) -> None:
        self.oracle, self.num, self.seed = oracle, num, seed
        self.reference = oracle.sample(num, torch.Generator().manual_seed(seed + 1))

    def score(self, x0: Tensor) -> dict[str, float]:
        return {
            "log_likelihood": float(self.oracle.log_prob(x0.double()).mean()),
            "sliced_wasserstein": sliced_wasserstein(x0, self.reference, seed=self.seed),
        }

    def baseline(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, float]:
        """The scores of other exact samples."""
        other = self.oracle.sample(self.num, torch.Generator().manual_seed(self.seed + 2))
        return {
            "exact_samples_log_likelihood": float(self.oracle.log_prob(self.reference).mean()),
            "exact_samples_sliced_wasserstein": sliced_wasserstein(other, self.reference, seed=self.seed),
        }


class FrechetMetric:
    """Fréchet distance to the held-out digits in the shipped classifier's feature space."""

    name = "frechet_distance"

    def __init__(self, device: torch.device, num: int, seed: int) -> None:
        from ..data import load_digits
        from ..features import features, load_classifier

        self.device, self.num, self.seed = device, num, seed
        self.clf = load_classifier(device)
        self.ref_feats = features(load_digits("heldout").to(device), self.clf)

    def _fd(self, x: Tensor) -> float:
        from ..features import features, frechet_distance

        return frechet_distance(features(x, self.clf), self.ref_feats)

    def score(self, x0: Tensor) -> dict[str, float]:
        return {"frechet_distance": self._fd(x0.clamp(-1, 1))}

    def baseline(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, float]:
        """The scores of ``num`` training digits and of uniform noise drawn with ``generator``."""
        from ..data import load_digits

        train = load_digits("train")
        sub = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))[: self.num]]
        noise = torch.rand((self.num, *shape), generator=generator).to(self.device) * 2 - 1
        return {"train_digits_fd": self._fd(sub.to(self.device)), "uniform_noise_fd": self._fd(noise)}


def _runs(
    steps: Sequence[int], etas: Sequence[float], higher: Sequence[str], nfes: Sequence[int]
) -> list[dict[str, Any]]:
    """The DDIM family (η = 0 is euler, η > 0 the ddim solver) at every S, then each higher-order
    solver at n = round(NFE / NFE per step) for each NFE (n ≥ 2)."""
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
    steps: Sequence[int] = DEFAULT_STEPS,
    etas: Sequence[float] = DEFAULT_ETAS,
    higher: Sequence[str] = DEFAULT_HIGHER,
    nfes: Sequence[int] = DEFAULT_NFES,
    num: int = 300,
    grid: str = "uniform",
    batch_size: int = 300,
    dtype: str = "float32",
    prediction: str | None = None,
    run: StudyRun | None = None,
) -> dict[str, Any]:
    """Quality of ``num`` samples for S ∈ ``steps`` × η ∈ ``etas``, plus ``higher`` solvers at NFE ∈ ``nfes``.

    With ``analytic`` given (and ``schedule``), samples come from that exact oracle and the metrics
    are the exact mean log-likelihood and the sliced Wasserstein distance (:class:`AnalyticMetric`);
    otherwise from ``model`` (default: the built-in model) and the metric is the Fréchet distance to
    the held-out digits in the shipped classifier's feature space (:class:`FrechetMetric`).
    ``quick``: 64 samples, S ∈ {10, 20}, η ∈ {0, 1}. Writes ``quality.json`` and ``quality.png``.
    """
    run = run or StudyRun()
    dev, dt, seed = run.torch_device(), check_dtype(dtype), run.seed_or(0)
    if run.quick:
        num, steps, etas, nfes, higher = min(num, 64), (10, 20), (0.0, 1.0), (10,), higher[:2]
    if analytic is not None:
        if schedule is None:
            raise ValueError("an analytic study needs a schedule")
        resolved = resolve_model(analytic, schedule, "eps")
        shape: tuple[int, ...] = analytic.event_shape
        metric: AnalyticMetric | FrechetMetric = AnalyticMetric(analytic, num, seed)
    else:
        resolved = resolve_model(model, schedule, prediction, dev)
        shape = sample_shape(resolved.metadata)
        metric = FrechetMetric(dev, num, seed)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((num, *shape), generator=g).to(dev, dt)
    runs = _runs(steps, etas, higher, nfes)
    results = [
        {**r, **_sample_and_score(x_T, r, resolved, grid, batch_size, seed, metric)}
        for r in progress(runs, len(runs), "quality", run.show_progress)
    ]
    doc = {
        "study": "quality",
        "settings": {
            "metric": metric.name,
            "steps": list(steps),
            "etas": list(etas),
            "higher": [h for h in higher if h in SOLVERS],
            "nfes": list(nfes),
            "num": num,
            "grid": grid,
            "seed": seed,
            "schedule": repr(resolved.schedule),
            "model": repr(analytic) if analytic is not None else model_name(model),
            "quick": run.quick,
        },
        "baseline": metric.baseline(shape, g),
        "environment": environment(dev, dt),
        "results": results,
    }
    return finish(doc, run.folder("quality"), plot_quality)


def _sample_and_score(
    x_T: Tensor,
    run: dict[str, Any],
    resolved: ResolvedModel,
    grid: str,
    batch_size: int,
    seed: int,
    metric: AnalyticMetric | FrechetMetric,
) -> dict[str, Any]:
    """Decode ``x_T`` with one run's solver, steps and η; its NFE, time and scores."""
    opts: dict[str, Any] = {}
    if run["solver"] == "ddim":
        opts = {"eta": run["eta"], "generator": torch.Generator(x_T.device).manual_seed(seed + 7)}
    t0 = time.perf_counter()
    xs, nfe = [], 0
    with torch.no_grad():
        for i in range(0, len(x_T), batch_size):
            sol = decode(
                x_T[i : i + batch_size],
                run["solver"],
                run["steps"],
                model=resolved.model,
                schedule=resolved.schedule,
                grid=grid,
                prediction=resolved.prediction,
                solver_options=opts,
                return_solution=True,
            )
            xs.append(sol.x)
            nfe = sol.nfe
    return {"nfe": nfe, "seconds": round(time.perf_counter() - t0, 2), **metric.score(torch.cat(xs))}


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
