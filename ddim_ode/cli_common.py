"""What the subcommands of ``ddim-ode`` share: the device, the model loaded for a command line,
its plan and conditioning, batched runs with progress bars, and latents read back from a file.

Each helper takes the parsed arguments (``argparse.Namespace``) of :mod:`ddim_ode.cli_parser` and
raises :class:`~ddim_ode.cli_errors.CLIError` (or ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .cli_errors import CLIError, one_line, warn
from .cli_io import LatentFile, ModelRecord
from .cli_model import Conditioning, choose_model, conditioning, parse_classes
from .cli_plan import Plan, describe_record, make_plan, mismatches
from .core import Solution
from .diffusers.prompts import PromptConditioning, prompt_conditioning
from .schedules import Schedule
from .solvers.reversible import ReversibleLatent, state_from_arrays
from .threads import set_threads_for

__all__ = [
    "DEVICES",
    "resolve_device",
    "LoadedModel",
    "load_model",
    "command_conditioning",
    "command_plan",
    "run_kwargs",
    "check_recorded_settings",
    "seeded_noise",
    "batched",
    "cat_solutions",
    "latents_tensor",
    "with_state",
]

DEVICES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(name: str | None) -> torch.device:
    """The device of ``--device NAME`` (``auto``/``None``: CUDA when available, else the CPU), checked to exist."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CLIError(f"bad --device {name!r}; allowed: {DEVICES}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name} requested but CUDA is not available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise CLIError(f"--device {name} requested but MPS (Apple GPU) is not available; use --device cpu")
        return dev
    raise CLIError(f"unsupported --device {name!r}; allowed: {DEVICES}")


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded for a command, with what the commands need to know about it."""

    model: Any
    schedule: Schedule
    prediction: str
    shape: tuple[int, ...]
    device: torch.device
    source: str  # "default", a built-in name or the resolved model directory: what latent files record
    schedule_spec: str | None  # the --schedule that replaced the model's own
    num_classes: int  # 0: unconditional
    text: PromptConditioning | None = None  # a text-conditioned pipeline directory's prompt (sample --prompt)

    def record(self, cond: Conditioning) -> ModelRecord:
        """What a latent file made with this model and ``cond`` records about them."""
        return ModelRecord(self.source, self.prediction, self.schedule_spec, cond.labels, cond.guidance)


def load_model(args: argparse.Namespace, batch: int, stored: LatentFile | None = None) -> LoadedModel:
    """The model of ``--model`` (else the one ``stored`` latents record, else the default) with
    ``--prediction``/``--schedule`` (else, for the recorded model, the recorded ones), on ``--device``;
    sets the CLI's threads."""
    from .io import sample_shape

    dev = resolve_device(args.device)
    same = stored is not None and (args.model is None or stored.model in (args.model, str(Path(args.model).resolve())))
    recorded = stored if same else None
    name = args.model or (recorded.model if recorded is not None else None) or "default"
    prediction = args.prediction or (recorded.prediction if recorded is not None else None)
    schedule = args.schedule or (recorded.schedule if recorded is not None else None)
    choice = choose_model(name, prediction, schedule, dev, lambda text: warn(args, text))
    res = choice.resolved
    text = prompt_conditioning(args, res.metadata, dev)
    net = res.model
    try:
        shape = sample_shape(res.metadata)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if getattr(args, "half", False):  # the network runs in half precision; the solver state stays float32
        net = copy.deepcopy(net).to(torch.bfloat16 if dev.type == "cpu" else torch.float16)  # loaded models are shared
    if getattr(args, "compile", False):
        net = torch.compile(net)
    if getattr(args, "choose_threads", False) and dev.type == "cpu":
        set_threads_for(min(batch, args.batch_size or batch) * math.prod(shape))
    return LoadedModel(
        net, res.schedule, res.prediction, shape, dev, choice.source, choice.schedule, choice.num_classes, text
    )


def command_conditioning(
    args: argparse.Namespace, m: LoadedModel, n: int, stored: LatentFile | None = None
) -> Conditioning:
    """The class labels of ``n`` samples and the guidance of ``--class``/``--guidance`` (else ``stored``'s);
    none for a text-conditioned pipeline, whose ``--guidance`` weighs its prompt."""
    if m.text is not None:
        return conditioning(None, None, classes_of_model=0, model=m.source, n=n, stored=None)
    classes = parse_classes(args.classes) if args.classes is not None else None
    return conditioning(classes, args.guidance, classes_of_model=m.num_classes, model=m.source, n=n, stored=stored)


