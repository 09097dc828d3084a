"""``ODEScheduler``: any fixed-grid ODE solver of ddim_ode as a diffusers scheduler.

A diffusers pipeline owns the loop and the network call::

    for t in scheduler.timesteps:
        out = network(sample, t)
        sample = scheduler.step(out, t, sample).prev_sample

while a ddim_ode solver is a pure step ``step(field, x̄, σ, σ', state)`` that calls the network
itself, possibly several times (Runge–Kutta stages, a predictor–corrector's evaluation at the
predicted point). :class:`ODEScheduler` reconciles the two by *replay*. Inside :meth:`step` the
solver's field calls a stand-in network that answers, in order, with the outputs the pipeline has
computed for the current grid step and stops the solver (a private exception carrying the point
and timestep) at the first evaluation it has no answer for; that point, in the model's scale, is
returned as ``prev_sample`` for the pipeline to evaluate at the next entry of ``timesteps``. The
next :meth:`step` adds the received output and re-runs the solver step from the start of the grid
step: it is deterministic, so it follows the same path and gets one evaluation further. When a
grid step completes, its new x̄ and solver state (multistep history, a reversible solver's
auxiliary state) are kept and the next grid step begins. The evaluations a grid needs do not
depend on the values, so :meth:`set_timesteps` finds them by running the solver once with a zero
network: ``timesteps`` holds one entry per network evaluation (a Runge–Kutta step of s stages
shows s entries, with repeated timesteps as in diffusers' ``HeunDiscreteScheduler``).

The network is evaluated at exactly the x_t = a(σ)·x̄ and timestep t(σ) that
:func:`ddim_ode.decode` on the same grid would use, so the loop reproduces ``decode`` up to the
rounding of the first point (the pipeline's initial latents are x_T itself).

Flow-matching configs (SD3 / Flux-type ``FlowMatch*`` schedulers) start at τ = 1, pure noise, where
σ = ∞ and x̄ is infinite: the first grid step is the exact limit of the DDIM step,
x̄₁ = x̂0 + σ₁ ε̂ with (ε̂, x̂0) from :meth:`~ddim_ode.field.ProbabilityFlowODE.evaluate_x` on the
noise itself (one evaluation, as :func:`ddim_ode.decode` takes it), and the solver starts afresh at
σ₁. A reversible solver needs finite noise levels: its grid drops the top and starts at σ₁.
"""

from __future__ import annotations

import math
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import SchedulerMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from torch import Tensor

from ..checks import check_grid, check_n
from ..core import from_xbar, step_from_noise, tabulate, to_xbar
from ..field import ProbabilityFlowODE
from ..grids import GRIDS, make_grid
from ..schedules import FlowSchedule, Schedule
from ..solvers import Solver, get_solver, latent_state, list_solvers
from ..solvers.dpm_solver_pp import DPMSolverPlusPlus2M
from .config import DEFAULT_SOURCE, SchedulerSpec, flow_schedule, jsonable_config, read_scheduler_config

__all__ = ["ODEScheduler", "loop_solvers", "FLOW_SHIFT_KEYS"]

#: the settings of a flow-matching scheduler that diffusers' flow pipelines read from ``scheduler.config``
#: (to compute the dynamic shift μ they pass to ``set_timesteps``): an ODEScheduler's config mirrors them
FLOW_SHIFT_KEYS = (
    "shift",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "time_shift_type",
)


def loop_solvers() -> list[str]:
    """The registered solvers that can run in a scheduler loop: fixed grid and deterministic."""
    return [s.name for s in list_solvers() if not s.adaptive and not s.stochastic]


class _Evaluate(Exception):
    """Raised by :class:`_PipelineNetwork` at the first evaluation the pipeline has not made yet."""

    def __init__(self, x_t: Tensor) -> None:
        super().__init__("the pipeline has not evaluated the network at this point yet")
        self.x_t = x_t


class _PipelineNetwork:
    """The network as the solver's field sees it inside :meth:`ODEScheduler.step`.

    It answers, in order, with the outputs the pipeline computed during the current grid step and
    raises :class:`_Evaluate` at the first evaluation it has none for. The first output of a run
    is computed by the pipeline on its initial latents before the scheduler asked for anything:
    ``initial_t`` holds its timestep until the solver's first request, and the output is dropped
    if that request is at another timestep (a reversible solver resuming from its state needs no
    evaluation at the initial latents).
    """

    def __init__(self) -> None:
        self.outputs: list[Tensor] = []
        self.used = 0
        self.initial_t: float | None = None

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        if self.initial_t is not None:
            if float(t.reshape(-1)[0]) != self.initial_t:
                del self.outputs[0]
            self.initial_t = None
        if self.used < len(self.outputs):
            self.used += 1
            return self.outputs[self.used - 1]
        raise _Evaluate(x_t)


