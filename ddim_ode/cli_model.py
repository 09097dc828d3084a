"""The model a command of the ``ddim-ode`` command line runs, and how it is conditioned.

* ``--model NAME|DIR``: a built-in model by name (``ddim-ode models`` lists them; ``default`` is
  the default one) or a model directory (the package's format, a diffusers UNet or pipeline
  directory), resolved by :func:`ddim_ode.models.resolve_model`.
* ``--prediction {eps,x0,v,flow}`` and ``--schedule SPEC`` (:func:`parse_schedule`) replace what a
  model *directory*'s config says (a warning names the value replaced), as the library takes a
  network object with an explicit schedule and prediction. A built-in model's prediction and
  schedule are fixed: a different ``--prediction`` is refused, as
  :func:`~ddim_ode.models.resolve_model` refuses it for a named model, and so is ``--schedule``.
* ``--class LIST`` and ``--guidance W`` (:class:`Conditioning`) condition a class-conditional model,
  called as ``model(x_t, t, y=labels)`` with labels ``0 … num_classes − 1``: sample ``i`` gets
  ``labels[i % len(labels)]``, and the weight w ≥ 0 mixes the conditional and the unconditional
  (null class) outputs as out_u + w (out_c − out_u) (Ho & Salimans 2022).

Every check raises ``ValueError`` with a message that names the flag and the allowed values,
before any work is done.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cli_io import LatentFile
from .field import PREDICTIONS
from .models import ResolvedModel, check_prediction, resolve_model
from .schedules import ContinuousSchedule, DiscreteSchedule, FlowSchedule, Schedule, VESchedule

__all__ = [
    "SCHEDULE_SPECS",
    "LABELS_KEYWORD",
    "schedule_help",
    "ScheduleChoice",
    "parse_schedule",
    "ClassList",
    "parse_classes",
    "num_classes",
    "Conditioning",
    "conditioning",
    "ModelChoice",
    "choose_model",
    "ModelRow",
    "builtin_rows",
]

#: the keyword argument of a class-conditional network's labels: ``model(x_t, t, y=labels)``
LABELS_KEYWORD = "y"


@dataclass(frozen=True)
class _Spec:
    """One kind of ``--schedule``: its parameters with their defaults, and the schedule they build."""

    params: tuple[str, ...]
    defaults: tuple[float, ...]
    build: Callable[..., Schedule]
    what: str

    @property
    def usage(self) -> str:
        return "".join(f"[:{p.upper()}" for p in self.params) + "]" * len(self.params)


def _timesteps(value: float) -> int:
    """T of a discrete ``--schedule``, within the bound of a model config's schedule."""
    from .io import MAX_TIMESTEPS

    if value != int(value) or not 2 <= value <= MAX_TIMESTEPS:
        raise ValueError(f"T must be an integer in [2, {MAX_TIMESTEPS}], got {value:g}")
    return int(value)


#: the kinds of ``--schedule KIND[:P1[:P2...]]``; parameters left out take the defaults
SCHEDULE_SPECS: dict[str, _Spec] = {
    "vp-linear": _Spec(
        ("beta_start", "beta_end", "t"),
        (1e-4, 0.02, 1000),
        lambda b0, b1, t: DiscreteSchedule.linear(b0, b1, _timesteps(t)),
        "DDPM linear betas, T discrete timesteps (Ho et al. 2020)",
    ),
    "vp-cosine": _Spec(
        ("t",),
        (1000,),
        lambda t: DiscreteSchedule.cosine(_timesteps(t)),
        "cosine alpha_bar, T discrete timesteps (Nichol & Dhariwal 2021)",
    ),
    "vp-continuous": _Spec(
        ("beta_min", "beta_max"),
        (0.1, 20.0),
        lambda lo, hi: ContinuousSchedule.linear(lo, hi),
        "score-SDE VP, continuous t in [0.001, 1] (Song et al. 2021)",
    ),
    "ve": _Spec(
        ("sigma_min", "sigma_max"),
        (0.002, 80.0),
        lambda lo, hi: VESchedule(lo, hi),
        "variance exploding / EDM, the network takes t = sigma (Karras et al. 2022)",
    ),
    "flow": _Spec(
        ("shift",),
        (1.0,),
        lambda shift: FlowSchedule(shift),
        "rectified flow x = (1 - t) x0 + t eps with a static time shift (Esser et al. 2024)",
    ),
}


def schedule_help() -> str:
    """The ``--schedule`` syntax, for the help text."""
    kinds = "; ".join(
        f"{k}{s.usage} ({s.what}; default {':'.join(f'{d:g}' for d in s.defaults)})" for k, s in SCHEDULE_SPECS.items()
    )
    return f"KIND[:P1[:P2...]], parameters left out take the defaults: {kinds}"


