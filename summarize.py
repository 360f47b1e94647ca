#!/usr/bin/env python
"""Compare many runs: ``python summarize.py [--root experiments] [--pattern GLOB] [--baseline NAME]
[--select-by val_macc|val_acc]``.

Finds every run folder (one holding ``results/results.json``) under ``--root`` at any depth,
groups runs that differ only in ``seed`` (mean ± std, n), selects a configuration on the
VALIDATION metric ``--select-by`` (default ``val_macc``; runs without ``val_metrics`` are
excluded from the selection), reports the TEST figures of what it selected, and writes
``analysis_results_<timestamp>/`` (or ``--out``) with REPORT.md, the comparison figure and the
CSV tables ranking_overall, comparison_by_type, comparison_sampling, comparison_loss,
matrix_oa, matrix_macc, matrix_hm, best_configurations, improvement_over_baseline and
all_results_full. See docs/sweeps.md.
"""
from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    from imbalance.summary import DEFAULT_IGNORED_KEYS, METRICS, SELECT_METRICS

    p = argparse.ArgumentParser(
        prog="summarize.py",
        description="Aggregate experiment folders into CSV tables and a Markdown report.",
    )
    p.add_argument("--root", default="experiments", help="folder searched (any depth) for run folders "
                   "holding results/results.json (default: experiments)")
    p.add_argument("--pattern", default=None, help="only run folders whose name or path (relative to "
                   "--root) matches this shell glob; text without * ? [ matches as a substring")
    p.add_argument("--out", default=None, help="output folder (default: ./analysis_results_<timestamp>)")
    p.add_argument("--baseline", default=None, help="baseline for improvement_over_baseline: an exp_name, "
                   "run folder name, configuration label or config id (default: the matching run with "
                   "stage 2 disabled, CrossEntropy and no sampler)")
    p.add_argument("--select-by", default="val_macc", choices=SELECT_METRICS,
                   help="validation metric that selects the reported configuration (results.json val_metrics: "
                   "the final model on the validation split; default: val_macc); its test figures are reported")
    p.add_argument("--sort-by", default="macc", choices=METRICS,
                   help="test metric that sorts the tables for reading only; it never selects (default: macc)")
    p.add_argument("--ignore-key", action="append", default=[], metavar="KEY",
                   help="config key (or section) that should not separate configurations, in addition to: "
                   + ", ".join(DEFAULT_IGNORED_KEYS) + " (repeatable)")
    p.add_argument("--no-figure", action="store_true", help="do not draw methods_comparison.png")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from imbalance.errors import UserError
    from imbalance.summary import DEFAULT_IGNORED_KEYS, summarize

    try:
        out, st, skipped = summarize(
            args.root, pattern=args.pattern, out=args.out, baseline=args.baseline, sort_by=args.sort_by,
            ignore_keys=tuple(DEFAULT_IGNORED_KEYS) + tuple(args.ignore_key), make_figure=not args.no_figure,
            select_by=args.select_by,
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        print(out)
        return 0
    vm = st.select_by
    print(f"{len(st.runs)} runs in {len(st.groups)} configurations"
          + (f", {len(skipped)} folders skipped (see REPORT.md)" if skipped else ""))
    if st.selected is None:
        print(f"no run records {vm} (val_metrics in results.json): no configuration selected")
    else:
        sel = st.groups[st.groups["config_id"] == st.selected].iloc[0]
        print(f"selected by {vm}: {sel['config']}  {vm} {100 * sel[f'{vm}_mean']:.2f}% "
              f"(n={int(sel[f'{vm}_count'])}) -> test mAcc {100 * sel['macc_mean']:.2f}% (n={int(sel['n'])})")
    if st.runs_without_val:
        print(f"{len(st.runs_without_val)} runs lack {vm} and were excluded from the selection (see REPORT.md)")
    print(f"report: {out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
