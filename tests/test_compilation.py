"""compile: auto (the payback rule, measuring, the decision), checkpoints without ``_orig_mod.``,
data.on_device (placement rule, gathering on the device), and ConvNetADSB's ReLU-after-pool
order. Fast: nothing here compiles (the compile-on twins of the end-to-end paths are in
test_compile_twins.py, marked slow)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from imbalance import compilation as C
from imbalance.errors import ConfigError
from imbalance.loader import BatchLoader, DeviceResidentData, dataset_nbytes, resolve_on_device


# ----------------------------------------------------------------------------- the setting
@pytest.mark.parametrize("value, expected", [("auto", "auto"), (True, "true"), (False, "false"), ("TRUE", "true"),
                                             (" false ", "false")])
def test_parse_setting(value, expected):
    assert C.parse_setting(value) == expected


@pytest.mark.parametrize("value", ["yes", "1.5", None, "compile"])
def test_a_bad_setting_is_one_config_error(value):
    with pytest.raises(ConfigError, match="valid values: auto, true, false"):
        C.parse_setting(value)


def test_config_defaults_and_validation(tiny):
    from imbalance.config import validate, with_schema

    cfg = with_schema(tiny())
    assert cfg.compile == "auto" and cfg.data.on_device == "auto" and cfg.compile_cache_dir is None
    for key, bad in (("compile", "sometimes"), ("data.on_device", "gpu")):
        cfg = with_schema(tiny(f"{key}={bad}"))
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(cfg)


# ----------------------------------------------------------------------------- the rule
def test_forced_and_disabled_ignore_the_numbers():
    m = C.Measurement(eager_step_s=1.0, compiled_step_s=2.0, compile_s=1e9)
    assert C.decide("true", planned=1, measured=m).compile is True
    assert C.decide(False, planned=10 ** 9, measured=C.Measurement(10.0, 0.1, 0.0)).compile is False


def test_precheck_bound_by_hand():
    # 540 steps (the demo: 60 epochs x 9) of 0.2 s: at most 540 * 0.2 * (1 - 1/2) = 54 s to save,
    # less than 10 x 60 s -> not worth a compile; 5.6 s steps: 1512 s >= 600 s -> measure
    assert not C.worth_measuring(540, 0.2)
    assert C.worth_measuring(540, 5.6)
    assert C.worth_measuring(1200, 1.0)  # 600 s exactly: the bound is inclusive
    assert not C.worth_measuring(1199, 1.0)
    d = C.decide("auto", planned=540, measured=C.Measurement(eager_step_s=0.2))
    assert d.compile is False and "54 s" in d.reason and "540 planned steps x 0.2 s" in d.reason


@pytest.mark.parametrize("cost, compiles", [(279.9, True), (280.0, True), (280.1, False)])
def test_measured_rule_compiles_when_the_saving_is_ten_times_the_compile(cost, compiles):
    # 2800 steps x (3.0 - 2.0) s = 2800 s saved; compile when 2800 >= 10 x cost
    d = C.decide("auto", planned=2800, measured=C.Measurement(3.0, 2.0, cost))
    assert d.compile is compiles
    assert d.planned_steps == 2800 and d.eager_step_s == 3.0 and d.compiled_step_s == 2.0 and d.compile_s == cost
    assert ("not compiling" in d.reason) is (not compiles)


def test_a_slower_compiled_step_never_compiles():
    assert C.decide("auto", planned=10 ** 7, measured=C.Measurement(1.0, 1.01, 0.0)).compile is False


def test_nothing_planned_never_compiles():
    assert C.decide("auto", planned=0, measured=C.Measurement(1.0, 0.1, 0.0)).compile is False


@pytest.mark.parametrize("n, b, drop", [(100, 32, True), (100, 32, False), (20, 32, True), (64, 32, True),
                                        (1, 1, True), (0, 8, False)])
def test_planned_steps_count_batches_as_the_loader_does(n, b, drop):
    class DS:
        def __len__(self):
            return n

    loader = BatchLoader(DS(), b, shuffle=True, drop_last=drop and n > b)
    assert C.planned_steps(n_samples=n, batch_size=b, epochs=7, drop_last=drop) == 7 * len(loader)


def test_demo_config_plans_its_schedule_and_never_compiles(monkeypatch):
    """The quick demo (config.yaml as shipped) stays eager: its planned work cannot pay back a
    compile, so not even a measuring compile is attempted."""
    from imbalance import builders as B
    from imbalance.config import compose, with_schema
    from imbalance.precision import make_precision

    def no_compile(*a, **k):
        raise AssertionError("the demo must not compile")

    monkeypatch.setattr(torch, "compile", no_compile)
    cfg = with_schema(compose([]))
    data = B.build_data(cfg)
    planned = B.planned_compile_steps(cfg, data)
    loader = B.make_loader(data.train, int(cfg.data.batch_size), torch.device("cpu"), cfg, train=True)
    assert planned == int(cfg.training.epochs) * len(loader)  # stage 2 is cRT on cached features: not counted
    model = B.build_model(cfg, data, torch.device("cpu"))
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    out, decision = B.compile_for_run(cfg, data, model, torch.device("cpu"), make_precision(torch.device("cpu"), False))
    assert out is model and decision.compile is False and decision.planned_steps == planned
    assert "could save at most" in decision.reason
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_stage2_through_the_backbone_is_planned_work(tiny):
    from imbalance import builders as B
    from imbalance.config import with_schema

    base = with_schema(tiny())
    data = B.build_data(base)
    s1 = C.planned_steps(n_samples=len(data.train), batch_size=int(base.data.batch_size),
                         epochs=int(base.training.epochs))
    assert B.planned_compile_steps(base, data) == s1  # cRT on cached features
    ft = with_schema(tiny("stage2.mode=finetune", "stage2.epochs=3"))
    s2 = C.planned_steps(n_samples=len(data.train), batch_size=int(ft.data.batch_size), epochs=3)
    assert B.planned_compile_steps(ft, data) == s1 + s2
    off = with_schema(tiny("stage2.enabled=false", "stage2.mode=finetune"))
    assert B.planned_compile_steps(off, data) == s1


def _tiny_model():
    from imbalance.models import create_model

    torch.manual_seed(0)
    return create_model("ConvNetADSB", 3, width=8, depth=2, dropout_rate=0.5)


def test_measure_leaves_the_model_and_the_random_streams_alone():
    model = _tiny_model()
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    m = C.measure(model, batch_shape=(4, 2, 64), device=torch.device("cpu"), compiled=False)
    assert m.eager_step_s > 0 and m.compiled_step_s is None and m.compile_s is None
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in model.parameters())


def test_compile_model_follows_the_measurement(monkeypatch):
    """auto: a measured saving >= 10 x the compile -> the run's model is compiled; otherwise the
    model comes back as it was; the decision goes through ``agree`` (rank 0's under torchrun)."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or ("compiled", m))
    monkeypatch.setattr(C, "configure_cache", lambda d=None: "/cache")
    model = _tiny_model()
    monkeypatch.setattr(C, "measure", lambda *a, **k: C.Measurement(2.0, 1.0, 10.0))
    agreed = []
    out, d = C.compile_model(model, "auto", planned=100, batch_shape=(4, 2, 64), device=torch.device("cpu"),
                             agree=lambda dec: agreed.append(dec) or dec)
    assert d.compile and out == ("compiled", model) and compiled == [model] and agreed == [d]
    assert d.cache_dir == "/cache"
    monkeypatch.setattr(C, "measure", lambda *a, **k: C.Measurement(2.0, 1.95, 10.0))
    out, d = C.compile_model(model, "auto", planned=100, batch_shape=(4, 2, 64), device=torch.device("cpu"))
    assert out is model and not d.compile and len(compiled) == 1

    def broken(*a, **k):
        raise RuntimeError("inductor: no C++ compiler")

    monkeypatch.setattr(C, "measure", broken)
    out, d = C.compile_model(model, "auto", planned=100, batch_shape=(4, 2, 64), device=torch.device("cpu"))
    assert out is model and not d.compile and "measuring failed" in d.reason
    out, d = C.compile_model(model, "false", planned=10 ** 9, batch_shape=(4, 2, 64), device=torch.device("cpu"))
    assert out is model and d.reason == "compile=false"


# ----------------------------------------------------------------------------- checkpoints
def test_strip_compile_prefix():
    t = torch.zeros(1)
    assert C.strip_compile_prefix({"_orig_mod.trunk.w": t, "_orig_mod.classifier.bias": t}) == {
        "trunk.w": t, "classifier.bias": t}
    plain = {"trunk.w": t}
    assert C.strip_compile_prefix(plain) is plain
    # DataParallel inside compile: module._orig_mod... keeps module.
    assert list(C.strip_compile_prefix({"_orig_mod.module.w": t})) == ["module.w"]


def test_load_checkpoint_accepts_weights_saved_from_a_compiled_module(tmp_path):
    from imbalance.checkpoint import load_checkpoint

    model = _tiny_model()
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": state, "epoch": 1}, tmp_path / "c.pt")
    fresh = _tiny_model()
    fresh.load_state_dict(load_checkpoint(tmp_path / "c.pt")["model"], strict=True)


def test_is_compiled_sees_through_wrappers():
    class Fake(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    net = nn.Linear(2, 2)
    assert not C.is_compiled(net) and not C.is_compiled(nn.DataParallel(net))
    assert C.is_compiled(Fake(net)) and C.is_compiled(nn.DataParallel(Fake(net)))


def test_unused_cache_dir_warns_when_compile_is_off(tiny):
    from imbalance.config import with_schema
    from imbalance.recipe import unused_user_keys, user_set_keys

    cfg = with_schema(tiny("compile=false", "compile_cache_dir=/tmp/x"))
    found = dict(unused_user_keys(cfg, user_set_keys(cfg, ["compile=false", "compile_cache_dir=/tmp/x"])))
    assert "compile_cache_dir" in found
    cfg = with_schema(tiny("compile_cache_dir=/tmp/x"))
    assert "compile_cache_dir" not in dict(unused_user_keys(cfg, user_set_keys(cfg, ["compile_cache_dir=/tmp/x"])))


# ----------------------------------------------------------------------------- data on the device
GIB = 2 ** 30


@pytest.mark.parametrize("setting, device, nbytes, free, expected", [
    ("auto", "cpu", 1, None, False),                 # on the CPU nothing changes
    (True, "cpu", 1, None, False),
    ("auto", "cuda:0", GIB, 4 * GIB, True),          # 1 GiB <= 25% of 4 GiB
    ("auto", "cuda:0", GIB + 1, 4 * GIB, False),
    ("false", "cuda:0", 1, 4 * GIB, False),
    ("true", "cuda:0", 100 * GIB, 4 * GIB, True),    # forced
    ("auto", "meta", 1, None, False),                # free memory unknown
    ("true", "meta", 1, None, True),
])
def test_on_device_rule(setting, device, nbytes, free, expected):
    keep, why = resolve_on_device(setting, torch.device(device), nbytes, free_bytes=free)
    assert keep is expected and why


def test_on_device_bad_value():
    with pytest.raises(ConfigError, match="data.on_device"):
        resolve_on_device("gpu", torch.device("cuda"), 1, free_bytes=1)


def _signals(n=37, c=2, length=24):
    from imbalance.data import ArraySignalDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, length, generator=g)
    y = torch.arange(n) % 3
    return ArraySignalDataset(x, y, normalize=False)


def test_dataset_nbytes():
    ds = _signals()
    assert dataset_nbytes(ds) == 37 * (2 * 24 * 4 + 8)


def test_resident_batches_equal_host_batches_with_augmentation():
    """The resident path (indices on the device, gather there, augmentation drawing on a generator of
    the device seeded as on the host) yields the same batches as the host path (checked on the CPU,
    where both exist)."""
    from imbalance.data import build_augmentation

    ds = _signals()
    aug = build_augmentation({"enabled": True, "p": 0.7, "time_shift": 5, "amplitude": [0.5, 1.5],
                              "noise_std": 0.1})
    res = DeviceResidentData(ds, torch.device("cpu"))
    assert len(res) == len(ds) and res.num_classes == ds.num_classes and (res.labels == ds.labels).all()
    host = BatchLoader(ds, 8, shuffle=True, seed=3, augment=aug, device=torch.device("cpu"), drop_last=True)
    dev = BatchLoader(res, 8, shuffle=True, seed=3, augment=aug, device=torch.device("cpu"), drop_last=True)
    assert dev.resident and not host.resident
    for epoch in (0, 1):
        host.set_epoch(epoch)
        dev.set_epoch(epoch)
        pairs = list(zip(host, dev))
        assert len(pairs) == len(host) == 4
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resident_loader_never_copies_batches(monkeypatch):
    """On a device (the meta device stands in for an accelerator) the data are copied once; every
    batch is indexed there: no per-batch ``.to(device)`` of data, no pinned staging."""
    ds = _signals()
    res = DeviceResidentData(ds, torch.device("meta"))
    assert res.x.device.type == "meta"
    calls = []
    real_to = torch.Tensor.to

    def spy(self, *a, **k):
        calls.append(tuple(self.shape))
        return real_to(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pytest.fail("pinned staging"))
    loader = BatchLoader(res, 8, shuffle=True, device=torch.device("meta"), pin_memory=True, drop_last=True)
    batches = list(loader)
    assert len(batches) == 4
    assert all(x.device.type == "meta" and x.shape == (8, 2, 24) and y.shape == (8,) for x, y in batches)
    assert calls == [(37,)]  # the epoch's indices, once


def test_place_data_keeps_the_cpu_bundle(tiny):
    from imbalance import builders as B
    from imbalance.config import with_schema

    cfg = with_schema(tiny("data.on_device=true"))
    data = B.build_data(cfg)
    assert B.place_data(cfg, data, torch.device("cpu")) is data


def test_place_data_wraps_train_and_val_on_an_accelerator(tiny, monkeypatch):
    from imbalance import builders as B
    from imbalance.config import with_schema

    cfg = with_schema(tiny("data.on_device=true"))
    data = B.build_data(cfg)
    placed = B.place_data(cfg, data, torch.device("meta"))
    assert isinstance(placed.train, DeviceResidentData) and isinstance(placed.val, DeviceResidentData)
    assert placed.test is data.test and placed.train.source is data.train
    assert (placed.train.labels == data.train.labels).all() and placed.train.x.device.type == "meta"
    loader = B.make_loader(placed.train, 16, torch.device("meta"), cfg, train=True)
    assert loader.resident


# ----------------------------------------------------------------------------- ReLU after the pool
def test_convnet_adsb_relu_after_pool_is_exact_and_keeps_the_state_dict():
    from imbalance.models import create_model

    torch.manual_seed(0)
    m = create_model("ConvNetADSB", 5, width=24, depth=6).double()
    ref = copy.deepcopy(m)
    keys = list(m.state_dict())
    assert keys[:3] == ["trunk.features.0.weight", "trunk.features.1.weight", "trunk.features.1.bias"]
    swaps = [i for i, j in enumerate(m.trunk.run_order) if i != j]
    assert swaps and all(isinstance(m.trunk.features[i], nn.ReLU) or
                         type(m.trunk.features[i]).__name__ == "SkipMaxPool1d" for i in swaps)
    x = torch.randn(6, 2, 700, dtype=torch.float64)

    def origin_order(net, x):  # conv - norm - ReLU - pool, as nn.Sequential runs it
        h = net.trunk.attention(net.trunk.features(x))
        return net.classifier(h.max(-1).values)

    m.eval()
    ref.eval()
    with torch.no_grad():
        assert torch.equal(m(x), origin_order(ref, x))
    m.train()
    ref.train()
    m.dropout.p = ref.dropout.p = 0.0
    m(x).pow(2).sum().backward()
    origin_order(ref, x).pow(2).sum().backward()
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_convnet_adsb_relu_after_pool_is_exact_under_bf16_autocast():
    from imbalance.models import create_model

    torch.manual_seed(0)
    m = create_model("ConvNetADSB", 5, width=16, depth=4).eval()
    x = torch.randn(4, 2, 512)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours = m(x)
        h = m.trunk.attention(m.trunk.features(x))  # conv - norm - ReLU - pool order
        ref = m.classifier(h.max(-1).values)
    assert ours.dtype == ref.dtype and torch.equal(ours, ref)
