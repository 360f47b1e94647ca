"""Stage-3 validation curves (val mAcc against tau) of two sets of runs side by side, the figure
of docs/faithfulness.md.

    python bench/plot_stage3_curves.py BEFORE_ROOT AFTER_ROOT OUT.png

Each root holds run folders named ``<ds>_taunorm``, ``<ds>_la`` and ``<ds>_lahead_la`` for ``ds`` in
``demo`` and ``osu`` (the commands are in docs/faithfulness.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (("taunorm", "stage3.tau_norm_curve", "tau-norm (stage 1 CE)"),
          ("la", "stage3.logit_tau_curve", "logit adjustment (stage 1 CE)"),
          ("lahead_la", "stage3.logit_tau_curve", "logit adjustment after a logit_adjust head"))


def curve(root: Path, name: str, key: str):
    path = root / name / "results" / "results.json"
    if not path.exists():
        return None
    c = json.loads(path.read_text())["calibration"].get(key)
    return None if c is None else ([r["tau"] for r in c], [100 * r["val_macc"] for r in c])


def main(argv=None) -> int:
    before, after, out = (sys.argv[1:] if argv is None else argv)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), constrained_layout=True)
    for row, ds in enumerate(("demo", "osu")):
        for col, (name, key, title) in enumerate(PANELS):
            ax = axes[row, col]
            for root, style, label in ((before, "--", "before the fixes"), (after, "-", "after the fixes")):
                c = curve(Path(root), f"{ds}_{name}", key)
                if c:
                    ax.plot(c[0], c[1], style, marker=".", label=label)
            ax.set_title(f"{'built-in demo' if ds == 'demo' else 'OSULeaf'}: {title}", fontsize=9)
            ax.set_xlabel("tau")
            ax.set_ylabel("validation mAcc (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
