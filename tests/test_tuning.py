"""Tuned time grids (ddim_ode.tuning) and the published Align Your Steps grids (ddim_ode.published_grids)."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch

import ddim_ode
from ddim_ode import ContinuousSchedule, DiscreteSchedule
from ddim_ode.analytic import GaussianMixture
from ddim_ode.published_grids import AYS_LEVELS, AYS_TIMESTEPS, loglinear_interp, published_levels
from ddim_ode.tuning import TunedGrid, read_sigmas, steps_for_nfe
from ddim_ode.tuning.reference import Reference, candidate_sigmas, reference_trajectory
from ddim_ode.tuning.search import StepCosts, best_path, step_costs

SCHEDULE = ContinuousSchedule.linear()
MIXTURE = GaussianMixture.random(k=4, dim=6, seed=0)
SMALL = dict(
    model=MIXTURE,
    schedule=SCHEDULE,
    num_samples=16,
    heldout_samples=24,
    candidates=16,
    refine_solves=16,
    reference_steps=96,
)


def _tune(n: int, solver: str, **kw):
    return ddim_ode.tune_grid(n, solver, **{**SMALL, **kw})


def _independent_heldout_errors(g: TunedGrid, solver: str, schedule=SCHEDULE) -> dict[str, float]:
    """Held-out RMS errors recomputed without the tuner: its held-out noise, a 200-step RK4 reference."""
    gen = torch.Generator().manual_seed(g.heldout_seed)
    z = torch.randn(g.heldout_samples, MIXTURE.dim, generator=gen, dtype=torch.float64)
    rk4 = ddim_ode.get_solver("rk4", final_step="full")
    ref = ddim_ode.decode(z, rk4, 200, model=MIXTURE, schedule=schedule, grid="logsnr")
    grids = {name: ddim_ode.make_grid(schedule, name, g.n) for name in g.default_heldout_errors}
    out = {}
    for name, sig in {"returned": g.sigmas, **grids}.items():
        x = ddim_ode.decode(z, solver, sigmas=sig, model=MIXTURE, schedule=schedule)
        out[name] = float((x - ref).pow(2).mean().sqrt())
    return out


# --------------------------------------------------------------------------------------------- tune_grid


@pytest.mark.parametrize("solver", ["euler", "heun", "dpm-solver++2m"])
@pytest.mark.parametrize("n", [4, 5, 6])
def test_heldout_error_never_worse_than_best_default(solver, n):
    g = _tune(n, solver)
    assert set(g.default_heldout_errors) == {"uniform", "logsnr", "karras", "quad"}  # all have n steps here
    assert g.heldout_error <= min(g.default_heldout_errors.values())
    assert g.chosen == "tuned" or torch.equal(g.sigmas, ddim_ode.make_grid(SCHEDULE, g.chosen, n))
    # the tuner's held-out numbers agree with an independent evaluation (same noise, other reference)
    indep = _independent_heldout_errors(g, solver)
    assert indep["returned"] == pytest.approx(g.heldout_error, rel=1e-3)
    for name, err in g.default_heldout_errors.items():
        assert indep[name] == pytest.approx(err, rel=1e-3)
        assert indep["returned"] <= indep[name] * (1 + 1e-3)


def test_tuning_beats_every_default_grid_with_euler_at_n5():
    g = _tune(5, "euler", num_samples=32, heldout_samples=64)
    print(f"euler n=5: best default ({g.best_default}) / tuned held-out error = {g.gain:.2f}")
    assert g.chosen == "tuned"
    assert g.gain > 1.15
    assert g.tuned_heldout_error == g.heldout_error


def test_grid_may_start_below_sigma_max_unless_kept_at_the_top():
    free = _tune(4, "heun", refine=False)
    assert float(free.sigmas[0]) < SCHEDULE.sigma_max * 0.5  # Heun's NFE are better spent lower here
    kept = _tune(4, "heun", refine=False, keep_top=True)
    assert float(kept.sigmas[0]) == SCHEDULE.sigma_max and kept.chosen == "tuned"
    assert free.tuning_error < kept.tuning_error  # the wider search finds a better grid on the tuning noises
    refined = _tune(4, "heun", keep_top=True)
    assert float(refined.sigmas[0]) == SCHEDULE.sigma_max and refined.tuning_error < kept.tuning_error


def test_deterministic_for_a_fixed_seed_and_seed_matters():
    a, b = _tune(5, "heun"), _tune(5, "heun")
    assert torch.equal(a.sigmas, b.sigmas)
    assert a.heldout_error == b.heldout_error and a.tuning_error == b.tuning_error
    assert a.default_heldout_errors == b.default_heldout_errors
    c, d = _tune(5, "heun", seed=7, refine=False), _tune(5, "heun", refine=False)
    assert c.seed == 7 and c.heldout_seed == 8 and d.heldout_seed == 1
    assert c.tuning_error != d.tuning_error and c.heldout_error != d.heldout_error


@pytest.mark.parametrize("solver", ["euler", "dpm-solver++2m"])
def test_returned_grid_is_a_valid_decoding_grid(solver):
    g = _tune(5, solver)
    sig = g.sigmas
    assert sig.dtype == torch.float64 and len(sig) == g.n + 1 == 6
    assert float(sig[-1]) == 0.0 and bool((sig[1:] < sig[:-1]).all())
    assert SCHEDULE.sigma_min * (1 - 1e-12) <= float(sig[-2]) and float(sig[0]) <= SCHEDULE.sigma_max * (1 + 1e-12)
    z = torch.randn(3, MIXTURE.dim, dtype=torch.float64)
    sol = ddim_ode.decode(z, solver, sigmas=sig, model=MIXTURE, schedule=SCHEDULE, return_solution=True)
    assert sol.nfe == g.nfe == 5
    assert torch.isfinite(sol.x).all()


def test_nfe_budget_gives_the_steps_the_solver_can_afford():
    heun = ddim_ode.get_solver("heun")
    assert steps_for_nfe(heun, SCHEDULE, 9) == 5  # 2n - 1 NFE
    assert steps_for_nfe(heun, SCHEDULE, 10) == 5
    assert steps_for_nfe(ddim_ode.get_solver("euler"), SCHEDULE, 7) == 7
    g = _tune(None, "heun", nfe=9, refine=False)
    assert g.n == 5 and g.nfe == 9
    assert all(v == 9 for v in g.default_nfe.values())


def test_discrete_schedule_defaults_with_more_steps_are_not_compared():
    sch = DiscreteSchedule.linear()
    g = ddim_ode.tune_grid(6, "euler", **{**SMALL, "schedule": sch, "refine": False})
    assert g.default_nfe["uniform"] == 7  # range(0, 1000, 166) has 7 entries: the official grid takes 7 steps
    assert "uniform" not in g.default_heldout_errors and "logsnr" in g.default_heldout_errors
    assert g.nfe == 6 and g.heldout_error <= min(g.default_heldout_errors.values())
    # "quad" starts at t = 799, below sigma_max: it starts from the same noise and is charged for what it skips
    assert float(ddim_ode.make_grid(sch, "quad", 6)[0]) < sch.sigma_max
    indep = _independent_heldout_errors(g, "euler", sch)
    for name, err in g.default_heldout_errors.items():
        assert indep[name] == pytest.approx(err, rel=1e-3)


def test_tuning_cost_is_recorded():
    g = _tune(4, "euler", refine=False)
    assert g.method == "dp"
    assert set(g.tuning_nfe_by_phase) == {"reference", "search", "heldout"}
    assert g.tuning_nfe == sum(g.tuning_nfe_by_phase.values()) > 0
    assert g.tuning_seconds > 0 and 0 < g.reference_error < 1e-3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=5, nfe=5), "exactly one of n"),
        (dict(n=5, solver="dopri5"), "adaptive"),
        (dict(n=5, solver="ddpm"), "stochastic"),
        (dict(n=5, defaults=("cubic",)), "unknown grid 'cubic'"),
        (dict(n=5, num_samples=0), "num_samples must be an int >= 1"),
        (dict(n=5, candidates=1), "candidates must be an int >= 2"),
        (dict(nfe=1, solver="reversible-heun"), "more than nfe=1"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ddim_ode.tune_grid(**{**SMALL, **kwargs})


def test_a_plain_eps_network_needs_the_sample_shape():
    net = MIXTURE.as_eps_model(SCHEDULE)  # an nn.Module eps(x_t, t): no metadata, no event shape
    with pytest.raises(ValueError, match="pass shape="):
        ddim_ode.tune_grid(3, model=net, schedule=SCHEDULE)
    g = ddim_ode.tune_grid(3, "euler", **{**SMALL, "model": net, "shape": (MIXTURE.dim,), "refine": False})
    oracle = _tune(3, "euler", refine=False)
    assert g.model == "ScheduledOracle" and oracle.model == repr(MIXTURE)
    assert torch.allclose(g.sigmas, oracle.sigmas, rtol=1e-9) and g.chosen == oracle.chosen


# --------------------------------------------------------------------------------------------- the file


def test_json_round_trip(tmp_path):
    g = _tune(4, "dpm-solver++2m", refine=False)
    path = tmp_path / "grid.json"
    g.save(path)
    back = TunedGrid.load(path)
    assert torch.equal(back.sigmas, g.sigmas)  # bit for bit
    assert back.to_json() == g.to_json()
    assert TunedGrid.from_json(json.loads(json.dumps(g.to_json()))).to_json() == g.to_json()
    assert torch.equal(read_sigmas(path), g.sigmas)
    (tmp_path / "list.json").write_text(json.dumps([3.0, 1.0, 0.0]))
    assert read_sigmas(tmp_path / "list.json").tolist() == [3.0, 1.0, 0.0]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary file left
    blown = dataclasses.replace(g, tuned_heldout_error=math.inf, default_heldout_errors={"karras": math.inf})
    blown.save(path)  # strict JSON has no inf: written as null, read back as inf
    assert json.loads(path.read_text())["tuned_heldout_error"] is None
    back = TunedGrid.load(path)
    assert back.tuned_heldout_error == math.inf and back.default_heldout_errors == {"karras": math.inf}


def test_bad_grid_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="strictly decreasing and end at 0"):
        read_sigmas(bad)
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a tuned grid"):
        read_sigmas(bad)
    obj = _tune(3, "euler", refine=False).to_json()
    del obj["nfe"]
    bad.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="missing nfe"):
        TunedGrid.load(bad)


# --------------------------------------------------------------------------------------------- the search


def _brute_force(costs: StepCosts, n: int, exponent: float) -> float:
    last = costs.start.size - 1
    w = costs.weights**exponent
    best = np.inf
    for inner in itertools.combinations(range(last), n):
        path = (*inner, last)
        total = costs.start[path[0]] * w[path[0]] + costs.pairs[path[0], path[1]] * w[path[1]]
        for k, i, j in zip(path, path[1:], path[2:]):
            total += (costs.triples[k, i, j] if costs.history else costs.pairs[i, j]) * w[j]
        best = min(best, total)
    return best


@pytest.mark.parametrize("history", [False, True])
def test_dynamic_programme_matches_brute_force(history):
    rng = np.random.default_rng(0)
    size = 8
    costs = StepCosts(history, rng.uniform(0.2, 1.0, size))
    costs.start[:-1] = np.concatenate([[0.0], rng.uniform(0, 0.5, size - 2)])
    costs.pairs = rng.uniform(0, 1, (size, size))
    costs.pairs[np.tril_indices(size)] = np.inf
    if history:
        costs.triples = rng.uniform(0, 1, (size, size, size))
        k, i, j = np.indices(costs.triples.shape)
        costs.triples[~((k < i) & (i < j))] = np.inf
    for n in (1, 2, 3, 5, 7):
        for p in (0.0, 1.0):
            path, value = best_path(costs, n, p)
            assert path[-1] == size - 1 and len(path) == n + 1
            assert all(a < b for a, b in zip(path, path[1:]))
            assert value == pytest.approx(_brute_force(costs, n, p), rel=1e-12)
    with pytest.raises(ValueError, match="cannot place 8 steps on 7 candidate intervals; use 1..7 steps"):
        best_path(costs, 8)


def test_step_costs_are_the_solvers_own_local_errors_at_one_nfe_per_candidate():
    sig = candidate_sigmas(SCHEDULE, 6)
    z = torch.randn(5, MIXTURE.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    field = ddim_ode.ProbabilityFlowODE(MIXTURE, SCHEDULE)
    ref = reference_trajectory(field, z, sig, 24)
    assert torch.allclose(ref.states[0], z * (1 + float(sig[0]) ** 2) ** 0.5, rtol=1e-13, atol=0)
    assert isinstance(ref, Reference) and ref.states.shape == (len(sig), 5, MIXTURE.dim)
    euler = step_costs(field, ddim_ode.get_solver("euler"), ref)
    assert not euler.history and euler.nfe == len(sig) - 1  # ε once per noisy candidate, nothing more
    for i, j in [(0, 1), (0, 6), (2, 4), (3, len(sig) - 1)]:
        xi = ref.states[i]
        step = xi + (sig[j] - sig[i]) * MIXTURE.eps_xbar(xi, float(sig[i]))
        assert euler.pairs[i, j] == pytest.approx(float((step - ref.states[j]).pow(2).mean().sqrt()), rel=1e-12)
    assert np.isinf(euler.pairs[3, 2])
    heun = step_costs(field, ddim_ode.get_solver("heun"), ref)
    noisy = len(sig) - 1
    assert not heun.history and heun.nfe == noisy + noisy * (noisy - 1) // 2  # + one stage per pair not to 0
    assert heun.start[0] == 0.0 and np.isinf(heun.start[-1])
    assert heun.start[2] == pytest.approx(
        float((z * (1 + float(sig[2]) ** 2) ** 0.5 - ref.states[2]).pow(2).mean().sqrt())
    )
    multistep = step_costs(field, ddim_ode.get_solver("dpm-solver++2m"), ref)
    assert multistep.history and multistep.nfe == noisy
    # DPM-Solver++(2M) from x*_i with the history of the step k -> i: first step's, then second order
    k, i, j = 0, 2, 4
    d = [ref.states[m] - sig[m] * MIXTURE.eps_xbar(ref.states[m], float(sig[m])) for m in (k, i)]
    lam = [-np.log(float(sig[m])) for m in (k, i, j)]
    h, r0 = lam[2] - lam[1], (lam[1] - lam[0]) / (lam[2] - lam[1])
    phi1 = np.expm1(-h)
    want = (sig[j] / sig[i]) * ref.states[i] - phi1 * d[1] - 0.5 * phi1 / r0 * (d[1] - d[0])
    got = float((want - ref.states[j]).pow(2).mean().sqrt())
    assert multistep.triples[k, i, j] == pytest.approx(got, rel=1e-10)


# --------------------------------------------------------------------------------------------- flow paths

FLOW = ddim_ode.FlowSchedule(shift=3.0)
FLOW_MIXTURE = GaussianMixture.random(k=3, dim=4, seed=2)
FLOW_SMALL = {**SMALL, "model": FLOW_MIXTURE.as_model(FLOW, "flow"), "schedule": FLOW, "prediction": "flow"}
FLOW_SMALL["shape"] = (FLOW_MIXTURE.dim,)


def test_flow_candidates_start_at_pure_noise_then_the_top_finite_sigma():
    sig = candidate_sigmas(FLOW, 8)
    assert math.isinf(float(sig[0])) and float(sig[1]) == FLOW.sigma_top and float(sig[-1]) == 0.0
    assert float(sig[-2]) == pytest.approx(FLOW.sigma_min) and bool((sig[1:] < sig[:-1]).all())


def test_flow_reference_and_step_costs_from_pure_noise():
    field = ddim_ode.ProbabilityFlowODE(FLOW_SMALL["model"], FLOW, "flow")
    sig = candidate_sigmas(FLOW, 6)
    z = torch.randn(6, FLOW_MIXTURE.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = reference_trajectory(field, z, sig, 60)
    assert torch.isinf(ref.states[0]).all() and torch.isfinite(ref.states[1:]).all()
    rk4 = ddim_ode.get_solver("rk4", final_step="full")
    exact = ddim_ode.decode(z, rk4, 400, model=field.model, schedule=FLOW, prediction="flow")  # from sigma = inf
    assert float((ref.states[-1] - exact).pow(2).mean().sqrt()) <= ref.error < 2e-3  # within its own bound
    costs = step_costs(field, ddim_ode.get_solver("dpm-solver++2m"), ref)
    eps, x0 = field.evaluate_x(z, math.inf)
    for j in (1, 3, len(sig) - 1):  # a step from pure noise is the exact limit of the DDIM step
        want = float((x0 + float(sig[j]) * eps - ref.states[j]).pow(2).mean().sqrt())
        assert costs.pairs[0, j] == pytest.approx(want, rel=1e-12)
    assert np.array_equal(costs.triples[0, 1:], costs.pairs[1:])  # the solver starts afresh after it
    assert costs.start[0] == 0.0
    assert costs.start[2] == pytest.approx(float((z * (1 + float(sig[2])) - ref.states[2]).pow(2).mean().sqrt()))


@pytest.mark.parametrize("solver", ["euler", "dpm-solver++2m"])
def test_flow_tuned_grid_is_never_worse_than_the_flow_grids_and_decodes(solver, tmp_path):
    g = ddim_ode.tune_grid(5, solver, **FLOW_SMALL)
    assert set(g.default_heldout_errors) == {"uniform", "logsnr", "karras", "quad"}
    assert g.heldout_error <= min(g.default_heldout_errors.values())
    sig = g.sigmas
    assert float(sig[-1]) == 0.0 and bool((sig[1:] < sig[:-1]).all()) and len(sig) == 6
    assert math.isinf(float(sig[0])) or float(sig[0]) <= FLOW.sigma_top
    gen = torch.Generator().manual_seed(g.heldout_seed)
    z = torch.randn(g.heldout_samples, FLOW_MIXTURE.dim, generator=gen, dtype=torch.float64)
    kw = dict(model=FLOW_SMALL["model"], schedule=FLOW, prediction="flow")
    ref = ddim_ode.decode(z, ddim_ode.get_solver("rk4", final_step="full"), 400, **kw)
    sol = ddim_ode.decode(z, solver, sigmas=sig, return_solution=True, **kw)
    assert sol.nfe == g.nfe
    assert float((sol.x - ref).pow(2).mean().sqrt()) == pytest.approx(g.heldout_error, rel=1e-3)
    path = tmp_path / "flow.json"
    g.save(path)
    assert torch.equal(read_sigmas(path), sig)  # "inf" survives the JSON file


def test_flow_grid_file_may_start_at_inf_only(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(["inf", 3.0, 0.5, 0.0]))
    assert read_sigmas(path).tolist() == [math.inf, 3.0, 0.5, 0.0]
    path.write_text(json.dumps([5.0, "inf", 0.0]))
    with pytest.raises(ValueError, match="must be a list of at least 2 numbers"):
        read_sigmas(path)


# --------------------------------------------------------------------------------------------- published grids

# Stable Diffusion's discrete schedule: T = 1000, beta = linspace(sqrt(0.00085), sqrt(0.012), T)^2
SD_SCHEDULE = DiscreteSchedule(betas=torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2)


@pytest.mark.parametrize("name", ["ays-sd15", "ays-sdxl"])
def test_ays_tables_are_the_published_levels(name):
    # the tables are sigma-bar of SD's schedule at the published timesteps (to the 10 published decimals)
    want = SD_SCHEDULE.sigma(torch.tensor(AYS_TIMESTEPS[name], dtype=torch.float64))
    assert torch.allclose(torch.tensor(AYS_LEVELS[name], dtype=torch.float64), want, rtol=0, atol=6e-11)
    assert published_levels(name, 10).tolist() == list(AYS_LEVELS[name])  # n = 10: the table itself, exactly
    grid = ddim_ode.make_grid(SD_SCHEDULE, name, 10)
    assert len(grid) == 11 and float(grid[-1]) == 0.0
    assert torch.allclose(grid[:-1], torch.tensor(AYS_LEVELS[name][:-1], dtype=torch.float64), rtol=2e-9, atol=0)


@pytest.mark.parametrize("name", ["ays-sd15", "ays-sdxl"])
def test_ays_interpolation_is_loglinear_over_the_normalised_index(name):
    table = np.array(AYS_LEVELS[name])
    fine = published_levels(name, 20).numpy()  # 21 levels: every other one is a table level
    np.testing.assert_allclose(fine[::2], table, rtol=1e-13)
    np.testing.assert_allclose(fine[1::2], np.sqrt(table[:-1] * table[1:]), rtol=1e-13)  # log-midpoints
    for n in range(1, 40):
        levels = published_levels(name, n).numpy()
        assert len(levels) == n + 1 and (np.diff(levels) < 0).all()
        assert levels[0] == pytest.approx(table[0], rel=1e-13) and levels[-1] == pytest.approx(table[-1], rel=1e-13)
    with pytest.raises(ValueError, match="at least 2 levels"):
        loglinear_interp(table, 1)


@pytest.mark.parametrize("schedule", [SD_SCHEDULE, DiscreteSchedule.linear(), ContinuousSchedule.linear()])
def test_ays_grids_on_any_schedule_are_valid_decoding_grids(schedule):
    for name in ("ays-sd15", "ays-sdxl"):
        for n in (1, 4, 7, 10, 25):
            sig = ddim_ode.make_grid(schedule, name, n)
            assert len(sig) == n + 1 and float(sig[-1]) == 0.0 and bool((sig[1:] < sig[:-1]).all())
            assert float(sig[0]) == schedule.sigma_max
        x = torch.randn(2, 2, dtype=torch.float64)
        out = ddim_ode.decode(x, "euler", 5, model=GaussianMixture.ring(), schedule=schedule, grid=name)
        assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="unknown grid 'ays-sd21'"):
        ddim_ode.make_grid(schedule, "ays-sd21", 5)
