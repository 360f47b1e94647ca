"""The training engine: schedules, early stopping, the batch loader, checkpoints."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from imbalance.checkpoint import StageCheckpointer
from imbalance.engine import (EarlyStopping, MetricsWriter, accuracy_and_macc, atomic_save, fit,
                              rng_state, set_rng_state)
from imbalance.loader import BatchLoader, TensorPairDataset
from imbalance.optim import EpochSchedule, create_optimizer
from imbalance.precision import make_precision


def _opt(lr=1.0, groups=1):
    params = [{"params": [nn.Parameter(torch.zeros(1))], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr)


@pytest.mark.parametrize("name", ["cosine", "step", "plateau", "cosine_warmup_restarts", "none"])
def test_warmup_never_runs_an_epoch_at_rate_zero(name):
    s = EpochSchedule(_opt(0.1), name, epochs=10, warmup_epochs=3, step_size=2)
    lrs = [s.start_epoch(e) for e in range(10)]
    assert min(lrs) > 0
    assert lrs[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    assert lrs[3] == pytest.approx(0.1)


def test_cosine_reaches_min_lr_only_after_the_last_epoch_and_groups_keep_ratio():
    s = EpochSchedule(_opt(1.0, groups=2), "cosine", epochs=5, warmup_epochs=0, min_lr=0.0)
    lrs = [s.start_epoch(e) for e in range(5)]
    assert lrs == pytest.approx([0.5 * (1 + np.cos(np.pi * e / 5)) for e in range(5)])
    assert s.optimizer.param_groups[1]["lr"] == pytest.approx(2 * lrs[-1])


def test_step_and_plateau_schedules():
    s = EpochSchedule(_opt(1.0), "step", epochs=10, step_size=3, gamma=0.5)
    assert [s.start_epoch(e) for e in range(7)] == pytest.approx([1, 1, 1, .5, .5, .5, .25])
    p = EpochSchedule(_opt(1.0), "plateau", epochs=10, plateau_patience=1, plateau_factor=0.1, plateau_mode="max")
    for e, v in enumerate([0.5, 0.6, 0.6, 0.6]):
        p.start_epoch(e)
        p.end_epoch(v)
    assert p.start_epoch(4) == pytest.approx(0.1)


def test_early_stopping_modes_and_patience():
    es = EarlyStopping(monitor="val_loss", mode="min", patience=2)
    assert es.step(1.0, 1) and not es.step(1.2, 2) and not es.should_stop
    assert not es.step(float("nan"), 3) and es.should_stop and es.best_epoch == 1


def test_accuracy_and_macc_match_sklearn():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))
    acc, macc = accuracy_and_macc(torch.tensor(p), torch.tensor(y), 5)
    assert acc == pytest.approx(accuracy_score(y, p))
    assert macc == pytest.approx(balanced_accuracy_score(y, p))


class _SpySampler:
    def __init__(self, n):
        self.n, self.epochs = n, []
        self.epoch = 0

    def set_epoch(self, e):
        self.epoch = e
        self.epochs.append(e)

    def epoch_indices(self):
        return torch.full((self.n,), self.epoch, dtype=torch.long)

    def __len__(self):
        return self.n


def test_loader_takes_the_epoch_from_the_sampler():
    ds = TensorPairDataset(torch.arange(10.0)[:, None], torch.arange(10))
    sampler = _SpySampler(6)
    loader = BatchLoader(ds, 4, sampler=sampler, shuffle=True)
    loader.set_epoch(3)
    ys = torch.cat([y for _, y in loader])
    assert sampler.epochs == [3] and ys.tolist() == [3] * 6 and len(loader) == 2


def test_loader_shuffle_is_a_function_of_seed_and_epoch_and_drop_last():
    ds = TensorPairDataset(torch.randn(10, 1, 4), torch.arange(10))
    a = BatchLoader(ds, 3, shuffle=True, seed=1, drop_last=True)
    b = BatchLoader(ds, 3, shuffle=True, seed=1, drop_last=True)
    a.set_epoch(2), b.set_epoch(2)
    ya, yb = [y for _, y in a], [y for _, y in b]
    assert len(ya) == 3 and all(torch.equal(u, v) for u, v in zip(ya, yb))
    b.set_epoch(3)
    assert not all(torch.equal(u, v) for u, v in zip(ya, [y for _, y in b]))
    shards = [BatchLoader(ds, 100, num_replicas=2, rank=r).epoch_indices() for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))


def test_fit_logs_the_rate_each_epoch_used_and_restores_the_best(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = (x[:, 0] > 0).long()
    ds = TensorPairDataset(x, y)
    model = nn.Linear(3, 2)
    opt = create_optimizer("SGD", model.parameters(), lr=0.5)
    sched = EpochSchedule(opt, "cosine", epochs=4, warmup_epochs=2)
    used = []
    orig_step = opt.step

    def step(*a, **k):
        used.append(opt.param_groups[0]["lr"])
        return orig_step(*a, **k)

    opt.step = step
    writer = MetricsWriter(tmp_path / "metrics.csv")
    es = EarlyStopping(monitor="val_loss", mode="min", patience=10)
    res = fit(model, stage=1, train_loader=BatchLoader(ds, 64, shuffle=True), val_loader=BatchLoader(ds, 64),
              loss_fn=nn.CrossEntropyLoss(), optimizer=opt, schedule=sched, epochs=4, num_classes=2,
              early_stopping=es, precision=make_precision(torch.device("cpu"), False), metrics=writer,
              checkpointer=StageCheckpointer(tmp_path / "ck", 1))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [float(r["lr"]) for r in rows] == pytest.approx(used, rel=1e-5)
    assert res.epochs_run == 4 and (tmp_path / "ck" / "stage1_best.pt").exists()
    best = torch.load(tmp_path / "ck" / "stage1_best.pt", weights_only=True)
    assert all(torch.equal(best["model"][k], v) for k, v in model.state_dict().items())


def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    atomic_save({"a": torch.ones(2)}, path)

    def boom(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))


def test_rng_state_round_trips_and_loads_weights_only(tmp_path):
    import random

    state = rng_state()
    atomic_save({"rng": state}, tmp_path / "r.pt")
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
