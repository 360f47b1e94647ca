"""Forward+backward time per batch for every registered model on the CPU, fp32 vs bf16.

    python bench/bench_models.py --quick              # demo size only (batch 128, length 1024)
    python bench/bench_models.py --threads 2          # demo size and the seed's full size
                                                      # (batch 64, length 4800): slow, minutes
    python bench/bench_models.py --quick --no-bf16 --models ConvNetADSB ConvNetSE

Covers every registered model: the seven origin networks (``create_model`` defaults =
ORIGIN_MODELS.md), the variants (ConvNetSE, this project's earlier ConvNetADSB) and the attention
models (SignalTransformer, ConvTransformer: demo size "tiny", 64 wide, 2 blocks; full size
"base", 256 wide, 6 blocks). Demo size:
the width/depth of ``DEMO_KW`` (what the CPU demo config uses for ConvNet-style models:
width 32, depth 4; ResNet-style: width 16, depth 3), 10 classes by default.

Baseline: fp32. Measured: bf16 autocast (``torch.autocast('cpu', dtype=torch.bfloat16)``).
One timed step = forward, cross-entropy, backward (no optimizer step); the median of
``--repeats`` steps after one warm-up step is reported, with the bf16/fp32 ratio (< 1: bf16
is faster). Also prints parameters and forward GFLOPs per sample (``model_complexity``).
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext


import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from imbalance.models import MODELS, create_model, model_complexity  # noqa: E402

# Demo-size settings (what a CPU demo config would use); full size = create_model defaults.
DEMO_KW = {
    "ConvNetADSB": dict(width=32, depth=4),
    "ConvNetSE": dict(width=32, depth=4),
    "ResNet1D": dict(width=16, depth=3),
    "DilatedTCN": dict(width=32, depth=4),
    "FrequencyDomainExpert": dict(width=32, depth=4),
    "ResNetFrequencyExpert": dict(width=16, depth=3),
    "MixtureOfExpertsConvNet": dict(width=32, depth=4),
    "MixtureOfExpertsResNet": dict(width=16, depth=3),
    "InceptionTime": dict(width=16, depth=3),
    "FCN": dict(width=32, depth=3),
    "ResNetTSC": dict(width=16, depth=3),
    "SignalTransformer": dict(width=64, depth=2),  # the "tiny" size (transformers.py)
    "ConvTransformer": dict(width=64, depth=2),
}
SIZES = {"demo": dict(batch=128, length=1024), "full": dict(batch=64, length=4800)}


def step_time(model, x, y, bf16: bool, repeats: int) -> float:
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with ctx():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        dt = time.perf_counter() - t0
        if i > 0:
            times.append(dt)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="demo size only")
    ap.add_argument("--full-only", action="store_true", help="full size only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="*", default=None, help="subset of model names")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--no-bf16", action="store_true", help="fp32 only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = ["demo"] if args.quick else (["full"] if args.full_only else ["demo", "full"])
    names = args.models or MODELS.names()
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} steps\n")
    print("| model | size | batch x length | params (M) | GFLOPs/sample | fp32 ms | bf16 ms | bf16/fp32 |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name in names:
        for size in sizes:
            b, n = SIZES[size]["batch"], SIZES[size]["length"]
            kw = DEMO_KW.get(name, dict(width=32, depth=3)) if size == "demo" else {}
            model = create_model(name, args.num_classes, in_channels=2, **kw)
            cx = model_complexity(model, 2, n)
            model.train()
            x = torch.randn(b, 2, n)
            y = torch.randint(0, args.num_classes, (b,))
            reps = args.repeats if size == "demo" else max(2, args.repeats // 2)
            t32 = step_time(model, x, y, False, reps)
            t16 = float("nan") if args.no_bf16 else step_time(model, x, y, True, reps)
            print(f"| {name} | {size} | {b} x {n} | {cx['params'] / 1e6:.4f} | "
                  f"{cx['flops_per_sample'] / 1e9:.4f} | {t32:.1f} | {t16:.1f} | {t16 / t32:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
