"""Every study runs end to end in --quick mode, writes its JSON and PNG, and re-plots from the JSON."""

import json
import subprocess
import sys

import pytest
import torch

from ddim_ode import DiscreteSchedule, studies
from ddim_ode.analytic import GaussianMixture
from ddim_ode.features import frechet_distance
from ddim_ode.studies.quality import sliced_wasserstein


@pytest.mark.parametrize("study", ["roundtrip", "accuracy", "quality", "speed", "consistency"])
def test_quick_study_cli(study, tmp_path):
    out = tmp_path / study
    res = subprocess.run(
        [sys.executable, "-m", "ddim_ode", "bench", study, "--quick", "--out-dir", str(out), "-q", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / f"{study}.json").read_text())
    assert doc["study"] == study and doc["results"]
    assert doc["environment"]["torch"] == torch.__version__
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    if study != "consistency":
        (out / f"{study}.png").unlink()
        studies.replot(out / f"{study}.json")
        assert (out / f"{study}.png").is_file()


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
        out_dir=tmp_path,
        show_progress=False,
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
