"""Evidence behind the proposed optimisations (the profiler found these; see BENCHMARKS.md).

1. Max-pooling in training: ``F.max_pool1d(x, 2)`` with autograd goes through
   ``aten::max_pool2d_with_indices`` (torch.profiler: about 29% of a demo training step on the
   CPU). Proposed: while autograd records, ``x[..., :2n].unflatten(-1, (n, 2)).max(-1).values``
   (same values, same gradients: the first maximum of each pair wins, as in max_pool1d);
   ``F.max_pool1d`` otherwise (it is the fastest without autograd). Timed as a whole
   ConvNetADSB demo training step (the model's pooling patched in-process), interleaved.
2. Evaluation batch size on the CPU: the time of one forward pass over ``--eval-n`` samples of
   the demo model at several batch sizes (big batches overflow the caches: activations of
   512 x 32 x 1024 float32 are 64 MiB per layer).
3. ``model_complexity`` (logged by every run): its first call imports ~800 modules
   (FlopCounterMode pulls in torch._dynamo, sympy, ...): wall and CPU time of a first call,
   in a fresh interpreter.

    python bench/bench_hotspots.py [--repeats 10] [--threads 1]
    python bench/bench_hotspots.py --quick
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _util import ROOT, machine_line  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def pool_unflatten_max(x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        n = x.shape[-1] // 2
        return x[..., : 2 * n].unflatten(-1, (n, 2)).max(-1).values
    return F.max_pool1d(x, 2)


def pool_reference(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool1d(x, 2)


def bench_pool(repeats: int, size: str) -> None:
    from imbalance import models as M

    current = [pool_reference]
    original = M.AdaptiveDownsample.forward

    def forward(self, x):
        for _ in range(self.times):
            if x.shape[-1] < 2 * self.min_length:
                break
            x = current[0](x) if self.mode == "max" else F.avg_pool1d(x, 2)
        return x

    M.AdaptiveDownsample.forward = forward
    try:
        torch.manual_seed(0)
        if size == "tiny":
            model = M.create_model("ConvNetADSB", 10, width=8, depth=2)
            x = torch.randn(16, 2, 256)
        else:
            model = M.create_model("ConvNetADSB", 10, width=32, depth=4)
            x = torch.randn(128, 2, 1024)
        y = torch.randint(0, 10, (len(x),))
        grads = {}
        for name, fn in (("ref", pool_reference), ("new", pool_unflatten_max)):
            current[0] = fn
            torch.manual_seed(1)  # the same dropout mask
            model.train()
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads[name] = [p.grad.clone() for p in model.parameters()]
        same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads["ref"], grads["new"]))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(fn):
            current[0] = fn
            model.train()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            return time.perf_counter() - t0

        step(pool_reference), step(pool_unflatten_max)
        ta, tb = [], []
        for r in range(repeats):
            if r % 2 == 0:
                ta.append(step(pool_reference))
                tb.append(step(pool_unflatten_max))
            else:
                tb.append(step(pool_unflatten_max))
                ta.append(step(pool_reference))
        ratios = [a / b for a, b in zip(ta, tb)]
        print(f"[max-pool] ConvNetADSB {size} train step (batch {len(x)} x {x.shape[-1]}): F.max_pool1d "
              f"{1e3 * statistics.median(ta):.1f} ms, unflatten-max {1e3 * statistics.median(tb):.1f} ms; "
              f"speed-up {statistics.median(ratios):.3f}x (min {min(ratios):.3f}, max {max(ratios):.3f}); "
              f"same gradients: {same}")
    finally:
        M.AdaptiveDownsample.forward = original


def bench_eval_batch(repeats: int, n: int, size: str) -> None:
    from imbalance.models import create_model

    torch.manual_seed(0)
    if size == "tiny":
        model, length, sizes = create_model("ConvNetADSB", 10, width=8, depth=2), 256, (16, 64)
    else:
        model, length, sizes = create_model("ConvNetADSB", 10, width=32, depth=4), 1024, (64, 128, 256, 512)
    model.eval()
    x = torch.randn(n, 2, length)

    def run(bs):
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, n, bs):
                model(x[s:s + bs])
        return time.perf_counter() - t0

    res = {bs: [] for bs in sizes}
    for bs in sizes:
        run(bs)
    for r in range(repeats):
        for bs in (sizes if r % 2 == 0 else sizes[::-1]):
            res[bs].append(run(bs))
    best = min(statistics.median(v) for v in res.values())
    cells = ", ".join(f"batch {bs}: {1e3 * statistics.median(v):.0f} ms ({statistics.median(v) / best:.2f}x)"
                      for bs, v in res.items())
    print(f"[eval batch] forward of {n} samples, ConvNetADSB {size}: {cells}")


def bench_complexity() -> None:
    code = ("import time, torch\nfrom imbalance.models import create_model, model_complexity\n"
            "m = create_model('ConvNetADSB', 10, width=32, depth=4)\n"
            "c, t = time.process_time(), time.perf_counter()\nmodel_complexity(m, 2, 1024)\n"
            "print(f'{time.perf_counter() - t:.2f} {time.process_time() - c:.2f}')\n"
            "c, t = time.process_time(), time.perf_counter()\nmodel_complexity(m, 2, 1024)\n"
            "print(f'{time.perf_counter() - t:.2f} {time.process_time() - c:.2f}')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    (w1, c1), (w2, c2) = [line.split() for line in out.stdout.strip().splitlines()]
    print(f"[model_complexity] first call in a fresh process: wall {w1} s, CPU {c1} s; second call: "
          f"wall {w2} s, CPU {c2} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-n", type=int, default=1024)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    size = "demo"
    if args.quick:
        args.repeats, args.eval_n, size = 2, 64, "tiny"
    torch.set_num_threads(args.threads)
    print(machine_line())
    bench_pool(args.repeats, size)
    bench_eval_batch(max(2, args.repeats // 2), args.eval_n, size)
    bench_complexity()


if __name__ == "__main__":
    main()