@dataclass(frozen=True)
class ScheduleChoice:
    """A parsed ``--schedule``: the canonical text (every parameter spelled out) and the schedule."""

    text: str
    schedule: Schedule


def parse_schedule(spec: str) -> ScheduleChoice:
    """The schedule of a ``--schedule`` SPEC, ``KIND[:P1[:P2...]]`` (see :data:`SCHEDULE_SPECS`)."""
    kind, *parts = spec.strip().split(":")
    allowed = ", ".join(f"{k}{s.usage}" for k, s in SCHEDULE_SPECS.items())
    if kind not in SCHEDULE_SPECS:
        raise ValueError(f"unknown --schedule kind {kind!r}; allowed: {allowed}")
    s = SCHEDULE_SPECS[kind]
    if len(parts) > len(s.params):
        raise ValueError(
            f"--schedule {spec}: {kind} takes at most {len(s.params)} parameter(s) ({kind}{s.usage}), got {len(parts)}"
        )
    values = list(s.defaults)
    for i, text in enumerate(parts):
        try:
            values[i] = float(text)
        except ValueError:
            raise ValueError(f"--schedule {spec}: {s.params[i]} must be a number, got {text!r}") from None
        if not math.isfinite(values[i]):
            raise ValueError(f"--schedule {spec}: {s.params[i]} must be finite, got {text!r}")
    try:
        schedule = s.build(*values)
    except ValueError as err:
        raise ValueError(f"--schedule {spec}: {err}") from None
    return ScheduleChoice(":".join([kind, *(f"{v:g}" if v == int(v) else repr(v) for v in values)]), schedule)


@dataclass(frozen=True)
class ClassList:
    """A parsed ``--class``: spans of labels ``(first, last)``, inclusive, in the order given."""

    text: str
    spans: tuple[tuple[int, int], ...]

    @property
    def largest(self) -> int:
        return max(last for _, last in self.spans)

    def labels(self, n: int) -> np.ndarray:
        """The labels of ``n`` samples: sample ``i`` gets ``labels[i % len(labels)]`` (``int64``)."""
        cycle = np.concatenate([np.arange(a, b + 1, dtype=np.int64) for a, b in self.spans])
        return np.resize(cycle, n)


def parse_classes(text: str) -> ClassList:
    """``--class``: labels and ranges, comma-separated: ``3``, ``0,1,2,3``, ``0-9``, ``0-4,7``."""
    example = "e.g. --class 3, --class 0,1,2 or --class 0-9"
    spans = []
    for item in text.split(","):
        part = item.strip()
        first, dash, last = part.partition("-")
        try:
            span = (int(first), int(last) if dash else int(first))
        except ValueError:
            raise ValueError(
                f"bad --class {text!r}: {part!r} is not a label or a range A-B of labels ({example})"
            ) from None
        if span[0] > span[1]:
            raise ValueError(f"bad --class {text!r}: the range {part} is empty; write it from low to high")
        spans.append(span)
    return ClassList(text, tuple(spans))


def num_classes(metadata: Mapping[str, Any]) -> int:
    """The classes a loaded model is conditioned on (``metadata["unet"]["num_classes"]``); 0: unconditional."""
    unet = metadata.get("unet")
    return int(unet.get("num_classes", 0)) if isinstance(unet, Mapping) else 0


@dataclass(frozen=True)
class Conditioning:
    """The class labels of a command's samples (one per row) and its guidance weight; ``None``: none."""

    labels: np.ndarray | None = None
    guidance: float | None = None

    def run_kwargs(self, rows: slice, device: torch.device) -> dict[str, Any]:
        """The conditioning arguments of :func:`ddim_ode.decode` / :func:`ddim_ode.encode` for ``rows``."""
        out: dict[str, Any] = {}
        if self.labels is not None:
            out["model_kwargs"] = {LABELS_KEYWORD: torch.from_numpy(self.labels[rows]).to(device)}
        if self.guidance is not None:
            out["guidance_scale"] = self.guidance
        return out


