"""Exact resume: an interrupted run continued from its checkpoints ends exactly as an
uninterrupted one (CPU, built-in data), in its own folder, with no duplicate metrics rows."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, interrupt_after, tiny_cfg

# Small enough for seconds, big enough that the model learns something and that dropout, the
# progressive sampler and the schedule all matter for the final weights.
RES = ["training.epochs=4", "stage2.epochs=3", "data.batch_size=16", "model.width=16", "training.lr=1e-2",
       "data.synthetic.difficulty=0.2", "data.imbalance_ratio=10", "sampling.name=progressive_power",
       "scheduler.warmup_epochs=1"]
STAMP = "20240101-000000-0000{:02d}"


def _results(rdir):
    return json.loads((Path(rdir) / "results" / "results.json").read_text())


def _rows(rdir):
    """metrics.csv without the wall-clock column."""
    with open(Path(rdir) / "logs" / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "epoch_time"} for r in csv.DictReader(fh)]


def _final_weights(rdir):
    return torch.load(Path(rdir) / "checkpoints" / "final.pt", weights_only=True)["model"]


def _assert_same_run(a, b):
    ra, rb = _results(a), _results(b)
    assert ra["metrics"] == rb["metrics"]
    assert ra["val_metrics"] == rb["val_metrics"]
    assert ra["stages"] == rb["stages"]
    assert ra["config"]["training"] == rb["config"]["training"]
    assert _rows(a) == _rows(b)
    wa, wb = _final_weights(a), _final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per extra-override tuple."""
    from imbalance.pipeline import run

    root = tmp_path_factory.mktemp("ref")
    cache = {}

    def get(*extra):
        if extra not in cache:
            rdir = root / f"demo_{STAMP.format(len(cache))}"
            run(tiny_cfg(*RES, *extra), run_dir=rdir)
            cache[extra] = rdir
        return cache[extra]

    return get


@pytest.mark.parametrize("kill_after, extra", [
    (2, ()),                              # stage 1, epoch 3 of 4
    (5, ("stage2.mode=finetune",)),       # stage 2 (whole network, dropout on), epoch 2 of 3
    (4, ("stage2.feature_cache=true",)),  # stage 1 finished, stage 2 not started (cached cRT)
])
def test_ctrl_c_then_resume_ends_bit_for_bit_like_an_uninterrupted_run(tmp_path, monkeypatch, reference,
                                                                       kill_after, extra):
    from imbalance.pipeline import run

    ref = reference(*extra)
    rdir = tmp_path / f"demo_{STAMP.format(1)}"
    interrupt_after(monkeypatch, kill_after)
    with pytest.raises(SystemExit) as stop:
        run(tiny_cfg(*RES, *extra), run_dir=rdir)
    assert stop.value.code == 130
    assert not (rdir / "results" / "results.json").exists()
    log_text = (rdir / "logs" / "training.log").read_text()
    assert "resume=" in log_text and "interrupted" in log_text
    assert len(_rows(rdir)) == kill_after

    monkeypatch.undo()
    # The resume command names only the run: the rest of the config comes from the checkpoint.
    run(tiny_cfg(f"resume={rdir}"), run_dir=rdir)
    _assert_same_run(ref, rdir)
    log_text = (rdir / "logs" / "training.log").read_text()
    assert "interrupted" in log_text and "resuming from" in log_text  # one log, appended
    assert _results(rdir)["resumed_from"]["epoch"] >= 1


def test_rows_written_after_the_checkpoint_are_replaced_not_duplicated(tmp_path, monkeypatch, reference):
    """Killed between writing epoch 3's metrics row and its checkpoint: resuming from epoch 2
    rewrites row 3 once."""
    from imbalance.pipeline import run

    rdir = tmp_path / f"demo_{STAMP.format(1)}"
    interrupt_after(monkeypatch, 3)
    with pytest.raises(SystemExit):
        run(tiny_cfg(*RES), run_dir=rdir)
    monkeypatch.undo()
    prev = rdir / "checkpoints" / "stage1_last.prev.pt"
    assert torch.load(prev, weights_only=True)["epoch"] == 2 and len(_rows(rdir)) == 3
    run(tiny_cfg(f"resume={prev}"), run_dir=rdir)
    rows = _rows(rdir)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("1", "1"), ("1", "2"), ("1", "3"), ("1", "4"),
                                                        ("2", "1"), ("2", "2"), ("2", "3")]
    _assert_same_run(reference(), rdir)


def test_a_truncated_checkpoint_is_detected_and_the_previous_one_used(tmp_path, monkeypatch, reference):
    from imbalance.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
    from imbalance.pipeline import run

    rdir = tmp_path / f"demo_{STAMP.format(1)}"
    interrupt_after(monkeypatch, 3)
    with pytest.raises(SystemExit):
        run(tiny_cfg(*RES), run_dir=rdir)
    monkeypatch.undo()
    last = rdir / "checkpoints" / "stage1_last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # e.g. a copy that ran out of disk
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(last)
    path, state = latest_checkpoint(rdir, notes=[])
    assert path.name == "stage1_last.prev.pt" and state["epoch"] == 2
    run(tiny_cfg(f"resume={rdir}"), run_dir=rdir)
    assert "damaged" in (rdir / "logs" / "training.log").read_text()
    _assert_same_run(reference(), rdir)


