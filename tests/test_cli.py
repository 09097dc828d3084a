"""The ddim-ode command line, end to end on tiny settings, and its errors.

The commands run in-process through ``ddim_ode.cli.main``, the function the console script calls
(``tests/test_redteam.py`` also runs real processes); ``run`` returns what a subprocess would.
"""

import contextlib
import io
import os
from types import SimpleNamespace

import numpy as np
import pytest

from ddim_ode.cli import main


def run(*args, cwd):
    """``ddim-ode ARGS`` in the folder ``cwd``: an object with ``returncode``, ``stdout`` and ``stderr``."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as stop:
                code = int(stop.code or 0)
    finally:
        os.chdir(here)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_sample_encode_decode_roundtrip_interpolate(tmp_path):
    r = run("sample", "--num", "4", "-n", "5", "--out", "s.png", "-q", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape == (4, 1, 8, 8) and f["latents"].shape == (4, 1, 8, 8)
    assert (tmp_path / "s.png").stat().st_size > 500

    np.save(tmp_path / "imgs.npy", np.clip(np.load(tmp_path / "s.npz")["samples"], -1, 1))
    r = run(
        "encode", "--input", "digits:heldout", "-n", "5", "--solver", "belm", "--out", "lat.npz", "-q", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    r = run("decode", "--input", "lat.npz", "-n", "5", "--solver", "belm", "--out", "dec.png", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from ddim_ode.data import load_digits

    dec = np.load(tmp_path / "dec.npz")["samples"]
    assert np.abs(dec - load_digits("heldout").numpy()).max() < 1e-4  # BELM round trip through files is exact

    r = run("roundtrip", "--num", "3", "-n", "5", "--out", "rt.png", "-q", cwd=tmp_path)
    assert r.returncode == 0 and "per-dimension MSE" in r.stdout, r.stderr
    r = run("interpolate", "-n", "3", "--frames", "3", "--consistency-steps", "2", "4", "--out", "i.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "i.png").is_file() and (tmp_path / "i_consistency.png").is_file()
    r = run("solvers", cwd=tmp_path)
    assert r.returncode == 0 and "belm" in r.stdout and "dpm-solver++2m" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "--solver", "nope"], "unknown solver 'nope'; available:"),
        (["sample", "--grid", "cubic"], "unknown grid 'cubic'; allowed:"),
        (["sample", "-n", "0"], "--steps must be >= 1"),
        (["sample", "--model", "missing_dir"], "no such model"),
        (["encode", "--input", "missing.npy"], "no such file or folder"),
        (["decode", "--input", "missing.npz"], "no such file"),
        (["encode", "--input", "wrong.npy"], "the model needs (1, 8, 8)"),
        (["sample", "--device", "cuda:7"], "CUDA"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(tmp_path, args, message):
    np.save(tmp_path / "wrong.npy", np.zeros((2, 1, 16, 16), dtype=np.float32))
    r = run(*args, "-q", cwd=tmp_path)
    if "cuda" in " ".join(args) and "CUDA" not in r.stderr and r.returncode == 0:
        pytest.skip("CUDA is available here")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not any(p.suffix in (".png", ".npz") for p in tmp_path.iterdir())  # nothing written


def test_likelihood_cli(tmp_path):
    r = run("likelihood", "--num", "2", "--rtol", "1e-3", "--atol", "1e-3", "--out", "l.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bits/dim" in r.stdout and (tmp_path / "l.json").is_file()


def test_half_precision_network_keeps_float32_samples(tmp_path):
    r = run("sample", "--num", "2", "-n", "4", "--half", "--out", "h.png", "-q", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    full = run("sample", "--num", "2", "-n", "4", "--out", "f.png", "-q", "--device", "cpu", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    h, f = np.load(tmp_path / "h.npz")["samples"], np.load(tmp_path / "f.npz")["samples"]
    assert h.dtype == np.float32 and np.isfinite(h).all()
    assert 0 < np.abs(h - f).max() < 0.2  # bfloat16 network, float32 state: close, not identical


def test_tune_grid_writes_a_grid_that_sampling_reads(tmp_path, capsys):
    """`tune-grid` saves a tuned grid; `sample --sigmas FILE` decodes along exactly that grid."""
    import json

    from ddim_ode.cli import main

    grid = tmp_path / "grid.json"
    args = ["tune-grid", "--solver", "euler", "-n", "3", "--num-samples", "4", "--heldout-samples", "4"]
    args += ["--candidates", "8", "--reference-steps", "16", "--no-refine", "--device", "cpu", "--out", str(grid)]
    assert main(args) == 0
    saved = json.loads(grid.read_text())
    assert saved["solver"] == "euler" and saved["n"] == 3 and saved["sigmas"][-1] == 0.0
    assert saved["heldout_error"] <= min(saved["default_heldout_errors"].values())
    assert "tuning cost" in capsys.readouterr().out
    out = tmp_path / "s.png"
    assert main(["sample", "--num", "2", "--sigmas", str(grid), "--device", "cpu", "--out", str(out), "-q"]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert np.allclose(f["sigmas"], saved["sigmas"], rtol=0, atol=0)
    assert main(["tune-grid", "-n", "3", "--nfe", "3", "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_tune_grid_on_the_flow_model_starts_at_pure_noise(tmp_path):
    """On `digits-flow` a grid held at the top starts at sigma = inf ("inf" in the file); sampling reads it,
    in memory and sharded alike."""
    import json

    from ddim_ode.cli import main

    grid = tmp_path / "flow.json"
    args = ["tune-grid", "--model", "digits-flow", "--solver", "euler", "-n", "3", "--keep-top", "--no-refine"]
    args += ["--num-samples", "4", "--heldout-samples", "4", "--candidates", "8", "--reference-steps", "16"]
    assert main([*args, "--device", "cpu", "--out", str(grid)]) == 0
    saved = json.loads(grid.read_text())
    assert saved["sigmas"][0] == "inf" and saved["sigmas"][-1] == 0.0 and saved["n"] == 3
    common = ["--model", "digits-flow", "--num", "2", "--sigmas", str(grid), "--device", "cpu", "-q"]
    assert main(["sample", *common, "--out", str(tmp_path / "s.png")]) == 0
    assert main(["sample", *common, "--out-dir", str(tmp_path / "run")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert np.isinf(f["sigmas"][0]) and np.array_equal(f["sigmas"][1:], np.array(saved["sigmas"][1:]))
        memory = f["samples"]
    assert np.allclose(np.load(tmp_path / "run" / "samples.npy"), memory, rtol=0, atol=1e-5)  # float32 batches
