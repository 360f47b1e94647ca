"""One short GPU call: per-epoch times of the full-size ConvNetADSB on a CUDA device, written as a
Markdown table (issue 21). Not yet run: no GPU was lent while it was written (BENCHMARKS.md).

Data: random I/Q bursts shaped as the seed's (10 classes, 2 x 4800), ``--train-n`` training and
``--val-n`` validation samples, batch ``--batch`` (64: the predecessor's), Adam, clip 1.0. Each
arm: one warm-up epoch, then ``--epochs`` timed epochs (``torch.cuda.synchronize`` around each);
an epoch = the training batches + a validation pass. Arms:

1. fp32, host data (pinned, non-blocking copy per batch): the baseline;
2. fp16 autocast + GradScaler, host data;
3. bf16 autocast, host data;
4. fp16 + GradScaler under ``nn.DataParallel`` on one device (the wrapper's own cost);
5. fp16 + GradScaler, data resident on the device (``imbalance.loader.DeviceResidentData``: batches
   gathered by index there, no per-batch copy);
6. as 5 with ``torch.compile`` (compile time measured and amortised over 200 epochs);
7. the framework: ``experiment=adsb_full`` with 10 classes at ``--batch`` through
   ``stages.run_stage1`` (its precision, ``compile: auto`` on the 200-epoch schedule,
   ``data.on_device: auto``), from bench_speed.py;
8. the default cRT path: ``python main.py experiment=adsb_full`` shortened (2 + 20 epochs, 10
   classes): stage-2 feature caching and per-epoch time, from results.json / metrics.csv.

    python bench/bench_gpu.py                       # on the GPU (about 5 minutes)
    python bench/bench_gpu.py --out $OUT/gpu.md     # also write the table
    python bench/bench_gpu.py --device cpu --quick  # smoke test of every arm on the CPU (tiny)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import ROOT, machine_line  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

PLANNED_EPOCHS = 200


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Arm:
    """One training configuration: model (maybe wrapped), precision, data path."""

    def __init__(self, name, model, device, *, dtype=None, scaler=False, resident=False, data=None, batch=64):
        self.name, self.model, self.device, self.dtype = name, model, device, dtype
        self.scaler = torch.amp.GradScaler(device.type) if scaler else None
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        from imbalance.loader import BatchLoader, DeviceResidentData

        train, val = data
        if resident:
            train, val = DeviceResidentData(train, device), DeviceResidentData(val, device)
        self.train = BatchLoader(train, batch, shuffle=True, drop_last=True, device=device, pin_memory=True)
        self.val = BatchLoader(val, 512, device=device, pin_memory=True)

    def autocast(self):
        if self.dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def epoch(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        self.model.train()
        for x, y in self.train:
            self.opt.zero_grad(set_to_none=True)
            with self.autocast():
                z = self.model(x)
            loss = nn.functional.cross_entropy(z.float(), y)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.opt)
                nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.opt.step()
        self.model.eval()
        with torch.no_grad(), self.autocast():
            for x, _ in self.val:
                self.model(x)
        sync(self.device)
        return time.perf_counter() - t0


def make_data(args):
    from imbalance.data import ArraySignalDataset

    g = torch.Generator().manual_seed(0)
    length = 512 if args.quick else 4800

    def ds(n):
        return ArraySignalDataset(torch.randn(n, 2, length, generator=g), torch.arange(n) % 10)

    return ds(args.train_n), ds(args.val_n)


def arms(args, device):
    from imbalance.models import create_model

    data = make_data(args)
    kw = dict(width=16, depth=3) if args.quick else {}
    torch.manual_seed(0)
    base = create_model("ConvNetADSB", 10, **kw).to(device)

    def fresh():
        return copy.deepcopy(base)

    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    half = torch.float16 if device.type == "cuda" else torch.bfloat16  # CPU dry run: no fp16 autocast speed
    out = [("fp32, host data", lambda: Arm("fp32", fresh(), device, data=data, batch=args.batch)),
           ("fp16 + GradScaler, host data",
            lambda: Arm("fp16", fresh(), device, dtype=half, scaler=True, data=data, batch=args.batch))]
    if bf16_ok:
        out.append(("bf16, host data",
                    lambda: Arm("bf16", fresh(), device, dtype=torch.bfloat16, data=data, batch=args.batch)))
    out += [("fp16 + GradScaler, DataParallel on 1 device",
             lambda: Arm("dp", nn.DataParallel(fresh(), device_ids=[device.index or 0]) if device.type == "cuda"
                         else fresh(), device, dtype=half, scaler=True, data=data, batch=args.batch)),
            ("fp16 + GradScaler, data on the device",
             lambda: Arm("res", fresh(), device, dtype=half, scaler=True, resident=True, data=data, batch=args.batch)),
            ("fp16 + GradScaler, data on the device, torch.compile",
             lambda: Arm("comp", torch.compile(fresh()), device, dtype=half, scaler=True, resident=True, data=data,
                         batch=args.batch))]
    return out


def time_arm(make, epochs: int):
    arm = make()
    first = arm.epoch()  # warm-up (the compile, for a compiled arm)
    times = [arm.epoch() for _ in range(epochs)]
    med = statistics.median(times)
    return med, max(0.0, first - med)


def framework_epoch(args, device):
    """Arm 7: the framework as experiment=adsb_full builds it (bench_speed.build)."""
    import bench_speed

    ns = argparse.Namespace(batch=args.batch, threads=torch.get_num_threads(), quick=args.quick, override=[],
                            cache_dir=args.cache_dir, device=str(device))
    base, ours, decision, (setup_s, _), info, tmp = bench_speed.build(ns)
    first = time.perf_counter()
    ours()
    first = time.perf_counter() - first
    times = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        ours()
        times.append(time.perf_counter() - t0)
    tmp.cleanup()
    med = statistics.median(times)
    return med, setup_s + max(0.0, first - med), decision.reason, info


def crt_path(args, device):
    """Arm 8: ``python main.py experiment=adsb_full`` shortened; stage-2 (cRT) figures."""
    with tempfile.TemporaryDirectory(prefix="bench_gpu_crt_") as tmp:
        ep2 = 3 if args.quick else 20
        cmd = [sys.executable, os.path.join(ROOT, "main.py"), "experiment=adsb_full", "data.synthetic.num_classes=10",
               f"data.batch_size={args.batch}", "training.epochs=2", f"stage2.epochs={ep2}",
               "visualization.enabled=false", f"device={device}", f"hydra.run.dir={tmp}/run"]
        if args.quick:
            cmd += ["data.synthetic.train_per_class=40", "data.synthetic.test_per_class=4",
                    "data.synthetic.length=512", "data.target_length=512", "model.width=16", "model.depth=3"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            return f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
        res = json.loads(Path(tmp, "run", "results", "results.json").read_text())
        import csv

        with open(Path(tmp, "run", "logs", "metrics.csv")) as fh:
            rows = [r for r in csv.DictReader(fh) if r["stage"] == "2"]
        per = statistics.median(float(r["epoch_time"]) for r in rows) if rows else float("nan")
        return (f"stage 2 (cRT on cached features): {res['timings'].get('stage2', float('nan')):.2f} s for {len(rows)} "
                f"epochs incl. caching, {per * 1e3:.1f} ms/epoch; stage 1 {res['timings'].get('stage1', 0):.1f} s "
                f"for 2 epochs; precision {res.get('precision')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--train-n", type=int, default=896, help="training samples (adsb_full, 10 classes: ~896)")
    ap.add_argument("--val-n", type=int, default=900)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cache-dir", default=None, help="compile cache folder")
    ap.add_argument("--out", default=None, help="write the Markdown table here")
    ap.add_argument("--skip", nargs="*", default=[], help="arm numbers to skip (1-8)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.train_n, args.val_n, args.epochs, args.batch = 64, 32, 1, 16
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing measured (run on a GPU, or --device cpu --quick for a smoke test)")
        return
    if args.cache_dir:
        from imbalance.compilation import configure_cache

        configure_cache(args.cache_dir)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = "CPU (smoke test)"
    lines = [f"{machine_line()}; device {name}",
             f"ConvNetADSB {'tiny' if args.quick else 'full size'}, batch {args.batch}, train {args.train_n}, "
             f"val {args.val_n}, {args.epochs} timed epochs after 1 warm-up", "",
             "| # | arm | s/epoch | vs fp32 | compile/first-epoch extra s | amortised s/epoch (200 epochs) |",
             "|---|---|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    base = None
    for i, (label, make) in enumerate(arms(args, device), 1):
        if str(i) in args.skip:
            continue
        med, extra = time_arm(make, args.epochs)
        base = base or med
        row = (f"| {i} | {label} | {med:.3f} | {base / med:.2f}x | {extra:.1f} | "
               f"{med + extra / PLANNED_EPOCHS:.3f} |")
        lines.append(row)
        print(row, flush=True)
    if "7" not in args.skip:
        med, extra, reason, info = framework_epoch(args, device)
        row = (f"| 7 | framework, experiment=adsb_full ({info['precision']}) | {med:.3f} | "
               f"{(base or med) / med:.2f}x | {extra:.1f} | {med + extra / PLANNED_EPOCHS:.3f} |")
        lines += [row]
        print(row, flush=True)
        lines.append(f"\nframework's compile decision: {reason}")
        print(lines[-1], flush=True)
    if "8" not in args.skip:
        lines.append(f"default cRT path: {crt_path(args, device)}")
        print(lines[-1], flush=True)
    out = args.out or (os.path.join(os.environ["OUT"], "bench_gpu.md") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