class _Recorder:
    """A zero network that records the timestep of every call: plans the evaluations of a grid."""

    def __init__(self) -> None:
        self.ts: list[float] = []

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.ts.append(float(t[0]))
        return torch.zeros_like(x_t)


class _Output:
    """A network that returns one given output (for the x0 estimate of an evaluation)."""

    def __init__(self, output: Tensor) -> None:
        self.output = output

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.output


class _Run:
    """Where a loop stands: grid step ``i`` starts from ``xbar`` with the solver's ``state``.

    At σ = ∞ (the top of a flow-matching grid) x̄ is infinite: ``xbar`` is ``None`` and ``noise``
    holds the model-scale sample, pure noise, until the first step has been taken.
    """

    def __init__(
        self,
        field: ProbabilityFlowODE,
        i: int,
        xbar: Tensor | None,
        state: Any,
        dtype: torch.dtype,
        noise: Tensor | None = None,
    ) -> None:
        self.field = field
        self.i = i
        self.xbar = xbar
        self.state = state
        self.dtype = dtype  # the pipeline's dtype, in which samples are returned
        self.noise = noise
        self.returned: Tensor | None = None  # the last prev_sample handed to the pipeline


class ODEScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that integrates the probability-flow ODE with a ddim_ode solver.

    Swap it into a pipeline with :meth:`from_scheduler`, which reads the replaced scheduler's
    config (noise schedule or flow-matching path, prediction type, timesteps, final σ)::

        pipe.scheduler = ODEScheduler.from_scheduler(pipe.scheduler, solver="dpm-solver++2m")

    Args:
        solver: a solver of :func:`loop_solvers` (fixed grid, deterministic; see
            ``ddim_ode.list_solvers()``). Adaptive solvers choose their steps from error estimates
            and stochastic ones draw noise: neither runs in a scheduler loop.
        solver_options: keyword arguments of the solver's constructor.
        grid: ``None`` (default): the timesteps of the replaced scheduler (its class's
            ``set_timesteps`` on its config), then its final σ; or a grid of
            :func:`ddim_ode.make_grid` (``"uniform"``, ``"quad"``, ``"logsnr"``, ``"karras"``),
            which ends at σ = 0.
        start_fresh: reversible solvers only. By default the first sample must carry the solver's
            auxiliary state (latents made by :func:`ddim_ode.diffusers.invert`), and plain latents
            raise; ``True`` starts the scheme afresh from plain latents (sampling from noise).
        source_scheduler: the config of the replaced diffusers scheduler, with its ``_class_name``
            (default: a default ``DDIMScheduler``). It defines the path (a DDPM noise schedule, or
            rectified flow for ``FlowMatch*`` configs), what the network predicts, the default
            timesteps and where they end (see :mod:`ddim_ode.diffusers.config`). A flow-matching
            source's shift settings (:data:`FLOW_SHIFT_KEYS`) are mirrored at the top level of
            ``config``, where flow pipelines look for them.

    After :meth:`set_timesteps`, ``timesteps`` holds one entry per network evaluation (float32, in
    the schedule's units: DDPM timesteps, or τ · ``num_train_timesteps`` for flow matching) and
    ``sigmas`` the float64 σ grid in DDIM coordinates (σ = √((1 − ᾱ)/ᾱ), or τ/(1 − τ) for flow
    matching; decoding order, final σ included); ``num_inference_steps`` is the number of grid
    steps; ``schedule`` the path (a flow schedule with the μ of the last call). Multistep histories
    and reversible states are kept between :meth:`step` calls and reset by :meth:`set_timesteps`.
    ``order`` is the solver's NFE per step (Runge–Kutta and single-step DPM-Solver) or 1, as
    pipelines use it to count steps. ``solver`` is the solver of the current grid: for
    ``dpm-solver++2m`` replacing a ``DPMSolverMultistepScheduler`` whose config takes a first-order
    last step (``lower_order_final`` below 15 steps, or ``euler_at_final``), :meth:`set_timesteps`
    sets its ``lower_order_final`` option accordingly unless ``solver_options`` name it.
    """

    _compatibles: list[str] = []

    @register_to_config
    def __init__(
        self,
        solver: str = "dpm-solver++2m",
        solver_options: dict[str, Any] | None = None,
        grid: str | None = None,
        start_fresh: bool = False,
        source_scheduler: dict[str, Any] | None = None,
    ) -> None:
        if grid is not None and grid not in GRIDS:
            allowed = ", ".join(repr(g) for g in GRIDS)
            raise ValueError(f"unknown grid {grid!r}; allowed: None (the replaced scheduler's timesteps), {allowed}")
        if solver_options is not None and not isinstance(solver_options, dict):
            raise ValueError(f"solver_options must be a dict or None, got {type(solver_options).__name__}")
        slv = get_solver(solver, **(solver_options or {}))
        if slv.adaptive or slv.stochastic:
            kind = "is adaptive (it chooses its own steps)" if slv.adaptive else "draws random noise"
            raise ValueError(
                f"solver {slv.name!r} {kind} and cannot run in a scheduler loop; allowed: {', '.join(loop_solvers())}"
            )
        source = {"_class_name": DEFAULT_SOURCE} if source_scheduler is None else dict(source_scheduler)
        self.spec: SchedulerSpec = read_scheduler_config(source)
        self._source = _source_class(self.spec.class_name).from_config(source)
        self._source_config = source
        if self.spec.flow_matching:  # flow pipelines compute μ from scheduler.config's shift settings
            self.register_to_config(**{k: source[k] for k in FLOW_SHIFT_KEYS if k in source})
        self.solver: Solver = slv
        self.schedule: Schedule = self.spec.schedule
        self.prediction = self.spec.prediction
        self.init_noise_sigma = 1.0
        self.order = int(slv.nfe_per_step) if float(slv.nfe_per_step).is_integer() else 1
        self.timesteps = torch.zeros(0, dtype=torch.float32)
        self.sigmas = torch.zeros(0, dtype=torch.float64)
        self.num_inference_steps: int | None = None
        self._plan: list[list[float]] = []  # per grid step, the timesteps of its evaluations (float64)
        self._flat: list[float] = []  # the same, one list: the float64 values of `timesteps`
        self._begin_index: int | None = None
        self._step_index: int | None = None
        self._run: _Run | None = None
        self._network = _PipelineNetwork()

    @classmethod
    def from_scheduler(
        cls,
        scheduler: SchedulerMixin,
        solver: str = "dpm-solver++2m",
        grid: str | None = None,
        *,
        start_fresh: bool = False,
        **solver_options: Any,
    ) -> ODEScheduler:
        """An ODEScheduler for the model ``scheduler`` was configured for (its schedule, prediction
        type, timesteps and final σ), running ``solver`` built with ``solver_options``.

        Given an ODEScheduler, its source scheduler is kept and the solver and grid replaced.
        """
        if isinstance(scheduler, ODEScheduler):
            source = dict(scheduler.config.source_scheduler or {"_class_name": DEFAULT_SOURCE})
        elif isinstance(scheduler, SchedulerMixin):
            source = {**jsonable_config(scheduler.config), "_class_name": type(scheduler).__name__}
        else:
            raise TypeError(f"scheduler must be a diffusers scheduler, got {type(scheduler).__name__}")
        return cls(
            solver=solver,
            solver_options=solver_options or None,
            grid=grid,
            start_fresh=start_fresh,
            source_scheduler=source,
        )

    @classmethod
    def from_config(
        cls, config: dict[str, Any] | None = None, return_unused_kwargs: bool = False, **kwargs: Any
    ) -> Any:
        """From an ODEScheduler config, or from any diffusers scheduler config, which becomes the
        ``source_scheduler`` (a config without ``_class_name`` is taken as a DDIMScheduler's);
        ``kwargs`` (``solver``, ``solver_options``, ``grid``, ``start_fresh``) override."""
        if config is None:
            raise ValueError("from_config needs a config dict (a scheduler's .config)")
        cfg = dict(config)
        if "source_scheduler" not in cfg and cfg.get("_class_name") != cls.__name__:
            source = jsonable_config(cfg)
            source.setdefault("_class_name", DEFAULT_SOURCE)
            cfg = {"source_scheduler": source}
        cfg = {k: v for k, v in cfg.items() if k not in FLOW_SHIFT_KEYS}  # mirrors of source_scheduler's
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | np.ndarray | Tensor | None = None,
        mu: float | None = None,
        timesteps: list[float] | np.ndarray | Tensor | None = None,
    ) -> None:
        """Set the σ grid and the evaluation timesteps, and reset the solver's history.

        Give exactly one of ``num_inference_steps`` (the replaced scheduler's timesteps, or the
        configured ``grid``), ``timesteps`` (decreasing, in the schedule's units; the final σ is
        appended) or ``sigmas``. For a DDPM-type config ``sigmas`` is the whole decoding grid in
        σ = √((1 − ᾱ)/ᾱ), decreasing, ending with its final value (e.g. 0); for a flow-matching
        config it is what diffusers' flow pipelines pass: one τ per step, pure noise at 1, before
        the time shift, which the replaced scheduler applies (then 0 is appended). A final σ equal
        to the last timestep's σ (``leading`` spacing with ``steps_offset=0`` and
        ``set_alpha_to_one=False``) is a step of length 0 and is dropped.

        ``mu`` is the resolution-dependent shift of a flow-matching config with
        ``use_dynamic_shifting`` (required there unless ``timesteps`` are given, and ignored for a
        static shift, as diffusers does); a DDPM-type config takes none.
        """
        given = [v is not None for v in (num_inference_steps, timesteps, sigmas)]
        if sum(given) != 1:
            raise ValueError("set_timesteps needs exactly one of num_inference_steps, timesteps and sigmas")
        self.schedule = self._schedule_for(mu, needed=timesteps is None)
        if sigmas is not None and self.spec.flow_matching:
            grid = self._source_grid(sigmas=np.asarray(_host(sigmas), dtype=np.float64), mu=mu)
            what = "sigmas"
        elif sigmas is not None:
            grid = torch.as_tensor(np.asarray(_host(sigmas), dtype=np.float64))
            what = "sigmas"
        elif timesteps is not None:
            grid = self._grid_of_timesteps(np.asarray(_host(timesteps), dtype=np.float64))
            what = "timesteps"
        elif self.config.grid is not None:
            grid = make_grid(self.schedule, self.config.grid, check_n(num_inference_steps))
            what = f"the {self.config.grid!r} grid"
        else:
            grid = self._source_grid(num_inference_steps=check_n(num_inference_steps), mu=mu)
            what = f"the timesteps of {self.spec.class_name}"
        grid = check_grid(grid, self.schedule, what)
        if not float(grid[0]) > float(grid[-1]):
            raise ValueError(f"{what} must be in decoding order (strictly decreasing sigma)")
        if self.solver.reversible and math.isinf(float(grid[0])):
            if len(grid) < 3:
                raise ValueError(f"solver {self.solver.name!r} needs a finite top: {what} has no step below pure noise")
            grid = grid[1:]  # reversible solvers invert exactly only between finite noise levels
        self.solver = self._solver_for(len(grid) - 1)
        self.sigmas = grid
        self._plan = self._evaluations(grid)
        self._flat = [t for step in self._plan for t in step]
        self.timesteps = torch.tensor(self._flat, dtype=torch.float32, device=device)
        self.num_inference_steps = len(grid) - 1
        self._begin_index = None
        self._step_index = None
        self._run = None

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """The network takes the sample as it is (x_t in the usual VP scale)."""
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        return_dict: bool = True,
        eta: float = 0.0,
        **kwargs: Any,
    ) -> DDIMSchedulerOutput | tuple[Tensor, Tensor]:
        """Take the network output for the current entry of ``timesteps`` and return the next point.

        ``prev_sample`` is the point where the network is to be evaluated at the next entry of
        ``timesteps`` (after the last entry: the result, at the grid's final σ), in the model's
        scale; ``pred_original_sample`` the x0 estimate of this evaluation. Call it once per entry
        of ``timesteps``, in order, passing back the ``prev_sample`` it returned (the scheduler
        follows its own trajectory: a sample edited between calls raises). The first call takes
        ``sample`` as x_T and, for a reversible solver, its auxiliary state (see
        :func:`ddim_ode.diffusers.invert`). ``eta`` must be 0 (the ODE is deterministic); other
        keyword arguments of other schedulers (``generator``, ``use_clipped_model_output``) are
        accepted and unused.
        """
        if eta:
            raise ValueError(f"ODEScheduler is deterministic: eta must be 0, got {eta!r}")
        if not self._plan:
            raise ValueError("call set_timesteps before step")
        if self._run is None:
            self._run = self._start(sample)
        elif self._step_index is not None and self._step_index >= len(self.timesteps):
            raise ValueError(f"step called after the last of the {len(self.timesteps)} timesteps; call set_timesteps")
        elif sample is not self._run.returned and not torch.equal(sample, self._run.returned):  # type: ignore[arg-type]
            raise ValueError(
                "step() got a sample that differs from the prev_sample it returned: ODEScheduler follows its own "
                "trajectory, so pipelines that edit the latents between steps are not supported"
            )
        run = self._run
        if model_output.shape[1] == 2 * sample.shape[1]:  # a learned variance in the other half of the channels
            model_output = model_output[:, : sample.shape[1]]
        self._network.outputs.append(model_output)
        k = self._step_index if self._step_index is not None else 0
        x0 = self._denoised(model_output, sample, k)
        self._step_index = k + 1
        prev = self._advance(run)
        run.returned = prev
        if self._step_index == len(self._flat) and run.i < len(self.sigmas) - 1:
            raise ValueError(
                f"solver {self.solver.name!r} needs more evaluations than the {len(self._flat)} timesteps: the "
                "latents' auxiliary state was made on another grid (invert with the same n, grid and scheduler config)"
            )
        if not return_dict:
            return prev, x0
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """x_t = a x0 + s ε at the noise level of ``timesteps``, per sample: √ᾱ_t x0 + √(1 − ᾱ_t) ε on
        a DDPM path, (1 − τ) x0 + τ ε for flow matching (pure noise at τ = 1)."""
        t = torch.as_tensor(timesteps).detach().cpu().to(torch.float64).reshape(-1)
        sigma = self.schedule.sigma(t)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        like = dict(dtype=original_samples.dtype, device=original_samples.device)
        a = self.schedule.scale(sigma).to(**like).reshape(shape)
        s = self.schedule.noise_scale(sigma).to(**like).reshape(shape)
        return a * original_samples + s * noise

    def scale_noise(self, sample: Tensor, timestep: Tensor, noise: Tensor) -> Tensor:
        """:meth:`add_noise` under the name and argument order of diffusers' flow-matching schedulers
        (their image-to-image pipelines call ``scheduler.scale_noise(latents, timestep, noise)``)."""
        return self.add_noise(sample, noise, timestep)

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at ``timesteps[begin_index]`` (image-to-image pipelines skip the first grid
        steps); it must be where a grid step starts afresh. Reset by :meth:`set_timesteps`."""
        self._begin_index = int(begin_index)
        if self._plan:
            self._begin_step()  # refuse a bad index now rather than at the first step

    @property
    def begin_index(self) -> int | None:
        """The index of ``timesteps`` the loop starts at (``None``: 0)."""
        return self._begin_index

    @property
    def step_index(self) -> int | None:
        """The index of ``timesteps`` whose network output the next :meth:`step` takes (``None`` before the first)."""
        return self._step_index

    def __len__(self) -> int:
        return self.spec.num_train_timesteps

    def _schedule_for(self, mu: float | None, needed: bool) -> Schedule:
        """The path for a grid: the config's, with ``mu`` for a dynamically shifted flow (required
        when ``needed``: the grid is shifted)."""
        schedule = self.spec.schedule
        if not isinstance(schedule, FlowSchedule):
            if mu is not None:
                raise ValueError(
                    f"mu applies to flow-matching configs with use_dynamic_shifting; {self.spec.class_name}'s "
                    "config is DDPM-type: allowed: mu=None"
                )
            return schedule
        if not schedule.use_dynamic_shifting:
            return schedule  # a static shift: mu is ignored, as diffusers' flow schedulers do
        if mu is None:
            if needed:
                raise ValueError(
                    "this flow-matching config shifts its grid with the image size (use_dynamic_shifting): "
                    "set_timesteps needs mu=... (diffusers' flow pipelines pass it)"
                )
            return schedule
        return flow_schedule(self._source_config, float(mu))

    def _source_grid(
        self, num_inference_steps: int | None = None, sigmas: np.ndarray | None = None, mu: float | None = None
    ) -> Tensor:
        """The σ grid of the replaced scheduler's ``set_timesteps``: its timesteps (DDPM) or its
        τ values (flow matching, σ = τ/(1 − τ), ∞ at τ = 1), then the final σ."""
        kwargs: dict[str, Any] = {}
        if mu is not None and isinstance(self.schedule, FlowSchedule) and self.schedule.use_dynamic_shifting:
            kwargs["mu"] = mu
        if sigmas is not None:
            self._source.set_timesteps(sigmas=sigmas, **kwargs)
        else:
            self._source.set_timesteps(num_inference_steps, **kwargs)
        if not self.spec.flow_matching:
            ts = self._source.timesteps.detach().cpu().to(torch.float64).numpy()
            return self._grid_of_timesteps(np.unique(ts)[::-1].copy())
        tau = np.unique(self._source.sigmas.detach().cpu().to(torch.float64).numpy())[::-1].copy()  # Heun repeats
        sig = np.full_like(tau, np.inf)
        np.divide(tau, 1.0 - tau, out=sig, where=tau < 1.0)
        return torch.from_numpy(sig)

    def _solver_for(self, steps: int) -> Solver:
        """The solver for a grid of ``steps`` steps: ``dpm-solver++2m`` with the replaced scheduler's
        first-order last step (unless ``solver_options`` set ``lower_order_final``), else as configured."""
        options = dict(self.config.solver_options or {})
        if not isinstance(self.solver, DPMSolverPlusPlus2M) or "lower_order_final" in options:
            return self.solver
        lower = steps < self.spec.lower_order_final_below
        if lower == self.solver.lower_order_final:
            return self.solver
        return get_solver(self.solver.name, **options, lower_order_final=lower)

    def _grid_of_timesteps(self, ts: np.ndarray) -> Tensor:
        """σ at the timesteps ``ts`` (decreasing), then the final σ unless it would repeat the last."""
        if ts.ndim != 1 or ts.size == 0 or not np.isfinite(ts).all():
            raise ValueError("timesteps must be a non-empty 1-D sequence of finite numbers")
        lo, hi = self.schedule.t_min, self.schedule.t_max
        if ts.min() < lo or ts.max() > hi:
            raise ValueError(f"timesteps must lie in the schedule's range [{lo:g}, {hi:g}]")
        sig = self.schedule.sigma(torch.from_numpy(np.ascontiguousarray(ts)))
        if float(sig[-1]) > self.spec.final_sigma:
            sig = torch.cat([sig, torch.tensor([self.spec.final_sigma], dtype=torch.float64)])
        return sig

    def _evaluations(self, grid: Tensor) -> list[list[float]]:
        """Per grid step, the timesteps at which the solver evaluates the network, starting afresh on
        ``grid`` (from σ = ∞: one evaluation on the noise, then the solver afresh from the next point)."""
        recorder = _Recorder()
        field = ProbabilityFlowODE(recorder, self.schedule, self.prediction)
        xbar = torch.zeros(1, 1, dtype=torch.float64)
        plan = []
        if math.isinf(float(grid[0])):
            field.evaluate_x(xbar, math.inf)
            plan.append(recorder.ts[:])
            grid = grid[1:]
        tabulate(field, self.solver, grid)
        state = self.solver.init(field, xbar, grid)
        sig = grid.tolist()
        for sigma, sigma_next in zip(sig[:-1], sig[1:]):
            start = len(recorder.ts)
            xbar, state = self.solver.step(field, xbar, sigma, sigma_next, state)
            plan.append(recorder.ts[start:])
        return plan

    def _begin_step(self) -> int:
        """The grid step at which the loop starts: the one whose fresh evaluations are ``timesteps[begin_index:]``."""
        k = self._begin_index or 0
        flat = self._flat
        if not 0 <= k < len(flat):
            raise ValueError(f"begin_index {k} is outside the {len(flat)} timesteps")
        if k == 0:
            return 0
        t_grid = self.schedule.t(self.sigmas).tolist()
        for i in range(len(self.sigmas) - 1):
            if t_grid[i] == flat[k] and [t for step in self._evaluations(self.sigmas[i:]) for t in step] == flat[k:]:
                return i
        raise ValueError(
            f"begin_index {k} is not where a grid step of solver {self.solver.name!r} starts afresh; "
            f"allowed: the start of a grid step, e.g. a multiple of order={self.order} for a Runge-Kutta solver"
        )

    def _start(self, sample: Tensor) -> _Run:
        """Begin a loop at the first sample: x̄ at the start, the solver's state (carried or fresh)."""
        i = self._begin_step()
        self._step_index = self._begin_index or 0
        state = latent_state(sample)
        name = self.solver.name
        if state is not None and not self.solver.reversible:
            raise ValueError(
                f"these latents carry the auxiliary state of a reversible solver, but solver {name!r} takes none: "
                "decode them with the solver invert() used, or pass a plain copy (latents.clone())"
            )
        if state is None and self.solver.reversible and not self.config.start_fresh:
            raise ValueError(
                f"solver {name!r} needs the auxiliary state that ddim_ode.diffusers.invert() attaches to the latents "
                "it returns: pass invert()'s result unchanged as latents=, or build the scheduler with "
                "start_fresh=True to sample from plain latents"
            )
        dtype = torch.float32 if sample.dtype in (torch.float16, torch.bfloat16) else sample.dtype
        field = ProbabilityFlowODE(self._network, self.schedule, self.prediction, model_dtype=sample.dtype)
        grid = self.sigmas[i:]
        x = sample.as_subclass(Tensor).to(dtype)
        self._network.outputs.clear()
        self._network.used = 0
        self._network.initial_t = float(torch.tensor(self._plan[i][0], dtype=_t_dtype(dtype)))
        if math.isinf(float(grid[0])):  # pure noise: x̄ is infinite until the first step (never with a state)
            tabulate(field, self.solver, grid[1:])
            return _Run(field, i, None, None, sample.dtype, noise=x)
        tabulate(field, self.solver, grid)
        xbar = to_xbar(x, float(grid[0]), self.schedule)
        if state is None:
            state = self.solver.init(field, xbar, grid)
        return _Run(field, i, xbar, state, sample.dtype)

    def _denoised(self, model_output: Tensor, sample: Tensor, k: int) -> Tensor:
        """The x0 estimate of the evaluation at ``sample`` and ``timesteps[k]`` (also at σ = ∞)."""
        sigma = float(self.schedule.sigma(self._flat[k]))
        dtype = torch.float32 if sample.dtype in (torch.float16, torch.bfloat16) else sample.dtype
        field = ProbabilityFlowODE(_Output(model_output), self.schedule, self.prediction)
        _, x0 = field.evaluate_x(sample.as_subclass(Tensor).to(dtype), sigma)
        return x0.to(sample.dtype)

    def _advance(self, run: _Run) -> Tensor:
        """Re-run grid steps from the current one until the solver asks for an evaluation the pipeline
        has not made (return that point) or the grid ends (return the result)."""
        sig = self.sigmas.tolist()
        net = self._network
        while run.i < len(sig) - 1:
            net.used = 0
            try:
                if run.xbar is None:
                    xbar, state = self._step_from_noise(run)
                else:
                    xbar, state = self.solver.step(run.field, run.xbar, sig[run.i], sig[run.i + 1], run.state)
            except _Evaluate as request:
                return request.x_t.to(run.dtype)
            run.xbar, run.state = xbar, state
            run.i += 1
            net.outputs.clear()
            net.initial_t = None
        return from_xbar(run.xbar, sig[-1], self.schedule).to(run.dtype)  # type: ignore[arg-type]

    def _step_from_noise(self, run: _Run) -> tuple[Tensor, Any]:
        """The first step of a grid from σ = ∞: the DDIM limit x̄₁ = x̂0 + σ₁ ε̂ on the noise (as
        :func:`ddim_ode.decode` takes it), and the solver's state afresh on the rest of the grid."""
        rest = self.sigmas[run.i + 1 :]
        xbar = step_from_noise(run.field, run.noise, float(rest[0]))  # type: ignore[arg-type]
        return xbar, self.solver.init(run.field, xbar, rest)


def _host(values: Any) -> Any:
    return values.detach().cpu().numpy() if isinstance(values, Tensor) else values


def _t_dtype(state_dtype: torch.dtype) -> torch.dtype:
    """The dtype the field gives the network's timesteps for a state of ``state_dtype``."""
    return torch.float64 if state_dtype == torch.float64 else torch.float32


def _source_class(name: str) -> type[SchedulerMixin]:
    """The diffusers scheduler class named ``name`` (whose ``set_timesteps`` gives the default timesteps)."""
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(f"unknown diffusers scheduler class {name!r} in _class_name; allowed: diffusers' schedulers")
    return cls
