"""Everything a sharded run decides before it starts: checked arguments, the resolved model
(evaluated on fixed blocks of rows), the solver call, and the arguments recorded in the manifest."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..analytic import AnalyticModel, ScheduledOracle
from ..checks import GridLike, as_float64, check_decoding_grid
from ..core import Solution
from ..driver import decode, encode
from ..field import EpsModel, SigmaModel
from ..grids import GRIDS, make_grid
from ..models import resolve_model
from ..schedules import Schedule
from ..solvers import Solver, get_solver
from ..unet import UNet
from .conditioning import RunConditioning
from .decode_input import DecodeSettings, check_decode_settings
from .fingerprints import fingerprint, grid_sha256, jsonable
from .groups import DistInfo, dist_info, rank_device
from .manifest import EXPLICIT_GRID, MAX_NUM, check_int, check_shape, check_shard_count, grid_values
from .noise import SOLVER_NOISE_RULE, solver_noise_seed

__all__ = ["RunSettings", "RunPlan", "make_plan"]


class _RowBlocks(torch.nn.Module):
    """Evaluates an ε-model on consecutive blocks of ``rows`` rows, so the batch seen by the
    network does not depend on how many shards are integrated together; the keyword arguments
    named in ``per_sample`` are cut into the same blocks, the others passed whole."""

    def __init__(self, inner: Any, rows: int, per_sample: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.inner = inner
        self.rows = rows
        self.per_sample = per_sample

    def forward(self, x_t: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        r = self.rows
        return torch.cat(
            [
                self.inner(
                    x_t[i : i + r],
                    t[i : i + r],
                    **{k: v[i : i + r] if k in self.per_sample else v for k, v in kwargs.items()},
                )
                for i in range(0, x_t.shape[0], r)
            ]
        )


class _SigmaRowBlocks(_RowBlocks):
    """:class:`_RowBlocks` for an exact model evaluated in DDIM coordinates."""

    def eps_xbar(self, xbar: Tensor, sigma: float) -> Tensor:
        r = self.rows
        return torch.cat([self.inner.eps_xbar(xbar[i : i + r], sigma) for i in range(0, xbar.shape[0], r)])


def _event_shape(model: Any, metadata: dict[str, Any]) -> tuple[int, ...]:
    """The shape of one sample, when the model tells it (exact oracle, this package's UNet, a loaded model)."""
    if isinstance(model, AnalyticModel):
        return tuple(model.event_shape)
    if isinstance(model, ScheduledOracle):
        return tuple(model.oracle.event_shape)
    if isinstance(model, UNet):
        return (model.config.in_channels, model.config.resolution, model.config.resolution)
    if metadata.get("sample_shape"):
        from ..io import sample_shape

        return sample_shape(metadata)
    raise ValueError("cannot tell the shape of one sample from this model; pass shape=(C, H, W) (or the event shape)")


@dataclass(frozen=True)
class RunSettings:
    """The model and solver arguments shared by :func:`~ddim_ode.distributed.sample_to_dir` and
    :func:`~ddim_ode.distributed.encode_to_dir`, as they were passed (checked by :func:`make_plan`)."""

    model: EpsModel | SigmaModel | str | Path | None
    schedule: Schedule | None
    solver: str | Solver
    solver_options: dict[str, Any] | None
    n: int
    grid: str
    sigmas: GridLike | None
    prediction: str | None
    shard_size: int
    batch_size: int | None
    dtype: torch.dtype
    device: str | torch.device | None
    check_finite: bool
    model_kwargs: dict[str, Any] | None
    guidance_scale: float | None
    uncond_kwargs: dict[str, Any] | None

    @classmethod
    def of(cls, arguments: Mapping[str, Any]) -> RunSettings:
        """The settings among the arguments of a public entry point (its ``locals()`` on entry)."""
        return cls(**{f.name: arguments[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class RunPlan:
    """A checked sharded run: how to integrate a block of shards and what the manifest records.

    Attributes:
        kind: ``"sample"`` (decode noise) or ``"encode"`` (encode data).
        arguments: everything the numbers depend on (the manifest's ``arguments``).
        shape: the shape of one sample.
        shard_size: indices per shard and rows per network call.
        group: shards integrated per solver call.
        keeps_state: the solver is reversible; its final state is stored with the shards.
        device, info: this rank's device and its place in the process group.
        dtype: of the solver state and the files.
        seed: the noise seed of a sampling run (``None`` for encoding).
        stochastic: the solver draws fresh noise (seeded per shard from ``seed``).
        solve_kwargs: the arguments of :func:`~ddim_ode.decode` / :func:`~ddim_ode.encode`.
        conditioning: the network's keyword arguments (per sample: sliced by index) and guidance.
        decode_settings: what an encoding run's ``latents.npz`` records beside the latents, given
            by the caller (see :mod:`.decode_input`), or ``None``.
    """

    kind: str
    arguments: dict[str, Any]
    shape: tuple[int, ...]
    shard_size: int
    group: int
    keeps_state: bool
    device: torch.device
    info: DistInfo
    dtype: torch.dtype
    seed: int | None
    stochastic: bool
    solve_kwargs: dict[str, Any]
    conditioning: RunConditioning
    decode_settings: DecodeSettings | None = None

    def solve(self, x: Tensor, starts: Sequence[int]) -> Solution:
        """Integrate the rows ``x`` of the shards that begin at the indices ``starts`` (in this order)."""
        options = dict(self.solve_kwargs["solver_options"])
        if self.stochastic and self.seed is not None:  # one shard per call
            options["generator"] = torch.Generator(self.device).manual_seed(solver_noise_seed(self.seed, starts[0]))
        integrate = decode if self.kind == "sample" else encode
        kwargs = (
            self.solve_kwargs
            | {"solver_options": options}
            | self.conditioning.solve_kwargs(starts, self.shard_size, self.device)
        )
        return integrate(x, **kwargs, return_solution=True)  # type: ignore[no-any-return]


def make_plan(
    kind: str,
    settings: RunSettings,
    *,
    num: int,
    shape: Sequence[int] | None,
    seed: int | None,
    identity: dict[str, Any],
    decode_settings: Mapping[str, Any] | None = None,
) -> RunPlan:
    """Check the arguments of a run of ``num`` indices, resolve its model and solver.

    ``identity`` holds what identifies the inputs (the noise rule and ``seed`` for sampling, the
    data's hash for encoding); ``shape=None`` asks the model for the shape of one sample;
    ``decode_settings`` are checked with :func:`~.decode_input.check_decode_settings`.
    """
    solver, solver_options, n, grid = settings.solver, settings.solver_options, settings.n, settings.grid
    dtype, batch_size = settings.dtype, settings.batch_size
    info = dist_info()
    num = check_int("num", num, high=MAX_NUM)
    shard_size = check_int("shard_size", settings.shard_size, high=MAX_NUM)
    check_shard_count(num, shard_size)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size)
    n = check_int("n", n)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype (of the solver state and files) must be torch.float32 or torch.float64, got {dtype!r}")
    if settings.sigmas is None and grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; allowed: {', '.join(GRIDS)}")
    sigmas = None if settings.sigmas is None else as_float64(settings.sigmas, "sigmas")
    settings_arrays = check_decode_settings(decode_settings)
    if solver_options is not None and not isinstance(solver_options, dict):
        raise TypeError(f"solver_options must be a dict of constructor options, got {type(solver_options).__name__}")
    slv = get_solver(solver, **(solver_options or {}))  # fails early on a bad name or options
    if slv.stochastic and (not isinstance(solver, str) or "generator" in (solver_options or {})):
        raise ValueError(
            f"solver {slv.name!r} draws fresh noise: give it by name and without a `generator` option, so that "
            "its noise can be seeded per shard from `seed` (which keeps every sample independent of the ranks)"
        )
    if kind == "encode" and not slv.can_encode:
        raise ValueError(f"solver {slv.name!r} cannot encode: {slv.why_no_encode}")
    dev = rank_device(settings.device, info)
    resolved = resolve_model(settings.model, settings.schedule, settings.prediction, dev)
    net = resolved.model.to(dev) if isinstance(resolved.model, torch.nn.Module) else resolved.model
    shp = check_shape("shape", list(shape) if shape is not None else list(_event_shape(net, resolved.metadata)))
    conditioning = RunConditioning.make(
        net, num, settings.model_kwargs, settings.guidance_scale, settings.uncond_kwargs
    )
    if isinstance(net, SigmaModel) and not conditioning.empty:
        raise ValueError(
            "model_kwargs and guidance need a network model(x_t, t, **kwargs); an exact SigmaModel takes none"
        )
    if sigmas is None:
        sig = make_grid(resolved.schedule, grid, n)
        grid_arguments: dict[str, Any] = {"n": n, "grid": grid, "sigmas_sha256": grid_sha256(sig)}
    else:  # the manifest records the values: a resume with another grid is refused, the merge can write them
        sig = check_decoding_grid(sigmas, resolved.schedule, "sigmas")
        n = len(sig) - 1
        grid_arguments = {"n": n, "grid": EXPLICIT_GRID, "sigmas_sha256": grid_sha256(sig), "sigmas": grid_values(sig)}
    arguments = identity | {
        "kind": kind,
        "num": num,
        "shape": list(shp),
        "dtype": str(dtype).replace("torch.", ""),
        "shard_size": shard_size,
        "solver": solver if isinstance(solver, str) else f"{slv.name} {slv!r}",
        "solver_options": jsonable(solver_options or {}),
        **grid_arguments,
        "prediction": resolved.prediction,
        "model": fingerprint(net),
        "schedule": fingerprint(resolved.schedule),
    }
    if slv.stochastic and seed is not None:
        arguments["solver_noise"] = SOLVER_NOISE_RULE
    if not conditioning.empty:  # only then: the run ids of unconditioned runs stay as they were
        arguments["conditioning"] = conditioning.record()
    if isinstance(net, SigmaModel):
        blocks: _RowBlocks = _SigmaRowBlocks(net, shard_size)
    else:
        blocks = _RowBlocks(net, shard_size, conditioning.per_sample)
    solve_kwargs = {
        "solver": solver,
        "n": n,
        "model": blocks,
        "schedule": resolved.schedule,
        "sigmas": sig,
        "prediction": resolved.prediction,
        "solver_options": dict(solver_options or {}),
        "check_finite": settings.check_finite,
    }
    # the network always sees one shard; adaptive step control and fresh noise couple the rows of a
    # solver call, so those solvers integrate one shard per call
    group = 1 if (slv.stochastic or slv.adaptive) else max(1, (batch_size or shard_size) // shard_size)
    return RunPlan(
        kind,
        arguments,
        shp,
        shard_size,
        group,
        slv.reversible,
        dev,
        info,
        dtype,
        seed,
        slv.stochastic,
        solve_kwargs,
        conditioning,
        settings_arrays,
    )
