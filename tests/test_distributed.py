"""DistributedDataParallel on the CPU (gloo): sharding that keeps a single process's batches,
gathered evaluation, and 2-process runs equal to 1-process runs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT, TINY, tiny_cfg
from imbalance.loader import BatchLoader, TensorPairDataset
from imbalance.samplers import make_sampler


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method", ["none", "class_balanced", "progressive_power"])
def test_rank_shards_together_are_the_single_process_batches(method):
    """Rank r's b-th batch of B/n samples, over all ranks, is the b-th batch of B samples of one
    process: DDP's averaged gradient is the single-process gradient (for layers that do not
    mix samples), and every sampler keeps its exact class distribution."""
    labels = np.repeat(np.arange(4), [40, 12, 6, 2])  # 60 samples
    ds = TensorPairDataset(torch.arange(60.0)[:, None], torch.as_tensor(labels))
    B, n = 12, 3

    def loader(replicas, rank):
        s = make_sampler(labels, method, total_epochs=5, seed=7, num_replicas=replicas, rank=rank)
        return BatchLoader(ds, B // replicas, shuffle=True, sampler=s, seed=7, num_replicas=replicas,
                           rank=rank, drop_last=True)

    for epoch in (0, 3):
        single = loader(1, 0)
        single.set_epoch(epoch)
        ranks = [loader(n, r) for r in range(n)]
        for ld in ranks:
            ld.set_epoch(epoch)
        assert all(len(ld) == len(single) for ld in ranks)
        for b, (_, y1) in enumerate(single):
            parts = [list(ld)[b][0][:, 0].long() for ld in ranks]
            union = torch.cat(parts).sort().values
            x1 = torch.as_tensor(list(single)[b][0][:, 0]).long().sort().values
            assert torch.equal(union, x1), (epoch, b)


def test_evaluation_shards_are_contiguous_unpadded_blocks():
    ds = TensorPairDataset(torch.arange(23.0)[:, None], torch.zeros(23, dtype=torch.long))
    blocks = [BatchLoader(ds, 4, num_replicas=3, rank=r, even_shards=False) for r in range(3)]
    assert all(b.is_eval_shard for b in blocks)
    got = torch.cat([x[:, 0] for b in blocks for x, _ in b])
    assert torch.equal(got, torch.arange(23.0))  # every sample once, in order
    assert sorted(b._num_indices() for b in blocks) == [7, 8, 8]


# --------------------------------------------------------------------------------------------
# engine.fit under a real 2-process gloo group vs one process
# --------------------------------------------------------------------------------------------
def _train_linear(world: int, rank: int):
    from imbalance import distributed as D
    from imbalance.engine import EarlyStopping, fit, predict
    from imbalance.optim import EpochSchedule
    from imbalance.precision import make_precision

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    xv = torch.randn(31, 5, generator=g)
    yv = (xv[:, 0] + 0.5 * xv[:, 1] > 0).long() + (xv[:, 2] > 1).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    model = D.wrap_ddp(model, torch.device("cpu"))
    sampler = make_sampler(y.numpy(), "progressive_power", alpha_start=1.0, alpha_end=0.0, total_epochs=4, seed=3,
                           num_replicas=world, rank=rank)
    train = BatchLoader(TensorPairDataset(x, y), 16 // world, sampler=sampler, num_replicas=world, rank=rank,
                        drop_last=True)
    val = BatchLoader(TensorPairDataset(xv, yv), 5, num_replicas=world, rank=rank, even_shards=False)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    res = fit(model, stage=1, train_loader=train, val_loader=val, loss_fn=nn.CrossEntropyLoss(), optimizer=opt,
              schedule=EpochSchedule(opt, "cosine", epochs=4), epochs=4, num_classes=3,
              early_stopping=EarlyStopping(monitor="val_loss", mode="min", patience=10),
              precision=make_precision(torch.device("cpu"), False), grad_clip=1.0)
    out = predict(model, val)
    net = model.module if hasattr(model, "module") else model
    return {"state": {k: v.clone() for k, v in net.state_dict().items()}, "history": res.history,
            "logits": out["logits"], "labels": out["labels"]}


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from imbalance import distributed as D

    D.init_distributed("cpu")
    try:
        result = _train_linear(world, rank)
        torch.save(result, f"{out}.{rank}")
    finally:
        D.cleanup()


def test_two_gloo_processes_train_what_one_process_trains(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path / "r")), nprocs=2, join=True,
                       start_method="fork")
    single = _train_linear(1, 0)
    for rank in range(2):
        got = torch.load(tmp_path / f"r.{rank}", weights_only=False)
        # gathered validation predictions: every sample once, in dataset order, on every rank
        assert torch.equal(got["labels"], single["labels"])
        torch.testing.assert_close(got["logits"], single["logits"], rtol=1e-4, atol=1e-5)
        for k, v in single["state"].items():
            torch.testing.assert_close(got["state"][k], v, rtol=1e-4, atol=1e-5)
        for a, b in zip(got["history"], single["history"]):
            assert a["val_acc"] == b["val_acc"] and a["val_macc"] == b["val_macc"]
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


# --------------------------------------------------------------------------------------------
# The command line under torchrun
# --------------------------------------------------------------------------------------------
# 132 training samples (imbalance_ratio=50): an even count, so that the sampler's padded global
# draw equals a single process's draw. GroupNorm and no dropout: BatchNorm statistics over each
# rank's half batch and per-rank dropout masks are the only intended differences of DDP.
DDP_OVERRIDES = ["model.norm_kind=gn", "model.dropout=0", "data.imbalance_ratio=50", "stage2.feature_cache=false",
                 "sampling.name=progressive_power", "stage3.mode=tau_norm"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    from imbalance.pipeline import run

    ref = tmp_path / "single"
    run(tiny_cfg(*DDP_OVERRIDES), run_dir=ref)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(ROOT / "main.py"), *TINY, *DDP_OVERRIDES]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    runs = [d for d in (tmp_path / "experiments").iterdir() if not d.is_symlink()]
    assert len(runs) == 1  # one shared run folder (rank 1's Hydra folder removed)
    rdir = runs[0]
    a = json.loads((ref / "results" / "results.json").read_text())
    b = json.loads((rdir / "results" / "results.json").read_text())
    assert b["distributed"] == {"world_size": 2, "backend": "gloo"}
    for stage in ("stage1", "stage2", "stage3", "final"):
        for key in ("oa", "macc", "macro_f1"):
            assert b["metrics"][stage]["overall"][key] == pytest.approx(a["metrics"][stage]["overall"][key], abs=0.011)
        assert b["metrics"][stage]["overall"]["nll"] == pytest.approx(a["metrics"][stage]["overall"]["nll"], rel=1e-3)
    assert np.array(b["confusion_matrix"]).sum() == 200  # the whole test set, not rank 0's shard
    rows = (rdir / "logs" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 + 2  # header + one row per epoch and stage, written once
    wa = torch.load(ref / "checkpoints" / "final.pt", weights_only=True)["model"]
    wb = torch.load(rdir / "checkpoints" / "final.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4)
