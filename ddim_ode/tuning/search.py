"""The discrete search: local step errors on the candidate grid and the dynamic programme over them.

Given accurate states x̄*_i at candidates σ_0 = σ_max > σ_1 > … > σ_N = 0 (:mod:`.reference`),
the cost of a step i → j is the RMS error of one step of the solver *itself* (its own
:meth:`~ddim_ode.solvers.Solver.step`) started from the reference, against the reference:

    c(i → j) = RMS(step(x̄*_i, σ_i → σ_j) − x̄*_j).

A grid may also start below σ_max: a sampler that starts at σ_s takes the noise z (drawn at
σ_max in the model's scale) as its x_T there, as :func:`~ddim_ode.decode` does, and so starts off
the reference by the start cost c₀(s) = RMS(z/a(σ_s) − x̄*_s) (0 at s = 0). The dynamic programme
finds the n-step path s → N of least total weighted cost w(σ_s)^p c₀(s) + Σ w(σ_j)^p c(i → j)
(Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling", GITS, use
p = 0 and s = 0). The weight w(σ) = s_d/√(s_d² + σ²), s_d² the variance of the reference end
states, is the factor by which an error made at σ shrinks on its way to σ = 0 when the data are
Gaussian with that variance (x̄(0) − μ = (x̄(σ) − μ) s_d/√(s_d² + σ²)): p = 1 charges each error
what it would cost at the end under that model. Neither extreme is right for every model (errors
near a boundary between modes grow instead of shrinking), so the caller tries a few exponents
and keeps the path with the least actual global error.

* **One-step solvers** (the step returns no state: Euler, Heun, RK, DPM-Solver-k): c(i → j) is
  the exact local error; a path's cost is the sum of its steps' costs, O(N² n).
* **Solvers with history** (multistep: DPM-Solver++(kM), PLMS, UniPC, …): a step's result depends
  on earlier points. The surrogate keeps one step of history: c(k, i → j) is the error of the step
  i → j from x̄*_i with the state the solver had after its step k → i from x̄*_k (the first step
  of a path is taken with a fresh state); the programme runs over pairs (k, i), O(N³ n). For
  solvers that use only the previous point (DPM-Solver++(2M)) this is their exact local error
  along the reference; deeper histories see only the last point.

The network is called once per candidate (ε at x̄*_i, served from :class:`KnownField` whenever a
solver asks for it again); a one-stage step from a reference state then costs nothing more, a
Heun step one evaluation per pair (i, j).

On a flow path the first candidate is σ = ∞ (pure noise). A step from there is what
:func:`~ddim_ode.decode` takes from σ = ∞ whatever the solver: the exact limit of the DDIM step,
x̄_j = x̂0 + σ_j ε̂ with (ε̂, x̂0) evaluated on the noise (:func:`~ddim_ode.core.step_from_noise`);
the solver then starts afresh at σ_j, so a step i → j after ∞ → i costs what it costs with a fresh
state.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core import to_xbar
from ..field import ProbabilityFlowODE
from ..solvers import Solver
from .reference import Reference, rms

__all__ = ["KnownField", "StepCosts", "step_costs", "best_path"]


class KnownField(ProbabilityFlowODE):
    """The field of ``field``'s model, with ε at given (x̄, σ) known in advance.

    A call at a remembered σ with the *same* tensor object returns the stored ε without a network
    evaluation (and without counting one); any other call evaluates the model.
    """

    def __init__(self, field: ProbabilityFlowODE) -> None:
        super().__init__(field.model, field.schedule, prediction=field.prediction, model_dtype=field.model_dtype)
        self._known: dict[float, tuple[Tensor, Tensor]] = {}

    def remember(self, xbar: Tensor, sigma: float, eps: Tensor) -> None:
        """Serve ``eps`` for the next calls at (this very ``xbar``, ``sigma``)."""
        self._known[float(sigma)] = (xbar, eps)

    def __call__(self, xbar: Tensor, sigma: float) -> Tensor:
        known = self._known.get(float(sigma))
        if known is not None and known[0] is xbar:
            return known[1]
        return super().__call__(xbar, sigma)


class StepCosts:
    """The step costs of one solver on one reference.

    ``start[s]`` is the start cost c₀(s) (``inf`` at σ = 0); ``pairs[i, j]`` the cost of a step
    i → j taken with a fresh state (every step of a one-step solver, the first step of a path
    otherwise); ``triples[k, i, j]`` (solvers with ``history`` only) that of a step i → j after a
    step k → i. Entries are ``inf`` where no step is possible. ``weights`` holds w(σ_j); ``nfe``
    counts the network evaluations spent.
    """

    def __init__(self, history: bool, weights: np.ndarray) -> None:
        size = weights.size
        self.history = history
        self.weights = weights
        self.start = np.full(size, np.inf)
        self.pairs = np.full((size, size), np.inf)
        self.triples = np.full((size, size, size), np.inf) if history else np.zeros((0, 0, 0))
        self.nfe = 0


def _weights(ref: Reference) -> np.ndarray:
    end = ref.states[-1].to(torch.float64)
    s2 = float(end.var(dim=0, unbiased=False).mean()) if end.shape[0] > 1 else 1.0
    s2 = max(s2, 1e-12)
    sig = ref.sigmas.numpy()
    # no step ends at σ = ∞ (a flow's pure noise): its weight is never used, and 1 keeps inf · w = inf
    return np.where(np.isinf(sig), 1.0, np.sqrt(s2 / (s2 + sig * sig)))


def step_costs(field: ProbabilityFlowODE, slv: Solver, ref: Reference) -> StepCosts:
    """The cost table of ``slv`` on ``ref`` (see the module docstring); one network call per candidate and
    whatever further evaluations the solver's steps make off the reference."""
    known = KnownField(field)
    sig = ref.sigmas.tolist()
    size = len(sig)
    states = [ref.states[i] for i in range(size)]
    first = 1 if math.isinf(sig[0]) else 0  # the first finite candidate
    for i in range(first, size - 1):
        known.remember(states[i], sig[i], known(states[i], sig[i]))
    span = torch.tensor([sig[first], 0.0], dtype=torch.float64)  # what init() sees: a decoding run ending at 0

    def init(x: Tensor) -> Any:
        return slv.init(known, x, span)

    def cost(out: Tensor, j: int) -> float:
        c = rms(out, states[j])
        return c if np.isfinite(c) else np.inf

    out, state = slv.step(known, states[first], sig[first], sig[first + 1], init(states[first]))
    costs = StepCosts(state is not None, _weights(ref))  # a step that returns a state carries history
    costs.pairs[first, first + 1] = cost(out, first + 1)
    costs.start[0] = 0.0
    for s in range(1, size - 1):
        costs.start[s] = cost(to_xbar(ref.noise, sig[s], field.schedule), s)
    if first:
        eps, x0 = known.evaluate_x(ref.noise, math.inf)
        for j in range(1, size):
            costs.pairs[0, j] = cost(torch.add(x0, eps, alpha=sig[j]), j)
    for i in range(first, size - 1):
        for j in range(i + 1 if i > first else first + 2, size):
            out, _ = slv.step(known, states[i], sig[i], sig[j], init(states[i]))
            costs.pairs[i, j] = cost(out, j)
    if costs.history:
        if first:  # after the step from pure noise the solver starts afresh
            costs.triples[0, 1:, :] = costs.pairs[1:, :]
        for k in range(first, size - 2):
            for i in range(k + 1, size - 1):
                _, state = slv.step(known, states[k], sig[k], sig[i], init(states[k]))
                for j in range(i + 1, size):
                    out, _ = slv.step(known, states[i], sig[i], sig[j], state)
                    costs.triples[k, i, j] = cost(out, j)
    costs.nfe = known.nfe
    return costs


