"""The command line's models: the built-in listing, ``--model NAME|DIR`` with ``--prediction`` /
``--schedule``, and class conditioning (``--class``, ``--guidance``) in memory, in latent files
and in sharded runs.

Class conditioning runs on :class:`ClassScaled`, a conditional ε-model served through the CLI's
model resolver (every sample on its own, element by element, so sharded runs can be compared bit
for bit), and, where this build has them, on a class-conditional UNet directory and the built-in
``digits-cond``. The commands run in-process through ``ddim_ode.cli.main``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_redteam import assert_refused, run_cli, snapshot

import ddim_ode
from ddim_ode import cli_model, io
from ddim_ode.distributed import index_noise, sample_to_dir
from ddim_ode.models import ResolvedModel, resolve_model
from ddim_ode.schedules import DiscreteSchedule
from ddim_ode.unet import UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 5
FAKE = "class-scaled"  # the --model name (or the last part of a directory) that serves ClassScaled
SHAPE = (1, 8, 8)


class ClassScaled(torch.nn.Module):
    """A class-conditional ε-model, ε = x_t · c[y] + d[y] · (1 + t/1000), label ``NUM_CLASSES`` the null class."""

    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(torch.linspace(0.2, 0.9, NUM_CLASSES + 1))
        self.d = torch.nn.Parameter(torch.linspace(-0.6, 0.6, NUM_CLASSES + 1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.full((x_t.shape[0],), NUM_CLASSES) if y is None else y
        scale = self.c[y].view(-1, 1, 1, 1)
        shift = (self.d[y] * (1 + t / 1000)).view(-1, 1, 1, 1)
        return x_t * scale + shift

    def null_kwargs(self, model_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**model_kwargs, "y": torch.full_like(model_kwargs["y"], NUM_CLASSES)}


SCHEDULE = DiscreteSchedule.linear()
NET = ClassScaled().requires_grad_(False)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> ClassScaled:
    """Serve :class:`ClassScaled` as the model named ``FAKE`` (as the loader would a conditional UNet directory)."""
    real = cli_model.resolve_model

    def resolve(model: Any, schedule: Any = None, prediction: Any = None, device: Any = None) -> ResolvedModel:
        if isinstance(model, str) and Path(model).name == FAKE:
            metadata = {"sample_shape": list(SHAPE), "unet": {"num_classes": NUM_CLASSES}, "source": model}
            return ResolvedModel(NET, SCHEDULE, "eps", metadata)
        return real(model, schedule, prediction, device)

    monkeypatch.setattr(cli_model, "resolve_model", resolve)
    return NET


def no_work(*args: object, **kwargs: object) -> None:
    raise AssertionError("the work started although the input was bad")


def reference(labels: list[int], guidance: float | None, n: int = 4, seed: int = 0) -> np.ndarray:
    """The library's samples from the CLI's noise with these labels and guidance (euler)."""
    x_T = index_noise(seed, 0, len(labels), SHAPE)
    kw: dict[str, Any] = {"model_kwargs": {"y": torch.tensor(labels)}}
    if guidance is not None:
        kw["guidance_scale"] = guidance
    return ddim_ode.decode(x_T, "euler", n, model=NET, schedule=SCHEDULE, **kw).numpy()


# ---------------------------------------------------------------------------------------------
# the listing


def test_models_lists_every_builtin_model(capsys):
    code, out, err = run_cli(["models"], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and not line.startswith(" ")}
    names = io.builtin_models()
    assert set(names) <= set(rows)
    for name, description in names.items():
        res = resolve_model(name)
        assert rows[name][1:3] == [res.prediction, "x".join(map(str, io.sample_shape(res.metadata)))]
        assert rows[name][3] == (
            str(res.metadata["unet"]["num_classes"]) if cli_model.num_classes(res.metadata) else "-"
        )
        assert " ".join(rows[name][4:]) == repr(res.schedule)
        assert description in out
    if "digits-cond" in names:
        assert rows["digits-cond"][3] == "10"
    if "digits-flow" in names:
        assert rows["digits-flow"][1] == "flow"


# ---------------------------------------------------------------------------------------------
# --class / --guidance


def test_sample_with_class_and_guidance_is_the_guided_library_sample(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        ["sample", "--model", FAKE, "--class", "3", "--guidance", "2", "--num", "6", "-n", "4", "-q"], capsys
    )
    assert code == 0 and err == "", err
    assert "classes 3, guidance 2" in out
    with np.load("samples.npz") as f:
        assert f["labels"].tolist() == [3] * 6 and float(f["guidance"]) == 2.0
        samples = f["samples"]
    np.testing.assert_allclose(samples, reference([3] * 6, 2.0), rtol=0, atol=1e-6)
    # w = 0 is the null class alone, w = 1 the conditional model alone
    assert (
        run_cli(["sample", "--model", FAKE, "--class", "3", "--guidance", "0", "--num", "6", "-n", "4"], capsys)[0] == 0
    )
    np.testing.assert_allclose(np.load("samples.npz")["samples"], reference([NUM_CLASSES] * 6, None), atol=1e-6)
    assert run_cli(["sample", "--model", FAKE, "--class", "3", "--num", "6", "-n", "4"], capsys)[0] == 0
    np.testing.assert_allclose(np.load("samples.npz")["samples"], reference([3] * 6, None), atol=1e-6)
    assert np.abs(np.load("samples.npz")["samples"] - samples).max() > 0.1  # guidance changes the samples


@pytest.mark.parametrize(
    "classes, labels",
    [("0,1,2,3", [0, 1, 2, 3, 0, 1, 2]), ("0-4", [0, 1, 2, 3, 4, 0, 1]), ("4,0-1", [4, 0, 1, 4, 0, 1, 4])],
)
def test_class_lists_go_to_samples_by_index(classes, labels, fake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["sample", "--model", FAKE, "--class", classes, "--num", "7", "-n", "4", "--batch-size", "3", "-q"]
    assert run_cli(argv, capsys)[0] == 0
    with np.load("samples.npz") as f:
        assert f["labels"].tolist() == labels and "guidance" not in f.files
        np.testing.assert_allclose(f["samples"], reference(labels, None), atol=1e-6)  # batches of 3 get their rows


def test_latent_files_record_labels_and_guidance_and_decode_reuses_them(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", np.linspace(-0.9, 0.9, 6 * 64, dtype=np.float32).reshape(6, *SHAPE))
    enc = ["encode", "--model", FAKE, "--input", "x.npy", "--solver", "belm", "-n", "6", "--class", "1,2", "-q"]
    assert run_cli([*enc, "--guidance", "1.5", "--batch-size", "4"], capsys)[0] == 0
    with np.load("latents.npz") as f:
        assert f["labels"].tolist() == [1, 2] * 3 and float(f["guidance"]) == 1.5
        assert str(f["model"]) == str(tmp_path / FAKE)
    assert run_cli(["decode", "--input", "latents.npz", "--out", "d.png", "--batch-size", "4", "-q"], capsys)[0] == 0
    np.testing.assert_allclose(np.load("d.npz")["samples"], np.load("x.npy"), atol=1e-5)  # BELM: exact, same labels
    for extra, difference in (
        (["--class", "3"], "class labels [1,2,1,2,1,2] -> [3,3,3,3,3,3]"),
        (["--guidance", "2"], "guidance 1.5 -> 2"),
    ):
        code, _, err = run_cli(["decode", "--input", "latents.npz", "--out", "e.png", *extra, "-q"], capsys)
        assert_refused(code, err, "guidance=1.5", difference, "--allow-mismatch")
    code, _, err = run_cli(
        ["decode", "--input", "latents.npz", "--out", "e.png", "--class", "3", "--allow-mismatch"], capsys
    )
    assert code == 0 and "warning:" in err and "class labels" in err
    assert np.abs(np.load("e.npz")["samples"] - np.load("x.npy")).max() > 0.1
    # the unguided encoding of the same images is another latent
    assert run_cli([*enc, "--out", "plain.npz"], capsys)[0] == 0
    assert np.abs(np.load("plain.npz")["latents"] - np.load("latents.npz")["latents"]).max() > 0.1
    rt = ["roundtrip", "--model", FAKE, "--input", "x.npy", "--solver", "belm", "-n", "4", "--class", "0-4"]
    code, out, _ = run_cli([*rt, "--guidance", "3"], capsys)
    assert code == 0 and "classes 0,1,2,3,4, guidance 3" in out and "MSE (data in [0, 1]) = " in out
    assert float(out.split("= ")[1].split()[0]) < 1e-10


def test_labels_by_index_survive_sharding_and_resume(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["sample", "--model", FAKE, "--num", "7", "-n", "4", "--class", "0-4", "--guidance", "1.5", "-q"]
    assert run_cli([*base, "--out", "mem.png"], capsys)[0] == 0
    for folder, size in (("a", "2"), ("b", "3"), ("c", "7")):
        assert run_cli([*base, "--out-dir", folder, "--shard-size", size], capsys)[0] == 0
    a = np.load("a/samples.npy")
    assert np.array_equal(a, np.load("b/samples.npy")) and np.array_equal(a, np.load("c/samples.npy"))
    with np.load("mem.npz") as f:
        assert f["labels"].tolist() == [0, 1, 2, 3, 4, 0, 1]
        assert np.array_equal(a, f["samples"])
    # a resume recomputes the missing shards, two at a time and not adjacent, with their own labels
    for name in ("shard-00000000-00000002.npz", "shard-00000004-00000006.npz", "samples.npy"):
        (tmp_path / "a" / name).unlink()
    code, out, _ = run_cli([*base, "--out-dir", "a", "--shard-size", "2", "--batch-size", "4"], capsys)
    assert code == 0 and "2 of 4 shards were already complete" in out
    assert np.array_equal(np.load("a/samples.npy"), a)
    # other labels or another weight: refused, nothing changed
    before = snapshot(tmp_path)
    for change in (["--class", "0-3", "--guidance", "1.5"], ["--class", "0-4", "--guidance", "2"], ["--class", "0-4"]):
        argv = [*base[:7], *change, "-q", "--out-dir", "a", "--shard-size", "2"]
        code, _, err = run_cli(argv, capsys)
        assert_refused(code, err, "refusing to resume", "conditioning")
    assert snapshot(tmp_path) == before


def test_sharded_encoding_records_what_decode_needs(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", np.linspace(-0.9, 0.9, 5 * 64, dtype=np.float32).reshape(5, *SHAPE))
    argv = ["encode", "--model", FAKE, "--input", "x.npy", "--solver", "belm", "-n", "5", "--class", "2,4,1"]
    assert (
        run_cli([*argv, "--guidance", "2", "--out-dir", "sh", "--shard-size", "2", "--batch-size", "2", "-q"], capsys)[
            0
        ]
        == 0
    )
    with np.load("sh/latents.npz") as f:
        assert f["labels"].tolist() == [2, 4, 1, 2, 4] and float(f["guidance"]) == 2.0
        assert str(f["kind"]) == "encoded" and str(f["model"]) == str(tmp_path / FAKE) and len(f["sigmas"]) == 6
    assert run_cli([*argv, "--guidance", "2", "--out", "mem.npz", "-q"], capsys)[0] == 0
    assert np.array_equal(np.load("sh/latents.npz")["latents"], np.load("mem.npz")["latents"])
    assert run_cli(["decode", "--input", "sh/latents.npz", "--out", "d.png", "-q"], capsys)[0] == 0
    np.testing.assert_allclose(np.load("d.npz")["samples"], np.load("x.npy"), atol=1e-5)


def test_sample_to_dir_slices_per_sample_keyword_arguments_by_index(tmp_path):
    labels = torch.tensor([4, 0, 3, 1, 2, 2, 0])
    kw = dict(model=NET, schedule=SCHEDULE, n=3, shape=SHAPE, device="cpu", guidance_scale=2.5)
    two = np.load(sample_to_dir(tmp_path / "a", 7, shard_size=2, model_kwargs={"y": labels}, **kw).merged)
    three = np.load(
        sample_to_dir(tmp_path / "b", 7, shard_size=3, batch_size=6, model_kwargs={"y": labels}, **kw).merged
    )
    assert np.array_equal(two, three)
    expected = ddim_ode.decode(
        index_noise(0, 0, 7, SHAPE),
        "euler",
        3,
        model=NET,
        schedule=SCHEDULE,
        model_kwargs={"y": labels},
        guidance_scale=2.5,
    )
    np.testing.assert_allclose(two, expected.numpy(), atol=1e-6)
    shared = np.load(sample_to_dir(tmp_path / "c", 7, shard_size=2, model_kwargs={"y": torch.tensor(3)}, **kw).merged)
    np.testing.assert_allclose(shared, reference([3] * 7, 2.5, n=3), atol=1e-6)  # a 0-d tensor is shared
    with pytest.raises(ValueError, match="uncond_kwargs"):
        plain = dict(model=lambda x, t, y: x, schedule=SCHEDULE, shape=SHAPE)
        sample_to_dir(tmp_path / "d", 7, **plain, guidance_scale=2.0, model_kwargs={"y": labels})
    assert not (tmp_path / "d").exists()  # refused before the folder was made


# ---------------------------------------------------------------------------------------------
# conditioning refused: one line, exit 2, nothing written, before any work


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["sample", "--class", "5"], "--class 5: label 5 is out of range;"),
        (["sample", "--class", "0-9"], f"has {NUM_CLASSES} classes, 0-{NUM_CLASSES - 1}"),
        (["sample", "--guidance", "2"], "--guidance 2 needs class labels to guide towards: pass --class"),
        (["sample", "--class", "1,,2"], "bad --class '1,,2'"),
        (["sample", "--class", "2", "--guidance", "-1"], "--guidance must be a number >= 0"),
        (["sample", "--class", "2", "--out-dir", "sh", "--shard-size", "0"], "--shard-size must be >= 1"),
        (["encode", "--input", "digits", "--class", "7"], "label 7 is out of range"),
        (["roundtrip", "--class", "1-6"], "label 6 is out of range"),
        (["sample", "--class", "2", "--out-dir", "sh", "--sigmas", "3,1"], "--sigmas must end at sigma = 0"),
    ],
)
def test_bad_conditioning_is_refused_before_any_work(argv, needle, fake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ddim_ode.cli, "decode", no_work)
    monkeypatch.setattr(ddim_ode.cli, "encode", no_work)
    code, _, err = run_cli([*argv, "--model", FAKE, "-q"], capsys)
    assert_refused(code, err, needle)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# --prediction / --schedule for a model directory


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    import shutil

    d = tmp_path / "my_model"
    shutil.copytree(io.DEFAULT_MODEL_DIR, d)
    return d


@pytest.mark.parametrize(
    "spec, text, kind",
    [
        ("vp-linear", "vp-linear:0.0001:0.02:1000", "DiscreteSchedule"),
        ("vp-linear:0.0002:0.03:500", "vp-linear:0.0002:0.03:500", "DiscreteSchedule"),
        ("vp-cosine:200", "vp-cosine:200", "DiscreteSchedule"),
        ("vp-continuous", "vp-continuous:0.1:20", "LinearVPSchedule"),
        ("ve:0.002:80", "ve:0.002:80", "VESchedule"),
        ("ve", "ve:0.002:80", "VESchedule"),
        ("flow:3.0", "flow:3", "FlowSchedule"),
    ],
)
def test_schedule_specs(spec, text, kind):
    choice = cli_model.parse_schedule(spec)
    assert choice.text == text and type(choice.schedule).__name__ == kind
    assert cli_model.parse_schedule(choice.text).text == text  # the canonical text reads back as itself
    if kind == "FlowSchedule":
        assert choice.schedule.shift == 3.0
    if spec == "vp-cosine:200":
        assert choice.schedule.num_timesteps == 200


def test_prediction_and_schedule_replace_a_directory_config_and_latents_record_them(
    model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    enc = ["encode", "--model", model_dir, "--input", "digits:heldout", "--solver", "belm", "-n", "5", "-q"]
    code, _, err = run_cli([*enc, "--prediction", "v", "--schedule", "vp-cosine"], capsys)
    assert code == 0
    assert "--prediction v replaces the prediction 'eps'" in err and "--schedule vp-cosine:1000 replaces" in err
    with np.load("latents.npz") as f:
        assert (str(f["prediction"]), str(f["schedule"]), str(f["model"])) == ("v", "vp-cosine:1000", str(model_dir))
        latents = f["latents"]
    # another prediction (or schedule) is another latent; the recorded ones decode it exactly
    assert run_cli([*enc, "--out", "own.npz"], capsys)[0] == 0
    assert np.abs(np.load("own.npz")["latents"] - latents).max() > 0.1
    assert run_cli(["decode", "--input", "latents.npz", "--out", "d.png", "-q"], capsys)[0] == 0
    from ddim_ode.data import load_digits

    np.testing.assert_allclose(np.load("d.npz")["samples"], load_digits("heldout").numpy(), atol=1e-4)
    code, _, err = run_cli(["decode", "--input", "latents.npz", "--prediction", "eps", "--out", "e.png", "-q"], capsys)
    assert_refused(code, err, "prediction v -> eps")
    code, _, err = run_cli(["decode", "--input", "latents.npz", "--schedule", "vp-linear", "--out", "e.png"], capsys)
    assert_refused(code, err, "schedule vp-cosine:1000 -> vp-linear:0.0001:0.02:1000")
    # a rectified-flow schedule takes the flow prediction
    flow = ["sample", "--model", model_dir, "--prediction", "flow", "--schedule", "flow:3", "--num", "2", "-n", "3"]
    code, out, _ = run_cli([*flow, "--out", "f.png", "-q"], capsys)
    assert code == 0 and str(np.load("f.npz")["schedule"]) == "flow:3"


# (arguments, what the one line must contain); {dir} is a copy of the default model
REFUSED_MODEL = [
    (["sample", "--model", "{dir}", "--prediction", "flow"], "--prediction flow needs a rectified-flow schedule"),
    (["sample", "--model", "{dir}", "--schedule", "cubic"], "unknown --schedule kind 'cubic'; allowed: vp-linear"),
    (["sample", "--model", "{dir}", "--schedule", "ve:80:1"], "sigma_max must be a finite number > sigma_min"),
    (["sample", "--model", "{dir}", "--schedule", "flow:1:2"], "flow takes at most 1 parameter(s)"),
    (["sample", "--model", "{dir}", "--schedule", "vp-cosine:2.5"], "T must be an integer in [2, 100000]"),
    (["sample", "--model", "{dir}", "--schedule", "vp-linear:0.1:2"], "--schedule vp-linear:0.1:2:"),
    (["sample", "--model", "{dir}", "--schedule", "ve:nan"], "sigma_min must be finite"),
    (["sample", "--model", "{dir}", "--schedule", "vp-cosine", "--class", "1"], "--class needs a class-conditional"),
    (["likelihood", "--model", "{dir}", "--schedule", "nope"], "unknown --schedule kind"),
]


@pytest.mark.parametrize("argv, needle", REFUSED_MODEL)
def test_bad_model_settings_are_refused_before_any_work(argv, needle, model_dir, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(ddim_ode.cli, "decode", no_work)
    before = snapshot(model_dir)
    code, _, err = run_cli([a.format(dir=model_dir) for a in argv] + (["-q"] if argv[0] == "sample" else []), capsys)
    assert_refused(code, err, needle)
    assert not any(work.iterdir()) and snapshot(model_dir) == before


def test_class_conditional_unet_directory(tmp_path, monkeypatch, capsys):
    from ddim_ode.unet import UNet

    monkeypatch.chdir(tmp_path)
    config = UNetConfig(base_channels=8, num_res_blocks=1, resolution=8, attention=False, num_classes=3)
    net = UNet(config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    io.save_model(tmp_path / "cond", net, config, SCHEDULE)
    argv = ["sample", "--model", "cond", "--num", "4", "-n", "3", "-q"]
    assert run_cli([*argv, "--class", "0-2", "--guidance", "2"], capsys)[0] == 0
    guided = np.load("samples.npz")["samples"]
    assert np.load("samples.npz")["labels"].tolist() == [0, 1, 2, 0]
    code, _, err = run_cli([*argv, "--class", "3"], capsys)
    assert_refused(code, err, "label 3 is out of range", "3 classes, 0-2")
    assert run_cli([*argv, "--class", "0-2"], capsys)[0] == 0
    assert np.isfinite(guided).all() and np.abs(np.load("samples.npz")["samples"] - guided).max() > 0


def test_builtin_conditional_model_draws_the_classes_asked_for(tmp_path, monkeypatch, capsys):
    from ddim_ode.features import load_classifier

    monkeypatch.chdir(tmp_path)
    argv = ["sample", "--model", "digits-cond", "--class", "3", "--guidance", "2", "--num", "64", "--out", "x.png"]
    assert run_cli([*argv, "-q"], capsys)[0] == 0 and Path("x.png").is_file()
    samples = torch.from_numpy(np.load("x.npz")["samples"]).clamp(-1, 1)
    assert float((load_classifier()(samples).argmax(1) == 3).float().mean()) > 0.5
    argv = ["sample", "--model", "digits-cond", "--class", "0-9", "--guidance", "2", "--num", "40", "-q"]
    assert run_cli(argv, capsys)[0] == 0
    with np.load("samples.npz") as f:
        predicted = load_classifier()(torch.from_numpy(f["samples"]).clamp(-1, 1)).argmax(1).numpy()
        assert float((predicted == f["labels"]).mean()) > 0.5
