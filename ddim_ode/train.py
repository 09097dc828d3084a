"""Training a UNet with the DDPM objective (Ho, Jain & Abbeel 2020, Algorithm 1) or rectified flow.

Objectives (``objective=``):

* ``"eps"`` (DDPM): each step draws a batch ``x0`` of training images, integer timesteps
  ``t ~ U{0, …, T−1}`` of a :class:`~ddim_ode.schedules.DiscreteSchedule` and noise
  ``ε ~ N(0, I)``, forms ``x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε`` and minimises ``‖ε_θ(x_t, t) − ε‖²``.
  The saved model predicts ``"eps"``.
* ``"flow"`` (rectified flow / flow matching; Liu, Gong & Liu 2023, Lipman et al. 2023): each step
  draws ``x0``, a time ``τ ~ U(0, 1)`` per sample and ``ε``, forms ``x_τ = (1 − τ) x0 + τ ε`` and
  minimises ``‖v_θ(x_τ, τ·timestep_scale) − (ε − x0)‖²`` on a
  :class:`~ddim_ode.schedules.FlowSchedule`. τ is uniform (the original rectified flow), not
  SD3's logit-normal (Esser et al. 2024): on 8×8 images the extremes of τ are as informative as the
  middle, and a sampler from pure noise (τ = 1) needs the network there. The saved model predicts
  ``"flow"``.

Both use AdamW (linear warm-up of the learning rate, then constant), gradient-norm clipping and an
exponential moving average (EMA) of the weights, which is the model that is returned and saved.

**Class conditioning** (``labels=``, a label per training image, with a class-conditional
:class:`~ddim_ode.unet.UNetConfig`): every step replaces each label of the batch by the null class
with probability ``label_dropout`` (:func:`drop_labels`), so the one network learns the conditional
and the unconditional model that classifier-free guidance combines (Ho & Salimans 2022).

Everything random (initialisation, batches, timesteps, noise) comes from one seeded
``torch.Generator``; the global RNG is only used by dropout, inside a forked and seeded RNG scope,
so a run is reproducible and leaves the caller's RNG state untouched. A checkpoint
(``checkpoint.pt``, weights-only loadable) is written atomically every ``checkpoint_every`` steps
and at the end; a later call with the same ``out_dir`` resumes from it (and may raise ``steps``).

Every argument is checked (type and range, one-line ``ValueError`` naming it) and the output
directory is checked to be writable before any data are loaded or any network is built.

Reproduce the shipped model with::

    OMP_NUM_THREADS=1 python -m ddim_ode.train --preset digits --out-dir ddim_ode/weights/digits --threads 1

and the other built-in models with ``--preset digits-cond`` and ``--preset digits-flow`` (see ``docs/model.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import reprlib
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._files import TMP_MARK, atomic_write
from .data import DIGITS_HELDOUT, DIGITS_SCALING, check_source, load_dataset, load_digits_labels
from .io import check_extra_metadata, load_weights_only, save_model, schedule_from_dict, schedule_to_dict
from .ranges import check_bool, check_float, check_int
from .schedules import DiscreteSchedule, FlowSchedule, Schedule
from .unet import UNet, UNetConfig

__all__ = [
    "train",
    "drop_labels",
    "TrainResult",
    "OBJECTIVES",
    "PRESETS",
    "CHECKPOINT_FILE",
    "LOSS_PLOT_FILE",
    "MAX_BATCH_SIZE",
    "MAX_THREADS",
    "save_loss_plot",
    "main",
]

CHECKPOINT_FILE = "checkpoint.pt"
LOSS_PLOT_FILE = "loss.png"
#: bounds of ``batch_size`` and of the command line's ``--threads``
MAX_BATCH_SIZE = 65536
MAX_THREADS = 1024
_MAX_SEED = 2**63 - 1
#: the training objectives: DDPM ε-prediction, rectified-flow velocity
OBJECTIVES = ("eps", "flow")
#: what each objective's network predicts (the ``prediction`` of the saved model) and its loss, for the records
_OBJECTIVE_RECORD = {
    "eps": ("DDPM epsilon-prediction MSE (Ho et al. 2020)", "MSE(ε̂, ε)"),
    "flow": (
        "rectified-flow velocity MSE: target eps - x0 at x_tau = (1 - tau) x0 + tau eps, tau ~ U(0, 1) "
        "(Liu et al. 2023; Lipman et al. 2023)",
        "MSE(v̂, ε − x0)",
    ),
}


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the EMA model (eval mode) — the one to sample from.
        raw_model: the last optimised weights (train mode).
        losses: the training loss of every step, from step 1 (resumed runs included).
        steps: the number of optimisation steps done in total.
        wall_time_s: training wall time in seconds, summed over resumed runs.
        final_loss: mean loss over the last ``min(500, steps)`` steps.
        out_dir: where the model, checkpoint and loss plot were written (or ``None``).
        schedule: the schedule the model was trained with.
    """

    model: UNet
    raw_model: UNet
    losses: list[float]
    steps: int
    wall_time_s: float
    final_loss: float
    out_dir: Path | None = None
    schedule: Schedule | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Hyperparameters:
    """The optimisation settings of a run, each checked for type and range on construction."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    ema_decay: float
    grad_clip: float
    seed: int
    checkpoint_every: int

    def __post_init__(self) -> None:
        checked = {
            "steps": check_int("steps", self.steps, 1),
            "batch_size": check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE),
            "lr": check_float("lr", self.lr, 0.0, low_open=True),
            "weight_decay": check_float("weight_decay", self.weight_decay, 0.0),
            "warmup_steps": check_int("warmup_steps", self.warmup_steps, 0),
            "ema_decay": check_float("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True),
            "grad_clip": check_float("grad_clip", self.grad_clip, 0.0),
            "seed": check_int("seed", self.seed, 0, _MAX_SEED),
            "checkpoint_every": check_int("checkpoint_every", self.checkpoint_every, 0),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): linear warm-up over ``warmup_steps``, then ``lr``."""
        return self.lr * min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else self.lr

    def ema_decay_at(self, step: int) -> float:
        """``min(ema_decay, (1 + k)/(10 + k))``: a short memory while the weights move fast."""
        return min(self.ema_decay, (1.0 + step) / (10.0 + step))

    def record(self) -> dict[str, Any]:
        """The settings recorded in ``config.json`` and in the checkpoint."""
        return {
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup_steps,
            "ema_decay": self.ema_decay,
            "grad_clip": self.grad_clip,
            "seed": self.seed,
        }