def best_path(costs: StepCosts, n: int, exponent: float = 0.0, keep_top: bool = False) -> tuple[list[int], float]:
    """The indices i_0 < i_1 < … < i_n = N of the n-step path of least weighted cost (exponent p), and that cost.

    Dynamic programming over the number of steps: over end points for one-step solvers, over
    (previous, current) pairs for solvers with history. ``keep_top``: paths start at σ_max (i_0 = 0).
    """
    size = costs.start.size
    last = size - 1
    if n < 1 or n > last:
        raise ValueError(
            f"cannot place {n} steps on {last} candidate intervals; use 1..{last} steps or more candidates"
        )
    w = costs.weights**exponent
    start = costs.start * w
    if keep_top:
        start[1:] = np.inf
    steps = costs.pairs * w[None, :]
    if not costs.history:
        total = start  # total[j]: least cost of reaching j in m steps
        back = []
        for _ in range(n):
            cand = total[:, None] + steps  # cand[i, j]: reach i, then step i → j
            back.append(np.argmin(cand, axis=0))
            total = cand.min(axis=0)
        path = [last]
        for arg in reversed(back):
            path.append(int(arg[path[-1]]))
        return path[::-1], float(total[last])
    pair = start[:, None] + steps  # pair[k, i]: least cost of a path whose last step is k → i
    backs = []
    for _ in range(n - 1):
        cand = pair[:, :, None] + costs.triples * w[None, None, :]  # cand[k, i, j]: ... k → i, then i → j
        backs.append(np.argmin(cand, axis=0))
        pair = cand.min(axis=0)
    i = int(np.argmin(pair[:, last]))
    value = float(pair[i, last])
    path = [last, i]
    for arg in reversed(backs):
        path.append(int(arg[path[-1], path[-2]]))
    return path[::-1], value
