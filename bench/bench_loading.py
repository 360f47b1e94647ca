"""Benchmark of the data layer's batch loading.

1. Batch assembly: one epoch of shuffled batches with augmentation (time shift, amplitude,
   noise), built
   - baseline: per-sample ``ds[i]`` (per-sample transform) + default collate in a
     ``torch.utils.data.DataLoader`` (num_workers=0);
   - ours: ``ds.get_batch(idx)`` (one gather from the contiguous in-memory tensor) + the same
     augmentation applied once to the batch (vectorised).
   Target (performance issue): ours at least 5x faster.
2. Lazy HDF5 (``in_memory=False``) vs in memory: time to read one epoch of shuffled batches
   with ``get_batch`` (OS cache warm: the file was just written and is read once before
   timing), and the time of a training epoch of a small CNN fed by each.  Target: the
   training epoch within 1.3x; peak extra memory of the lazy reader bounded by a few batches.

    python bench/bench_loading.py [--n 10000] [--length 1024] [--batch 256] [--repeats 5]

Prints the median of ``--repeats`` runs of each and the ratios.  One CPU thread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import tracemalloc

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from imbalance.data import ADSBSignalDataset, ArraySignalDataset, build_augmentation  # noqa: E402

AUG = {"enabled": True, "time_shift": 32, "amplitude": [0.8, 1.2], "noise_std": 0.05, "p": 0.5}


def median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def epoch_batches(n: int, batch: int, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    return [perm[i:i + batch] for i in range(0, n, batch)]


def small_cnn(c: int, k: int) -> nn.Module:
    layers, c_in = [], c
    for _ in range(4):
        layers += [nn.Conv1d(c_in, 32, 7, padding=3), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2)]
        c_in = 32
    return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, k))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-n", type=int, default=4096, help="samples in the training-epoch comparison")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.n, 2, a.length), dtype=np.float32)
    y = rng.integers(0, 10, a.n)

    # ---- 1. batch assembly ---------------------------------------------------------------
    aug = build_augmentation(AUG)
    ds_baseline = ArraySignalDataset(x, y, transform=aug)
    ds_ours = ArraySignalDataset(x, y)
    g = torch.Generator().manual_seed(0)

    def baseline():
        for xb, yb in DataLoader(ds_baseline, batch_size=a.batch, shuffle=True, num_workers=0):
            pass

    def ours():
        for idx in epoch_batches(a.n, a.batch, g):
            xb, yb = ds_ours.get_batch(idx)
            xb = aug(xb, generator=g)

    t_base = median_time(baseline, a.repeats)
    t_ours = median_time(ours, a.repeats)
    print(f"[batch assembly] N={a.n} L={a.length} batch={a.batch}, augmentation {AUG}")
    print(f"  per-sample __getitem__ + collate (DataLoader): {t_base * 1e3:8.1f} ms/epoch")
    print(f"  get_batch gather + batch augmentation (ours):  {t_ours * 1e3:8.1f} ms/epoch")
    print(f"  speed-up: {t_base / t_ours:.1f}x (target >= 5x)")

    # ---- 2. lazy HDF5 vs in memory ------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("X", data=x)
            f.create_dataset("Y", data=y)
        mem = ADSBSignalDataset(path, in_memory=True)
        lazy = ADSBSignalDataset(path, in_memory=False)
        for idx in epoch_batches(a.n, a.batch, g):   # warm the OS cache
            lazy.get_batch(idx)

        def read_epoch(ds):
            def fn():
                for idx in epoch_batches(a.n, a.batch, g):
                    ds.get_batch(idx)
            return fn

        t_mem = median_time(read_epoch(mem), a.repeats)
        t_lazy = median_time(read_epoch(lazy), a.repeats)
        tracemalloc.start()
        read_epoch(lazy)()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        batch_bytes = a.batch * 2 * a.length * 4
        print(f"[lazy read] HDF5 contiguous (N, 2, L) float32, {x.nbytes / 2**20:.0f} MiB, shuffled batches")
        print(f"  in memory: {t_mem * 1e3:8.1f} ms/epoch   lazy: {t_lazy * 1e3:8.1f} ms/epoch   "
              f"ratio {t_lazy / t_mem:.2f}x (read only)")
        print(f"  lazy epoch peak traced memory {peak / 2**20:.1f} MiB = {peak / batch_bytes:.1f} batches "
              f"(data {x.nbytes / 2**20:.0f} MiB)")

        # training epoch: small CNN, forward + backward + Adam step per batch
        n_tr = min(a.train_n, a.n)
        sub_mem, sub_lazy = mem.subset(np.arange(n_tr)), lazy.subset(np.arange(n_tr))
        model = small_cnn(2, 10)
        opt = torch.optim.Adam(model.parameters(), 1e-3)

        def train_epoch(ds):
            def fn():
                for idx in epoch_batches(n_tr, a.batch, g):
                    xb, yb = ds.get_batch(idx)
                    xb = aug(xb, generator=g)
                    loss = nn.functional.cross_entropy(model(xb), yb)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            return fn

        reps = max(1, a.repeats // 2)
        t_tm = median_time(train_epoch(sub_mem), reps)
        t_tl = median_time(train_epoch(sub_lazy), reps)
        print(f"[training epoch] small CNN (4x32 conv), {n_tr} samples, batch {a.batch}")
        print(f"  in memory: {t_tm:6.2f} s   lazy: {t_tl:6.2f} s   ratio {t_tl / t_tm:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
