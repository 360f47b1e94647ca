"""Benchmark: every figure of a 5000-sample test set (target: at most 60 s on 2 CPU cores).

Builds a synthetic finished run folder (5000 test predictions, K classes, 5000 x D penultimate
features, a 2-stage metrics.csv) and times ``visualize_all_results`` with the seed's default
``visualization:`` settings (dpi 400, t-SNE perplexity 30, 1000 iterations, 2-D only).
t-SNE dominates, so the baseline is the naive t-SNE (scikit-learn TSNE on the raw D-dim
features, no PCA) against ours (PCA to 50 dims, then TSNE). Median of --repeats runs.

    python bench/bench_figures.py [--n 5000] [--k 10] [--d 350] [--repeats 1] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


from imbalance import visualization as vz  # noqa: E402
from imbalance.analysis import ClassificationAnalyzer  # noqa: E402


def make_run(root: Path, n: int, k: int, d: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    run = root / "bench_20250101-000000-000000"
    (run / "results").mkdir(parents=True, exist_ok=True)
    (run / "logs").mkdir(exist_ok=True)
    counts = np.array([max(1, int(500 * 100 ** (-c / (k - 1)))) for c in range(k)])
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 0.5 * np.log(counts)
    logits[np.arange(n), y] += 3.0 * np.log(counts[y]) / np.log(counts.max()) + 0.5
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    y_pred = prob.argmax(1)
    centers = rng.normal(size=(k, d)) * 3
    feats = centers[y] + rng.normal(size=(n, d)) * (1 + 2 * y / (k - 1))[:, None]
    np.savez(run / "results" / "predictions.npz", y_true=y, y_pred=y_pred,
             prob=prob.astype(np.float32), features=feats.astype(np.float32), feature_labels=y,
             class_counts=counts, classes=np.arange(k))
    res = ClassificationAnalyzer(counts).analyze_predictions(y, y_pred, prob)
    m = {"overall": res["overall"], "group_wise": res["group_wise"]}
    rows = ["stage,epoch,global_epoch,lr,train_loss,train_acc,val_loss,val_acc,val_macc,epoch_time"]
    for ge in range(1, 301):
        s, e = (1, ge) if ge <= 200 else (2, ge - 200)
        rows.append(f"{s},{e},{ge},{0.1 * 0.98 ** e},{2 / ge},{1 - 1 / ge},{2.2 / ge},{1 - 1.1 / ge},{1 - 1.3 / ge},3.0")
    (run / "logs" / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run / "results" / "results.json").write_text(json.dumps({
        "config": {"visualization": dict(vz.DEFAULT_VIZ)}, "class_counts": counts.tolist(),
        "classes": list(range(k)), "metrics": {"stage1": m, "stage2": m, "final": m},
        "per_class": res["per_class"], "confusion_matrix": res["confusion_matrix"]}))
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--d", type=int, default=350, help="feature width (ConvNetADSB: 350)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--keep", type=Path, default=None, help="write the run folder here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_figures_"))
    run = make_run(root, args.n, args.k, args.d)
    z = np.load(run / "results" / "predictions.npz")
    feats = z["features"]

    cpu: dict[str, float] = {}

    def median(fn, key=None):
        """Median wall seconds; also records the median CPU seconds (all threads) under key:
        CPU time does not depend on what else the shared machine runs, and CPU seconds <= 60
        means at most 60 s of wall time on 2 free cores even if nothing ran in parallel."""
        ts, cs = [], []
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            fn()
            ts.append(time.perf_counter() - t)
            cs.append(time.process_time() - c)
        if key:
            cpu[key] = statistics.median(cs)
        return statistics.median(ts)

    print(f"N={args.n} K={args.k} D={args.d} repeats={args.repeats} (median seconds)")
    if not args.skip_baseline:
        from sklearn.manifold import TSNE

        from threadpoolctl import threadpool_limits

        def naive():  # scikit-learn defaults: raw features, all OpenMP threads
            TSNE(2, perplexity=30, max_iter=1000, init="pca", random_state=0).fit_transform(feats)

        def raw_1thread():
            with threadpool_limits(limits=1):
                naive()

        t_base = median(naive, "base")
        print(f"baseline t-SNE, sklearn defaults (raw {args.d}-d, all threads): wall {t_base:7.2f} s  cpu {cpu['base']:7.2f} s")
        t_raw1 = median(raw_1thread, "raw1")
        print(f"baseline t-SNE, raw {args.d}-d, 1 thread:                      wall {t_raw1:7.2f} s  cpu {cpu['raw1']:7.2f} s")
    t_ours = median(lambda: vz.tsne_embed(feats, n_components=2, perplexity=30, n_iter=1000), "tsne")
    print(f"ours     PCA-50 + t-SNE, 1 thread:                         wall {t_ours:7.2f} s  cpu {cpu['tsne']:7.2f} s"
          + ("" if args.skip_baseline else f"   speed-up vs defaults: wall x{t_base / t_ours:.2f}"))
    t_all = median(lambda: vz.visualize_all_results(run), "all")
    n_png = len(list((run / "results").glob("*.png")))
    print(f"ours     all {n_png} figures (PNG+PDF, dpi 400):                 wall {t_all:7.2f} s  cpu {cpu['all']:7.2f} s"
          f"   target <= 60 s on 2 cores: {'PASS' if min(t_all, cpu['all']) <= 60 else 'FAIL'}")
    print(f"run folder: {run}")


if __name__ == "__main__":
    main()
