"""Selection data for presets: a stratified hold-out of an archive set's TRAINING split.

    python bench/results/holdout_pairs.py ucr:ArrowHead --out DIR [--fraction 0.3] [--seeds 0 1 2]

For each seed r, ``DIR/<Name>_r<r>/train.mat`` holds the rest of the training split and
``DIR/<Name>_r<r>/test.mat`` the held-out part (``fraction`` of every class, at least one
series; a class keeps at least one for training). The official test split is never read, so a
preset compared on these pairs is chosen on validation data only (the suite's ``select_small``
plan). Keys as ``python -m imbalance.archives`` writes them: X (N, C, L) float32 at the longest
training length, Y (N, 1) class codes, mask (N, L), lengths (N,).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import scipy.io

from imbalance.archives import load_archive, parse_source, series_lengths, to_fixed_length
from imbalance.series_data import carve_validation


def write_holdout_pairs(source: str, out_dir: str, *, fraction: float = 0.3, seeds: Sequence[int] = (0, 1, 2),
                        archive_dir: Optional[str] = None) -> List[Dict[str, str]]:
    """One ``{'train': path, 'test': path}`` per seed (module docstring)."""
    X, y, info = load_archive(source, split="train", archive_dir=archive_dir)
    x, mask = to_fixed_length(X, info["max_length"])
    lengths = series_lengths(X)
    codes = np.searchsorted(info["class_values"], y).astype(np.float64).reshape(-1, 1)
    _, name = parse_source(source)
    written = []
    for r in seeds:
        fit_idx, hold_idx = carve_validation(codes.ravel(), fraction, seed=int(r))
        folder = os.path.join(out_dir, f"{name}_r{int(r)}")
        os.makedirs(folder, exist_ok=True)
        paths = {}
        for split, idx in (("train", fit_idx), ("test", hold_idx)):
            path = os.path.join(folder, f"{split}.mat")
            scipy.io.savemat(path, {"X": x[idx], "Y": codes[idx], "mask": mask[idx].astype(np.uint8),
                                    "lengths": lengths[idx]}, do_compression=True)
            paths[split] = path
        written.append(paths)
        print(f"{folder}: {len(fit_idx)} training / {len(hold_idx)} held-out series of {source}'s training split")
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", help="ucr:<Name> or uea:<Name>")
    p.add_argument("--out", required=True)
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--archive-dir", default=None)
    a = p.parse_args(argv)
    for src in a.sources:
        write_holdout_pairs(src, a.out, fraction=a.fraction, seeds=a.seeds, archive_dir=a.archive_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
