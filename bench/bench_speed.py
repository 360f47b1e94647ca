"""Full-scale speed: our per-epoch time with ``experiment=adsb_full`` defaults vs a plain fp32 eager
loop of the same network, the compile cache, and the profile behind them (issue 21).

Same data for both: the built-in ADS-B data at adsb_full's settings with 10 classes (2 x 4800
samples, the long-tailed training split and the balanced validation split), batch 64 (the
predecessor's), 1 intra-op thread unless ``--threads``.

* baseline: the origin codebase's ConvNetADSB written as the origin writes it (``nn.Sequential`` of
  Conv1d / BatchNorm1d / ReLU / ``nn.MaxPool1d``, CBAM channel attention with adaptive pools,
  global ``AdaptiveMaxPool1d``), fp32, eager: ``randperm``, slice, forward, cross-entropy,
  backward, clip 1.0, Adam (adsb_full's lr / weight decay), ``loss.item()``; then a validation
  pass at batch 64 counting correct predictions.
* ours: ``imbalance.stages.run_stage1`` as ``python main.py experiment=adsb_full
  data.synthetic.num_classes=10 data.batch_size=64`` builds it: adsb_full's precision (``amp:
  true``: bf16 on a CPU with native bf16, fp32 otherwise), ``compile: auto`` decided on the
  configured schedule (200 epochs), ``data.on_device: auto``, the sampler, BatchLoader, loss,
  cosine schedule, early stopping, metrics.csv and checkpoints every epoch, validation at
  ``evaluation.batch_size``. The time ``compile_for_run`` took (measuring and compiling, whatever
  it decided) is amortised over the 200 planned epochs. ``--also-forced`` adds ``compile=true``.

Epochs alternate (ABBA ...) after one warm-up epoch each; medians and paired ratios of wall and
process CPU time (the steadier figure on a shared machine).

    python bench/bench_speed.py --part epoch --repeats 3           # the target (minutes per epoch)
    python bench/bench_speed.py --part cache                       # compile cache: cold vs warm start
    python bench/bench_speed.py --part profile                     # torch.profiler of one step each
    python bench/bench_speed.py --part accuracy --seeds 42 43 44   # demo, compile=false vs true
    python bench/bench_speed.py --quick                            # smoke test (tiny, seconds)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import ROOT, interleaved, machine_line, ratio_summary, run_main, timed2  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

PLANNED_EPOCHS = 200  # adsb_full's training.epochs (stage 2 is cRT on cached features)


def cpu_kind() -> str:
    """The CPU's vector extensions that decide the precision: native bf16 or not."""
    from imbalance.precision import cpu_has_native_bf16

    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    native = cpu_has_native_bf16()
    return (f"{'NATIVE bf16' if native else 'NO native bf16 (bf16 would be emulated: amp stays fp32)'}; "
            f"flags: {', '.join(have) or '?'}")


# ---------------------------------------------------------------------------------------------
# The baseline: the origin's ConvNetADSB as the origin writes it, and a plain loop
# ---------------------------------------------------------------------------------------------
class OriginChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool1d(1)
        self.max_pool = nn.AdaptiveMaxPool1d(1)
        self.mlp = nn.Sequential(nn.Conv1d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv1d(hidden, channels, 1, bias=False))

    def forward(self, x):
        return x * torch.sigmoid(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))


