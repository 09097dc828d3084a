"""Saving and loading models: own format, schedules in JSON, state dicts (weights-only), diffusers, the default."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from test_unet import TINY, randomised_unet

from ddim_ode import io
from ddim_ode.io import (
    DiffusersEpsModel,
    ModelFormatError,
    load_any,
    load_default,
    load_diffusers_unet,
    load_model,
    load_torch_state_dict,
    load_weights_only,
    native,
    save_model,
    schedule_from_dict,
    schedule_json,
    schedule_to_dict,
)
from ddim_ode.schedules import ContinuousSchedule, DiscreteSchedule, FlowSchedule, VESchedule
from ddim_ode.unet import UNet, UNetConfig

#: the description of DiscreteSchedule.linear()
LINEAR = {"type": "discrete", "kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000}


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 1, 8, 8, generator=g), torch.tensor([3.0, 777.5])


@pytest.fixture
def saved(tmp_path):
    model = randomised_unet()
    path = save_model(tmp_path / "m", model, schedule=DiscreteSchedule.linear(), extra_metadata={"data": {"x": 1}})
    return path, model


# ----------------------------------------------------------------------------------------------
# the package's own format


def test_round_trip(saved):
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    rng = torch.get_rng_state()
    loaded, schedule, meta = load_model(path)
    assert torch.equal(torch.get_rng_state(), rng)
    x, t = _inputs()
    assert torch.equal(loaded(x, t), model(x, t))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(schedule.alphas_cumprod, DiscreteSchedule.linear().alphas_cumprod)
    assert meta["schedule"] == LINEAR
    assert meta["prediction"] == "eps" and meta["data"] == {"x": 1} and meta["unet"] == TINY.to_dict()
    assert meta["sample_shape"] == [1, 8, 8]
    # the config file or the weights file name the model as well
    assert torch.equal(load_model(path / "config.json").model(x, t), model(x, t))
    assert torch.equal(load_model(path / "model.safetensors").model(x, t), model(x, t))


def test_input_gradients_flow_through_a_loaded_model(saved):
    model = load_model(saved[0]).model
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    model(x, torch.tensor([10.0])).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "schedule",
    [
        DiscreteSchedule.linear(),
        DiscreteSchedule.linear(8.5e-4, 0.012, 500),
        DiscreteSchedule.cosine(1000),
        DiscreteSchedule(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64) ** 0.5 * 0.1),
        ContinuousSchedule.linear(),
        ContinuousSchedule.cosine(),
        VESchedule(0.01, 50.0),
    ],
    ids=["linear", "linear-custom", "cosine", "arbitrary", "continuous-linear", "continuous-cosine", "ve"],
)
def test_schedule_json_round_trip_is_exact(schedule):
    spec = json.loads(json.dumps(schedule_to_dict(schedule)))
    rebuilt = schedule_from_dict(spec)
    assert type(rebuilt) is type(schedule)
    if isinstance(schedule, DiscreteSchedule):
        assert torch.allclose(rebuilt.alphas_cumprod, schedule.alphas_cumprod, rtol=1e-12, atol=0)
    else:
        s = torch.linspace(0.01, 50.0, 7, dtype=torch.float64)
        assert torch.equal(rebuilt.t(s), schedule.t(s)) and (rebuilt.t_min, rebuilt.t_max) == (
            schedule.t_min,
            schedule.t_max,
        )


@pytest.mark.parametrize(
    "schedule",
    [
        FlowSchedule(),
        FlowSchedule(3.0, 500, timestep_scale=1.0),
        FlowSchedule(use_dynamic_shifting=True, mu=0.8, base_shift=0.4, max_image_seq_len=1024),
        FlowSchedule(use_dynamic_shifting=True, time_shift_type="linear", base_image_seq_len=64),
    ],
    ids=["default", "shift-3-tau-units", "dynamic-mu", "dynamic-linear-no-mu"],
)
def test_flow_schedule_json_round_trip_keeps_every_parameter(schedule):
    spec = json.loads(json.dumps(schedule_to_dict(schedule)))
    assert spec["type"] == "flow" and "kind" not in spec
    rebuilt = schedule_from_dict(spec)
    assert isinstance(rebuilt, FlowSchedule) and repr(rebuilt) == repr(schedule)
    for name in (
        "shift",
        "num_train_timesteps",
        "use_dynamic_shifting",
        "base_shift",
        "max_shift",
        "base_image_seq_len",
        "max_image_seq_len",
        "time_shift_type",
        "mu",
        "timestep_scale",
        "tau_floor",
        "t_min",
        "t_max",
    ):
        assert getattr(rebuilt, name) == getattr(schedule, name), name
    t = torch.linspace(0.0, schedule.timestep_scale, 9, dtype=torch.float64)
    assert torch.equal(rebuilt.sigma(t), schedule.sigma(t))
    if schedule.mu is not None or not schedule.use_dynamic_shifting:
        assert torch.equal(rebuilt.from_grid_time(t / t[-1]), schedule.from_grid_time(t / t[-1]))
    assert schedule_to_dict(rebuilt) == spec


def test_flow_and_ve_descriptions_take_the_defaults_and_are_checked():
    assert repr(schedule_from_dict({"type": "flow"})) == repr(FlowSchedule())
    assert schedule_from_dict({"type": "flow", "shift": 3.0}).shift == 3.0
    with pytest.raises(ValueError, match=r"a ve schedule lacks the entry 'sigma_max'"):
        schedule_from_dict({"type": "ve", "sigma_min": 0.1})
    with pytest.raises(ValueError, match="sigma_max must be a finite number > sigma_min"):
        schedule_from_dict({"type": "ve", "sigma_min": 1.0, "sigma_max": 0.5})
    with pytest.raises(ValueError, match="mu applies only with use_dynamic_shifting=True"):
        schedule_from_dict({"type": "flow", "mu": 0.5})


def test_schedule_from_dict_errors():
    with pytest.raises(ValueError, match="allowed: linear, cosine, betas, alphas_cumprod"):
        schedule_from_dict({"type": "discrete", "kind": "sigmoid"})
    with pytest.raises(ValueError, match="beta_end"):
        schedule_from_dict({"type": "discrete", "kind": "linear", "beta_start": 1e-4, "num_timesteps": 10})
    with pytest.raises(ValueError, match="allowed: discrete, continuous, flow, ve$"):
        schedule_from_dict({"type": "subvp", "kind": "linear"})
    betas = [0.1, 0.2, 0.3]
    assert torch.allclose(
        schedule_from_dict({"kind": "betas", "betas": betas}).betas, torch.tensor(betas, dtype=torch.float64)
    )


#: schedule descriptions that are refused before anything is built, and what the one-line ValueError says
BAD_SCHEDULES = {
    "a-string": ("linear", r"a schedule is described by an object with 'type' and 'kind', got 'linear'"),
    "type-a-list": ({"type": [], "kind": "linear"}, r"unknown schedule type \[\]; allowed: discrete, continuous"),
    "unknown-entry": ({**LINEAR, "beta_mid": 0.01}, r"unknown entries \['beta_mid'\] in a discrete linear schedule"),
    "num-timesteps-huge": (
        {**LINEAR, "num_timesteps": 10**9},
        r"schedule\.num_timesteps must be an integer in \[2, 100000\], got 1000000000",
    ),
    "num-timesteps-bool": ({**LINEAR, "num_timesteps": True}, r"schedule\.num_timesteps must be an integer"),
    "beta-a-string": ({**LINEAR, "beta_end": "0.02"}, r"schedule\.beta_end must be a finite number in \(0, 1\)"),
    "beta-inf": ({**LINEAR, "beta_start": float("inf")}, r"schedule\.beta_start must be a finite number"),
    "cosine-s-negative": (
        {"kind": "cosine", "num_timesteps": 100, "s": -1},
        r"schedule\.s must be a finite number in \(0, 1\], got -1",
    ),
    "betas-out-of-range": ({"kind": "betas", "betas": [0.1, 1.5]}, r"schedule\.betas\[1\] must be .* in \(0, 1\)"),
    "betas-nested": ({"kind": "betas", "betas": [[0.1], [0.2]]}, r"schedule\.betas\[0\] must be a finite number"),
    "betas-too-many": (
        {"kind": "betas", "betas": [0.01] * 100_001},
        r"schedule\.betas must be a list of 2 to 100000 numbers",
    ),
    "alphas-cumprod-a-dict": (
        {"kind": "alphas_cumprod", "alphas_cumprod": {"0": 0.5}},
        r"schedule\.alphas_cumprod must be a list of 2 to 100000 numbers",
    ),
    "continuous-beta-max": (
        {"type": "continuous", "kind": "linear", "beta_min": 0.1, "beta_max": 1e6},
        r"schedule\.beta_max must be a finite number in \(0, 100\], got 1000000\.0",
    ),
    "continuous-t-max": (
        {"type": "continuous", "kind": "cosine", "t_max": 5.0},
        r"schedule\.t_max must be a finite number in \[0, 1\], got 5\.0",
    ),
    "continuous-s-zero": ({"type": "continuous", "kind": "cosine", "s": 0.0}, r"schedule\.s must be .* in \(0, 1\]"),
    "flow-kind": (
        {"type": "flow", "kind": "linear"},
        r"unknown entries \['kind'\] in a flow schedule; allowed: type, s",
    ),
    "flow-shift-zero": (
        {"type": "flow", "shift": 0},
        r"schedule\.shift must be a finite number in \(0, 1000\], got 0$",
    ),
    "flow-shift-huge": ({"type": "flow", "shift": 1e9}, r"schedule\.shift must be a finite number in \(0, 1000\]"),
    "flow-timesteps": (
        {"type": "flow", "num_train_timesteps": 10**9},
        r"schedule\.num_train_timesteps must be an integer in \[2, 100000\], got 1000000000$",
    ),
    "flow-dynamic-a-string": (
        {"type": "flow", "use_dynamic_shifting": "yes"},
        r"schedule\.use_dynamic_shifting must be true or false, got 'yes'$",
    ),
    "flow-mu-overflows": (
        {"type": "flow", "use_dynamic_shifting": True, "mu": 1000.0},
        r"schedule\.mu must be a finite number in \[-10, 10\], got 1000\.0$",
    ),
    "flow-seq-len": (
        {"type": "flow", "max_image_seq_len": 2**40},
        r"schedule\.max_image_seq_len must be an integer in \[2, 16777216\]",
    ),
    "flow-shift-type": (
        {"type": "flow", "time_shift_type": "cubic"},
        r"unknown schedule\.time_shift_type 'cubic'; allowed: exponential, linear$",
    ),
    "flow-timestep-scale-nan": (
        {"type": "flow", "timestep_scale": float("nan")},
        r"schedule\.timestep_scale must be a finite number in \(0, 100000\], got nan$",
    ),
    "ve-sigma-huge": (
        {"type": "ve", "sigma_min": 0.002, "sigma_max": 1e300},
        r"schedule\.sigma_max must be a finite number in \(0, 1e\+06\], got 1e\+300$",
    ),
    "ve-unknown-entry": (
        {"type": "ve", "sigma_min": 0.002, "sigma_max": 80, "rho": 7},
        r"unknown entries \['rho'\] in a ve schedule; allowed: type, sigma_min, sigma_max$",
    ),
}


@pytest.mark.parametrize(("spec", "match"), BAD_SCHEDULES.values(), ids=BAD_SCHEDULES.keys())
def test_schedule_descriptions_are_checked_before_building(monkeypatch, spec, match):
    monkeypatch.setattr(schedule_json, "build_schedule", lambda *args: pytest.fail("a schedule was built"))
    with pytest.raises(ValueError, match=match) as err:
        schedule_from_dict(spec)
    assert "\n" not in str(err.value)


def test_schedules_whose_sigma_would_be_zero_or_infinite_are_refused():
    with pytest.raises(ValueError, match="sigma = 0 or infinity|sigma is infinite"):  # alpha_bar underflows to 0
        schedule_from_dict({**LINEAR, "beta_start": 0.9, "beta_end": 0.99, "num_timesteps": 100_000})
    with pytest.raises(ValueError, match="sigma = 0 or infinity"):  # alpha_bar rounds to 1
        schedule_from_dict({"kind": "betas", "betas": [1e-300, 1e-300]})
    assert schedule_from_dict({**LINEAR, "beta_end": 2e-4, "num_timesteps": 100_000}).num_timesteps == 100_000


def test_save_model_errors(tmp_path):
    with pytest.raises(ValueError, match="schedule"):
        save_model(tmp_path, randomised_unet())
    with pytest.raises(ValueError, match="reserved"):
        save_model(tmp_path, randomised_unet(), schedule=DiscreteSchedule.linear(), extra_metadata={"unet": {}})
    with pytest.raises(ValueError, match="allowed: eps, x0, v"):
        save_model(tmp_path, randomised_unet(), schedule=DiscreteSchedule.linear(), prediction="epsilon")
    with pytest.raises(ValueError, match="does not describe"):
        save_model(tmp_path, randomised_unet(), UNetConfig(), DiscreteSchedule.linear())
    with pytest.raises(TypeError, match="UNet"):
        save_model(tmp_path, torch.nn.Linear(2, 2), schedule=DiscreteSchedule.linear())
    with pytest.raises(ValueError, match=r"strict JSON \(no NaN or infinity\)"):
        save_model(tmp_path, randomised_unet(), schedule=DiscreteSchedule.linear(), extra_metadata={"x": float("nan")})
    with pytest.raises(ValueError, match="string keys"):
        save_model(tmp_path, randomised_unet(), schedule=DiscreteSchedule.linear(), extra_metadata={1: "x"})
    assert not any(tmp_path.iterdir())  # nothing written on a failed call


def test_a_failed_save_leaves_the_previous_model_intact(saved, monkeypatch):
    path, model = saved
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, randomised_unet(seed=5), schedule=DiscreteSchedule.linear())
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    x, t = _inputs()
    assert torch.equal(load_model(path).model(x, t), model(x, t))


def test_truncated_or_corrupted_weights(saved):
    path, _ = saved
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="corrupted or truncated"):
        load_model(path)
    weights.write_bytes(b"\x00" * 3)
    with pytest.raises(ModelFormatError, match="model.safetensors"):
        load_model(path)


def test_missing_files(saved, tmp_path):
    path, _ = saved
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_model(tmp_path / "nothing")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(path)
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(path)


@pytest.mark.parametrize(
    "text",
    ["{not json", '{"unet": ' + "[" * 100_000 + "]" * 100_000 + "}", '{"format_version": ' + "9" * 5000 + "}"],
    ids=["syntax", "nested-too-deeply", "huge-integer"],
)
def test_unreadable_config_json(saved, text):
    path, _ = saved
    (path / "config.json").write_text(text)
    with pytest.raises(ModelFormatError, match=r"config\.json is not valid JSON") as err:
        load_model(path)
    assert "\n" not in str(err.value)


def _unet(**changes):
    return lambda doc: {**doc, "unet": {**doc["unet"], **changes}}


def _schedule(spec):
    return lambda doc: {**doc, "schedule": spec}


#: a change to config.json, and what the one-line ModelFormatError must say
BAD_CONFIGS = {
    "format": (lambda doc: {**doc, "format": "something"}, "not a ddim_ode model config"),
    "no-schedule": (lambda doc: {k: v for k, v in doc.items() if k != "schedule"}, "lacks the entry 'schedule'"),
    "format-version-type": (lambda doc: {**doc, "format_version": "1"}, r"format_version must be an integer >= 1"),
    "format-version-newer": (lambda doc: {**doc, "format_version": 2}, "newer than supported"),
    "prediction": (lambda doc: {**doc, "prediction": ["eps"]}, r"unknown prediction \['eps'\]; allowed: eps, x0, v"),
    "unet-unknown-key": (_unet(heads=2), "unknown UNetConfig keys"),
    "unet-not-an-object": (lambda doc: {**doc, "unet": [1, 2]}, "UNetConfig is described by a mapping"),
    "base-channels": (
        _unet(base_channels=8192),
        r"config\.json: UNetConfig\.base_channels must be an integer in \[1, 1024\], got 8192$",
    ),
    "resolution": (
        _unet(resolution=100_000),
        r"config\.json: UNetConfig\.resolution must be an integer in \[1, 1024\]",
    ),
    "channel-mults": (_unet(channel_mults="12"), r"UNetConfig\.channel_mults must be a list of 1 to 8 positive"),
    "num-classes": (
        _unet(num_classes=10**7),
        r"config\.json: UNetConfig\.num_classes must be an integer in \[0, 100000\], got 10000000$",
    ),
    "conditional": (
        _unet(num_classes=10),
        r"another architecture: missing 1 parameters \(first: \['class_emb\.weight'\]",
    ),
    "flow-schedule": (
        _schedule({"type": "flow", "shift": -1.0}),
        r"config\.json: schedule\.shift must be a finite number in \(0, 1000\], got -1\.0$",
    ),
    "num-timesteps": (
        _schedule({**LINEAR, "num_timesteps": 1e9}),
        r"config\.json: schedule\.num_timesteps must be an integer in \[2, 100000\], got 1000000000\.0$",
    ),
    "cosine-s": (
        _schedule({"type": "discrete", "kind": "cosine", "num_timesteps": 1000, "s": -1}),
        r"config\.json: schedule\.s must be a finite number in \(0, 1\], got -1$",
    ),
    "schedule-a-string": (
        _schedule("linear"),
        r"config\.json: a schedule is described by an object with 'type' and 'kind', got 'linear'$",
    ),
    "beta-nan": (
        _schedule({**LINEAR, "beta_start": float("nan")}),
        r"schedule\.beta_start must be a finite number in \(0, 1\), got nan$",
    ),
    # the architecture is checked against the shapes in the safetensors header
    "wider": (_unet(base_channels=16), r"parameter 'time_mlp\.0\.weight' has shape \(32, 8\) in the file"),
    "deeper": (_unet(num_res_blocks=2), "another architecture: missing"),
    "no-attention": (_unet(attention=False), "unexpected parameters"),
    "gigabytes": (_unet(base_channels=1024, channel_mults=[1, 4], num_res_blocks=8, norm_groups=8), "another archi"),
}


@pytest.mark.parametrize(("change", "match"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_a_bad_config_is_refused_before_anything_is_built(saved, monkeypatch, change, match):
    path, _ = saved
    config = path / "config.json"
    config.write_text(json.dumps(change(json.loads(config.read_text()))))
    build_network = UNet._build

    def build_on_meta_only(self, cfg):  # fails before a real network takes any memory
        if torch.get_default_device().type != "meta":
            pytest.fail(f"a network was built before the config was checked: {cfg}")
        build_network(self, cfg)

    monkeypatch.setattr(UNet, "_build", build_on_meta_only)
    monkeypatch.setattr(native, "build_schedule", lambda *args: pytest.fail("a schedule was built"))
    with pytest.raises(ModelFormatError, match=match) as err:
        load_model(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused(saved, tmp_path, bad):
    from safetensors.torch import load_file, save_file

    path, _ = saved
    state = load_file(path / "model.safetensors")
    state["mid.1.qkv.weight"][3, 0] = bad
    save_file(state, path / "model.safetensors")
    match = r"model\.safetensors: parameter 'mid\.1\.qkv\.weight' holds NaN or infinite values"
    with pytest.raises(ModelFormatError, match=match):
        load_model(path)
    torch.save(state, tmp_path / "sd.pt")
    with pytest.raises(ModelFormatError, match=r"sd\.pt: parameter 'mid\.1\.qkv\.weight' holds NaN"):
        load_torch_state_dict(tmp_path / "sd.pt", TINY)


# ----------------------------------------------------------------------------------------------
# plain state dicts


def test_state_dict_loads_weights_only(tmp_path):
    model = randomised_unet()
    x, t = _inputs()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    assert torch.equal(load_torch_state_dict(tmp_path / "sd.pt", TINY)(x, t), model(x, t))
    other = randomised_unet(seed=9)
    torch.save({"ema": model.state_dict(), "model": other.state_dict(), "step": 3}, tmp_path / "ckpt.pt")
    assert torch.equal(load_torch_state_dict(tmp_path / "ckpt.pt", TINY)(x, t), model(x, t))
    with pytest.raises(ModelFormatError, match="another architecture"):
        load_torch_state_dict(tmp_path / "sd.pt", UNetConfig())
    torch.save({"step": 3}, tmp_path / "empty.pt")
    with pytest.raises(ModelFormatError, match="holds no state dict"):
        load_torch_state_dict(tmp_path / "empty.pt", TINY)
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "sd.pt").read_bytes()[:100])
    with pytest.raises(ModelFormatError, match="corrupted or truncated"):
        load_torch_state_dict(tmp_path / "trunc.pt", TINY)
    with pytest.raises(FileNotFoundError):
        load_torch_state_dict(tmp_path / "missing.pt", TINY)


class _Exploit:
    """Unpickling this would run ``os.system`` and create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(tmp_path, name):
    marker = tmp_path / "PWNED"
    payload = tmp_path / name
    with open(payload, "wb") as f:
        pickle.dump({"conv_in.weight": torch.zeros(1), "evil": _Exploit(marker)}, f, protocol=2)
    return payload, marker