def command_plan(
    args: argparse.Namespace, m: LoadedModel, stored: LatentFile | None = None, encoding: bool = False
) -> Plan:
    """The plan of this command line (see :func:`~ddim_ode.cli_plan.make_plan`)."""
    return make_plan(
        m.schedule,
        solver=args.solver,
        solver_option=args.solver_option,
        steps=args.steps,
        grid=args.grid,
        sigmas=args.sigmas,
        timesteps=args.timesteps,
        stored=stored,
        encoding=encoding,
    )


def run_kwargs(plan: Plan, m: LoadedModel) -> dict[str, Any]:
    """The keyword arguments of decode/encode for ``plan`` with the model ``m``."""
    return dict(
        model=m.model, schedule=m.schedule, sigmas=plan.sigmas, prediction=m.prediction, solver_options=plan.options
    )


def check_recorded_settings(args: argparse.Namespace, stored: LatentFile, plan: Plan, record: ModelRecord) -> bool:
    """Whether ``plan`` and ``record`` decode ``stored`` with its recorded settings; refuses a mismatch
    on encoded latents.

    Encoded latents reconstruct their images only with the settings they were encoded with, so a
    different solver, n, grid, model, prediction, schedule, class labels or guidance is refused
    unless ``--allow-mismatch`` (then a warning). Noise (from ``sample``) decodes to a valid sample
    with any settings.
    """
    diffs = mismatches(stored, plan, record)
    if not diffs:
        return True
    if stored.kind == "encoded":
        text = f"{args.input} was encoded with {describe_record(stored)}; this run differs: {'; '.join(diffs)}"
        if not args.allow_mismatch:
            raise CLIError(
                f"{text}. Omit --solver/-n/--grid/--sigmas/--timesteps/--model/--prediction/--schedule/--class/"
                "--guidance to use the recorded settings, or pass --allow-mismatch to decode anyway"
            )
        warn(args, f"{text}; the result will not reconstruct the encoded images")
    return False


def seeded_noise(num: int, shape: tuple[int, ...], seed: int, device: torch.device) -> Tensor:
    """Per-index seeded noise (sample i depends only on (seed, i)), the same as sharded runs use."""
    from .distributed import index_noise

    return index_noise(seed, 0, num, shape, device=device)


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    """A progress bar on stderr (a no-op unless ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr)


def batched(
    fn: Callable[[Tensor, slice], Solution], x: Tensor, batch_size: int, desc: str, show: bool
) -> list[Solution]:
    """``fn(batch, rows)`` on consecutive batches of ``x`` (a ``ReversibleLatent`` hands each batch
    its rows of the state; ``rows`` selects the batch's conditioning)."""
    outs = []
    with _progress(x.shape[0], desc, show) as bar:
        for start in range(0, x.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            outs.append(fn(x[rows], rows))
            bar.update(min(batch_size, x.shape[0] - start))
    return outs


def cat_solutions(sols: list[Solution]) -> Tensor:
    """The states of the solutions of consecutive batches, as one plain tensor."""
    return torch.cat([s.x.as_subclass(Tensor) for s in sols])


def latents_tensor(lf: LatentFile, m: LoadedModel, path: str) -> Tensor:
    """The latents of ``lf`` (read from ``path``) as float32 on the model's device, checked against its sample shape."""
    lat = torch.from_numpy(np.ascontiguousarray(lf.latents, dtype=np.float32)).to(m.device)
    if tuple(lat.shape[1:]) != m.shape:
        raise CLIError(f"{path}: latents have shape {tuple(lat.shape[1:])}, the model needs {m.shape} (C, H, W)")
    return lat


def with_state(lat: Tensor, lf: LatentFile, args: argparse.Namespace) -> Tensor:
    """``lat`` carrying the auxiliary state of a reversible solver that ``lf`` (``--input``) stores, checked
    against it."""
    path = args.input
    try:
        state = state_from_arrays(lf.state_arrays, device=lat.device, dtype=lat.dtype)
    except (KeyError, ValueError, TypeError) as err:
        raise CLIError(
            f"{path}: unreadable auxiliary state ({one_line(err)}); re-create it with `ddim-ode encode`"
        ) from None
    if state is None:
        if lf.kind == "encoded":
            warn(args, f"{path} stores no auxiliary state: {lf.solver} decodes afresh, not exactly")
        return lat
    if any(isinstance(v, Tensor) and v.shape != lat.shape for v in vars(state).values()):
        raise CLIError(f"{path}: the auxiliary state does not match the latents' shape {tuple(lat.shape)}")
    return ReversibleLatent.wrap(lat, state)
