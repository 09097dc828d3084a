"""The studies: each runs end to end in --quick mode through the CLI, its numbers behave as the
numerical analysis says they must, and its plots and tables are redrawn from the JSON alone."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddim_ode import DiscreteSchedule, studies
from ddim_ode.analytic import GaussianMixture
from ddim_ode.cli import main
from ddim_ode.features import frechet_distance
from ddim_ode.grids import make_grid
from ddim_ode.studies import StudyRun
from ddim_ode.studies.accuracy_report import accuracy_tables
from ddim_ode.studies.quality import sliced_wasserstein

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _rows(doc, **match):
    return [r for r in doc["results"] if all(r.get(k) == v for k, v in match.items())]


def _check_roundtrip(doc):
    euler = _rows(doc, solver="euler")
    assert [r["steps"] for r in euler] == [5, 10, 20]
    assert [r["nfe_round_trip"] for r in euler] == [10, 20, 40]
    mse = [r["mse"] for r in euler]
    assert mse[0] > mse[1] > mse[2] > 1e-5  # first order: still visible at S = 20
    assert all(r["mse"] < 1e-10 for r in _rows(doc, solver="belm"))  # exact inversion, float32 rounding


def _check_accuracy(doc):
    # --problems is honoured with --quick
    assert [p["name"] for p in doc["settings"]["problems"]] == ["ring", "mixture64"]
    for problem in ("ring", "mixture64"):
        euler = _rows(doc, problem=problem, label="euler")
        assert [r["nfe"] for r in euler] == [5, 10, 20]
        assert all(math.isfinite(r["decode_error"]) and r["decode_error"] > 0 for r in euler)
    ring = [r["decode_error"] for r in _rows(doc, problem="ring", label="euler")]
    assert ring[0] > ring[1] > ring[2]
    order = {(o["problem"], o["label"]): o["order"] for o in doc["orders"] if o["direction"] == "decode"}
    assert 0.6 < order["ring", "euler"] < 1.6
    assert order["ring", "dpm-solver++2m"] > order["ring", "euler"] + 0.5
    assert all(r["tol"] == 1e-3 and r["options"]["atol"] == 1e-4 for r in doc["results"] if "tol" in r)


def _check_orders(doc):
    measured = {r["solver"]: r for r in doc["results"]}
    for name, declared in (("euler", 1), ("heun", 2), ("rk4", 4)):
        assert measured[name]["declared"] == declared
        assert abs(measured[name]["gaussian_decode_order"] - declared) < 0.3
        assert abs(measured[name]["gaussian_encode_order"] - declared) < 0.3


def _check_inversion(doc):
    belm = _rows(doc, solver="belm", dtype="torch.float64")
    assert belm and all(r["roundtrip_mse"] < 1e-25 for r in belm)
    euler = _rows(doc, solver="euler", n=10)
    assert euler and all(r["roundtrip_mse"] > 1e-4 for r in euler)  # DDIM inversion is not exact


def _check_quality(doc):
    fd = {(r["solver"], r["eta"], r["steps"]): r["frechet_distance"] for r in doc["results"]}
    assert all(math.isfinite(v) and v > 0 for v in fd.values())
    base = doc["baseline"]  # 64 samples: a large positive bias, but far below noise
    assert max(base["train_digits_fd"], fd["euler", 0.0, 20]) < base["uniform_noise_fd"] / 3


def _check_speed(doc):
    nfe = {(r["model"], r["solver"]): r["nfe"] for r in doc["results"]}
    assert nfe["network", "euler"] == nfe["zero-cost", "euler"] == 5
    assert nfe["network", "heun"] == 9  # two per step, one on the last step to sigma = 0
    assert all(0 <= r["network_s"] <= r["total_s"] for r in doc["results"])


def _check_consistency(doc):
    dist = [r["rms_to_largest_n"] for r in doc["results"]]
    assert dist[-1] == 0.0 and dist[0] > dist[1] > 0


def _check_guided_inversion(doc):
    def mse(model, solver, w, dtype="float32"):
        (row,) = _rows(doc, model=model, solver=solver, steps=10, guidance_scale=w, dtype=dtype)
        return row["mse"]

    assert [r["nfe_round_trip"] for r in _rows(doc, solver="euler", dtype="float32")] == [20, 20, 20]
    ddim, exact = mse("digits-cond", "euler", 4.0), mse("digits-cond", "belm", 4.0)
    assert ddim > 1e-3 and exact < 1e-9 and ddim > 1e6 * exact  # exact inversion: float32 rounding only
    assert ddim > 2 * mse("digits-cond", "euler", 1.0)  # guidance makes DDIM inversion worse
    assert mse("digits-cond", "belm", 4.0, "float64") < 1e-20
    assert mse("digits-flow", "euler", None) > 1e-4 and mse("digits-flow", "belm", None) < 1e-9


def _check_fewstep(doc):
    rows = _rows(doc, problem="mixture64", solver="dpm-solver++2m", kind="standard")
    best = {}
    for r in rows:
        assert r["error"] is not None and math.isfinite(r["error"]) and r["nfe"] <= r["target_nfe"]
        best[r["target_nfe"]] = min(best.get(r["target_nfe"], math.inf), r["error"])
    assert list(best) == [3, 5, 10] and best[3] > best[5] > best[10]
    assert _rows(doc, problem="mixture64", kind="diffusers") and _rows(doc, problem="digits", kind="tuned")
    for target in doc["targets"]["mixture64"].values():  # the rerun agrees, and the interval holds the ratio
        assert target["ratio_check"] == pytest.approx(target["ratio"], rel=1e-9)
        lo, hi = target["ratio_90"]
        assert 0 < lo <= target["ratio"] <= hi


def test_ratio_interval_is_paired_and_covers_the_ratio():
    from ddim_ode.studies.fewstep import ratio_interval

    g = torch.Generator().manual_seed(3)
    theirs = torch.rand(64, generator=g, dtype=torch.float64) + 0.5
    lo, hi = ratio_interval(theirs * 0.25, theirs)  # a constant ratio of 1/2 per noise: no spread when paired
    assert lo == pytest.approx(0.5, rel=1e-12) and hi == pytest.approx(0.5, rel=1e-12)
    ours = torch.rand(64, generator=g, dtype=torch.float64) * 0.5
    lo, hi = ratio_interval(ours, theirs)
    assert lo < float((ours.mean() / theirs.mean()).sqrt()) < hi and hi - lo > 0.05


STUDIES = {
    "roundtrip": ([], _check_roundtrip, ["roundtrip.png", "roundtrip_images.png"]),
    "accuracy": (["--problems", "ring,mixture64"], _check_accuracy, ["accuracy.png", "accuracy_tables.md"]),
    "orders": ([], _check_orders, ["orders.md"]),
    "inversion": ([], _check_inversion, ["inversion.md"]),
    "quality": ([], _check_quality, ["quality.png"]),
    "speed": ([], _check_speed, ["speed.png"]),
    "consistency": ([], _check_consistency, ["consistency.png", "interpolation.png"]),
    "guided-inversion": ([], _check_guided_inversion, ["guided-inversion.png", "guided-inversion.md"]),
    "fewstep": ([], _check_fewstep, ["fewstep.png", "fewstep.md"]),
}


def test_every_study_is_tested():
    assert set(STUDIES) == set(studies.STUDIES)


@pytest.mark.parametrize("study", list(STUDIES))
def test_quick_study_cli(study, tmp_path):
    extra, check, outputs = STUDIES[study]
    out = tmp_path / study
    res = subprocess.run(
        [sys.executable, "-m", "ddim_ode", "bench", study, "--quick", "--out-dir", str(out), "-q", "--device", "cpu"]
        + extra,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / f"{study}.json").read_text())
    assert doc["study"] == study and doc["settings"]["quick"] is True
    assert doc["environment"]["torch"] == torch.__version__
    check(doc)
    for name in outputs:
        assert (out / name).stat().st_size > 0
    if study != "consistency":  # the images are the result; nothing to redraw
        (out / outputs[0]).unlink()
        studies.replot(out / f"{study}.json")
        assert (out / outputs[0]).is_file()


def test_accuracy_study_numbers_on_the_ring(tmp_path):
    doc = studies.accuracy_study(
        ("ring",),
        suite="comparison",
        solvers=("euler", "belm", "dopri5"),
        nfes=(5, 10, 20, 40),
        adaptive_rtols=(1e-4,),
        num=8,
        run=StudyRun(out_dir=tmp_path, quick=True, show_progress=False),
    )
    euler = _rows(doc, label="euler")
    assert [r["nfe"] for r in euler] == [5, 10, 20, 40]
    dec = [r["decode_error"] for r in euler]
    assert dec[0] > dec[1] > dec[2] > dec[3]
    enc = [r["encode_error"] for r in euler]
    assert enc[0] > enc[1] > enc[2] > enc[3]
    # one decoding reference: the Karras grid starts at sigma_max for every n
    sigma_max = float(make_grid(DiscreteSchedule.linear(), "karras", 5)[0])
    assert [r["sigma"] for r in doc["references"] if r["direction"] == "decode"] == [sigma_max]
    # the VP-scale latent error is the x̄ error divided by sqrt(1 + sigma_max^2)
    scale = math.sqrt(1 + sigma_max**2)
    assert euler[2]["encode_xbar_error"] / scale == pytest.approx(euler[2]["encode_error"], rel=1e-9)
    assert all(r["roundtrip_error"] < 1e-12 for r in _rows(doc, label="belm"))  # exact inversion in float64
    assert euler[0]["roundtrip_error"] > 1e-3
    floor = doc["floors"]["ring"]["karras"]
    assert 0 < floor < dec[-1]  # every first-order-at-sigma-0 solver is above the floor
    (adaptive,) = _rows(doc, label="dopri5[log]")
    assert adaptive["decode_error"] < 20 * 1e-4 and adaptive["nfe"] > 0
    assert (tmp_path / "accuracy_decode.png").is_file() and (tmp_path / "accuracy_encode.png").is_file()


def test_accuracy_tables_reproduce_the_published_ones():
    """The tables in docs/solvers.md are rendered from the published JSON by this code."""
    doc = json.loads((DOCS / "results" / "solvers" / "accuracy.json").read_text())
    tables = accuracy_tables(doc)
    published = (DOCS / "solvers.md").read_text()
    line = next(ln for ln in tables.splitlines() if ln.startswith("| euler | "))
    assert line in published
    assert "| mixture64 | dopri5 | decode | 98 | 193 | 230 | 289 |" in tables


def test_bench_options_are_checked(capsys):
    assert main(["bench", "roundtrip", "--problems", "ring"]) == 2
    assert "--problems does not apply to the roundtrip study; it applies to: accuracy" in capsys.readouterr().err
    assert main(["bench", "accuracy", "--dtype", "float32"]) == 2
    assert "--dtype does not apply to the accuracy study" in capsys.readouterr().err
    assert main(["bench", "speed", "--steps", "5", "10"]) == 2
    assert "--steps takes one value for the speed study, got 2" in capsys.readouterr().err
    assert main(["bench", "accuracy", "--suite", "nope", "--device", "cpu"]) == 2
    assert "unknown suite 'nope'; allowed: overview, comparison" in capsys.readouterr().err


def test_roundtrip_study_numbers_on_exact_mixture(tmp_path):
    mix = GaussianMixture.ring()
    data = mix.sample(16, torch.Generator().manual_seed(0)).float()
    doc = studies.roundtrip_study(
        mix,
        DiscreteSchedule.linear(),
        data=data,
        solvers=["euler"],
        steps=(5, 20, 100),
        num=16,
        run=StudyRun(out_dir=tmp_path, show_progress=False),
    )
    mse = [r["mse"] for r in doc["results"]]
    assert mse[0] > mse[1] > mse[2] > 0
    assert [r["nfe_round_trip"] for r in doc["results"]] == [10, 40, 200]


def test_metrics_are_sensible():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    b = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(a, b) < 0.1 < sliced_wasserstein(a, b + 1.0)
    fa, fb = a.numpy(), b.numpy()
    assert frechet_distance(fa, fb) < 0.05
    assert frechet_distance(fa, fb + 2.0) == pytest.approx(12.0, rel=0.05)  # ‖Δμ‖² = 3 · 2²