def test_a_code_executing_pickle_is_refused(tmp_path):
    payload, marker = _malicious(tmp_path, "evil.pt")
    with pytest.raises(ModelFormatError, match="refusing to load .*could execute code"):
        load_torch_state_dict(payload, TINY)
    with pytest.raises(ModelFormatError, match="refusing to load .*could execute code"):
        load_weights_only(payload)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# the built-in model


def test_load_default():
    model, schedule, meta = load_default()
    assert isinstance(model, UNet) and model.config.resolution == 8 and model.config.in_channels == 1
    assert isinstance(schedule, DiscreteSchedule) and schedule.num_timesteps == 1000
    assert torch.equal(schedule.alphas_cumprod, DiscreteSchedule.linear(1e-4, 0.02, 1000).alphas_cumprod)
    assert meta["prediction"] == "eps" and meta["data"]["scaling"] == "pixel / 16 * 2 - 1"
    training = meta["training"]
    assert training["command"].startswith("python -m ddim_ode.train --preset digits")
    assert training["steps"] > 0 and training["wall_time_s"] > 0 and 0 < training["final_loss"] < 1
    size = sum(p.stat().st_size for p in io.DEFAULT_MODEL_DIR.iterdir())
    assert size < 8 * 2**20
    assert load_any().model.config == model.config and load_any("default").metadata["source"] == meta["source"]


