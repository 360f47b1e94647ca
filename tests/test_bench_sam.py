"""Smoke run of bench/bench_sam.py (slow: a subprocess that trains for a moment)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_sam_quick_prints_the_ratios():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_sam.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1",
                               "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("sam", "imbsam"):
        m = re.search(rf"ratio {name}/plain: median ([0-9.]+)x", proc.stdout)
        assert m and float(m.group(1)) > 0