@dataclass
class _Run:
    """The evolving state of a run: everything a checkpoint restores besides the run's identity."""

    model: UNet
    ema: UNet
    opt: torch.optim.Optimizer
    gen: torch.Generator
    losses: list[float] = field(default_factory=list)
    step: int = 0
    wall_before: float = 0.0
    rng_state: Mapping[str, Tensor] | None = None

    @classmethod
    def start(cls, config: UNetConfig, hp: _Hyperparameters, device: torch.device) -> _Run:
        """A fresh run: the network initialised from the run's seeded generator, its EMA copy, AdamW."""
        gen = torch.Generator().manual_seed(hp.seed)
        model = UNet(config, generator=gen).to(device)
        ema = copy.deepcopy(model).requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return cls(model, ema, opt, gen)

    def state_dict(self, wall: float, device: torch.device) -> dict[str, Any]:
        """Networks, optimiser, both RNG streams and progress (call inside the run's RNG scope)."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "generator": self.gen.get_state(),
            "rng": _global_rng_state(device),
            "losses": list(self.losses),
            "step": self.step,
            "wall_time_s": wall,
        }

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.gen.set_state(ckpt["generator"])
        self.losses = [float(v) for v in ckpt["losses"]]
        self.step, self.wall_before, self.rng_state = int(ckpt["step"]), float(ckpt["wall_time_s"]), ckpt["rng"]


def _data_metadata(data: Any, x: Tensor, labels: Any = None) -> dict[str, Any]:
    shape = list(x.shape[1:])
    if isinstance(data, str) and data == "digits":
        labelled = {"labels": "the digit shown, 0..9 (sklearn target)"} if labels is not None else {}
        return {
            "name": "digits",
            "source": "sklearn.datasets.load_digits",
            "split": f"train: the first {x.shape[0]} images (the last {DIGITS_HELDOUT} are held out)",
            "scaling": DIGITS_SCALING,
            "range": [-1.0, 1.0],
            "shape": shape,
            "num_images": int(x.shape[0]),
            **labelled,
        }
    name = str(data) if isinstance(data, (str, Path)) else "in-memory array"
    labelled = {"labels": "an integer label per image, given in memory"} if labels is not None else {}
    return {
        "name": name,
        "scaling": "see ddim_ode.data",
        "range": [-1.0, 1.0],
        "shape": shape,
        "num_images": int(x.shape[0]),
        **labelled,
    }


@contextlib.contextmanager
def _forked_rng(device: torch.device, seed: int, state: Mapping[str, Tensor] | None) -> Iterator[None]:
    """A private global-RNG scope (used by dropout only): seeded or restored, then undone on exit."""
    cuda = device.type == "cuda"
    index = device.index if device.index is not None else (torch.cuda.current_device() if cuda else 0)
    with torch.random.fork_rng(devices=[index] if cuda else []):
        if state is not None:
            torch.set_rng_state(state["cpu"])
            if cuda and "cuda" in state:
                torch.cuda.set_rng_state(state["cuda"], index)
        else:
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _global_rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_loss_plot(
    losses: Sequence[float], path: str | Path, title: str = "DDPM training loss", ylabel: str = "MSE(ε̂, ε)"
) -> Path:
    """Write a PNG of the per-step loss and its moving average (matplotlib Agg; atomic write)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y = np.asarray(losses, dtype=np.float64)
    steps = np.arange(1, len(y) + 1)
    fig = Figure(figsize=(6.0, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, y, lw=0.5, alpha=0.35, color="C0", label="per step")
    window = max(1, min(200, len(y) // 10))
    if len(y) >= window > 1:
        smooth = np.convolve(y, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, color="C1", label=f"mean of {window} steps")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    out = Path(path)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    return out


def _check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that can hold tensors here (default: CUDA if available, else CPU)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be a name such as 'cpu' or 'cuda:0', got {reprlib.repr(device)}")
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ValueError(f"device {str(device)!r} is not usable here: {str(err).splitlines()[0]}") from None
    if dev.type == "meta":
        raise ValueError("device 'meta' holds no data; allowed: 'cpu' or an available accelerator such as 'cuda'")
    return dev


def _check_out_dir(out_dir: Any) -> Path | None:
    """Create ``out_dir`` if needed and make sure a file can be written in it (``OSError`` naming it if not)."""
    if out_dir is None:
        return None
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        raise ValueError(f"out_dir must be a directory path or None, got {reprlib.repr(out_dir)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {str(out)!r} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".write-check{TMP_MARK}", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise type(err)(f"out_dir {str(out)!r} is not a writable directory: {err.strerror or err}") from None
    return out


def _check_options(
    config: Any, schedule: Any, objective: Any, resume: Any, progress: Any, command: Any, metadata: Any
) -> dict[str, Any]:
    """Check train()'s other arguments; returns the extra ``config.json`` entries."""
    if config is not None and not isinstance(config, UNetConfig):
        raise TypeError(f"config must be a UNetConfig or None, got {type(config).__name__}")
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {reprlib.repr(objective)}; allowed: {', '.join(OBJECTIVES)}")
    if objective == "eps" and schedule is not None and not isinstance(schedule, DiscreteSchedule):
        raise TypeError(
            f"the eps objective trains on a DiscreteSchedule (integer timesteps), got {type(schedule).__name__}; "
            "a FlowSchedule goes with objective='flow'"
        )
    if objective == "flow" and schedule is not None and not isinstance(schedule, FlowSchedule):
        raise TypeError(f"the flow objective trains on a FlowSchedule, got {type(schedule).__name__}")
    check_bool("resume", resume)
    check_bool("progress", progress)
    if command is not None and not isinstance(command, str):
        raise ValueError(f"command must be a string or None, got {reprlib.repr(command)}")
    return check_extra_metadata(metadata)


def _check_labels(labels: Any, data: Any) -> None:
    """What can be checked of ``labels`` before the data are read: ``None``, ``"digits"`` with
    ``data="digits"``, or an integer array."""
    if labels is None:
        return
    if isinstance(labels, str):
        if labels != "digits" or not (isinstance(data, str) and data == "digits"):
            raise ValueError(
                f"labels {labels!r}: the only named labels are 'digits', with data='digits'; "
                "otherwise pass an integer array with one label per image"
            )
        return
    if not isinstance(labels, (Tensor, np.ndarray)):
        raise ValueError(f"labels must be None, 'digits' or an integer array, got {type(labels).__name__}")
    y = torch.as_tensor(labels)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers >= 0, got dtype {y.dtype}")


def _load_labels(labels: Any, n: int) -> Tensor | None:
    """The class label of each of the ``n`` training images (int64), or None; ``ValueError`` if they do not fit
    (``labels`` has passed :func:`_check_labels`)."""
    if labels is None:
        return None
    if isinstance(labels, str):
        return load_digits_labels("train")[1].to(torch.int64)
    y = torch.as_tensor(labels)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), one per training image, got {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise ValueError(f"labels must be integers >= 0, got a minimum of {int(y.min())}")
    return y.to(torch.int64)


def _prepare_data(
    data: Any, labels: Any, config: UNetConfig | None, schedule: Schedule | None, objective: str
) -> tuple[Tensor, Tensor | None, UNetConfig, Schedule]:
    """The training images (float32) and labels, and the architecture and schedule with their defaults,
    checked against them."""
    x = load_dataset(data).to(torch.float32)
    y = _load_labels(labels, x.shape[0])
    _, c, h, w = x.shape
    if config is None:
        classes = int(y.max()) + 1 if y is not None else 0
        config = UNetConfig(in_channels=c, out_channels=c, resolution=h, num_classes=classes)
    if y is not None and not config.num_classes:
        raise ValueError("labels given for an unconditional config (num_classes=0); set config.num_classes")
    if y is None and config.num_classes:
        raise ValueError(f"config.num_classes={config.num_classes} needs labels, one per training image")
    if y is not None and int(y.max()) >= config.num_classes:
        raise ValueError(
            f"labels must lie in [0, {config.num_classes - 1}] for config.num_classes={config.num_classes} "
            f"(label {config.num_classes} is the null class), got a maximum of {int(y.max())}"
        )
    if config.in_channels != c or config.out_channels != c:
        raise ValueError(
            f"the data have {c} channels but config has in_channels={config.in_channels}, "
            f"out_channels={config.out_channels}"
        )
    if h != w or h != config.resolution:
        raise ValueError(
            f"the data are {h}x{w} images but config.resolution={config.resolution}; "
            "square images of that side are required"
        )
    if schedule is None:
        schedule = FlowSchedule() if objective == "flow" else DiscreteSchedule.linear(1e-4, 0.02, 1000)
    return x, y, config, schedule


def _resume(run: _Run, path: Path, identity: Mapping[str, Any]) -> None:
    """Restore ``run`` from the checkpoint at ``path``, which must be of the same config and schedule."""
    ckpt = load_weights_only(path)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path} is not a training checkpoint; use another out_dir or resume=False")
    if ckpt.get("config") != identity["config"]:
        raise ValueError(
            f"{path} was written for config {reprlib.repr(ckpt.get('config'))}, not {identity['config']}; "
            "use another out_dir or resume=False"
        )
    if ckpt.get("schedule") != identity["schedule"]:
        raise ValueError(
            f"{path} was written for another schedule ({reprlib.repr(ckpt.get('schedule'))}); "
            "use another out_dir or resume=False"
        )
    for key in ("objective", "conditioning"):
        if ckpt.get(key) != identity.get(key):
            raise ValueError(
                f"{path} was written for another {key} ({reprlib.repr(ckpt.get(key))}, not "
                f"{reprlib.repr(identity.get(key))}); use another out_dir or resume=False"
            )
    try:
        run.load_state_dict(ckpt)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{path} is an incomplete or damaged training checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); use another out_dir or resume=False"
        ) from None


def _write_checkpoint(path: Path, run: _Run, wall: float, device: torch.device, identity: Mapping[str, Any]) -> None:
    state = {**run.state_dict(wall, device), **identity}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def drop_labels(y: Tensor, p: float, null_class: int, generator: torch.Generator) -> Tensor:
    """``y`` with each label replaced by ``null_class`` with probability ``p`` (one uniform draw per label
    from ``generator``): the label dropout of classifier-free guidance training (Ho & Salimans 2022)."""
    drop = torch.rand(y.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(y, null_class), y)


@dataclass(frozen=True)
class _Objective:
    """What a step trains: the DDPM or flow objective on its schedule, with labels and their dropout or without."""

    kind: str
    schedule: Schedule
    labels: Tensor | None = None
    label_dropout: float = 0.0
    null_class: int = 0
    #: √ᾱ_t and √(1 − ᾱ_t) of every timestep (float32), for the DDPM objective
    sqrt_ab: Tensor | None = field(default=None, repr=False)
    sqrt_1m_ab: Tensor | None = field(default=None, repr=False)

    @classmethod
    def make(
        cls, kind: str, schedule: Schedule, labels: Tensor | None, label_dropout: float, null_class: int
    ) -> _Objective:
        if isinstance(schedule, DiscreteSchedule):
            ab = schedule.alphas_cumprod
            sqrt_ab, sqrt_1m_ab = ab.sqrt().to(torch.float32), (1.0 - ab).sqrt().to(torch.float32)
            return cls(kind, schedule, labels, label_dropout, null_class, sqrt_ab, sqrt_1m_ab)
        return cls(kind, schedule, labels, label_dropout, null_class)

    def batch(self, x: Tensor, gen: torch.Generator, batch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(x_t, t, target, y)`` of one step, everything drawn from ``gen``: images, time, noise, then the
        label dropout (in this order, so an unconditional DDPM run draws what it always drew)."""
        n, c, h, w = x.shape
        idx = torch.randint(n, (batch_size,), generator=gen)
        if self.sqrt_ab is not None and self.sqrt_1m_ab is not None:  # DDPM
            t = torch.randint(self.sqrt_ab.numel(), (batch_size,), generator=gen)
            eps = torch.randn((batch_size, c, h, w), generator=gen)
            x_t = self.sqrt_ab[t].view(-1, 1, 1, 1) * x[idx] + self.sqrt_1m_ab[t].view(-1, 1, 1, 1) * eps
            t_in, target = t.to(torch.float32), eps
        else:  # rectified flow on a FlowSchedule
            tau = torch.rand((batch_size,), generator=gen)
            eps = torch.randn((batch_size, c, h, w), generator=gen)
            tau4 = tau.view(-1, 1, 1, 1)
            x_t = (1.0 - tau4) * x[idx] + tau4 * eps
            t_in, target = tau * float(self.schedule.timestep_scale), eps - x[idx]
        y = None
        if self.labels is not None:
            y = drop_labels(self.labels[idx], self.label_dropout, self.null_class, gen)
        return x_t, t_in, target, y


def _train_step(run: _Run, x: Tensor, objective: _Objective, hp: _Hyperparameters, dev: torch.device) -> float:
    """One optimisation step of the objective's loss (batch, time, noise and label dropout from the run's generator)."""
    x_t, t, target, y = objective.batch(x, run.gen, hp.batch_size)
    for group in run.opt.param_groups:
        group["lr"] = hp.lr_at(run.step)
    if y is None:
        out = run.model(x_t.to(dev), t.to(dev))
    else:
        out = run.model(x_t.to(dev), t.to(dev), y.to(dev))
    loss = F.mse_loss(out, target.to(dev))
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if hp.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), hp.grad_clip)
    run.opt.step()
    decay = hp.ema_decay_at(run.step)
    with torch.no_grad():
        for p_ema, p in zip(run.ema.parameters(), run.model.parameters()):
            p_ema.lerp_(p, 1.0 - decay)
        for b_ema, b in zip(run.ema.buffers(), run.model.buffers()):
            b_ema.copy_(b)
    return float(loss.detach())


def _optimise(
    run: _Run,
    x: Tensor,
    objective: _Objective,
    hp: _Hyperparameters,
    dev: torch.device,
    ckpt_path: Path | None,
    identity: Mapping[str, Any],
    progress: bool,
) -> float:
    """The training loop from ``run.step`` to ``hp.steps``, checkpointing as it goes; returns the total wall time."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    run.model.train()
    with _forked_rng(dev, hp.seed, run.rng_state):
        bar = tqdm(
            total=hp.steps, initial=min(run.step, hp.steps), disable=not progress, desc="train", dynamic_ncols=True
        )
        while run.step < hp.steps:
            run.losses.append(_train_step(run, x, objective, hp, dev))
            run.step += 1
            bar.update(1)
            if run.step % 10 == 0 or run.step == hp.steps:
                bar.set_postfix(loss=f"{np.mean(run.losses[-100:]):.4f}")
            due = hp.checkpoint_every and run.step % hp.checkpoint_every == 0 and run.step < hp.steps
            if ckpt_path is not None and due:
                _write_checkpoint(ckpt_path, run, run.wall_before + time.perf_counter() - start, dev, identity)
        bar.close()
        wall = run.wall_before + time.perf_counter() - start
        if ckpt_path is not None:
            _write_checkpoint(ckpt_path, run, wall, dev, identity)
    return wall


def _training_record(
    command: str | None,
    run: _Run,
    wall: float,
    final_loss: float,
    dev: torch.device,
    hp: _Hyperparameters,
    objective: _Objective,
) -> dict[str, Any]:
    """The ``training`` entry of ``config.json``: how the weights were made."""
    conditioning: dict[str, Any] = {}
    if objective.labels is not None:
        conditioning = {
            "conditioning": {
                "num_classes": objective.null_class,
                "null_class": objective.null_class,
                "label_dropout": objective.label_dropout,
            }
        }
    return {
        "objective": _OBJECTIVE_RECORD[objective.kind][0],
        "command": command,
        "steps": run.step,
        "wall_time_s": round(wall, 1),
        "final_loss": round(final_loss, 6),
        "final_loss_definition": "mean training loss over the last min(500, steps) steps",
        "weights": "EMA",
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        **hp.record(),
        **conditioning,
    }


def _save_outputs(out: Path, run: _Run, config: UNetConfig, objective: _Objective, entries: Mapping[str, Any]) -> None:
    """The EMA model (``model.safetensors`` + ``config.json`` with ``entries``) and ``loss.png``."""
    save_model(out, run.ema, config, objective.schedule, entries, prediction=objective.kind)
    title = "DDPM training loss" if objective.kind == "eps" else "rectified-flow training loss"
    save_loss_plot(run.losses, out / LOSS_PLOT_FILE, title=title, ylabel=_OBJECTIVE_RECORD[objective.kind][1])


def train(
    data: str | Path | Tensor | np.ndarray = "digits",
    *,
    out_dir: str | Path | None = None,
    config: UNetConfig | None = None,
    schedule: DiscreteSchedule | FlowSchedule | None = None,
    labels: str | Tensor | np.ndarray | None = None,
    label_dropout: float = 0.1,
    objective: str = "eps",
    steps: int = 10_000,
    batch_size: int = 128,
    lr: float = 5e-4,
    weight_decay: float = 0.0,
    warmup_steps: int = 200,
    ema_decay: float = 0.999,
    grad_clip: float = 1.0,
    seed: int = 0,
    checkpoint_every: int = 1000,
    resume: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    command: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train a :class:`~ddim_ode.unet.UNet` with the DDPM loss (ε-prediction) or the rectified-flow loss.

    Args:
        data: training images: ``"digits"``, a ``.npy``/``.npz`` file, a PNG folder (see
            :func:`ddim_ode.data.load_dataset`) or a tensor ``(N, C, H, W)`` in ``[−1, 1]``.
        out_dir: where to write ``model.safetensors`` + ``config.json`` (the EMA model, loadable
            with :func:`ddim_ode.io.load_model`), ``checkpoint.pt`` and ``loss.png``; created if
            missing and checked to be writable first. ``None``: nothing is written or resumed.
        config: the architecture (default: :class:`UNetConfig` with the data's channels and side).
            ``in_channels``/``out_channels`` must equal the data's channels and ``resolution`` its side.
        schedule: for ``objective="eps"`` a :class:`DiscreteSchedule` (default: DDPM linear, β from
            1e-4 to 0.02, T = 1000); for ``objective="flow"`` a :class:`FlowSchedule` (default:
            ``FlowSchedule()``, the network called with τ · 1000).
        labels: a class label per training image (an integer array of shape ``(N,)`` with values in
            ``[0, config.num_classes − 1]``), or ``"digits"`` (the digits' own labels, with
            ``data="digits"``); ``None`` (default) trains an unconditional network. With labels the
            config must be class-conditional (default: ``num_classes = max(labels) + 1``).
        label_dropout: the probability, in [0, 1], with which each label of a batch is replaced by
            the null class (for classifier-free guidance); used only with labels.
        objective: ``"eps"`` (DDPM, the saved model predicts ``"eps"``) or ``"flow"`` (rectified
            flow, τ ~ U(0, 1), the saved model predicts ``"flow"``, the velocity ε − x0).
        steps: total optimisation steps, an integer ≥ 1 (a resumed run continues up to this number).
        batch_size: images per step (drawn with replacement), an integer in [1, :data:`MAX_BATCH_SIZE`].
        lr: AdamW learning rate after the linear warm-up of ``warmup_steps`` (≥ 0) steps; finite, > 0.
        weight_decay: AdamW weight decay, finite, ≥ 0.
        ema_decay: EMA decay in [0, 1); the effective decay is ``min(ema_decay, (1 + k)/(10 + k))`` at step k.
        grad_clip: maximal global gradient norm, finite, ≥ 0 (``0`` disables clipping).
        seed: seeds the run's ``torch.Generator`` (initialisation, batches, timesteps, noise); in [0, 2⁶³ − 1].
        checkpoint_every: steps between checkpoints, ≥ 0 (``0``: only at the end).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists (same config, schedule,
            objective and conditioning required).
        device: where to train (default: CUDA if available, else CPU); must be usable here.
        progress: show a tqdm progress bar with the running loss.
        command: the command line that started the run, recorded in ``config.json``.
        metadata: extra JSON entries for ``config.json`` (see :func:`ddim_ode.io.check_extra_metadata`).

    Returns:
        A :class:`TrainResult` (EMA model, raw model, per-step losses, steps, wall time, final loss).

    Raises:
        ValueError: an argument of the wrong type or out of range (the message names it and the
            allowed range), data that do not fit ``config``, or a checkpoint of another run.
        TypeError: ``config`` or ``schedule`` of the wrong class (for the objective).
        OSError: ``out_dir`` cannot be created or written to.
    """
    hp = _Hyperparameters(
        steps, batch_size, lr, weight_decay, warmup_steps, ema_decay, grad_clip, seed, checkpoint_every
    )
    extra = _check_options(config, schedule, objective, resume, progress, command, metadata)
    label_dropout = check_float("label_dropout", label_dropout, 0.0, 1.0)
    _check_labels(labels, data)
    dev = _check_device(device)
    check_source(data)
    out = _check_out_dir(out_dir)

    x, y, config, schedule = _prepare_data(data, labels, config, schedule, objective)
    task = _Objective.make(objective, schedule, y, label_dropout, config.num_classes)
    run = _Run.start(config, hp, dev)
    identity: dict[str, Any] = {
        "config": config.to_dict(),
        "schedule": schedule_to_dict(schedule),
        "hparams": hp.record(),
    }
    if objective != "eps":
        identity["objective"] = objective
    if y is not None:
        identity["conditioning"] = {"label_dropout": label_dropout}
    ckpt_path = out / CHECKPOINT_FILE if out is not None else None
    if ckpt_path is not None and resume and ckpt_path.is_file():
        _resume(run, ckpt_path, identity)

    wall = _optimise(run, x, task, hp, dev, ckpt_path, identity, progress)
    run.ema.eval()
    final_loss = float(np.mean(run.losses[-500:])) if run.losses else float("nan")
    if out is not None:
        training = _training_record(command, run, wall, final_loss, dev, hp, task)
        data_record = _data_metadata(data, x, labels)
        _save_outputs(out, run, config, task, {"data": data_record, "training": training, **extra})
    return TrainResult(run.ema, run.model, run.losses, run.step, wall, final_loss, out, schedule)


_DIGITS_CONFIG = UNetConfig(
    in_channels=1,
    out_channels=1,
    base_channels=32,
    channel_mults=(1, 2),
    num_res_blocks=2,
    attention=True,
    dropout=0.0,
    resolution=8,
    norm_groups=8,
)
_DDPM_LINEAR = {"type": "discrete", "kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000}
_DIGITS_OPTIMISATION = {
    "batch_size": 128,
    "lr": 5e-4,
    "warmup_steps": 200,
    "ema_decay": 0.999,
    "grad_clip": 1.0,
    "seed": 0,
}

#: named training set-ups (``schedule`` is a description for :func:`ddim_ode.io.schedule_from_dict`):
#: ``digits`` is the shipped default model; ``digits-cond`` the same network conditioned on the digit's
#: class (10 classes + the null class, labels dropped with probability 0.1); ``digits-flow`` the same
#: network trained as a rectified flow
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "data": "digits",
        "config": _DIGITS_CONFIG,
        "schedule": _DDPM_LINEAR,
        "steps": 5000,
        **_DIGITS_OPTIMISATION,
    },
    "digits-cond": {
        "data": "digits",
        "labels": "digits",
        "label_dropout": 0.1,
        "config": replace(_DIGITS_CONFIG, num_classes=10),
        "schedule": _DDPM_LINEAR,
        "steps": 2000,
        **_DIGITS_OPTIMISATION,
    },
    "digits-flow": {
        "data": "digits",
        "objective": "flow",
        "config": _DIGITS_CONFIG,
        "schedule": {"type": "flow", "shift": 1.0},
        "steps": 2000,
        **_DIGITS_OPTIMISATION,
    },
}

_HYPERPARAMETER_FLAGS = (
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "ema_decay",
    "grad_clip",
    "seed",
    "checkpoint_every",
)
_ARCHITECTURE_FLAGS = ("base_channels", "channel_mults", "num_res_blocks", "dropout")


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a UNet: DDPM ε-prediction or rectified flow.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named set-up (other flags override it)")
    p.add_argument("--data", help="'digits', a .npy/.npz file or a folder of PNG images")
    p.add_argument("--out-dir", required=True, help="output directory (model, checkpoint, loss.png); must be writable")
    p.add_argument("--steps", type=int, help="total optimisation steps (>= 1)")
    p.add_argument("--batch-size", type=int, help=f"images per step (1 to {MAX_BATCH_SIZE})")
    p.add_argument("--lr", type=float, help="AdamW learning rate (> 0)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (>= 0)")
    p.add_argument("--warmup-steps", type=int, help="steps of linear learning-rate warm-up (>= 0)")
    p.add_argument("--ema-decay", type=float, help="EMA decay, in [0, 1)")
    p.add_argument("--grad-clip", type=float, help="maximal gradient norm (>= 0; 0: no clipping)")
    p.add_argument("--seed", type=int, help="seed of the run's generator (>= 0)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (>= 0; 0: only at the end)")
    p.add_argument("--base-channels", type=int)
    p.add_argument("--channel-mults", type=lambda s: tuple(int(v) for v in s.split(",")), help="e.g. 1,2")
    p.add_argument("--num-res-blocks", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--no-attention", action="store_true")
    p.add_argument("--objective", choices=OBJECTIVES, help="eps: DDPM (default); flow: rectified flow")
    p.add_argument("--label-dropout", type=float, help="probability of the null class per label, in [0, 1]")
    p.add_argument(
        "--schedule",
        choices=("linear", "cosine", "flow"),
        help="DDPM linear or cosine discrete schedule (objective eps), or the rectified-flow schedule (objective flow)",
    )
    p.add_argument("--shift", type=float, help="time shift of the flow schedule (> 0)")
    p.add_argument("--num-timesteps", type=int, help="timesteps of a discrete schedule, num_train_timesteps of a flow")
    p.add_argument("--beta-start", type=float, help="first beta of the linear schedule, in (0, 1)")
    p.add_argument("--beta-end", type=float, help="last beta of the linear schedule, in (0, 1)")
    p.add_argument("--device")
    p.add_argument("--threads", type=int, help=f"torch CPU threads (torch.set_num_threads), 1 to {MAX_THREADS}")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def _schedule_from_args(args: argparse.Namespace, preset: Mapping[str, Any]) -> Schedule:
    """The preset's schedule with the command line's overrides, checked by :func:`ddim_ode.io.schedule_from_dict`."""
    kind = args.schedule or (preset["kind"] if preset["type"] == "discrete" else preset["type"])
    if kind == "flow":
        if args.beta_start is not None or args.beta_end is not None:
            raise ValueError("--beta-start and --beta-end set the linear schedule; the flow schedule has no betas")
        spec = dict(preset) if preset["type"] == "flow" else {"type": "flow"}
        if args.shift is not None:
            spec["shift"] = args.shift
        if args.num_timesteps is not None:
            spec["num_train_timesteps"] = args.num_timesteps
        return schedule_from_dict(spec)
    if args.shift is not None:
        raise ValueError("--shift sets the flow schedule; a discrete schedule has no shift")
    discrete = preset if preset["type"] == "discrete" else _DDPM_LINEAR
    num = args.num_timesteps if args.num_timesteps is not None else discrete.get("num_timesteps", 1000)
    if kind == "cosine":
        if args.beta_start is not None or args.beta_end is not None:
            raise ValueError("--beta-start and --beta-end set the linear schedule; the cosine schedule has no betas")
        return schedule_from_dict({"type": "discrete", "kind": "cosine", "num_timesteps": num})
    beta_start = args.beta_start if args.beta_start is not None else discrete.get("beta_start", 1e-4)
    beta_end = args.beta_end if args.beta_end is not None else discrete.get("beta_end", 0.02)
    spec = {"type": "discrete", "kind": "linear", "beta_start": beta_start, "beta_end": beta_end, "num_timesteps": num}
    return schedule_from_dict(spec)


def _train_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`train`: the preset (if any) with the command line's overrides."""
    kw: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    kw.setdefault("data", "digits")
    if args.data is not None:
        kw["data"] = args.data
    kw.update({name: getattr(args, name) for name in _HYPERPARAMETER_FLAGS if getattr(args, name) is not None})
    arch = {name: getattr(args, name) for name in _ARCHITECTURE_FLAGS if getattr(args, name) is not None}
    if args.no_attention:
        arch["attention"] = False
    if arch:
        base = kw.get("config")
        if base is None:  # the default architecture is sized by the data: read them, once the run can be saved
            check_source(kw["data"])
            _check_out_dir(args.out_dir)
            x = load_dataset(kw["data"])
            base = UNetConfig(in_channels=x.shape[1], out_channels=x.shape[1], resolution=x.shape[2])
        kw["config"] = replace(base, **arch)
    if args.objective is not None:
        kw["objective"] = args.objective
    if args.label_dropout is not None:
        kw["label_dropout"] = args.label_dropout
    kw["schedule"] = _schedule_from_args(args, kw.pop("schedule", _DDPM_LINEAR))
    if "objective" not in kw and isinstance(kw["schedule"], FlowSchedule):  # --schedule flow trains a flow
        kw["objective"] = "flow"
    return kw


def main(argv: Sequence[str] | None = None, prog: str = "python -m ddim_ode.train") -> TrainResult:
    """Command line: ``python -m ddim_ode.train --preset digits --out-dir DIR [overrides]``.

    ``prog`` is the program name shown in ``--help`` and recorded (with the arguments) as the
    training command in ``config.json``. Bad values raise ``ValueError`` (or ``OSError`` for an
    output directory that cannot be written) naming the argument and its allowed range, before
    any training work starts.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(args_list)
    threads = check_int("threads", args.threads, 1, MAX_THREADS) if args.threads is not None else None
    kw = _train_arguments(args)
    if threads is not None:
        torch.set_num_threads(threads)
    command = " ".join([prog, *(shlex.quote(a) for a in args_list)])
    result = train(
        out_dir=args.out_dir,
        device=args.device,
        resume=not args.no_resume,
        progress=not args.no_progress,
        command=command,
        **kw,
    )
    print(
        f"steps={result.steps} wall_time_s={result.wall_time_s:.1f} "
        f"final_loss={result.final_loss:.5f} -> {result.out_dir}"
    )
    return result


if __name__ == "__main__":
    main()