class OriginConvNetADSB(nn.Module):
    """ORIGIN_MODELS.md's ConvNetADSB in plain PyTorch layers (no adaptation to short signals)."""

    def __init__(self, num_classes: int, in_channels: int = 2, width=None, depth=None, dropout: float = 0.1):
        super().__init__()
        from imbalance.layers import convnet_adsb_plan

        layers, cin = [], in_channels
        for c, k, n, pool in convnet_adsb_plan(width, depth):
            for _ in range(n):
                layers += [nn.Conv1d(cin, c, k, padding=k // 2, bias=False), nn.BatchNorm1d(c), nn.ReLU(inplace=True)]
                cin = c
            if pool:
                layers.append(nn.MaxPool1d(pool))
        self.features = nn.Sequential(*layers)
        self.attention = OriginChannelAttention(cin)
        self.pool = nn.AdaptiveMaxPool1d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.dropout(self.pool(self.attention(self.features(x))).flatten(1)))


def overrides(args) -> list:
    out = ["experiment=adsb_full", "data.synthetic.num_classes=10", f"data.batch_size={args.batch}",
           f"num_threads={args.threads}", "visualization.enabled=false", "progress_bar=false",
           f"training.epochs={PLANNED_EPOCHS}"]
    if args.quick:
        out += ["data.synthetic.train_per_class=40", "data.synthetic.test_per_class=4",
                "data.synthetic.length=512", "data.target_length=512", "model.width=16", "model.depth=3"]
    return out + list(args.override)


def build(args, compile_setting=None):
    """The framework's pieces as ``pipeline.run`` builds them, and the plain loop's."""
    import logging

    from imbalance import builders as B
    from imbalance.config import compose, with_schema
    from imbalance.precision import make_precision
    from imbalance.run_folder import MetricsWriter, RunFolder
    from imbalance.runtime import seed_everything
    from imbalance.stages import RunContext, run_stage1

    logging.basicConfig(level=logging.INFO, format="  [log] %(message)s")
    for noisy in ("imbalance.engine", "imbalance.stages", "imbalance.builders", "imbalance.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    extra = [] if compile_setting is None else [f"compile={compile_setting}"]
    if args.cache_dir:
        extra.append(f"compile_cache_dir={args.cache_dir}")
    cfg = with_schema(compose(overrides(args) + extra))
    seed_everything(int(cfg.seed))
    device = torch.device(getattr(args, "device", "cpu"))
    precision = make_precision(device, bool(cfg.amp), cfg.amp_dtype)
    data = B.place_data(cfg, B.build_data(cfg), device)
    model = B.build_model(cfg, data, device)
    t0, c0 = time.perf_counter(), time.process_time()
    model, decision = B.compile_for_run(cfg, data, model, device, precision)
    setup_s, setup_cpu = time.perf_counter() - t0, time.process_time() - c0
    tmp = tempfile.TemporaryDirectory(prefix="bench_speed_")
    counter = {"n": 0}
    folder = RunFolder(Path(tmp.name, "run"))
    ctx = RunContext(folder=folder, device=device, precision=precision, data=data, model=model,
                     metrics=MetricsWriter(folder.metrics_csv),
                     val_loader=B.make_loader(data.val, B.cfg_eval_batch(cfg), device, cfg),
                     test_loader=B.make_loader(data.test, B.cfg_eval_batch(cfg), device, cfg))

    def ours():
        counter["n"] += 1
        plan = B.build_stage1(cfg, data, ctx.model, device)
        plan.epochs = 1
        run_stage1(ctx, plan)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t = cfg.training
    torch.manual_seed(0)
    origin = OriginConvNetADSB(data.num_classes, data.num_channels, width=cfg.model.width,
                               depth=cfg.model.depth).to(device)
    opt = torch.optim.Adam(origin.parameters(), lr=float(t.lr), weight_decay=float(t.weight_decay))
    host_train = getattr(data.train, "source", data.train)  # the host data set (ours may hold a device copy)
    host_val = getattr(data.val, "source", data.val)
    xtr, ytr = host_train.x.to(device), torch.as_tensor(host_train.labels).to(device)
    xva, yva = host_val.x.to(device), torch.as_tensor(host_val.labels).to(device)
    bs, clip = int(cfg.data.batch_size), float(t.grad_clip or 0)

    def base():
        origin.train()
        perm = torch.randperm(len(ytr), device=ytr.device)
        running = 0.0
        for b in range(max(1, len(ytr) // bs)):  # drop_last
            idx = perm[b * bs:(b + 1) * bs]
            loss = nn.functional.cross_entropy(origin(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(origin.parameters(), clip)
            opt.step()
            running += loss.item()  # (on a GPU this synchronises every step, as a plain loop does)
        origin.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, len(yva), bs):
                correct += int((origin(xva[s:s + bs]).argmax(1) == yva[s:s + bs]).sum())
        return running, correct

    steps = max(1, len(ytr) // bs)
    info = {"precision": precision.name, "train": len(ytr), "val": len(yva), "steps_per_epoch": steps,
            "shape": tuple(xtr.shape[1:]), "batch": bs, "eval_batch": B.cfg_eval_batch(cfg),
            "params_ours": sum(p.numel() for p in ctx.net.parameters()),
            "params_origin": sum(p.numel() for p in origin.parameters())}
    return base, ours, decision, (setup_s, setup_cpu), info, tmp


def part_epoch(args) -> None:
    print(machine_line())
    print(f"CPU kind: {cpu_kind()}")
    arms = [None] + (["true"] if args.also_forced else [])
    for setting in arms:
        base, ours, decision, (setup_s, setup_cpu), info, tmp = build(args, setting)
        print(f"data: train {info['train']} x {info['shape']}, val {info['val']}, batch {info['batch']} "
              f"({info['steps_per_epoch']} steps/epoch), eval batch ours {info['eval_batch']} / base {info['batch']}; "
              f"params ours {info['params_ours']:,} origin {info['params_origin']:,}; our precision {info['precision']}")
        print(f"ours: {decision.reason}")
        print(f"  compile_for_run took {setup_s:.1f} s wall / {setup_cpu:.1f} s CPU (measuring, compiling)")
        first_base, first_ours = timed2(base), timed2(ours)  # warm-up; ours' first epoch may still compile
        print(f"  first epoch (warm-up): base {first_base[0]:.1f} s wall / {first_base[1]:.1f} s CPU, ours "
              f"{first_ours[0]:.1f} s wall / {first_ours[1]:.1f} s CPU", flush=True)
        times = interleaved(base, ours, args.repeats, warmup=0)
        for kind, suffix, i in (("wall", "", 0), ("CPU", "_cpu", 1)):
            r = ratio_summary(times["base" + suffix], times["ours" + suffix])
            # the compile a run pays once: compile_for_run (measuring / compiling) plus whatever its first
            # epoch took beyond a steady one (lazy compiles of the training and evaluation graphs)
            once = (setup_s if i == 0 else setup_cpu) + max(0.0, first_ours[i] - r["ours_median"])
            amort = r["ours_median"] + once / PLANNED_EPOCHS
            print(f"  {kind:4s} compile paid once {once:.1f} s -> {once / PLANNED_EPOCHS:.2f} s per planned epoch")
            print(f"  {kind:4s} s/epoch: plain fp32 eager origin loop {r['base_median']:.2f} "
                  f"({', '.join(f'{v:.1f}' for v in times['base' + suffix])}); ours {r['ours_median']:.2f} "
                  f"({', '.join(f'{v:.1f}' for v in times['ours' + suffix])}), with the amortised compile "
                  f"{amort:.2f}")
            print(f"  {kind:4s} speed-up base/ours: {1 / r['ratio_median']:.2f}x (pairs {1 / r['ratio_max']:.2f}-"
                  f"{1 / r['ratio_min']:.2f}, {r['n']} pairs); with the amortised compile "
                  f"{r['base_median'] / amort:.2f}x; target >= 3x (native bf16) / >= 2x (AVX2)", flush=True)
        tmp.cleanup()


# ---------------------------------------------------------------------------------------------
# The compile cache: two fresh processes, one cache folder
# ---------------------------------------------------------------------------------------------
def compile_child(args) -> None:
    """(In a fresh process) compile the model as a run does and report the compile seconds."""
    from imbalance.compilation import configure_cache
    from imbalance.models import create_model

    configure_cache(args.cache_dir)
    torch.set_num_threads(args.threads)
    kw = dict(width=16, depth=3) if args.quick else {}
    length = 512 if args.quick else 4800
    torch.manual_seed(0)
    model = create_model("ConvNetADSB", 10, **kw)
    x = torch.randn(args.batch, 2, length)
    y = torch.randint(0, 10, (args.batch,))
    xe = torch.randn(args.eval_batch, 2, length)

    def step(m):
        m.train()
        t0 = time.perf_counter()
        nn.functional.cross_entropy(m(x), y).backward()
        return time.perf_counter() - t0

    def evaluate(m):
        m.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            m(xe)
        return time.perf_counter() - t0

    step(model)
    eager, eager_eval = step(model), evaluate(model)
    t0 = time.perf_counter()
    comp = torch.compile(model)
    first, first_eval = step(comp), evaluate(comp)
    total = time.perf_counter() - t0
    steady, steady_eval = step(comp), evaluate(comp)
    print(json.dumps({"compile_s": max(0.0, first - steady) + max(0.0, first_eval - steady_eval),
                      "first_train_s": first, "first_eval_s": first_eval, "wall_first_calls_s": total,
                      "eager_step_s": eager, "compiled_step_s": steady, "eager_eval_s": eager_eval,
                      "compiled_eval_s": steady_eval}))


def part_cache(args) -> None:
    print(machine_line())
    print(f"CPU kind: {cpu_kind()}")
    with tempfile.TemporaryDirectory(prefix="bench_speed_cache_") as cache:
        runs = []
        for start in ("cold (empty cache)", "warm (same cache, new process)"):
            cmd = [sys.executable, os.path.abspath(__file__), "--compile-child", "--cache-dir", cache,
                   "--threads", str(args.threads), "--batch", str(args.batch), "--eval-batch", str(args.eval_batch)]
            if args.quick:
                cmd.append("--quick")
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stdout[-2000:] + proc.stderr[-3000:])
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append(res)
            print(f"  {start}: compile {res['compile_s']:.1f} s (first training step {res['first_train_s']:.1f} s, "
                  f"first evaluation batch {res['first_eval_s']:.1f} s); steady step eager "
                  f"{res['eager_step_s']:.3f} s, compiled {res['compiled_step_s']:.3f} s", flush=True)
        print(f"  compile cache: second start's compile {runs[0]['compile_s'] / max(runs[1]['compile_s'], 1e-9):.1f}x "
              f"shorter; target >= 5x")


# ---------------------------------------------------------------------------------------------
# Profile
# ---------------------------------------------------------------------------------------------
def part_profile(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    from imbalance.models import create_model
    from imbalance.precision import make_precision

    print(machine_line())
    print(f"CPU kind: {cpu_kind()}")
    kw = dict(width=16, depth=3) if args.quick else {}
    length = 512 if args.quick else 4800
    torch.manual_seed(0)
    x = torch.randn(args.batch, 2, length)
    y = torch.randint(0, 10, (args.batch,))
    prec = make_precision(torch.device("cpu"), True)
    arms = {"origin (nn.MaxPool1d), fp32": (OriginConvNetADSB(10, **kw), None),
            "ours (create_model), fp32": (create_model("ConvNetADSB", 10, **kw), None)}
    if prec.dtype is not None:
        arms[f"ours, {prec.name} autocast"] = (create_model("ConvNetADSB", 10, **kw), prec)
    for name, (model, p) in arms.items():
        opt = torch.optim.Adam(model.parameters(), 1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            with (p.autocast() if p is not None else torch.autocast("cpu", enabled=False)):
                z = model(x)
            nn.functional.cross_entropy(z.float(), y).backward()
            opt.step()

        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in rows) / 1e6
        conv = sum(e.self_cpu_time_total for e in rows if "convolution" in e.key) / 1e6
        print(f"{name}: one step (batch {args.batch} x {length}) {total:.2f} s of self CPU time under the profiler; "
              f"convolutions (forward + backward) {conv:.2f} s = {100 * conv / total:.0f}%: the most any "
              f"element-wise fusion can give is {total / max(conv, 1e-9):.2f}x")
        for e in rows[:args.top]:
            print(f"    {e.key:45s} {e.self_cpu_time_total / 1e6:8.3f} s  {100 * e.self_cpu_time_total / 1e6 / total:5.1f}%"
                  f"  calls {e.count}")


# ---------------------------------------------------------------------------------------------
# Accuracy: the demo with compile=false and compile=true
# ---------------------------------------------------------------------------------------------
def part_accuracy(args) -> None:
    print(machine_line())
    print(f"CPU kind: {cpu_kind()}")
    rows = []
    out_dir = args.out or tempfile.mkdtemp(prefix="bench_speed_acc_")
    for seed in args.seeds:
        for setting in ("false", "true"):
            run_dir = os.path.join(out_dir, f"compile_{setting}_seed{seed}")
            overrides = [f"compile={setting}", f"seed={seed}", "exp_name=bench_speed", "visualization.enabled=false",
                         f"num_threads={args.threads}", *args.override]
            if args.cache_dir:
                overrides.append(f"compile_cache_dir={args.cache_dir}")
            res, wall, cpu = run_main(overrides, run_dir)
            f = res["metrics"]["final"]["overall"]
            rows.append({"compile": setting, "seed": seed, "macc": f["macc"], "oa": f["oa"], "wall": wall, "cpu": cpu,
                         "compiled": res["model_info"].get("compile", {}).get("compile")})
            r = rows[-1]
            print(f"  compile={setting:5s} seed {seed}: test OA {100 * r['oa']:.2f}%  mAcc {100 * r['macc']:.2f}%  "
                  f"wall {wall:.0f} s  cpu {r['cpu']:.0f} s  (compiled: {r['compiled']})  {run_dir}", flush=True)
    for setting in ("false", "true"):
        m = [100 * r["macc"] for r in rows if r["compile"] == setting]
        sd = statistics.stdev(m) if len(m) > 1 else float("nan")
        print(f"compile={setting}: final test mAcc {statistics.mean(m):.2f} +- {sd:.2f} % over {len(m)} seeds {m}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("epoch", "cache", "profile", "accuracy"), default="epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval-batch", type=int, default=512, help="evaluation batch of the cache part")
    ap.add_argument("--also-forced", action="store_true", help="epoch part: also ours with compile=true")
    ap.add_argument("--cache-dir", default=None, help="compile cache folder (default: the framework's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--out", default=None, help="accuracy part: folder of the runs (default: a temporary one)")
    ap.add_argument("--top", type=int, default=12, help="profile part: rows per arm")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides (epoch / accuracy parts)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (smoke test)")
    ap.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.batch, args.eval_batch = 1, 8, 16
    torch.set_num_threads(args.threads)
    if args.compile_child:
        return compile_child(args)
    {"epoch": part_epoch, "cache": part_cache, "profile": part_profile, "accuracy": part_accuracy}[args.part](args)


if __name__ == "__main__":
    main()
