"""Mixed precision on the CPU: training-step time fp32 vs ``amp: true``, and final accuracy.

1. Step time (default): ConvNetADSB at the seed's full size (``create_model`` defaults: 8 blocks,
   350 channels), batch 64, length 4800; one step = forward, cross-entropy, backward, Adam
   step. Baseline fp32; ours the precision ``amp: true`` selects
   (``imbalance.precision.make_precision(cpu, True)``: bf16 autocast where the CPU has native
   bf16). Two copies of the model with the same initial weights; after ``--warmup`` steps
   each, the timed steps alternate fp32/bf16 (ABBA ...). Target: >= 1.8x faster per step.
2. ``--accuracy``: the demo (``python main.py``) with ``amp=false`` and ``amp=true`` for each
   ``--seeds`` value (figures off); prints final test OA / mAcc and stage-1 time of each.

    python bench/bench_amp.py                       # full size: slow (about 30-60 s a step)
    python bench/bench_amp.py --size demo           # the demo's model and batch
    python bench/bench_amp.py --accuracy --seeds 42 43 --skip-steps
    python bench/bench_amp.py --quick               # smoke test (tiny, seconds)
    python bench/bench_amp.py --patch-pool          # with the proposed max-pool change (bench_hotspots.py)
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

from _util import machine_line, run_main  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

SIZES = {
    "full": dict(batch=64, length=4800, kw={}),
    "demo": dict(batch=128, length=1024, kw=dict(width=32, depth=4)),
    "tiny": dict(batch=8, length=256, kw=dict(width=8, depth=2)),
}


def step_times(size: str, warmup: int, steps: int, num_classes: int = 10):
    from imbalance.models import create_model
    from imbalance.precision import make_precision

    spec = SIZES[size]
    torch.manual_seed(0)
    m32 = create_model("ConvNetADSB", num_classes, in_channels=2, **spec["kw"])
    m16 = copy.deepcopy(m32)
    prec = {"fp32": make_precision(torch.device("cpu"), False),
            "amp": make_precision(torch.device("cpu"), True)}
    models = {"fp32": m32, "amp": m16}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    x = torch.randn(spec["batch"], 2, spec["length"])
    y = torch.randint(0, num_classes, (spec["batch"],))

    def step(k: str) -> float:
        m, opt, p = models[k], opts[k], prec[k]
        m.train()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with p.autocast():
            logits = m(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for _ in range(warmup):
        step("fp32")
        step("amp")
    t = {"fp32": [], "amp": []}
    for i in range(steps):
        order = ("fp32", "amp") if i % 2 == 0 else ("amp", "fp32")
        for k in order:
            t[k].append(step(k))
            print(f"  step {i + 1} {k}: {t[k][-1]:.3f} s", flush=True)
    return t, prec["amp"].name, spec


def run_demo(amp: bool, seed: int, out_dir: str, overrides):
    run_dir = os.path.join(out_dir, f"amp{int(amp)}_seed{seed}")
    res, wall, cpu = run_main([f"amp={str(amp).lower()}", f"seed={seed}", "exp_name=bench_amp",
                               "visualization.enabled=false", *overrides], run_dir)
    f = res["metrics"]["final"]["overall"]
    return {"amp": amp, "seed": seed, "precision": res.get("precision"), "oa": f["oa"], "macc": f["macc"],
            "stage1_s": res["timings"].get("stage1"), "wall_s": wall, "cpu_s": cpu,
            "epochs": res.get("stages", {}).get("stage1", {}).get("epochs_run")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--accuracy", action="store_true", help="also run the demo with amp=false / amp=true")
    ap.add_argument("--skip-steps", action="store_true", help="only the accuracy comparison")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides of the demo runs")
    ap.add_argument("--quick", action="store_true", help="tiny model, 1+2 steps, no accuracy (smoke test)")
    ap.add_argument("--batch", type=int, default=None, help="override the batch size of --size")
    ap.add_argument("--patch-pool", action="store_true",
                    help="time the models with the proposed training max-pool (see bench_hotspots.py)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.warmup, args.steps, args.accuracy = "tiny", 1, 2, False
    torch.set_num_threads(args.threads)
    if args.batch:
        SIZES[args.size] = dict(SIZES[args.size], batch=args.batch)
    if args.patch_pool:
        import torch.nn.functional as F
        from bench_hotspots import pool_unflatten_max
        from imbalance import models as M

        def forward(self, x):
            for _ in range(self.times):
                if x.shape[-1] < 2 * self.min_length:
                    break
                x = pool_unflatten_max(x) if self.mode == "max" else F.avg_pool1d(x, 2)
            return x

        M.AdaptiveDownsample.forward = forward
        print("models patched: training max-pool = unflatten(-1, (n, 2)).max(-1)")
    print(machine_line())
    from imbalance.precision import cpu_has_native_bf16

    print(f"native bf16 (AVX512-BF16/AMX): {cpu_has_native_bf16()}")
    if not args.skip_steps:
        t, name, spec = step_times(args.size, args.warmup, args.steps)
        f32, amp = statistics.median(t["fp32"]), statistics.median(t["amp"])
        ratios = [a / b for a, b in zip(t["fp32"], t["amp"])]
        print(f"ConvNetADSB {args.size} ({spec['kw'] or 'create_model defaults'}), batch {spec['batch']} x "
              f"length {spec['length']}, {args.warmup} warm-up + {args.steps} timed steps each")
        print(f"  fp32       : median {f32:.3f} s/step (min {min(t['fp32']):.3f}, max {max(t['fp32']):.3f})")
        print(f"  amp ({name}): median {amp:.3f} s/step (min {min(t['amp']):.3f}, max {max(t['amp']):.3f})")
        print(f"  speed-up fp32/amp: median {statistics.median(ratios):.2f}x (pairs min {min(ratios):.2f}, "
              f"max {max(ratios):.2f}); target >= 1.8x where native bf16")
    if args.accuracy:
        rows = []
        with tempfile.TemporaryDirectory(prefix="bench_amp_") as tmp:
            for seed in args.seeds:
                for amp in (False, True):
                    rows.append(run_demo(amp, seed, tmp, args.override))
                    r = rows[-1]
                    print(f"  demo amp={str(amp).lower():5s} seed {seed}: precision {r['precision']}, "
                          f"test OA {100 * r['oa']:.2f}%  mAcc {100 * r['macc']:.2f}%  stage1 {r['stage1_s']:.1f} s "
                          f"({r['epochs']} epochs)  wall {r['wall_s']:.1f} s  cpu {r['cpu_s']:.1f} s", flush=True)
        for amp in (False, True):
            m = [r["macc"] for r in rows if r["amp"] == amp]
            s1 = [r["stage1_s"] for r in rows if r["amp"] == amp]
            print(f"amp={str(amp).lower():5s}: final test mAcc mean {100 * statistics.mean(m):.2f}% over {len(m)} "
                  f"seed(s) {[round(100 * v, 2) for v in m]}, stage-1 median {statistics.median(s1):.1f} s")


if __name__ == "__main__":
    main()