def conditioning(
    classes: ClassList | None,
    guidance: float | None,
    *,
    classes_of_model: int,
    model: str,
    n: int,
    stored: LatentFile | None = None,
) -> Conditioning:
    """The conditioning of ``n`` samples of ``model`` (conditioned on ``classes_of_model`` classes).

    ``--class`` gives the labels by index, else those ``stored`` with the latents; ``--guidance``
    gives the weight, else the stored one. An unconditional model takes neither flag (the stored
    ones are then not used: decoding without them is a settings mismatch), and guidance needs labels.
    """
    if not classes_of_model:
        flag = "--class" if classes is not None else "--guidance" if guidance is not None else None
        if flag is not None:
            raise ValueError(
                f"{flag} needs a class-conditional model, and {model} is unconditional; "
                "`ddim-ode models` lists the class-conditional ones (classes > 0)"
            )
        return Conditioning()
    if classes is not None:
        if classes.largest >= classes_of_model:
            raise ValueError(
                f"--class {classes.text}: label {classes.largest} is out of range; {model} has "
                f"{classes_of_model} classes, 0-{classes_of_model - 1}"
            )
        labels = classes.labels(n)
    else:
        labels = stored.labels if stored is not None else None
        if labels is not None and int(labels.max()) >= classes_of_model:
            raise ValueError(
                f"the recorded class labels go up to {int(labels.max())}, but {model} has {classes_of_model} classes"
            )
    w = guidance if guidance is not None else (stored.guidance if stored is not None else None)
    if w is not None and labels is None:
        raise ValueError(f"--guidance {w:g} needs class labels to guide towards: pass --class (e.g. --class 0-9)")
    return Conditioning(labels, w)


@dataclass(frozen=True)
class ModelChoice:
    """The model of a command line: resolved, with what a latent file records about it.

    Attributes:
        resolved: the network, its schedule (``--schedule`` or its own) and prediction.
        source: ``"default"``, a built-in name or the resolved model directory.
        schedule: the canonical ``--schedule`` SPEC that replaced the model's own, else ``None``.
        num_classes: the classes the model is conditioned on (0: unconditional).
    """

    resolved: ResolvedModel
    source: str
    schedule: str | None
    num_classes: int


def _source(name: str, metadata: Mapping[str, Any], builtin: bool) -> str:
    from .io import DEFAULT_MODEL_DIR

    if name == "default" or metadata.get("source") == str(DEFAULT_MODEL_DIR):
        return "default"
    return name if builtin else str(Path(name).resolve())


def choose_model(
    name: str,
    prediction: str | None,
    schedule: str | None,
    device: torch.device,
    warn: Callable[[str], None],
) -> ModelChoice:
    """Resolve ``--model`` with ``--prediction`` / ``--schedule`` (see the module docstring)."""
    from .io import builtin_models

    builtin = name in builtin_models() or name == "default"
    pred = check_prediction(prediction) if prediction is not None else None
    choice = parse_schedule(schedule) if schedule is not None else None  # both checked before loading
    res = resolve_model(name, device=device)
    source, classes = _source(name, res.metadata, builtin), num_classes(res.metadata)
    pred = pred or res.prediction
    if choice is None and pred == res.prediction:
        return ModelChoice(res, source, None, classes)
    if builtin:
        if choice is not None:
            raise ValueError(
                f"--schedule: the built-in model {name!r} brings its own schedule; "
                "--schedule replaces only a model directory's own"
            )
        raise ValueError(
            f"--prediction {pred} contradicts the built-in model {name!r}, which predicts {res.prediction!r}; "
            "--prediction replaces only a model directory's own"
        )
    sched = choice.schedule if choice is not None else res.schedule
    if pred == "flow" and not sched.rectified_flow:
        allowed = ", ".join(p for p in PREDICTIONS if p != "flow")
        raise ValueError(
            f"--prediction flow needs a rectified-flow schedule (--schedule flow[:SHIFT]), not {sched!r}; "
            f"allowed on it: {allowed}"
        )
    if pred != res.prediction:
        warn(f"--prediction {pred} replaces the prediction {res.prediction!r} that {name} records")
    if choice is not None:
        warn(f"--schedule {choice.text} replaces the schedule {res.schedule!r} that {name} records")
    replaced = resolve_model(res.model, sched, pred)
    replaced = ResolvedModel(replaced.model, replaced.schedule, replaced.prediction, dict(res.metadata))
    return ModelChoice(replaced, source, choice.text if choice is not None else None, classes)


@dataclass(frozen=True)
class ModelRow:
    """One built-in model as ``ddim-ode models`` lists it (``error``: why it could not be loaded)."""

    name: str
    description: str
    prediction: str = ""
    schedule: str = ""
    shape: str = ""
    classes: int = 0
    error: str = ""


def builtin_rows() -> list[ModelRow]:
    """Every built-in model, loaded (on the CPU) to tell its prediction, schedule, sample shape and classes."""
    from .io import builtin_models, sample_shape

    rows = []
    for name, description in builtin_models().items():
        try:
            res = resolve_model(name, device="cpu")
            shape = "x".join(str(v) for v in sample_shape(res.metadata))
        except (OSError, ValueError) as err:
            rows.append(ModelRow(name, description, error=" ".join(str(err).split())))
            continue
        rows.append(ModelRow(name, description, res.prediction, repr(res.schedule), shape, num_classes(res.metadata)))
    return rows
