"""Mixed precision, DataParallel without GPUs, gradient accumulation."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from conftest import tiny_cfg
from imbalance import precision as prec
from imbalance.engine import train_one_epoch
from imbalance.loader import BatchLoader, TensorPairDataset


def _results(rdir):
    return json.loads((rdir / "results" / "results.json").read_text())


def test_cpu_amp_is_bf16_autocast_with_float32_losses(tmp_path, monkeypatch):
    import imbalance.builders as B
    import imbalance.pipeline as P

    seen = {"model": set(), "loss": set()}
    build_model, build_loss = B.build_model, B.build_loss

    def model_spy(*a, **k):
        m = build_model(*a, **k)
        m.register_forward_hook(lambda mod, inp, out: seen["model"].add(out.dtype) if mod.training else None)
        return m

    def loss_spy(*a, **k):
        loss = build_loss(*a, **k)
        loss.register_forward_pre_hook(lambda mod, inp: seen["loss"].add(inp[0].dtype))
        return loss

    monkeypatch.setattr(B, "build_model", model_spy)
    monkeypatch.setattr(B, "build_loss", loss_spy)
    rdir = tmp_path / "amp"
    P.run(tiny_cfg("amp=true", "stage2.feature_cache=false"), run_dir=rdir)
    res = _results(rdir)
    native = prec.cpu_has_native_bf16()
    assert res["precision"] == ("bf16" if native else "fp32")
    assert seen["model"] == ({torch.bfloat16} if native else {torch.float32})
    assert seen["loss"] == {torch.float32}  # margins and log-priors never see bf16
    f = res["metrics"]["final"]["overall"]
    assert 0.0 <= f["oa"] <= 1.0 and f["nll"] == pytest.approx(f["nll"])  # finite
    ck = torch.load(rdir / "checkpoints" / "stage1_last.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in ck["model"].values() if v.is_floating_point())


def test_make_precision_choices(monkeypatch):
    cpu = torch.device("cpu")
    assert prec.make_precision(cpu, False).name == "fp32"
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    p = prec.make_precision(cpu, True)
    assert p.name == "bf16" and p.scaler is None
    with p.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert prec.make_precision(cpu, True, "fp16").name == "bf16"  # fp16 autocast is not for CPUs
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    assert prec.make_precision(cpu, True).name == "fp32"  # emulated bf16 would be slower


def _linear_problem(n=40, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    model = nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, k))  # no BatchNorm, no dropout
    return TensorPairDataset(x, y), model


@pytest.mark.parametrize("grad_clip", [None, 0.05])
def test_accumulation_equals_one_large_batch(grad_clip):
    """k micro-batches of B then one step == one batch of k*B (the loader's order does not depend
    on the batch size). 40 samples, B=8, k=3: groups of 24 and 16 samples, as batches of 24."""
    ds, model = _linear_problem()
    fp32 = prec.make_precision(torch.device("cpu"), False)
    states = []
    for bs, k in ((8, 3), (24, 1)):
        torch.manual_seed(1)
        m = _linear_problem()[1]
        m.load_state_dict(model.state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9)
        loader = BatchLoader(ds, bs, shuffle=True, seed=3)
        for epoch in range(2):
            loader.set_epoch(epoch)
            train_one_epoch(m, loader, nn.CrossEntropyLoss(), opt, precision=fp32, accumulation_steps=k,
                            grad_clip=grad_clip)
        states.append(m.state_dict())
    moved = any(not torch.allclose(states[1][k], model.state_dict()[k]) for k in states[1])
    assert moved
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-5, atol=1e-6)


def test_accumulation_counts_optimizer_steps():
    ds, model = _linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    orig = opt.step
    opt.step = lambda *a, **k: (steps.append(1), orig(*a, **k))[1]
    train_one_epoch(model, BatchLoader(ds, 8), nn.CrossEntropyLoss(), opt,
                    precision=prec.make_precision(torch.device("cpu"), False), accumulation_steps=3)
    assert len(steps) == 2  # 5 batches: steps after batch 3 and after batch 5


def test_dataparallel_path_without_gpus_trains_the_same_model(tmp_path, monkeypatch):
    """The ``gpus: "0,1"`` code path (DataParallel wrap, unwrap for checkpoints, stage 2 and
    calibration through the wrapper) on a CPU, where DataParallel runs the module itself."""
    import imbalance.engine as engine
    import imbalance.pipeline as P

    over = ("stage3.mode=tau_norm", "stage2.feature_cache=false", "data.synthetic.difficulty=0.2", "training.lr=1e-2",
            "data.batch_size=16", "model.width=16", "model.norm_kind=bn")
    plain = tmp_path / "plain"
    P.run(tiny_cfg(*over), run_dir=plain)
    wrapped = []
    orig = engine.train_one_epoch

    def spy(model, *a, **k):
        wrapped.append(type(model).__name__)
        return orig(model, *a, **k)

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    monkeypatch.setattr(P, "select_device", lambda name, gpus, *a: (torch.device("cpu"), [0, 1]))
    dp = tmp_path / "dp"
    P.run(tiny_cfg(*over, "gpus='0,1'"), run_dir=dp)
    assert wrapped and set(wrapped) == {"DataParallel"}
    assert _results(dp)["metrics"] == _results(plain)["metrics"]
    sd = torch.load(dp / "checkpoints" / "final.pt", weights_only=True)["model"]
    ref = torch.load(plain / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in sd) and all(torch.equal(sd[k], ref[k]) for k in ref)


def test_gpus_on_a_cpu_machine_do_not_wrap_and_warn(monkeypatch):
    from imbalance.errors import ConfigError
    from imbalance.runtime import select_device

    messages = []
    monkeypatch.setattr(logging.getLogger("imbalance.runtime"), "warning",
                        lambda msg, *a: messages.append(msg % a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto", "0,1") == (torch.device("cpu"), [])
    assert any("gpus=0,1 is ignored" in m for m in messages)
    assert select_device("cuda", "0,1,2,3") == (torch.device("cpu"), [])
    assert select_device("cpu", "0") == (torch.device("cpu"), [])
    for bad in ("a,b", "0,0", "-1"):
        with pytest.raises(ConfigError, match="gpus="):
            select_device("cpu", bad)
