"""Where the demo's time goes: ``python main.py`` end to end, and its ``timings`` breakdown.

Runs the demo (``python main.py`` with any extra overrides) in a subprocess into a temporary
run folder, measures its wall time and the user+system CPU time of the process (the machine
may be shared: CPU time / cores is what the run would take alone), and prints the
``results.json`` ``timings`` (data, stage1, stage2, stage3, evaluation, figures, total) with
each part's share, plus the interpreter start-up and imports outside ``run``. Target: whole
demo within 3 minutes on 2 idle cores.

    python bench/bench_demo.py                       # the demo as shipped
    python bench/bench_demo.py --from experiments/demo_latest   # read a finished run instead
    python bench/bench_demo.py --quick               # smoke test: 1 epoch each stage, no figures
    python bench/bench_demo.py -- training.epochs=5  # extra overrides after --
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from _util import ROOT, machine_line  # noqa: E402

ORDER = ["data", "stage1", "stage2", "stage3", "evaluation", "figures"]


def breakdown(timings: dict, wall: float = None) -> str:
    total = timings.get("total") or sum(v for k, v in timings.items() if k != "total")
    lines = ["| part | seconds | share |", "|---|---:|---:|"]
    for k in ORDER + sorted(set(timings) - set(ORDER) - {"total"}):
        if k in timings:
            lines.append(f"| {k} | {timings[k]:.1f} | {100 * timings[k] / total:.0f}% |")
    other = total - sum(v for k, v in timings.items() if k != "total")
    lines.append(f"| other (setup, model, results) | {other:.1f} | {100 * other / total:.0f}% |")
    lines.append(f"| total inside run() | {total:.1f} | 100% |")
    if wall is not None:
        lines.append(f"| process wall (incl. start-up, imports) | {wall:.1f} | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="from_dir", default=None, help="a finished run folder to read instead")
    ap.add_argument("--quick", action="store_true", help="1 epoch per stage, no figures (smoke test)")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (under experiments/)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for main.py")
    args = ap.parse_args()
    print(machine_line())
    if args.from_dir:
        with open(os.path.join(args.from_dir, "results", "results.json")) as fh:
            res = json.load(fh)
        print(f"run {args.from_dir} ({res.get('precision')}, {res.get('device')})")
        print(breakdown(res["timings"]))
        return
    overrides = list(args.overrides)
    if args.quick:
        overrides = ["training.epochs=1", "stage2.epochs=1", "visualization.enabled=false", *overrides]
    tmp = None
    if args.keep:
        run_dir = os.path.join(ROOT, "experiments", f"bench_demo_{time.strftime('%Y%m%d-%H%M%S')}")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_demo_")
        run_dir = os.path.join(tmp.name, "run")  # the <exp_name>_latest link stays inside tmp
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "exp_name=bench_demo", f"hydra.run.dir={run_dir}",
           *overrides]
    print("command:", " ".join(cmd[1:]))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load1 = os.getloadavg()
    if proc.returncode != 0:
        raise SystemExit(f"main.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(os.path.join(run_dir, "results", "results.json")) as fh:
        res = json.load(fh)
    user, sys_ = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    ncores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"precision {res.get('precision')}, stages {json.dumps(res.get('stages'))}")
    print(breakdown(res["timings"], wall))
    print(f"wall {wall:.1f} s; CPU user {user:.1f} s + sys {sys_:.1f} s = {user + sys_:.1f} s "
          f"(= {(user + sys_) / ncores:.1f} s on {ncores} idle cores at full use); "
          f"load average before {load0[0]:.2f}, after {load1[0]:.2f}; target <= 180 s")
    f = res["metrics"]["final"]["overall"]
    print(f"final test OA {100 * f['oa']:.2f}%  mAcc {100 * f['macc']:.2f}%")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
