"""``sample``/``encode --out-dir``: explicit grids (``--sigmas``, ``--timesteps``) in sharded runs,
and the merged ``latents.npz`` against the one ``encode --out`` writes and a later ``ddim-ode merge``.

Every comparison of a sharded run with an in-memory one uses one shard and one batch of the same
size, so that the network sees the same rows: the results are then equal bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_redteam import assert_refused, run_cli, snapshot

from ddim_ode import io
from ddim_ode.data import load_digits

pytestmark = pytest.mark.usefixtures("one_thread")


def npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def assert_same_file(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_sharded_sample_with_sigmas_is_the_in_memory_sample_and_resumes_only_unchanged(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["sample", "--num", "4", "--sigmas", "5,2,0.5,0", "--device", "cpu", "-q"]
    assert run_cli([*base, "--batch-size", "4", "--out", "mem.png"], capsys)[0] == 0
    code, _, err = run_cli([*base, "--shard-size", "4", "--out-dir", "sh"], capsys)
    assert code == 0, err
    mem = npz("mem.npz")
    assert np.array_equal(np.load("sh/samples.npy"), mem["samples"])
    assert mem["sigmas"].tolist() == [5.0, 2.0, 0.5, 0.0] and str(mem["grid"]) == "sigmas"
    args = json.loads(Path("sh/manifest.json").read_text())["arguments"]
    assert (args["grid"], args["n"], args["sigmas"]) == ("sigmas", 3, [5.0, 2.0, 0.5, 0.0])
    code, out, _ = run_cli([*base, "--shard-size", "4", "--out-dir", "sh"], capsys)
    assert code == 0 and "1 of 1 shards were already complete" in out
    before = snapshot(tmp_path)
    other = [a if a != "5,2,0.5,0" else "5,2,0.4,0" for a in base]
    code, _, err = run_cli([*other, "--shard-size", "4", "--out-dir", "sh"], capsys)
    assert_refused(code, err, "refusing to resume", "sigmas: [5.0, 2.0, 0.5, 0.0] on disk vs [5.0, 2.0, 0.4, 0.0] now")
    code, _, err = run_cli(["sample", "--num", "4", "-n", "3", "-q", "--shard-size", "4", "--out-dir", "sh"], capsys)
    assert_refused(code, err, "refusing to resume", "grid: 'sigmas' on disk vs 'uniform' now")
    assert snapshot(tmp_path) == before


def test_sharded_encoding_writes_the_latents_file_of_encode_and_merge_writes_it_again(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", load_digits("heldout")[:4].numpy())
    base = ["encode", "--input", "x.npy", "--solver", "belm", "--timesteps", "800,400,100", "--device", "cpu", "-q"]
    assert run_cli([*base, "--batch-size", "4", "--out", "mem.npz"], capsys)[0] == 0
    assert run_cli([*base, "--shard-size", "4", "--out-dir", "sh"], capsys)[0] == 0
    run = npz("sh/latents.npz")
    assert_same_file(run, npz("mem.npz"))  # the grid, the model, the solver state: all of it
    assert str(run["grid"]) == "timesteps" and len(run["sigmas"]) == 4
    code, out, err = run_cli(["merge", "sh"], capsys)
    assert code == 0 and "merged sh" in out, err
    assert_same_file(npz("sh/latents.npz"), run)
    assert run_cli(["decode", "--input", "sh/latents.npz", "--out", "d.png", "-q"], capsys)[0] == 0
    np.testing.assert_allclose(npz("d.npz")["samples"], np.load("x.npy"), atol=1e-4)  # BELM: exact


@pytest.mark.skipif("digits-flow" not in io.builtin_models(), reason="this build has no digits-flow model")
def test_a_flow_model_grid_from_infinity_in_memory_and_sharded(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    grid = ["--model", "digits-flow", "--sigmas", "inf,3,1,0", "--device", "cpu", "-q"]
    assert run_cli(["sample", "--num", "4", *grid, "--batch-size", "4", "--out", "mem.png"], capsys)[0] == 0
    assert run_cli(["sample", "--num", "4", *grid, "--shard-size", "4", "--out-dir", "sh"], capsys)[0] == 0
    mem = npz("mem.npz")
    assert mem["sigmas"].tolist() == [math.inf, 3.0, 1.0, 0.0]
    assert np.isfinite(mem["samples"]).all() and np.array_equal(np.load("sh/samples.npy"), mem["samples"])
    assert json.loads(Path("sh/manifest.json").read_text())["arguments"]["sigmas"] == ["inf", 3.0, 1.0, 0.0]

    np.save("x.npy", load_digits("heldout")[:4].numpy())
    enc = ["encode", "--input", "x.npy", *grid]
    assert run_cli([*enc, "--batch-size", "4", "--out", "enc.npz"], capsys)[0] == 0
    assert run_cli([*enc, "--shard-size", "4", "--out-dir", "esh"], capsys)[0] == 0
    run = npz("esh/latents.npz")
    assert_same_file(run, npz("enc.npz"))
    assert run["sigmas"].tolist() == [math.inf, 3.0, 1.0, 0.0] and str(run["model"]) == "digits-flow"
    assert run_cli(["merge", "esh"], capsys)[0] == 0
    assert_same_file(npz("esh/latents.npz"), run)
    # the stored grid decodes the latents (a sample of the model, not the images: euler is not exact)
    assert run_cli(["decode", "--input", "esh/latents.npz", "--out", "d.png", "-q"], capsys)[0] == 0
    assert np.isfinite(npz("d.npz")["samples"]).all()
