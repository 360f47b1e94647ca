"""Are two run folders the same run? Compares results.json metrics (every stage, per class,
confusion matrix, validation metrics) and every tensor of every checkpoint, bit for bit.

    python bench/compare_runs.py experiments/demo_A experiments/demo_B

Prints one line per difference and ``identical`` (exit 0) or ``differ`` (exit 1). Used to check
that a refactoring changed no result (same config, same seed, same threads, CPU)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

KEYS = ("metrics", "val_metrics", "per_class", "confusion_matrix", "class_counts", "classes", "stages")


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def compare(a: Path, b: Path) -> list:
    diffs = []
    ra = json.loads((a / "results" / "results.json").read_text())
    rb = json.loads((b / "results" / "results.json").read_text())
    for key in KEYS:
        if ra.get(key) != rb.get(key):
            diffs.append(f"results.json {key} differs")
    names = sorted(p.name for p in (a / "checkpoints").glob("*.pt"))
    if names != sorted(p.name for p in (b / "checkpoints").glob("*.pt")):
        diffs.append(f"checkpoint files differ: {names} vs {sorted(p.name for p in (b / 'checkpoints').glob('*.pt'))}")
    for name in names:
        ta = dict(_tensors(torch.load(a / "checkpoints" / name, weights_only=True)))
        tb = dict(_tensors(torch.load(b / "checkpoints" / name, weights_only=True)))
        for k in sorted(set(ta) | set(tb)):
            if k not in ta or k not in tb:
                diffs.append(f"{name}: tensor {k} only in {'A' if k in ta else 'B'}")
                continue
            if ta[k].dtype != tb[k].dtype or ta[k].shape != tb[k].shape or not torch.equal(ta[k], tb[k]):
                diffs.append(f"{name}: tensor {k} differs")
    return diffs


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__)
        return 2
    diffs = compare(Path(argv[0]), Path(argv[1]))
    for d in diffs:
        print(d)
    print("identical" if not diffs else "differ")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
