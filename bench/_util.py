"""Shared helpers of the performance benchmarks (timing, interleaved repeats, machine line)."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed2(fn: Callable[[], object]) -> Tuple[float, float]:
    """Wall seconds and CPU seconds of this process (all its threads) of one call of ``fn``.
    On a shared machine the CPU time of a single-threaded run is the steadier figure: it does
    not count the time the process waited for a core."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def interleaved(base: Callable[[], object], ours: Callable[[], object], repeats: int,
                warmup: int = 1) -> Dict[str, List[float]]:
    """Time ``base`` and ``ours`` alternately (ABBA ABBA ...), so that drift in the machine's
    load hits both equally; ``warmup`` untimed calls of each first. Returns the wall times
    (``base``, ``ours``) and the process CPU times (``base_cpu``, ``ours_cpu``)."""
    for _ in range(warmup):
        base()
        ours()
    out: Dict[str, List[float]] = {"base": [], "ours": [], "base_cpu": [], "ours_cpu": []}

    def one(name: str, fn: Callable[[], object]) -> None:
        wall, cpu = timed2(fn)
        out[name].append(wall)
        out[name + "_cpu"].append(cpu)

    for r in range(repeats):
        if r % 2 == 0:
            one("base", base)
            one("ours", ours)
        else:
            one("ours", ours)
            one("base", base)
    return out


def ratio_summary(base: Sequence[float], ours: Sequence[float]) -> Dict[str, float]:
    """Median of each, and median / min / max of the paired ratios ours/base."""
    ratios = [o / b for o, b in zip(ours, base)]
    return {"base_median": statistics.median(base), "ours_median": statistics.median(ours),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "n": len(ratios)}


def run_main(overrides: Sequence[str], run_dir: str) -> Tuple[dict, float, float]:
    """``python main.py <overrides> hydra.run.dir=<run_dir>`` in a child process: (its
    results.json, wall seconds, the child's CPU seconds). A failed run ends the benchmark with
    the tail of its output."""
    import json
    import resource
    import subprocess
    import sys

    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *overrides, f"hydra.run.dir={run_dir}"]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(os.path.join(run_dir, "results", "results.json")) as fh:
        res = json.load(fh)
    return res, wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def machine_line() -> str:
    """CPU model, cores, load average and library versions, for the report."""
    import torch

    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = "load %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "load ?"
    return (f"{model}, {cores} cores, {load}; python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op thread(s)")