def test_load_any_dispatch(saved, tmp_path):
    path, model = saved
    x, t = _inputs()
    assert torch.equal(load_any(path).model(x, t), model(x, t))
    with pytest.raises(FileNotFoundError):
        load_any(tmp_path / "nothing")
    (tmp_path / "junk").mkdir()
    with pytest.raises(ModelFormatError, match="allowed: 'default'"):
        load_any(tmp_path / "junk")


# ----------------------------------------------------------------------------------------------
# diffusers


def _diffusers_unet(tmp_path, scheduler: dict | None = None, where: str = "pipeline"):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
    ).eval()
    root = tmp_path / "pipe"
    unet.save_pretrained(root / "unet")
    if scheduler is not None:
        sched = diffusers.DDPMScheduler(**scheduler)
        sched.save_config(root / "scheduler" if where == "pipeline" else root / "unet")
    return unet, root


def test_diffusers_unet_follows_the_model_contract(tmp_path):
    unet, root = _diffusers_unet(tmp_path, {"beta_schedule": "linear", "num_train_timesteps": 1000})
    rng = torch.get_rng_state()
    model, schedule, meta = load_diffusers_unet(root)
    assert torch.equal(torch.get_rng_state(), rng)
    assert isinstance(model, DiffusersEpsModel)
    x, t = _inputs()
    with torch.no_grad():
        expected = unet(x, t).sample
    assert torch.allclose(model(x, t), expected, atol=1e-6)
    assert model(x.double(), t).dtype == torch.float64
    assert torch.equal(schedule.alphas_cumprod, DiscreteSchedule.linear().alphas_cumprod)
    assert meta["prediction_type"] == "epsilon" and meta["prediction"] == "eps" and meta["format"] == "diffusers"
    assert meta["sample_shape"] == [1, 8, 8]
    # the UNet folder itself, with the scheduler found in ../scheduler; and load_any's dispatch
    assert torch.allclose(load_diffusers_unet(root / "unet").model(x, t), expected, atol=1e-6)
    assert torch.allclose(load_any(root / "unet").model(x, t), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        (
            {"beta_schedule": "linear", "beta_start": 2e-4, "beta_end": 0.03, "num_train_timesteps": 500},
            lambda: DiscreteSchedule.linear(2e-4, 0.03, 500),
        ),
        (
            {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
            lambda: DiscreteSchedule(betas=torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2),
        ),
        ({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000}, lambda: DiscreteSchedule.cosine(1000)),
        (
            {"trained_betas": [0.01 * (i + 1) for i in range(20)], "num_train_timesteps": 20},
            lambda: DiscreteSchedule(betas=[0.01 * (i + 1) for i in range(20)]),
        ),
    ],
    ids=["linear", "scaled_linear", "squaredcos_cap_v2", "trained_betas"],
)
def test_diffusers_schedules_match_diffusers(tmp_path, scheduler, expected):
    diffusers = pytest.importorskip("diffusers")
    _, root = _diffusers_unet(tmp_path, scheduler, where="unet")
    schedule = load_diffusers_unet(root / "unet").schedule
    assert torch.allclose(schedule.alphas_cumprod, expected().alphas_cumprod, rtol=1e-12)
    reference = diffusers.DDPMScheduler(**scheduler).alphas_cumprod.double()  # diffusers computes in float32
    assert torch.allclose(schedule.alphas_cumprod, reference, rtol=1e-5)


