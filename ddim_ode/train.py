"""Training an ε-network with the DDPM objective (Ho, Jain & Abbeel 2020, Algorithm 1).

Each step draws a batch ``x0`` of training images, integer timesteps ``t ~ U{0, …, T−1}`` and
noise ``ε ~ N(0, I)``, forms ``x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε`` and minimises ``‖ε_θ(x_t, t) − ε‖²``
with AdamW (linear warm-up of the learning rate, then constant), gradient-norm clipping and an
exponential moving average (EMA) of the weights, which is the model that is returned and saved.

Everything random (initialisation, batches, timesteps, noise) comes from one seeded
``torch.Generator``; the global RNG is only used by dropout, inside a forked and seeded RNG scope,
so a run is reproducible and leaves the caller's RNG state untouched. A checkpoint
(``checkpoint.pt``, weights-only loadable) is written atomically every ``checkpoint_every`` steps
and at the end; a later call with the same ``out_dir`` resumes from it (and may raise ``steps``).

Reproduce the shipped model with::

    OMP_NUM_THREADS=1 python -m ddim_ode.train --preset digits --out-dir ddim_ode/weights/digits --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data import DIGITS_HELDOUT, DIGITS_SCALING, load_dataset
from .io import _atomic_write_bytes, _torch_load_safe, save_model, schedule_to_dict
from .schedules import DiscreteSchedule
from .unet import UNet, UNetConfig

__all__ = ["train", "TrainResult", "PRESETS", "CHECKPOINT_FILE", "LOSS_PLOT_FILE", "save_loss_plot", "main"]

CHECKPOINT_FILE = "checkpoint.pt"
LOSS_PLOT_FILE = "loss.png"


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
    """

    model: UNet
    raw_model: UNet
    losses: list[float]
    steps: int
    wall_time_s: float
    final_loss: float
    out_dir: Path | None = None
    schedule: DiscreteSchedule | None = field(default=None, repr=False)


