#!/usr/bin/env python
"""Compare many runs: ``python summarize.py [--root experiments] [--pattern GLOB] [--baseline NAME]
[--select-by val_macc|val_acc]``.

Finds every run folder (one holding ``results/results.json``) under ``--root`` at any depth,
groups runs that differ only in ``seed`` (mean ± std, n), selects a configuration on the
VALIDATION metric ``--select-by`` (default ``val_macc``; runs without ``val_metrics`` are
excluded from the selection), reports the TEST figures of what it selected, and writes
``analysis_results_<timestamp>/`` (or ``--out``) with REPORT.md, the comparison figure and the
CSV tables ranking_overall, comparison_by_type, comparison_sampling, comparison_loss,
matrix_oa, matrix_macc, matrix_hm, best_configurations, improvement_over_baseline,
all_results_full and, for class-incremental runs, incremental_sessions (old / new / all mAcc per
method and session, average incremental mAcc, forgetting). See docs/sweeps.md and docs/incremental.md.
"""
import sys

from imbalance.summary import build_parser, main  # noqa: F401  (the command line lives in the package)

if __name__ == "__main__":
    sys.exit(main())
