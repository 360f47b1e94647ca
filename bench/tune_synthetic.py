"""Tune the difficulty of the built-in synthetic ADS-B data.

For each difficulty, train a small CNN (4 conv blocks of 32 channels, BN, ReLU, max-pool,
global average pool, linear head; Adam 1e-3, batch 64) for a few epochs on the *balanced*
built-in training split (480 bursts per emitter: what is left after a 0.2 validation split of
the 600-per-class pool) and report the balanced accuracy on the balanced test split (200 per
emitter).  The target for the default difficulty is about 70-90 %: clearly above chance
(10 %), clearly below perfect, so that long-tail training shows a real tail drop.

    python bench/tune_synthetic.py [--difficulty 0.5 1 2] [--epochs 5] [--threads 1]

Runs on one CPU thread by default (shared machines); about a minute per difficulty.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from imbalance.synthetic import builtin_dataset  # noqa: E402


def small_cnn(num_classes: int, channels: int = 32, blocks: int = 4) -> nn.Module:
    layers, c_in = [], 2
    for _ in range(blocks):
        layers += [nn.Conv1d(c_in, channels, 7, padding=3), nn.BatchNorm1d(channels), nn.ReLU(),
                   nn.MaxPool1d(2)]
        c_in = channels
    return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def rms_normalize(x: np.ndarray) -> torch.Tensor:
    r = np.sqrt((x.astype(np.float64) ** 2).mean(axis=(1, 2), keepdims=True))
    return torch.from_numpy((x / np.maximum(r, 1e-12)).astype(np.float32))


def balanced_accuracy(y: np.ndarray, p: np.ndarray, k: int) -> float:
    return float(np.mean([(p[y == c] == c).mean() for c in range(k)]))


def run(difficulty: float, epochs: int, per_class: int, seed: int) -> tuple:
    torch.manual_seed(seed)
    d = builtin_dataset(train_per_class=per_class, test_per_class=200, difficulty=difficulty, seed=seed)
    xtr, ytr = rms_normalize(d["train"][0]), torch.from_numpy(d["train"][1])
    xte, yte = rms_normalize(d["test"][0]), d["test"][1]
    model = small_cnn(10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xte[i:i + 500]).argmax(1) for i in range(0, len(xte), 500)]).numpy()
    return balanced_accuracy(yte, pred, 10), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--difficulty", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=480)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"small CNN, {a.epochs} epochs, {a.per_class}/class balanced train, 200/class test")
    for diff in a.difficulty:
        accs = []
        for s in a.seeds:
            acc, secs = run(diff, a.epochs, a.per_class, s)
            accs.append(acc)
            print(f"difficulty {diff:5.2f} seed {s}: balanced acc {acc:.3f} ({secs:.0f} s)", flush=True)
        print(f"difficulty {diff:5.2f}: mean balanced acc {np.mean(accs):.3f}", flush=True)


if __name__ == "__main__":
    main()
