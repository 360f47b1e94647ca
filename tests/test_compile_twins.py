"""Compile-on twins of the end-to-end paths (train, resume, eval, predict, stage 2 and 3,
checkpoint load): each runs with ``compile=true`` and is checked against its eager twin.

Slow: compiling costs a minute or more on a busy 2-core machine the first time; the twins share
one compile cache folder (``compile_cache_dir``), so later compiles come from it."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import interrupt_after, tiny_cfg

pytestmark = pytest.mark.slow

L = 256
TRAIN = ["training.epochs=2", "stage2.epochs=2", "data.batch_size=32", "model.width=8", "model.depth=2",
         "visualization.enabled=false", "scheduler.warmup_epochs=1", "num_threads=1",
         # no dropout: inductor draws its random masks from its own generator, so a compiled
         # dropout differs from the eager one by design and the twins would not compute the same thing
         "model.dropout=0.0",
         # stage 2 fine-tunes through the (compiled) network; stage 3 tau-norm + logit adjustment
         "stage2.mode=finetune", "stage3.mode=both"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("compile_cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from imbalance.synthetic import builtin_dataset, write_dataset

    d = tmp_path_factory.mktemp("twin_data")
    sets = builtin_dataset(num_classes=10, train_per_class=60, test_per_class=20, length=L)
    write_dataset(str(d / "train.mat"), *sets["train"], fmt="mat")
    write_dataset(str(d / "test.mat"), *sets["test"], fmt="mat")
    return {"train": d / "train.mat", "test": d / "test.mat", "dir": d}


def _cfg(files, *extra):
    from imbalance.config import compose

    return compose([*TRAIN, f"data.path_train={files['train']}", f"data.path_test={files['test']}", *extra])


@pytest.fixture(scope="module")
def twins(files, cache):
    """The same run eager and compiled (train, stage 2 fine-tuning, stage 3)."""
    from imbalance.pipeline import run

    out = {}
    for setting in ("false", "true"):
        rdir = files["dir"] / f"run_compile_{setting}"
        run(_cfg(files, f"compile={setting}", f"compile_cache_dir={cache}"), run_dir=rdir)
        out[setting] = rdir
    return out


def _results(rdir):
    return json.loads((Path(rdir) / "results" / "results.json").read_text())


def _rows(rdir):
    with open(Path(rdir) / "logs" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_stage2_and_stage3_compiled_match_the_eager_twin(twins):
    eager, comp = _results(twins["false"]), _results(twins["true"])
    assert comp["model_info"]["compile"]["compile"] is True and comp["model_info"]["compile"]["setting"] == "true"
    assert eager["model_info"]["compile"]["compile"] is False
    assert set(comp["metrics"]) == set(eager["metrics"]) == {"stage1", "stage2", "stage3", "final"}
    assert comp["calibration"]["stage3_mode"] == "both"
    re_, rc = _rows(twins["false"]), _rows(twins["true"])
    assert [(r["stage"], r["epoch"]) for r in re_] == [(r["stage"], r["epoch"]) for r in rc]
    # the same computation up to the rounding of fused kernels: the first epoch's training loss
    assert float(rc[0]["train_loss"]) == pytest.approx(float(re_[0]["train_loss"]), rel=1e-3)
    for stage in ("stage1", "final"):
        assert abs(comp["metrics"][stage]["overall"]["oa"] - eager["metrics"][stage]["overall"]["oa"]) <= 0.05


def test_checkpoints_of_a_compiled_run_load_without_compile(twins):
    from imbalance.checkpoint import load_checkpoint
    from imbalance.evaluate import load_trained_model
    from imbalance.models import create_model

    rdir = twins["true"]
    for name in ("stage1_last.pt", "stage1_best.pt", "stage2_last.pt", "final.pt"):
        raw = torch.load(rdir / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert not any("_orig_mod" in k for k in raw["model"]), name
    state = load_checkpoint(rdir / "checkpoints" / "stage1_last.pt")["model"]
    net = create_model("ConvNetADSB", 10, width=8, depth=2)
    net.load_state_dict(state, strict=True)
    model, info = load_trained_model(rdir)
    assert not hasattr(model, "_orig_mod") and info.num_classes == 10


def test_eval_of_a_compiled_run_with_compile_on(twins, files, tmp_path):
    from imbalance.config import compose
    from imbalance.pipeline import run

    outs = {}
    for setting in ("false", "true"):
        out = tmp_path / f"ev_{setting}"
        run(compose(["mode=eval", f"resume={twins['true']}", f"data.path_test={files['test']}",
                     "visualization.enabled=false", "num_threads=1", f"compile={setting}"]), run_dir=out)
        outs[setting] = _results(out)["metrics"]["final"]
    assert outs["true"] == outs["false"]
    final = _results(twins["true"])["metrics"]["final"]
    assert outs["true"]["overall"]["macc"] == pytest.approx(final["overall"]["macc"], abs=1e-9)


def test_predict_with_compile_matches_eager(twins, files, cache):
    from imbalance.predict import predict_file

    eager = predict_file(str(twins["true"]), str(files["test"]), precision="fp32")
    comp = predict_file(str(twins["true"]), str(files["test"]), precision="fp32", compile=True,
                        compile_cache_dir=cache)
    np.testing.assert_allclose(comp.prob, eager.prob, atol=1e-5)
    assert (comp.pred_index == eager.pred_index).mean() > 0.99


def test_resume_with_compile_on(tmp_path, monkeypatch, cache):
    """An interrupted compiled run resumed with compile on ends like the uninterrupted compiled run."""
    from imbalance.pipeline import run

    extra = ["compile=true", f"compile_cache_dir={cache}", "training.epochs=3", "stage2.epochs=2"]
    ref = tmp_path / "demo_20240101-000000-000001"
    run(tiny_cfg(*extra), run_dir=ref)
    rdir = tmp_path / "demo_20240101-000000-000002"
    interrupt_after(monkeypatch, 1)
    with pytest.raises(SystemExit):
        run(tiny_cfg(*extra), run_dir=rdir)
    monkeypatch.undo()
    run(tiny_cfg(f"resume={rdir}", "compile=true", f"compile_cache_dir={cache}"), run_dir=rdir)
    a, b = _results(ref), _results(rdir)
    assert b["resumed_from"]["epoch"] == 1 and b["model_info"]["compile"]["compile"] is True
    assert [r["epoch"] for r in _rows(ref)] == [r["epoch"] for r in _rows(rdir)]
    wa = torch.load(ref / "checkpoints" / "final.pt", weights_only=True)["model"]
    wb = torch.load(rdir / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4)
    assert b["metrics"]["final"]["overall"]["oa"] == pytest.approx(a["metrics"]["final"]["overall"]["oa"], abs=0.02)


def test_cache_settings_point_inductor_at_the_folder(tmp_path, monkeypatch):
    import os

    import torch._functorch.config as fc
    import torch._inductor.config as ic

    from imbalance.compilation import configure_cache, default_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "imbalance" / "torch_compile"
    path = configure_cache(tmp_path / "c")
    assert path.is_dir() and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(path.resolve())
    assert ic.fx_graph_cache is True and fc.enable_autograd_cache is True


def test_measuring_compiles_a_copy_and_leaves_the_model_alone(cache):
    import copy

    from imbalance.compilation import configure_cache, measure
    from imbalance.models import create_model

    configure_cache(cache)
    torch.manual_seed(0)
    model = create_model("ConvNetADSB", 3, width=8, depth=2)
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    m = measure(model, batch_shape=(8, 2, 64), device=torch.device("cpu"), eval_batch=16)
    assert m.eager_step_s > 0 and m.compiled_step_s > 0 and m.compile_s >= 0
    assert not hasattr(model, "_orig_mod") and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _bench(script, *args):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(root / "bench" / script), *args], cwd=root, capture_output=True,
                          text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_bench_speed_quick_prints_both_ratios(cache):
    import re

    out = _bench("bench_speed.py", "--quick", "--part", "epoch", "--cache-dir", cache)
    assert "CPU kind:" in out and "compile=auto" in out
    assert len(re.findall(r"speed-up base/ours: [0-9.]+x", out)) == 2


def test_bench_gpu_smoke_on_the_cpu(cache):
    out = _bench("bench_gpu.py", "--device", "cpu", "--quick", "--cache-dir", cache, "--skip", "6", "8")
    assert "| 1 | fp32, host data |" in out and "| 5 | fp16 + GradScaler, data on the device |" in out
    assert "| 7 | framework" in out
