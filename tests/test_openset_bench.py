"""Smoke run of bench/bench_openset.py (--quick): a table row for every default detector and ODIN."""
from __future__ import annotations

import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.mark.slow
def test_bench_openset_quick_prints_every_detector(capsys):
    sys.path.insert(0, BENCH)
    try:
        import bench_openset
    finally:
        sys.path.remove(BENCH)
    assert bench_openset.main(["--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("msp", "maxlogit", "energy", "mahalanobis", "knn", "openmax", "score_all"):
        assert f"| {name}" in out
    assert "ODIN score (fwd + bwd + fwd)" in out and "ratio ODIN / forward" in out
