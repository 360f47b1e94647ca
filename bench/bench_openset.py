"""Benchmark: open-set scoring time per detector (imbalance.openset).

Feature detectors score 100,000 test samples (--n) with 350-D features (--d, ConvNetADSB's
full width) and K = 10 known classes (--k); they are fitted on a long-tailed training set
(Cao et al. profile, ratio 100, --n-max samples in the head class). Fit and score times are
separate; the score time is the median of --repeats runs, and ``score_all`` scores every
default detector in one pass. ODIN needs a forward AND backward pass through the model: it
is timed separately on --odin-n inputs with a small ConvNetADSB (width 32, depth 4, length
1024), next to the plain forward pass that every other detector needs anyway, and
extrapolated to --n samples.

    python bench/bench_openset.py [--n 100000] [--d 350] [--k 10] [--threads 1] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import machine_line  # noqa: E402


def _median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="test samples")
    ap.add_argument("--d", type=int, default=350, help="feature dimension")
    ap.add_argument("--k", type=int, default=10, help="known classes")
    ap.add_argument("--n-max", type=int, default=1000, help="training samples of the head class")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--odin-n", type=int, default=512, help="inputs for the ODIN timing")
    ap.add_argument("--odin-length", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.d, a.n_max, a.repeats, a.odin_n, a.odin_length = 2000, 32, 100, 1, 32, 128

    import torch

    torch.set_num_threads(a.threads)
    from threadpoolctl import threadpool_limits

    import scipy.stats  # noqa: F401  (imported once here, not inside the first fit's time)
    import sklearn.covariance  # noqa: F401

    from imbalance.models import create_model
    from imbalance.openset import DEFAULT_DETECTORS, ODIN, build_detectors, fit_detectors, score_all

    rng = np.random.default_rng(0)
    k, d = a.k, a.d
    counts = np.maximum(1, (a.n_max * 100.0 ** (-np.arange(k) / (k - 1))).astype(int))
    mu = rng.normal(size=(k, d)).astype(np.float32) * 2
    w = rng.normal(size=(d, k)).astype(np.float32) / np.sqrt(d)
    y_tr = np.repeat(np.arange(k), counts)
    f_tr = mu[y_tr] + rng.normal(size=(len(y_tr), d)).astype(np.float32)
    y_te = rng.integers(0, k, a.n)
    f_te = mu[y_te] + rng.normal(size=(a.n, d)).astype(np.float32)
    z_tr, z_te = f_tr @ w, f_te @ w

    print(machine_line())
    print(f"test {a.n} x {d}-D features, K = {k}; training {len(y_tr)} features (counts {counts.tolist()}); "
          f"{a.threads} thread(s), median of {a.repeats}\n")
    rows = []
    with threadpool_limits(limits=a.threads):
        dets = build_detectors()
        for name, det in dets.items():
            t_fit = _median_time(lambda: det.fit(f_tr, y_tr, train_logits=z_tr), 1)
            t_score = _median_time(lambda: det.score(z_te, f_te), a.repeats)
            rows.append((name, t_fit, t_score))
        fit_detectors(dets, f_tr, y_tr, train_logits=z_tr)
        t_all = _median_time(lambda: score_all(dets, z_te, f_te), a.repeats)

        # ODIN: forward + backward + forward through a small model, against a plain forward pass
        model = create_model("ConvNetADSB", k, width=32, depth=4).eval()
        x = torch.randn(a.odin_n, 2, a.odin_length)

        def forward_only():
            with torch.no_grad():
                for i in range(0, len(x), 128):
                    model(x[i:i + 128])

        odin = ODIN(epsilon=0.0014, batch_size=128)
        t_fwd = _median_time(forward_only, a.repeats)
        t_odin = _median_time(lambda: odin.score_inputs(model, x), a.repeats)
        grid = ODIN(batch_size=128)
        t_grid = _median_time(lambda: grid.fit_inputs(model, x), 1)

    print("| detector | fit (s) | score (s) | per sample (us) |")
    print("|---|---:|---:|---:|")
    for name, t_fit, t_score in rows:
        print(f"| {name} | {t_fit:.3f} | {t_score:.3f} | {1e6 * t_score / a.n:.2f} |")
    print(f"| score_all ({', '.join(DEFAULT_DETECTORS)}) | - | {t_all:.3f} | {1e6 * t_all / a.n:.2f} |")
    per = a.n / a.odin_n
    print(f"\nODIN, ConvNetADSB width 32 depth 4, {a.odin_n} inputs of 2 x {a.odin_length}, batch 128 "
          f"({sum(p.numel() for p in model.parameters())} parameters):")
    print("| pass | time (s) | per sample (ms) | extrapolated to the test set (s) |")
    print("|---|---:|---:|---:|")
    print(f"| forward only (every detector needs it) | {t_fwd:.3f} | {1e3 * t_fwd / a.odin_n:.3f} | {t_fwd * per:.1f} |")
    print(f"| ODIN score (fwd + bwd + fwd) | {t_odin:.3f} | {1e3 * t_odin / a.odin_n:.3f} | {t_odin * per:.1f} |")
    print(f"| ODIN epsilon=auto on the same inputs as validation ({len(grid.epsilon_grid)} epsilons) | "
          f"{t_grid:.3f} | {1e3 * t_grid / a.odin_n:.3f} | - |")
    print(f"ratio ODIN / forward: {t_odin / t_fwd:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