def _data_metadata(data: Any, x: Tensor) -> dict[str, Any]:
    shape = list(x.shape[1:])
    if isinstance(data, str) and data == "digits":
        return {
            "name": "digits",
            "source": "sklearn.datasets.load_digits",
            "split": f"train: the first {x.shape[0]} images (the last {DIGITS_HELDOUT} are held out)",
            "scaling": DIGITS_SCALING,
            "range": [-1.0, 1.0],
            "shape": shape,
            "num_images": int(x.shape[0]),
        }
    name = str(data) if isinstance(data, (str, Path)) else "in-memory array"
    return {
        "name": name,
        "scaling": "see ddim_ode.data",
        "range": [-1.0, 1.0],
        "shape": shape,
        "num_images": int(x.shape[0]),
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


def save_loss_plot(losses: Sequence[float], path: str | Path, title: str = "DDPM training loss") -> Path:
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
    ax.set_ylabel("MSE(ε̂, ε)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(out, lambda tmp: fig.savefig(tmp, format="png"))
    return out


def train(
    data: str | Path | Tensor | np.ndarray = "digits",
    *,
    out_dir: str | Path | None = None,
    config: UNetConfig | None = None,
    schedule: DiscreteSchedule | None = None,
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
    """Train a :class:`~ddim_ode.unet.UNet` ε-network with the DDPM loss.

    Args:
        data: training images: ``"digits"``, a ``.npy``/``.npz`` file, a PNG folder (see
            :func:`ddim_ode.data.load_dataset`) or a tensor ``(N, C, H, W)`` in ``[−1, 1]``.
        out_dir: where to write ``model.safetensors`` + ``config.json`` (the EMA model, loadable
            with :func:`ddim_ode.io.load_model`), ``checkpoint.pt`` and ``loss.png``. ``None``:
            nothing is written and nothing resumed.
        config: the architecture (default: :class:`UNetConfig` with the data's channels and side).
            ``in_channels``/``out_channels`` must equal the data's channels and ``resolution`` its side.
        schedule: a :class:`DiscreteSchedule` (default: DDPM linear, β from 1e-4 to 0.02, T = 1000).
        steps: total optimisation steps (a resumed run continues up to this number).
        batch_size: images per step (drawn with replacement).
        lr: AdamW learning rate after the linear warm-up of ``warmup_steps`` steps.
        weight_decay: AdamW weight decay.
        ema_decay: EMA decay; the effective decay is ``min(ema_decay, (1 + k)/(10 + k))`` at step k.
        grad_clip: maximal global gradient norm (``0`` disables clipping).
        seed: seeds the run's ``torch.Generator`` (initialisation, batches, timesteps, noise).
        checkpoint_every: steps between checkpoints (``0``: only at the end).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists (same config and schedule required).
        device: where to train (default: CUDA if available, else CPU).
        progress: show a tqdm progress bar with the running loss.
        command: the command line that started the run, recorded in ``config.json``.
        metadata: extra JSON entries for ``config.json``.

    Returns:
        A :class:`TrainResult` (EMA model, raw model, per-step losses, steps, wall time, final loss).
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    for name, value in (("warmup_steps", warmup_steps), ("checkpoint_every", checkpoint_every)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
    if grad_clip < 0 or weight_decay < 0:
        raise ValueError(f"grad_clip and weight_decay must be >= 0, got {grad_clip}, {weight_decay}")

    x = load_dataset(data)
    n, c, h, w = x.shape
    if config is None:
        config = UNetConfig(in_channels=c, out_channels=c, resolution=h)
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
        schedule = DiscreteSchedule.linear(1e-4, 0.02, 1000)
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"training needs a DiscreteSchedule (integer timesteps), got {type(schedule).__name__}")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hparams = {
        "batch_size": int(batch_size),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "warmup_steps": int(warmup_steps),
        "ema_decay": float(ema_decay),
        "grad_clip": float(grad_clip),
        "seed": int(seed),
    }

    gen = torch.Generator().manual_seed(int(seed))
    model = UNet(config, generator=gen).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    step, wall_before, rng_state = 0, 0.0, None

    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_FILE if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if resume and ckpt_path is not None and ckpt_path.is_file():
            ckpt = _torch_load_safe(ckpt_path)
            if ckpt.get("config") != config.to_dict():
                raise ValueError(
                    f"{ckpt_path} was written for config {ckpt.get('config')}, not {config.to_dict()}; "
                    "use another out_dir or resume=False"
                )
            if ckpt.get("schedule") != schedule_to_dict(schedule):
                raise ValueError(
                    f"{ckpt_path} was written for another schedule ({ckpt['schedule']}); "
                    "use another out_dir or resume=False"
                )
            model.load_state_dict(ckpt["model"])
            ema.load_state_dict(ckpt["ema"])
            opt.load_state_dict(ckpt["optimizer"])
            gen.set_state(ckpt["generator"])
            losses = [float(v) for v in ckpt["losses"]]
            step, wall_before, rng_state = int(ckpt["step"]), float(ckpt["wall_time_s"]), ckpt["rng"]

    sqrt_ab = schedule.alphas_cumprod.sqrt().to(torch.float32)
    sqrt_1m_ab = (1.0 - schedule.alphas_cumprod).sqrt().to(torch.float32)
    num_t = schedule.num_timesteps
    x = x.to(torch.float32)

    def lr_at(k: int) -> float:
        return lr * min(1.0, (k + 1) / warmup_steps) if warmup_steps else lr

    def write_checkpoint(wall: float) -> None:
        assert ckpt_path is not None
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": gen.get_state(),
            "rng": _global_rng_state(dev),
            "losses": list(losses),
            "step": step,
            "wall_time_s": wall,
            "config": config.to_dict(),
            "schedule": schedule_to_dict(schedule),
            "hparams": hparams,
        }
        _atomic_write_bytes(ckpt_path, lambda tmp: torch.save(state, tmp))

    from tqdm.auto import tqdm

    start = time.perf_counter()
    model.train()
    with _forked_rng(dev, int(seed), rng_state):
        bar = tqdm(total=steps, initial=min(step, steps), disable=not progress, desc="train", dynamic_ncols=True)
        while step < steps:
            idx = torch.randint(n, (batch_size,), generator=gen)
            t = torch.randint(num_t, (batch_size,), generator=gen)
            eps = torch.randn((batch_size, c, h, w), generator=gen)
            x0 = x[idx]
            x_t = sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1m_ab[t].view(-1, 1, 1, 1) * eps
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.mse_loss(model(x_t.to(dev), t.to(dev, torch.float32)), eps.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            decay = min(ema_decay, (1.0 + step) / (10.0 + step))
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters()):
                    p_ema.lerp_(p, 1.0 - decay)
                for b_ema, b in zip(ema.buffers(), model.buffers()):
                    b_ema.copy_(b)
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
            if ckpt_path is not None and checkpoint_every and step % checkpoint_every == 0 and step < steps:
                write_checkpoint(wall_before + time.perf_counter() - start)
        bar.close()
        wall = wall_before + time.perf_counter() - start
        if ckpt_path is not None:
            write_checkpoint(wall)

    ema.eval()
    final_loss = float(np.mean(losses[-500:])) if losses else float("nan")
    if out is not None:
        training = {
            "objective": "DDPM epsilon-prediction MSE (Ho et al. 2020)",
            "command": command,
            "steps": step,
            "wall_time_s": round(wall, 1),
            "final_loss": round(final_loss, 6),
            "final_loss_definition": "mean training loss over the last min(500, steps) steps",
            "weights": "EMA",
            "device": str(dev),
            "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            **hparams,
        }
        save_model(
            out, ema, config, schedule, {"data": _data_metadata(data, x), "training": training, **dict(metadata or {})}
        )
        save_loss_plot(losses, out / LOSS_PLOT_FILE)
    return TrainResult(ema, model, losses, step, wall, final_loss, out, schedule)


# ----------------------------------------------------------------------------------------------
# presets and the command line

#: named training set-ups; ``digits`` is the shipped default model
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "data": "digits",
        "config": UNetConfig(
            in_channels=1,
            out_channels=1,
            base_channels=32,
            channel_mults=(1, 2),
            num_res_blocks=2,
            attention=True,
            dropout=0.0,
            resolution=8,
            norm_groups=8,
        ),
        "schedule": ("linear", 1e-4, 0.02, 1000),
        "steps": 5000,
        "batch_size": 128,
        "lr": 5e-4,
        "warmup_steps": 200,
        "ema_decay": 0.999,
        "grad_clip": 1.0,
        "seed": 0,
    },
}


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a DDPM UNet ε-network.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named set-up (other flags override it)")
    p.add_argument("--data", help="'digits', a .npy/.npz file or a folder of PNG images")
    p.add_argument("--out-dir", required=True, help="output directory (model, checkpoint, loss.png)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--base-channels", type=int)
    p.add_argument("--channel-mults", type=lambda s: tuple(int(v) for v in s.split(",")), help="e.g. 1,2")
    p.add_argument("--num-res-blocks", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--no-attention", action="store_true")
    p.add_argument("--schedule", choices=("linear", "cosine"), help="DDPM linear or cosine discrete schedule")
    p.add_argument("--num-timesteps", type=int)
    p.add_argument("--beta-start", type=float)
    p.add_argument("--beta-end", type=float)
    p.add_argument("--device")
    p.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m ddim_ode.train") -> TrainResult:
    """Command line: ``python -m ddim_ode.train --preset digits --out-dir DIR [overrides]``.

    ``prog`` is the program name shown in ``--help`` and recorded (with the arguments) as the
    training command in ``config.json``.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(args_list)
    kw: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    kw.setdefault("data", "digits")
    if args.data is not None:
        kw["data"] = args.data
    for name in (
        "steps",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_steps",
        "ema_decay",
        "grad_clip",
        "seed",
        "checkpoint_every",
    ):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    arch = {
        k: getattr(args, k)
        for k in ("base_channels", "channel_mults", "num_res_blocks", "dropout")
        if getattr(args, k) is not None
    }
    if args.no_attention:
        arch["attention"] = False
    if arch:
        base = kw.get("config")
        if base is None:
            x = load_dataset(kw["data"])
            base = UNetConfig(in_channels=x.shape[1], out_channels=x.shape[1], resolution=x.shape[2])
        kw["config"] = replace(base, **arch)
    kind, b0, b1, num = kw.pop("schedule", ("linear", 1e-4, 0.02, 1000))
    kind = args.schedule or kind
    num = args.num_timesteps or num
    b0 = args.beta_start if args.beta_start is not None else b0
    b1 = args.beta_end if args.beta_end is not None else b1
    kw["schedule"] = DiscreteSchedule.linear(b0, b1, num) if kind == "linear" else DiscreteSchedule.cosine(num)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
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
