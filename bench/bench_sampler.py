"""Benchmark: one epoch of class-aware sampling with fresh weights, ours vs WeightedRandomSampler.

Both draw ``--n`` indices per epoch from a long-tailed label set (``--classes`` classes,
imbalance ratio 100) with per-sample weights ``n_c**alpha / n_c`` that change every epoch
(progressive_power: ``set_epoch`` each repeat). The baseline recomputes the per-sample weights
and materialises ``list(iter(WeightedRandomSampler(...)))``; ours times ``epoch_indices()``
(what the pipeline calls) and also ``list(iter(sampler))`` for a like-for-like comparison.

    python bench/bench_sampler.py [--n 1000000] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from imbalance.samplers import make_sampler  # noqa: E402


def median_time(fn, repeats):
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        fn(r)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="dataset size = indices per epoch")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    k = args.classes
    quota = np.array([1000 * 100 ** (-c / (k - 1)) for c in range(k)])
    counts = np.maximum(1, np.round(quota / quota.sum() * args.n)).astype(int)
    counts[0] += args.n - counts.sum()
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(k), counts))
    epochs = args.repeats + 1
    sampler = make_sampler(labels, "progressive_power", alpha_start=0.5, alpha_end=0.0,
                           total_epochs=epochs, seed=0)

    def ours_tensor(r):
        sampler.set_epoch(r)
        sampler.epoch_indices()

    def ours_list(r):
        sampler.set_epoch(r)
        list(iter(sampler))

    def baseline(r):
        sampler.set_epoch(r)  # only to get this epoch's alpha
        a = sampler.alpha
        cnt = np.bincount(labels, minlength=k).astype(np.float64)
        w_sample = torch.from_numpy((cnt ** a / cnt)[labels])
        wrs = WeightedRandomSampler(w_sample, num_samples=len(labels), replacement=True)
        list(iter(wrs))

    ours_tensor(0)  # warm-up
    t_base = median_time(baseline, args.repeats)
    t_ours = median_time(ours_tensor, args.repeats)
    t_ours_list = median_time(ours_list, args.repeats)
    print(f"n={args.n:,} classes={k} repeats={args.repeats} threads={args.threads} "
          f"torch={torch.__version__}")
    print(f"WeightedRandomSampler (weights + list(iter)): {t_base * 1e3:9.1f} ms")
    print(f"ClassAwareSampler.epoch_indices()           : {t_ours * 1e3:9.1f} ms  "
          f"speed-up x{t_base / t_ours:.1f}")
    print(f"ClassAwareSampler list(iter(...))           : {t_ours_list * 1e3:9.1f} ms  "
          f"speed-up x{t_base / t_ours_list:.1f}")


if __name__ == "__main__":
    main()
