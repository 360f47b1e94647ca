"""A run's results record: one builder for training and evaluation runs, results.json (written
atomically), summary.txt, provenance."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

from .config import PROJECT_ROOT

METRIC_LABELS = [
    ("oa", "OA"), ("macc", "mAcc"), ("balanced_acc", "Balanced acc"), ("macro_f1", "Macro-F1"),
    ("gmean", "G-mean"), ("many_acc", "Many-shot acc"), ("medium_acc", "Medium-shot acc"),
    ("few_acc", "Few-shot acc"), ("hm", "HM (many, few)"), ("nll", "NLL"), ("ece", "ECE"),
]


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy / torch scalars and arrays; NaN and Inf become null."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(root: str = PROJECT_ROOT) -> Optional[str]:
    """The framework's commit (with '-dirty' if the tree has changes), or None outside git."""
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> Dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("scipy", "sklearn", "h5py", "hydra", "omegaconf"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # pragma: no cover - optional
            pass
    return out


def data_file_hashes(paths: Iterable[Optional[str]]) -> Dict[str, str]:
    return {str(p): sha256_file(p) for p in paths if p}


def _pct(v: Any) -> str:
    return "   n/a" if v is None else f"{100 * v:6.2f}"


def format_pct(v: Optional[float]) -> str:
    """A fraction as a percentage for people (``'n/a'`` for None)."""
    return "n/a" if v is None else f"{100 * v:.2f}%"


def plain(v: Any) -> Any:
    """A numpy/torch scalar as a plain Python value (anything else as it is)."""
    return v.item() if hasattr(v, "item") else v


def build_results(*, exp_name: str, run_dir: Any, config: Dict[str, Any], class_counts: Iterable[int],
                  classes: Iterable[Any], class_names: Optional[List[str]], metrics: Dict[str, Any],
                  final: Dict[str, Any], calibration: Dict[str, Any], model_info: Dict[str, Any], precision: str,
                  device: str, data_files: Iterable[Optional[str]], timings: Dict[str, float],
                  **extra: Any) -> Dict[str, Any]:
    """The results.json record of a training run (``mode`` absent) or an evaluation run
    (``mode="eval"`` with ``source_run``, ``eval_config``, ``label_mapping`` ... in ``extra``):
    the resolved config, classes and training counts, metrics per stage (``final`` is what the run
    reports), per-class results and the confusion matrix of ``final``, calibration, the model's
    size, and provenance (versions, git commit, data file hashes, timings)."""
    record: Dict[str, Any] = {"exp_name": exp_name, "run_dir": str(run_dir), "status": "completed"}
    record.update(extra)
    record.update({
        "config": config, "class_counts": [int(c) for c in class_counts], "classes": [plain(c) for c in classes],
        "class_names": class_names, "metrics": metrics, "per_class": final["per_class"],
        "confusion_matrix": final["confusion_matrix"], "grouping": final.get("grouping"),
        "calibration": calibration, "model_info": model_info, "precision": precision, "device": device,
        "versions": versions(), "git_commit": git_commit(), "data_files": data_file_hashes(data_files),
        "timings": timings,
    })
    return record


def write_results(folder: Any, results: Dict[str, Any], t_start: Optional[float] = None) -> None:
    """``results/results.json`` and ``results/summary.txt`` of a run folder, atomically (the total
    time is stamped first when ``t_start`` is given)."""
    import time

    if t_start is not None:
        results.setdefault("timings", {})["total"] = time.perf_counter() - t_start
    write_json(folder.results_json, results)
    atomic_write_text(folder.summary_txt, summary_text(results))


def summary_text(results: Dict[str, Any]) -> str:
    """The human-readable summary.txt: metrics after each stage, per group and per class."""
    lines: List[str] = []
    cfg = results.get("config", {})
    lines.append(f"Run: {results.get('exp_name')}  ({results.get('run_dir')})")
    lines.append(
        "Model: {name}, {params:,} parameters, {flops:,} FLOPs per sample".format(
            name=results.get("model_info", {}).get("name"),
            params=results.get("model_info", {}).get("params", 0) or 0,
            flops=results.get("model_info", {}).get("flops_per_sample", 0) or 0,
        )
    )
    s2 = cfg.get("stage2", {})
    lines.append(
        f"Stage 1: loss {cfg.get('loss', {}).get('name')}, sampler {cfg.get('sampling', {}).get('name')}; "
        + (f"stage 2: {s2.get('mode')} with {s2.get('loss')} + {s2.get('sampler')}; " if s2.get("enabled") else "stage 2: off; ")
        + f"stage 3: {cfg.get('stage3', {}).get('mode')}; post-hoc: {cfg.get('evaluation', {}).get('eval_logit_adjust')}"
    )
    dist = results.get("distill")
    if isinstance(dist, dict):
        teacher = dist.get("teacher") or {}
        tm = teacher.get("metrics") or {}
        lines.append(f"Distillation: {dist.get('method')} (T {dist.get('temperature')}, alpha {dist.get('alpha')}) from "
                     f"{teacher.get('run') or teacher.get('checkpoint')} ({teacher.get('model')}; teacher test mAcc "
                     f"{format_pct(tm.get('macc'))}, few {format_pct(tm.get('few_acc'))})")
    counts = results.get("class_counts", [])
    if counts:
        lines.append(f"Training class counts: {counts} (imbalance ratio {max(counts) / max(min(counts), 1):.1f})")
    lines.append("")
    stages = [k for k in ("stage1", "stage2", "stage3", "final") if k in results.get("metrics", {})]
    lines.append("Test metrics (%)".ljust(18) + "".join(s.rjust(9) for s in stages))
    for key, label in METRIC_LABELS:
        vals = [results["metrics"][s]["overall"].get(key) for s in stages]
        if all(v is None for v in vals):
            continue
        if key == "nll":  # not a fraction: nats per sample
            cells = ["   n/a" if v is None else f"{v:6.3f}" for v in vals]
            label = "NLL (nats)"
        else:
            cells = [_pct(v) for v in vals]
        lines.append(label.ljust(18) + "".join(c.rjust(9) for c in cells))
    openset = (results.get("metrics", {}).get("final") or {}).get("openset")
    if openset:
        info = results.get("openset") or {}
        lines += ["", f"Open set ({info.get('n_test_known', '?')} known + {info.get('n_test_unknown', '?')} unknown test "
                  f"samples; thresholds {info.get('threshold', '?')} on known validation; closed-set metrics above "
                  "are on the known test samples only)",
                  "Detector (%)".ljust(14) + "".join(h.rjust(9) for h in ("AUROC", "FPR95", "OSCR", "open F1", "many",
                                                                             "medium", "few"))]
        for det, rep in openset.items():
            o, g = rep["overall"], rep["group_wise"]
            vals = [o.get("auroc"), o.get("fpr95"), o.get("oscr"), o.get("open_macro_f1")] + [
                (g.get(k) or {}).get("auroc") for k in ("many", "medium", "few")]
            lines.append(det.ljust(14) + "".join(_pct(v).rjust(9) for v in vals))
    cal = results.get("calibration", {})
    if cal:
        lines.append("")
        for k, v in cal.items():
            if not isinstance(v, (list, dict)):
                lines.append(f"{k}: {v}")
    per_class = results.get("per_class") or []
    names = results.get("class_names") or results.get("classes") or []
    if per_class:
        lines.append("")
        lines.append("Per class (final):  class  group   train n  support  precision  recall     f1")
        for row in per_class:
            c = row.get("class")
            name = str(names[c]) if c is not None and c < len(names) else str(c)
            lines.append(
                f"{'':20}{name[:6]:>6} {str(row.get('group', ''))[:6]:>6} {row.get('count', 0):9d} "
                f"{row.get('support', 0):8d} {_pct(row.get('precision'))}     {_pct(row.get('recall'))} {_pct(row.get('f1'))}"
            )
    timings = results.get("timings", {})
    if timings:
        lines.append("")
        lines.append("Time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return "\n".join(lines) + "\n"