def test_checkpoints_hold_the_whole_state_and_load_weights_only(reference):
    ck = torch.load(reference() / "checkpoints" / "stage1_last.pt", weights_only=True)
    for key in ("model", "optimizer", "schedule", "early_stopping", "rng", "scaler", "sampler_epoch",
                "loss_epoch", "stage", "epoch", "config", "completed"):
        assert key in ck, key
    assert ck["stage"] == 1 and ck["epoch"] == 4 and ck["sampler_epoch"] == 3 and ck["loss_epoch"] == 3
    assert isinstance(ck["rng"]["torch"], torch.Tensor) and isinstance(ck["rng"]["python"], list)
    assert ck["config"]["training"]["epochs"] == 4
    ck2 = torch.load(reference() / "checkpoints" / "stage2_last.pt", weights_only=True)
    assert ck2["previous_stages"]["stage1"] == _results(reference())["stages"]["stage1"]
    assert ck2["global_epoch"] == 4 + 3


def _fake_run(root, name, *, status=None, mtime=0.0):
    d = root / name
    (d / "checkpoints").mkdir(parents=True)
    ck = d / "checkpoints" / "stage1_last.pt"
    ck.write_bytes(b"x")
    os.utime(ck, (mtime, mtime))
    if status:
        (d / "results").mkdir()
        (d / "results" / "results.json").write_text(json.dumps({"status": status}))
    return d.resolve()


def test_resume_auto_picks_the_most_recent_unfinished_run_of_the_exp_name(tmp_path):
    from imbalance.checkpoint import find_unfinished_run

    old = _fake_run(tmp_path, "demo_20240101-000000-000001", mtime=1000)
    new = _fake_run(tmp_path, "demo_20240102-000000-000001", mtime=2000)
    _fake_run(tmp_path, "demo_20240103-000000-000001", status="completed", mtime=3000)  # finished
    _fake_run(tmp_path, "demo_x_20240104-000000-000001", mtime=4000)  # another exp_name
    _fake_run(tmp_path, "demo_20240105-000000-000001", mtime=5000).joinpath(
        "checkpoints", "stage1_last.pt").unlink()  # nothing to resume from
    (tmp_path / "demo_latest").symlink_to("demo_20240101-000000-000001")
    assert find_unfinished_run(tmp_path, "demo") == new
    assert find_unfinished_run(tmp_path, "demo", exclude=[new]) == old
    assert find_unfinished_run(tmp_path, "other") is None


def test_resume_auto_without_an_unfinished_run_starts_a_new_one(tmp_path):
    from imbalance.pipeline import run

    rdir = tmp_path / f"demo_{STAMP.format(1)}"
    run(tiny_cfg("resume=auto", "stage2.enabled=false", "training.epochs=1"), run_dir=rdir)
    assert _results(rdir)["status"] == "completed" and "resumed_from" not in _results(rdir)
    assert "no unfinished run" in (rdir / "logs" / "training.log").read_text()


def test_resuming_a_finished_run_or_a_missing_path_is_one_clear_error(tmp_path, reference):
    from imbalance.errors import UserError
    from imbalance.pipeline import run

    for value, message in ((reference(), "finished"), (tmp_path / "nope", "no such run folder"),
                           (reference() / "checkpoints" / "final.pt", "not a training checkpoint")):
        with pytest.raises(UserError, match=message) as err:
            run(tiny_cfg(f"resume={value}"), run_dir=tmp_path / "new")
        assert "\n" not in str(err.value)


def test_a_nonfinite_loss_stops_with_its_location_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import imbalance.builders as B
    import imbalance.pipeline as P
    from imbalance.engine import NonFiniteLossError

    orig = B.build_loss

    def poisoned(*a, **k):
        loss = orig(*a, **k)
        calls = {"n": 0}
        forward = loss.forward

        def f(logits, targets):
            out = forward(logits, targets)
            if loss.training and logits.requires_grad:
                calls["n"] += 1
                if calls["n"] == 6:  # epoch 2 (4 batches per epoch), batch 2
                    return out * float("nan")
            return out

        loss.forward = f
        return loss

    monkeypatch.setattr(B, "build_loss", poisoned)
    rdir = tmp_path / "r"
    with pytest.raises(NonFiniteLossError) as err:
        P.run(tiny_cfg("training.epochs=3", "stage2.enabled=false", "data.imbalance_ratio=50"), run_dir=rdir)
    msg = str(err.value)
    assert "stage 1, epoch 2, batch 2" in msg and "stage1_last.pt (epoch 1)" in msg and "\n" not in msg
    ck = torch.load(rdir / "checkpoints" / "stage1_last.pt", weights_only=True)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())

    # opting in: the bad batch is skipped and the run completes
    rdir2 = tmp_path / "r2"
    P.run(tiny_cfg("training.epochs=3", "stage2.enabled=false", "data.imbalance_ratio=50",
                   "training.skip_nonfinite=true"), run_dir=rdir2)
    assert _results(rdir2)["status"] == "completed"
    assert "non-finite loss nan skipped" in (rdir2 / "logs" / "training.log").read_text()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_auto_from_the_command_line(tmp_path, reference):
    """The real thing: ``python main.py`` killed with SIGKILL in epoch 3, then
    ``python main.py resume=auto``: same folder, same final metrics and weights."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "tests" / "kill_after.py"), "2", *TINY, *RES]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    runs = [d for d in (tmp_path / "experiments").iterdir() if not d.is_symlink()]
    assert len(runs) == 1
    rdir = runs[0]
    assert torch.load(rdir / "checkpoints" / "stage1_last.pt", weights_only=True)["epoch"] == 2

    p = subprocess.run([sys.executable, str(ROOT / "main.py"), "resume=auto", "num_threads=1"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    runs = [d for d in (tmp_path / "experiments").iterdir() if not d.is_symlink()]
    assert runs == [rdir]  # the folder Hydra made for the resume command was removed
    assert (tmp_path / "experiments" / "demo_latest").resolve() == rdir.resolve()
    _assert_same_run(reference(), rdir)
