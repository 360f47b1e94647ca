"""The run folder: its layout, the files a run writes and the readers of those files.

::

    <run>/                              experiments/<exp_name>_<YYYYmmdd-HHMMSS-ffffff>
      .hydra/                           composed config and overrides (Hydra)
      logs/training.log  logs/metrics.csv
      checkpoints/stage<k>_{best,last}.pt  stage<k>_last.prev.pt  final.pt
      results/results.json  summary.txt  per_class.csv  confusion_matrix.csv  predictions.npz
      results/*.png, *.pdf              figures
    <parent>/<exp_name>_latest -> <run>

One owner for these names: the run, evaluation, prediction, figures, resume and ``summarize.py``
all use :class:`RunFolder` instead of spelling the paths.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

log = logging.getLogger(__name__)

__all__ = ["RunFolder", "METRICS_COLUMNS", "MetricsWriter", "update_latest_link", "find_run_folder",
           "read_json"]

PathLike = Union[str, os.PathLike]

METRICS_COLUMNS = [
    "stage", "epoch", "global_epoch", "lr", "train_loss", "train_acc",
    "val_loss", "val_acc", "val_macc", "epoch_time",
]
"""Columns of ``logs/metrics.csv``: one row per epoch and stage."""


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (nothing is created until a writer needs it)."""

    root: Path

    def __init__(self, root: PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    # folders
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def hydra(self) -> Path:
        return self.root / ".hydra"

    # files
    @property
    def training_log(self) -> Path:
        return self.logs / "training.log"

    @property
    def metrics_csv(self) -> Path:
        return self.logs / "metrics.csv"

    @property
    def results_json(self) -> Path:
        return self.results / "results.json"

    @property
    def summary_txt(self) -> Path:
        return self.results / "summary.txt"

    @property
    def per_class_csv(self) -> Path:
        return self.results / "per_class.csv"

    @property
    def confusion_matrix_csv(self) -> Path:
        return self.results / "confusion_matrix.csv"

    @property
    def predictions_npz(self) -> Path:
        return self.results / "predictions.npz"

    @property
    def final_checkpoint(self) -> Path:
        return self.checkpoints / "final.pt"

    def stage_checkpoint(self, stage: int, kind: str) -> Path:
        """``checkpoints/stage<k>_<kind>.pt`` (kind: best / last)."""
        return self.checkpoints / f"stage{int(stage)}_{kind}.pt"

    def figure(self, name: str, ext: str = "png") -> Path:
        return self.results / f"{name}.{ext}"

    def looks_like_run(self) -> bool:
        return self.results.is_dir() or self.metrics_csv.is_file() or self.checkpoints.is_dir()

    def read_results(self) -> Optional[Dict[str, Any]]:
        """``results/results.json`` as a dict, or None when missing or unreadable."""
        return read_json(self.results_json)


def read_json(path: PathLike) -> Optional[Dict[str, Any]]:
    """A JSON object file as a dict; None (with a warning for a damaged file) otherwise."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("%s cannot be read: %s", path, err)
        return None
    return obj if isinstance(obj, dict) else None


def find_run_folder(path: PathLike) -> Optional[RunFolder]:
    """The run folder for ``path``: a run folder, its ``_latest`` link, or its ``results/`` or
    ``checkpoints/`` subfolder; None when it is none of these."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        return None
    p = p.resolve()
    for cand in (p, p.parent):
        folder = RunFolder(cand)
        if folder.looks_like_run() and (cand == p or p.name in ("results", "checkpoints", "logs")):
            return folder
    return None


def update_latest_link(run_dir: PathLike, exp_name: str) -> None:
    """``<parent>/<exp_name>_latest`` -> run_dir (replaced atomically)."""
    run_dir = Path(run_dir)
    link = run_dir.parent / f"{exp_name}_latest"
    tmp = run_dir.parent / f".{exp_name}_latest.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
    except OSError as err:  # e.g. a file system without symlinks
        log.warning("could not update %s: %s", link, err)


class MetricsWriter:
    """Appends one row per epoch to logs/metrics.csv (flushed every row)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh).writerow(METRICS_COLUMNS)

    def drop_rows_after(self, stage: int, epoch: int) -> None:
        """Remove rows of ``stage`` beyond ``epoch`` and of later stages (for resume)."""
        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        keep = [r for r in rows if int(r["stage"]) < stage or (int(r["stage"]) == stage and int(r["epoch"]) <= epoch)]
        if len(keep) != len(rows):
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=METRICS_COLUMNS)
                w.writeheader()
                w.writerows(keep)
            os.replace(tmp, self.path)

    def write(self, row: Dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([format_cell(row.get(c)) for c in METRICS_COLUMNS])


def format_cell(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v
