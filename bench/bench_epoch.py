"""Framework training epochs vs the bare loop a researcher would write by hand.

Both train the demo's model (``config.yaml``: ConvNetADSB width 32 depth 4) on the demo's
in-memory built-in data (the long-tailed training split, batch 128, drop_last), with the same
initial weights, Adam (lr, weight decay), gradient clipping, fp32, and the same validation
pass (eval mode, no grad, evaluation.batch_size) after every epoch:

- baseline: ``for`` over slices of a fresh ``randperm`` of the contiguous tensor: forward,
  cross-entropy, backward, clip, step (running loss with ``.item()``); then the validation
  pass counting correct predictions;
- ours: ``imbalance.stages.run_stage1`` on a ``RunContext`` and ``builders.build_stage1`` as ``run`` builds them: sampler,
  ``BatchLoader``, loss, schedule, early stopping, ``logs/metrics.csv``, per-epoch
  checkpoints (``stage1_last.pt``, ``stage1_best.pt``) and best-weights copies, the log
  line, and the tqdm progress bar (to /dev/null).

Repeats are interleaved (ABBA ...) and the median ratio ours/base with min-max is printed.
Target (performance issue): at most 1.05x.

    python bench/bench_epoch.py [--epochs 3] [--repeats 6] [--threads 2] [--quick]
    python bench/bench_epoch.py --profile      # cProfile of one framework stage (top functions)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import os
import tempfile
from pathlib import Path

from _util import interleaved, machine_line, ratio_summary  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402


def build(args):
    from imbalance.builders import build_data, build_model, cfg_eval_batch, make_loader
    from imbalance.config import compose, with_schema
    from imbalance.run_folder import MetricsWriter, RunFolder
    from imbalance.runtime import seed_everything

    overrides = [f"training.epochs={args.epochs}", "progress_bar=true", "visualization.enabled=false",
                 *args.override]
    cfg = with_schema(compose(overrides))
    seed_everything(int(cfg.seed))
    data = build_data(cfg)
    device = torch.device("cpu")
    model = build_model(cfg, data, device)
    init_state = copy.deepcopy(model.state_dict())
    from imbalance.precision import make_precision

    precision = make_precision(device, bool(cfg.amp), cfg.amp_dtype)
    tmp = tempfile.TemporaryDirectory(prefix="bench_epoch_")
    counter = {"n": 0}

    # log records go to a file, as in a run (the console handler is replaced by a file one)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fh = logging.FileHandler(os.path.join(tmp.name, "training.log"))
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)

    def ours():
        from imbalance.builders import build_stage1
        from imbalance.stages import RunContext, run_stage1

        counter["n"] += 1
        folder = RunFolder(Path(tmp.name, f"run{counter['n']}"))
        model.load_state_dict(init_state)
        torch.manual_seed(int(cfg.seed))
        ctx = RunContext(folder=folder, device=device, precision=precision, data=data, model=model,
                         metrics=MetricsWriter(folder.metrics_csv), progress=True,
                         val_loader=make_loader(data.val, cfg_eval_batch(cfg), device, cfg),
                         test_loader=make_loader(data.test, cfg_eval_batch(cfg), device, cfg))
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            res = run_stage1(ctx, build_stage1(cfg, data, model, device))
        assert res.epochs_run == args.epochs, res.epochs_run

    xtr, ytr = data.train.x, torch.as_tensor(data.train.labels)
    xva, yva = data.val.x, torch.as_tensor(data.val.labels)
    bs, bs_eval = int(cfg.data.batch_size), cfg_eval_batch(cfg)
    clip = float(cfg.training.grad_clip or 0)
    t = cfg.training

    def base():
        model.load_state_dict(init_state)
        torch.manual_seed(int(cfg.seed))
        opt = torch.optim.Adam(model.parameters(), lr=float(t.lr), weight_decay=float(t.weight_decay))
        n = len(ytr)
        for _epoch in range(args.epochs):
            model.train()
            perm = torch.randperm(n)
            running = 0.0
            for b in range(n // bs):  # drop_last
                idx = perm[b * bs:(b + 1) * bs]
                xb, yb = xtr[idx], ytr[idx]
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                running += loss.item()
            model.eval()
            correct = 0
            with torch.no_grad():
                for s in range(0, len(yva), bs_eval):
                    correct += int((model(xva[s:s + bs_eval]).argmax(1) == yva[s:s + bs_eval]).sum())
        model.train()

    info = (f"{cfg.model.name} width {cfg.model.width} depth {cfg.model.depth}, train {len(ytr)} x "
            f"{tuple(xtr.shape[1:])}, val {len(yva)}, batch {bs} (eval {bs_eval}), {n_batches(len(ytr), bs)} "
            f"steps/epoch, {args.epochs} epoch(s), grad_clip {clip or 'off'}, {precision.name}")
    return base, ours, info, tmp


def n_batches(n: int, bs: int) -> int:
    return n // bs if n >= bs else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 epoch, 2 repeats, no warm-up (smoke test)")
    ap.add_argument("--profile", action="store_true", help="cProfile one framework stage and print the top 25")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for both")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.repeats = 1, 2
    torch.set_num_threads(args.threads)
    base, ours, info, tmp = build(args)
    print(machine_line())
    print(info)
    if args.profile:
        import cProfile
        import pstats

        ours()  # warm
        pr = cProfile.Profile()
        pr.enable()
        ours()
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(25)
        print(s.getvalue())
        return
    times = interleaved(base, ours, args.repeats, warmup=0 if args.quick else 1)
    r = ratio_summary(times["base"], times["ours"])
    print(f"bare loop : median {r['base_median']:.3f} s  ({r['base_median'] / args.epochs:.3f} s/epoch)  "
          f"runs {', '.join(f'{v:.2f}' for v in times['base'])}")
    print(f"framework : median {r['ours_median']:.3f} s  ({r['ours_median'] / args.epochs:.3f} s/epoch)  "
          f"runs {', '.join(f'{v:.2f}' for v in times['ours'])}")
    print(f"ratio framework/bare: median {r['ratio_median']:.3f}x (min {r['ratio_min']:.3f}, "
          f"max {r['ratio_max']:.3f}, {r['n']} pairs); target <= 1.05x")
    c = ratio_summary(times["base_cpu"], times["ours_cpu"])
    print(f"CPU time (user+sys of this process): bare median {c['base_median']:.3f} s, framework median "
          f"{c['ours_median']:.3f} s; ratio median {c['ratio_median']:.3f}x (min {c['ratio_min']:.3f}, "
          f"max {c['ratio_max']:.3f})")
    tmp.cleanup()


if __name__ == "__main__":
    main()
