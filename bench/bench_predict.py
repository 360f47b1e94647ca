"""Inference speed of ``imbalance.predict.predict_proba``.

Baseline: a per-sample loop with autograd on (what a quick script does). Ours: batched,
``torch.inference_mode``, fp32 and bf16 autocast (used by ``--precision auto`` only on CPUs with
native bf16). Prints the median of several repeats and the ratios.

    python bench/bench_predict.py [--model ConvNetADSB --width 32 --depth 4 --length 1024 --n 512]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from imbalance.models import create_model
from imbalance.precision import cpu_has_native_bf16
from imbalance.predict import predict_proba


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ConvNetADSB")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_model(a.model, num_classes=10, in_channels=2, width=a.width, depth=a.depth).eval()
    x = np.random.default_rng(0).standard_normal((a.n, 2, a.length)).astype(np.float32)

    def naive():
        out = []
        for i in range(len(x)):  # autograd on, one signal at a time
            out.append(torch.softmax(model(torch.from_numpy(x[i:i + 1])), 1).detach())
        return torch.cat(out)

    base = timeit(naive, max(1, a.repeats // 2))
    fp32 = timeit(lambda: predict_proba(model, x, batch_size=a.batch_size), a.repeats)
    bf16 = timeit(lambda: predict_proba(model, x, batch_size=a.batch_size, dtype=torch.bfloat16), a.repeats)
    p32 = predict_proba(model, x, batch_size=a.batch_size)
    p16 = predict_proba(model, x, batch_size=a.batch_size, dtype=torch.bfloat16)
    agree = float((p32.argmax(1) == p16.argmax(1)).mean())
    print(f"{a.model} width {a.width} depth {a.depth}, {a.n} signals x {a.length}, {a.threads} thread(s), "
          f"native bf16: {cpu_has_native_bf16()}")
    print(f"per-sample loop with autograd: {base * 1e3:8.1f} ms")
    print(f"batched inference fp32:        {fp32 * 1e3:8.1f} ms   speed-up x{base / fp32:.2f}")
    print(f"batched inference bf16:        {bf16 * 1e3:8.1f} ms   vs fp32 x{fp32 / bf16:.2f}  "
          f"(argmax agreement {100 * agree:.1f}%, max |dp| {np.abs(p32 - p16).max():.3f})")


if __name__ == "__main__":
    main()