@pytest.mark.parametrize(("name", "ours"), [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")])
def test_diffusers_prediction_types(tmp_path, name, ours):
    _, root = _diffusers_unet(tmp_path, {"prediction_type": name})
    meta = load_diffusers_unet(root).metadata
    assert (meta["prediction_type"], meta["prediction"]) == (name, ours)


def test_diffusers_errors(tmp_path):
    _, root = _diffusers_unet(tmp_path, None)
    with pytest.raises(FileNotFoundError, match="scheduler_config.json.*schedule="):
        load_diffusers_unet(root)
    explicit = DiscreteSchedule.cosine(100)
    assert load_diffusers_unet(root, schedule=explicit).schedule is explicit

    sched_dir = root / "scheduler"
    sched_dir.mkdir()
    (sched_dir / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "sigmoid"}))
    with pytest.raises(ModelFormatError, match="allowed: linear, scaled_linear, squaredcos_cap_v2"):
        load_diffusers_unet(root)
    (sched_dir / "scheduler_config.json").write_text(json.dumps({"prediction_type": "score"}))
    with pytest.raises(ModelFormatError, match="allowed: epsilon, v_prediction, sample"):
        load_diffusers_unet(root)
    (sched_dir / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": 1e9}))
    with pytest.raises(
        ModelFormatError, match=r"scheduler_config\.json: num_train_timesteps must be an integer in \[2, 100000\]"
    ):
        load_diffusers_unet(root)
    (sched_dir / "scheduler_config.json").write_text(json.dumps({"trained_betas": [0.1, "x"]}))
    with pytest.raises(ModelFormatError, match=r"trained_betas\[1\] must be a finite number in \(0, 1\)"):
        load_diffusers_unet(root)

    config = root / "unet" / "config.json"
    doc = json.loads(config.read_text())
    (sched_dir / "scheduler_config.json").unlink()
    config.write_text(json.dumps({**doc, "_class_name": "UNet3DConditionModel"}))
    with pytest.raises(ModelFormatError, match="allowed: 'UNet2DModel'"):
        load_diffusers_unet(root, schedule=explicit)
    config.write_text(json.dumps({**doc, "block_out_channels": [8, 32]}))
    with pytest.raises(ModelFormatError, match="parameter .* has shape"):
        load_diffusers_unet(root, schedule=explicit)


def test_diffusers_bin_weights_are_loaded_weights_only(tmp_path):
    unet, root = _diffusers_unet(tmp_path, {})
    weights = root / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    torch.save(unet.state_dict(), root / "unet" / "diffusion_pytorch_model.bin")
    x, t = _inputs()
    with torch.no_grad():
        assert torch.allclose(load_diffusers_unet(root).model(x, t), unet(x, t).sample, atol=1e-6)
    payload, marker = _malicious(tmp_path, "evil.bin")
    os.replace(payload, root / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelFormatError, match="refusing to load"):
        load_diffusers_unet(root)
    assert not marker.exists()
