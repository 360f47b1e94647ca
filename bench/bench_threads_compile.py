"""CPU threads and ``compile: true`` for the demo's model (ConvNetADSB width 32 depth 4, batch 128,
length 1024); one step = forward, cross-entropy, backward, Adam step.

1. Threads: step time with 1 intra-op thread vs ``--threads`` (default: all cores), interleaved;
   and what ``imbalance.runtime.set_threads`` picks (cores, minus DataLoader workers).
2. Compile: eager vs ``torch.compile(model)`` (inductor, CPU): the first compiled training step
   and the first compiled evaluation pass (the compile cost), then the steady step times,
   interleaved. The compile cost is amortised over a demo's number of steps
   (``--demo-steps``, default 30 epochs x 9 steps) to say whether ``compile: true`` pays.

    python bench/bench_threads_compile.py [--steps 10] [--threads 2]
    python bench/bench_threads_compile.py --quick        # smoke test
    python bench/bench_threads_compile.py --no-compile   # threads only
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

from _util import machine_line  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402


def make(size: str, num_classes: int = 10):
    from imbalance.models import create_model

    torch.manual_seed(0)
    if size == "tiny":
        model = create_model("ConvNetADSB", num_classes, width=8, depth=2)
        x = torch.randn(16, 2, 256)
    else:
        model = create_model("ConvNetADSB", num_classes, width=32, depth=4)
        x = torch.randn(128, 2, 1024)
    y = torch.randint(0, num_classes, (len(x),))
    return model, x, y


def stepper(model, x, y):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        model.train()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def evaluator(model, x):
    def run():
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            model(x)
        model.train()
        return time.perf_counter() - t0

    return run


def alternate(fa, fb, n):
    a, b = [], []
    for i in range(n):
        if i % 2 == 0:
            a.append(fa())
            b.append(fb())
        else:
            b.append(fb())
            a.append(fa())
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--demo-steps", type=int, default=270, help="training steps of a demo (30 epochs x 9)")
    ap.add_argument("--demo-evals", type=int, default=60, help="evaluation batches of a demo (30 x 2 full)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-threads", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 steps (smoke test)")
    args = ap.parse_args()
    size = "tiny" if args.quick else "demo"
    if args.quick:
        args.steps = 2
    from imbalance.runtime import set_threads

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    nt = args.threads or cores
    torch.set_num_threads(nt)
    print(machine_line())
    print(f"set_threads(num_threads=0, num_workers=0) -> {set_threads(0, 0)};  "
          f"(0, 1) -> {set_threads(0, 1)};  cores {cores}")
    model, x, y = make(size)
    print(f"ConvNetADSB {size}: batch {x.shape[0]} x length {x.shape[2]}, {args.steps} timed steps each")

    if not args.no_threads:
        m1, m2 = model, copy.deepcopy(model)
        s1, s2 = stepper(m1, x, y), stepper(m2, x, y)

        def with_threads(n, fn):
            def run():
                torch.set_num_threads(n)
                return fn()
            return run

        f1, fn_ = with_threads(1, s1), with_threads(nt, s2)
        f1(), fn_()  # warm-up
        t1, tn = alternate(f1, fn_, args.steps)
        r = [a / b for a, b in zip(t1, tn)]
        print(f"[threads] 1 thread: {1e3 * statistics.median(t1):.1f} ms/step   {nt} threads: "
              f"{1e3 * statistics.median(tn):.1f} ms/step   speed-up {statistics.median(r):.2f}x "
              f"(min {min(r):.2f}, max {max(r):.2f})")

    if not args.no_compile:
        torch.set_num_threads(nt)
        import torch._dynamo as dynamo

        dynamo.reset()
        eager, _, _ = make(size)
        comp_base = copy.deepcopy(eager)
        compiled = torch.compile(comp_base)
        se, sc = stepper(eager, x, y), stepper(compiled, x, y)
        ee, ec = evaluator(eager, x), evaluator(compiled, x)
        se()
        ee()
        t0 = time.perf_counter()
        first_train = sc()
        first_eval = ec()
        compile_wall = time.perf_counter() - t0
        # second calls can still recompile (e.g. mode switches); one more of each untimed
        sc()
        ec()
        te, tc = alternate(se, sc, args.steps)
        ve, vc = alternate(ee, ec, max(2, args.steps // 2))
        me, mc = statistics.median(te), statistics.median(tc)
        mve, mvc = statistics.median(ve), statistics.median(vc)
        overhead = (first_train - mc) + (first_eval - mvc)
        eager_total = args.demo_steps * me + args.demo_evals * mve
        comp_total = overhead + args.demo_steps * mc + args.demo_evals * mvc
        print(f"[compile] first compiled train step {first_train:.1f} s, first compiled eval {first_eval:.1f} s "
              f"(compile {compile_wall:.1f} s)")
        print(f"[compile] steady train step: eager {1e3 * me:.1f} ms, compiled {1e3 * mc:.1f} ms "
              f"(speed-up {me / mc:.2f}x); eval batch: eager {1e3 * mve:.1f} ms, compiled {1e3 * mvc:.1f} ms "
              f"({mve / mvc:.2f}x)")
        print(f"[compile] a demo ({args.demo_steps} steps + {args.demo_evals} eval batches): eager "
              f"{eager_total:.1f} s, compiled {comp_total:.1f} s incl. compile -> "
              f"{'compile pays' if comp_total < eager_total else 'compile does NOT pay: keep compile: false'} "
              f"(ratio {comp_total / eager_total:.2f}x)")


if __name__ == "__main__":
    main()
