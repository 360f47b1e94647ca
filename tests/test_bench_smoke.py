"""The performance benchmarks: their statistics helpers (fast) and a smoke run of each script
with ``--quick`` (slow: subprocesses that train for a moment)."""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

from _util import interleaved, ratio_summary  # noqa: E402


def test_ratio_summary_is_median_of_paired_ratios():
    base = [1.0, 2.0, 4.0, 8.0]
    ours = [2.0, 2.0, 2.0, 2.0]
    r = ratio_summary(base, ours)
    ratios = [2.0, 1.0, 0.5, 0.25]
    assert r["ratio_median"] == pytest.approx(statistics.median(ratios))  # 0.75
    assert r["ratio_min"] == 0.25 and r["ratio_max"] == 2.0
    assert r["base_median"] == 3.0 and r["ours_median"] == 2.0 and r["n"] == 4


def test_interleaved_alternates_order_and_warms_up():
    calls = []
    out = interleaved(lambda: calls.append("a"), lambda: calls.append("b"), repeats=4, warmup=1)
    # warm-up a b, then ABBA ABBA: a b | b a | a b | b a
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(out["base"]) == len(out["ours"]) == 4
    assert all(t >= 0 for t in out["base"] + out["ours"])


def test_demo_breakdown_other_is_total_minus_parts():
    from bench_demo import breakdown

    table = breakdown({"data": 2.0, "stage1": 6.0, "evaluation": 1.0, "total": 10.0})
    assert "| stage1 | 6.0 | 60% |" in table
    assert "| other (setup, model, results) | 1.0 | 10% |" in table


def _run(script, *args, timeout=600):
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_bench_epoch_quick_prints_a_ratio():
    out = _run("bench_epoch.py", "--quick", "--threads", "1")
    m = re.search(r"ratio framework/bare: median ([0-9.]+)x", out)
    assert m and float(m.group(1)) > 0


@pytest.mark.slow
def test_bench_amp_quick_prints_a_speedup():
    out = _run("bench_amp.py", "--quick", "--threads", "1")
    m = re.search(r"speed-up fp32/amp: median ([0-9.]+)x", out)
    assert m and float(m.group(1)) > 0


@pytest.mark.slow
def test_bench_threads_compile_quick_threads_only():
    out = _run("bench_threads_compile.py", "--quick", "--no-compile")
    assert re.search(r"\[threads\] 1 thread: [0-9.]+ ms/step", out)


@pytest.mark.slow
def test_bench_demo_quick_prints_the_breakdown():
    out = _run("bench_demo.py", "--quick")
    assert "| stage1 |" in out and "| total inside run() |" in out
    assert re.search(r"wall [0-9.]+ s; CPU user", out)


@pytest.mark.slow
def test_bench_hotspots_quick_pool_change_keeps_gradients():
    out = _run("bench_hotspots.py", "--quick")
    assert "same gradients: True" in out
    assert "[eval batch]" in out and "[model_complexity]" in out
