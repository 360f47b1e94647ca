"""Benchmark: evaluation + analysis of 100,000 predictions (target: under 1 s).

Baseline: scikit-learn's ``classification_report`` + ``confusion_matrix`` (what a typical
training script calls). Ours: ``ClassificationAnalyzer.analyze_predictions`` (one np.bincount
confusion matrix; every metric, groups, ECE and NLL derived from it). Median of --repeats runs.

    python bench/bench_analysis.py [--n 100000] [--k 100] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


from imbalance.analysis import ClassificationAnalyzer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from sklearn.metrics import classification_report, confusion_matrix

    rng = np.random.default_rng(0)
    n, k = args.n, args.k
    counts = np.maximum(1, (500 * 100 ** (-np.arange(k) / (k - 1))).astype(int))
    y = rng.integers(0, k, n)
    y_pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    logits = rng.normal(size=(n, k)).astype(np.float32)
    logits[np.arange(n), y_pred] += 3
    prob = np.exp(logits)
    prob /= prob.sum(1, keepdims=True)

    def baseline():
        classification_report(y, y_pred, output_dict=True, zero_division=0)
        confusion_matrix(y, y_pred)

    analyzer = ClassificationAnalyzer(counts)

    def ours_labels():
        analyzer.analyze_predictions(y, y_pred)

    def ours_prob():
        analyzer.analyze_predictions(y, y_pred, prob)

    def timeit(fn):
        fn()  # warm-up
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    tb = timeit(baseline)
    t1 = timeit(ours_labels)
    t2 = timeit(ours_prob)
    print(f"N={n} K={k} repeats={args.repeats} (median seconds)")
    print(f"baseline sklearn classification_report+confusion_matrix: {tb:.4f} s")
    print(f"ours analyze_predictions (labels only):                 {t1:.4f} s  speed-up x{tb / t1:.1f}")
    print(f"ours analyze_predictions (+prob: NLL, ECE, group ECE):   {t2:.4f} s  speed-up x{tb / t2:.1f}")
    print(f"target < 1 s: {'PASS' if t2 < 1.0 else 'FAIL'}")


if __name__ == "__main__":
    main()
