"""Benchmark: time per training step of SAM and ImbSAM vs a plain optimizer step.

One step = forward, loss, backward and optimizer step on one batch of a ConvNetADSB (demo
size by default). SAM needs two forward/backward passes per step, so its expected ratio is
about 2x; ImbSAM has the same two forward passes plus one extra backward through the first
graph (head and tail separately), so a little more. Plain and SAM steps are timed alternately
(ABBA) in the same run, and the printed ratios are medians of the paired ratios.

    python bench/bench_sam.py [--threads 1] [--repeats 20] [--batch 64] [--length 1024]
    python bench/bench_sam.py --device cuda --batch 256 --width 64 --depth 6
    python bench/bench_sam.py --quick
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import interleaved, machine_line, ratio_summary  # noqa: E402

from imbalance.losses import create_loss  # noqa: E402
from imbalance.models import create_model  # noqa: E402
from imbalance.sam import SAM, imbsam_tail_classes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rho", type=float, default=0.05)
    ap.add_argument("--quick", action="store_true", help="tiny model, few repeats (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.length, args.width, args.depth, args.repeats = 16, 256, 8, 2, 4
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)

    k = args.classes
    counts = [int(480 * 100 ** (-c / (k - 1))) for c in range(k)]      # 480 -> 4, the demo's profile
    # batches drawn with the long-tailed class distribution (so ImbSAM sees tail samples)
    p = np.asarray(counts, dtype=np.float64) / sum(counts)
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.choice(k, size=args.batch, p=p), device=dev)
    y[: k] = torch.arange(k, device=dev)[: args.batch]
    x = torch.randn(args.batch, 2, args.length, device=dev)
    loss_fn = create_loss("CrossEntropy")

    def build():
        torch.manual_seed(0)
        m = create_model("ConvNetADSB", num_classes=k, width=args.width, depth=args.depth, norm_kind="bn").to(dev)
        return m.train(), torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)

    plain_model, plain_opt = build()
    sam_model, sam_base = build()
    imb_model, imb_base = build()
    sam = SAM(sam_base, model=sam_model, rho=args.rho, mode="sam")
    imb = SAM(imb_base, model=imb_model, rho=args.rho, mode="imbsam",
              tail_classes=imbsam_tail_classes(counts, 20))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def plain_step():
        plain_opt.zero_grad(set_to_none=True)
        loss_fn(plain_model(x), y).backward()
        plain_opt.step()
        sync()

    def sam_step():
        sam.step(lambda: loss_fn(sam_model(x), y))
        sync()

    def imb_step():
        imb.step(lambda: loss_fn.per_sample(imb_model(x), y), targets=y)
        sync()

    print(f"# SAM vs plain step: ConvNetADSB width {args.width} depth {args.depth}, batch {args.batch} x "
          f"(2, {args.length}), {k} classes, {args.device}")
    print(f"# {machine_line()}")
    n_tail = int(torch.isin(y, torch.as_tensor(imbsam_tail_classes(counts, 20), device=dev)).sum())
    print(f"# tail samples in the batch (n_c < 20): {n_tail} of {args.batch}")
    for name, fn in (("sam", sam_step), ("imbsam", imb_step)):
        t = interleaved(plain_step, fn, args.repeats, warmup=2)
        r = ratio_summary(t["base"], t["ours"])
        print(f"[{name}] plain {1000 * r['base_median']:.1f} ms/step, {name} {1000 * r['ours_median']:.1f} ms/step")
        print(f"ratio {name}/plain: median {r['ratio_median']:.2f}x (pairs {r['ratio_min']:.2f}-"
              f"{r['ratio_max']:.2f}, n={r['n']})")
        if dev.type == "cpu":
            rc = ratio_summary(t["base_cpu"], t["ours_cpu"])
            print(f"ratio {name}/plain (process CPU time): median {rc['ratio_median']:.2f}x")
    with torch.no_grad():  # sanity line: both models trained (cheap)
        print(f"# final losses: plain {float(F.cross_entropy(plain_model(x), y)):.4f}, "
              f"sam {float(F.cross_entropy(sam_model(x), y)):.4f}")


if __name__ == "__main__":
    main()
