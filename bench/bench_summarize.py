"""Benchmark: summarize 1,000 generated run folders (target: at most 10 s).

    python bench/bench_summarize.py [--runs 1000] [--repeats 3]

Generates run folders shaped like the pipeline's (results.json with a full resolved config,
per-class metrics and a 10 x 10 confusion matrix, plus .hydra/, logs/ and checkpoints/), then
times, in the same process:
  baseline  the I/O floor: Path.rglob('results.json') + json.load of every file, nothing else;
  ours      imbalance.summary.summarize(): discovery, loading, grouping, every CSV, REPORT.md
            and the PNG figure.
Prints the median of the repeats of each and the ratio ours / baseline.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


from imbalance.summary import summarize  # noqa: E402

LOSSES = ["CrossEntropy", "FocalLoss", "CostSensitiveCE", "LDAMLoss", "BalancedSoftmaxLoss"]
SAMPLERS = ["none", "sqrt", "inv_freq", "class_balanced", "progressive_power"]
K = 10


def make_runs(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        loss, sampler = LOSSES[i % 5], SAMPLERS[(i // 5) % 5]
        s2 = (i // 25) % 2 == 1
        cfg = {
            "exp_name": f"bench_{loss}_{sampler}", "seed": i // 50, "device": "auto", "gpus": "0", "amp": False,
            "console_log_interval": 1, "create_imbalance": True,
            "data": {"path_train": None, "path_val": None, "path_test": None, "val_ratio": 0.2, "batch_size": 128,
                     "num_workers": 0, "pin_memory": True, "drop_last": True, "target_length": None,
                     "normalize": True, "in_memory": True, "imbalance_ratio": 100.0,
                     "synthetic": {"num_classes": K, "train_per_class": 600, "test_per_class": 200, "length": 1024}},
            "model": {"name": "ConvNetADSB", "dropout": 0.1, "use_attention": True, "norm_kind": "auto",
                      "width": 32, "depth": 4, "head": "linear", "init": "default"},
            "loss": {"name": "CrossEntropy" if s2 else loss, "focal_gamma": 2.0, "cb_beta": 0.9999,
                     "ldam_max_margin": 0.5, "ldam_scale": 30.0, "logit_tau": 1.0, "cost_strategy": "auto"},
            "sampling": {"name": "none" if s2 else sampler, "alpha": 0.5, "alpha_start": 0.5, "alpha_end": 0.0},
            "training": {"epochs": 30, "lr": 0.003, "weight_decay": 1e-4, "optimizer": "Adam", "grad_clip": 1.0,
                         "label_smoothing": 0.0},
            "scheduler": {"name": "cosine", "warmup_epochs": 2, "warmup_multiplier": 1.0},
            "early_stopping": {"patience": 10, "monitor": "val_macc", "mode": "max"},
            "stage2": {"enabled": s2, "mode": "crt", "epochs": 30, "lr": 1e-3, "loss": loss, "sampler": sampler,
                       "alpha_start": 0.5, "alpha_end": 0.0, "freeze_bn": True, "clf_lr_mult": 1.0},
            "stage3": {"mode": "none", "tau_norm": 1.0, "logit_tau": 1.0},
            "evaluation": {"eval_logit_adjust": "none", "eval_logit_tau": 1.0},
            "experiment": {"grouping": "auto", "many_thresh": 100, "few_thresh": 20},
            "visualization": {"enabled": True, "dpi": 300, "max_samples": 5000, "class_names": None},
        }
        overall = {m: float(rng.uniform(0.3, 0.9)) for m in
                   ("oa", "macc", "balanced_acc", "macro_f1", "gmean", "many_acc", "medium_acc", "few_acc", "hm",
                    "ece")}
        overall["nll"] = float(rng.uniform(0.3, 2))
        per_class = {"recall": rng.uniform(0, 1, K).tolist(), "precision": rng.uniform(0, 1, K).tolist(),
                     "f1": rng.uniform(0, 1, K).tolist(), "support": [200] * K}
        res = {"config": cfg, "class_counts": [int(600 * 100 ** (-c / (K - 1))) for c in range(K)],
               "classes": list(range(1, K + 1)), "class_names": None,
               "metrics": {"stage1": {"overall": overall, "group_wise": {}},
                           "final": {"overall": overall, "group_wise": {}}},
               "per_class": per_class, "confusion_matrix": rng.integers(0, 200, (K, K)).tolist(),
               "timings": {"stage1": 100.0, "evaluation": 3.0}, "model_info": {"name": "ConvNetADSB", "params": 10**5},
               "versions": {"python": "3.11"}, "git_commit": "abc", "data_files": {}, "exp_name": cfg["exp_name"],
               "run_dir": "x", "status": "completed"}
        d = root / f"{cfg['exp_name']}_20250101-000000-{i:06d}"
        (d / "results").mkdir(parents=True)
        (d / ".hydra").mkdir()
        (d / "logs").mkdir()
        (d / "checkpoints").mkdir()
        (d / "results" / "results.json").write_text(json.dumps(res, indent=2))
        (d / ".hydra" / "config.yaml").write_text("exp_name: x\n")
        (d / "logs" / "metrics.csv").write_text("stage,epoch\n1,1\n")


def baseline(root: Path) -> int:
    n = 0
    for p in root.rglob("results.json"):
        with open(p) as fh:
            json.load(fh)
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "experiments"
        t0 = time.perf_counter()
        make_runs(root, args.runs)
        print(f"generated {args.runs} run folders in {time.perf_counter() - t0:.1f} s")
        summarize(root, out=Path(tmp) / "warm", make_figure=True)  # warm imports (pandas, matplotlib)
        tb, to = [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            assert baseline(root) == args.runs
            tb.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, st, _ = summarize(root, out=Path(tmp) / f"out{r}")
            to.append(time.perf_counter() - t0)
            assert len(st.runs) == args.runs
        b, o = statistics.median(tb), statistics.median(to)
        print(f"baseline (rglob + json.load only): {b:.3f} s   ours (full summarize): {o:.3f} s   "
              f"ratio ours/baseline: {o / b:.1f}x   ({len(st.groups)} configurations)")
        print(f"target <= 10 s for 1000 runs: {'OK' if o <= 10 * args.runs / 1000 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()
