"""What every study shares: how it runs (:class:`StudyRun`), the environment record, progress bars,
plotting set-up and the final write of its JSON and plots."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._files import atomic_path, write_json

__all__ = [
    "StudyRun",
    "environment",
    "model_name",
    "pyplot",
    "save_figure",
    "write_markdown",
    "progress",
    "fit_order",
    "rms",
    "DTYPES",
    "check_dtype",
    "check_solvers",
    "finish",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class StudyRun:
    """Where and how a study runs; the same for every study.

    Attributes:
        out_dir: output folder (default ``results/<study>``).
        device: where the model and the state live.
        seed: the seed of the study's random draws (default: the study's own, 0 for most).
        quick: the study's small version, seconds on a CPU (the tests run every study that way).
        show_progress: progress bars on stderr.
    """

    out_dir: str | Path | None = None
    device: str | torch.device = "cpu"
    seed: int | None = None
    quick: bool = False
    show_progress: bool = True

    def folder(self, study: str) -> Path:
        return Path(self.out_dir) if self.out_dir is not None else Path("results") / study

    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def seed_or(self, default: int) -> int:
        return self.seed if self.seed is not None else default


def model_name(model: Any) -> str:
    """How the JSON names the model a study ran: ``built-in`` or the class of the object passed in."""
    return "built-in" if model is None else type(model).__name__


def environment(device: torch.device | str, dtype: torch.dtype) -> dict[str, Any]:
    """Package and torch versions, device, threads, dtype and date: stored with every result."""
    from .. import __version__

    dev = torch.device(device)
    info: dict[str, Any] = {
        "ddim_ode": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", ""),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return info


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 120, tight: bool = True) -> Path:
    """Save a matplotlib figure as PNG atomically and close it; ``tight``: crop to the drawn artists
    (one more layout pass: a figure laid out with ``tight_layout`` does not need it)."""
    p = Path(path)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight" if tight else None, format="png")
    pyplot().close(fig)
    return p


def write_markdown(path: str | Path, text: str) -> Path:
    """Write a Markdown table (or any text) atomically."""
    p = Path(path)
    with atomic_path(p) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return p


def progress(items: Iterable[Any], total: int, desc: str, enabled: bool) -> Iterator[Any]:
    """``items`` with a progress bar on stderr when ``enabled``."""
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=desc, disable=not enabled, leave=False)


def rms(a: Tensor, b: Tensor) -> float:
    """RMS per dimension of ``a − b`` over the whole batch, in float64."""
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def fit_order(nfe: Sequence[float], err: Sequence[float | None]) -> float:
    """Empirical order: −slope of log(err) against log(NFE) (NaN with fewer than 2 usable points)."""
    pts = [(a, b) for a, b in zip(nfe, err) if b is not None and np.isfinite(b) and b > 0]
    if len(pts) < 2:
        return float("nan")
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(-np.polyfit(x, y, 1)[0])


def check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_solvers(names: Iterable[str]) -> list[str]:
    from ..solvers import SOLVERS

    out = list(names)
    for name in out:
        if name not in SOLVERS:
            raise ValueError(f"unknown solver {name!r}; available: {', '.join(sorted(SOLVERS))}")
    return out


def finish(
    doc: dict[str, Any], out_dir: str | Path, render: Callable[[dict[str, Any], Path], Any] | None
) -> dict[str, Any]:
    """Write ``<study>.json`` into ``out_dir`` (NaN allowed: a failed fit is NaN) and draw its
    plots and tables with ``render``; returns ``doc``."""
    out = Path(out_dir)
    write_json(out / f"{doc['study']}.json", doc, allow_nan=True)
    if render is not None:
        render(doc, out)
    return doc
