"""Metrics of a chain of class-incremental sessions and its figure.

:func:`session_metrics` (acc and mAcc on old, new, all classes of one session),
:func:`per_class_accuracy`, :func:`session_record` (one session's entry of the chain history),
:func:`accuracy_table`, :func:`average_incremental_accuracy` (Rebuffi et al. 2017),
:func:`forgetting` (Chaudhry et al., ECCV 2018, "Riemannian Walk":
``f_j = max_{l < k} a_{l,j} - a_{k,j}`` averaged over the old classes or tasks ``j``),
:func:`chain_summary`, and :func:`plot_session_accuracy` (figure, PNG + PDF).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "per_class_accuracy",
    "session_metrics",
    "session_record",
    "accuracy_table",
    "average_incremental_accuracy",
    "forgetting",
    "chain_summary",
    "plot_session_accuracy",
]


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def per_class_accuracy(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Recall of each class 0..K-1 (float64); NaN for a class without test samples."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    n = np.bincount(t, minlength=num_classes)[:num_classes].astype(np.float64)
    hit = np.bincount(t[t == p], minlength=num_classes)[:num_classes].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hit / np.where(n > 0, n, 1.0), np.nan)


def _group(t: np.ndarray, p: np.ndarray, pc: np.ndarray, cls: np.ndarray) -> Dict[str, Any]:
    sel = np.isin(t, cls)
    tested = cls[np.isfinite(pc[cls])] if cls.size else cls
    return {
        "acc": float((t[sel] == p[sel]).mean()) if sel.any() else None,
        "macc": float(np.mean(pc[tested])) if tested.size else None,
        "n_classes": int(cls.size),
        "n_classes_tested": int(tested.size),
        "n_samples": int(sel.sum()),
    }


def session_metrics(y_true: Sequence[int], y_pred: Sequence[int], *, num_old: int,
                    num_classes: int) -> Dict[str, Dict[str, Any]]:
    """Accuracy (``acc``: correct / samples of the group) and ``macc`` (mean recall of the
    group's classes with test samples) on the ``old`` classes (indices ``< num_old``), the
    ``new`` ones and ``all``; predictions are over all classes (an old sample predicted as a new
    class is wrong).  An empty group gives None, never 0."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"true labels must be within 0..{num_classes - 1}")
    pc = per_class_accuracy(t, p, num_classes)
    k = int(num_old)
    return {
        "old": _group(t, p, pc, np.arange(0, k)),
        "new": _group(t, p, pc, np.arange(k, num_classes)),
        "all": _group(t, p, pc, np.arange(num_classes)),
    }


def _none_if_nan(v: float) -> Optional[float]:
    return None if v is None or not math.isfinite(v) else float(v)


def session_record(*, session: int, classes: Sequence[Any], num_old: int, y_true: Sequence[int],
                   y_pred: Sequence[int], extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One session's entry of the chain history (JSON-ready): ``session``, ``classes`` (original
    values in the model's order), ``num_old``, ``per_class_acc`` (aligned with ``classes``; null
    without test samples) and the :func:`session_metrics` groups ``old``, ``new``, ``all``."""
    k = len(classes)
    pc = per_class_accuracy(y_true, y_pred, k)
    rec = {"session": int(session), "classes": [_py(c) for c in classes], "num_old": int(num_old),
           "per_class_acc": [_none_if_nan(v) for v in pc.tolist()]}
    rec.update(session_metrics(y_true, y_pred, num_old=num_old, num_classes=k))
    if extra:
        rec.update(extra)
    return rec


def accuracy_table(history: Sequence[Dict[str, Any]]) -> Tuple[np.ndarray, List[Any], np.ndarray]:
    """From a chain history (:func:`session_record` entries, in session order): ``table``
    (S, K) of per-class accuracies (NaN where a class was not learned yet or had no test
    sample), the classes (in order of first appearance) and ``learned_at`` (K,) (the session
    index in which each class first appears)."""
    classes: List[Any] = []
    learned: List[int] = []
    for s, rec in enumerate(history):
        for c in rec["classes"]:
            if c not in classes:
                classes.append(c)
                learned.append(s)
    pos = {c: k for k, c in enumerate(classes)}
    table = np.full((len(history), len(classes)), np.nan)
    for s, rec in enumerate(history):
        for c, a in zip(rec["classes"], rec["per_class_acc"]):
            table[s, pos[c]] = np.nan if a is None else float(a)
    return table, classes, np.asarray(learned, dtype=np.int64)


def average_incremental_accuracy(accuracies: Sequence[Optional[float]]) -> Optional[float]:
    """Average incremental accuracy (Rebuffi et al. 2017): the mean, over the sessions so far
    (the base session included), of the accuracy on all classes learned by then."""
    vals = [float(a) for a in accuracies if a is not None and math.isfinite(float(a))]
    return float(np.mean(vals)) if vals else None


def forgetting(table: np.ndarray, learned_at: Sequence[int], *, session: Optional[int] = None,
               groups: Optional[Sequence[Sequence[int]]] = None) -> Tuple[Optional[float], np.ndarray]:
    """Forgetting (Chaudhry et al. 2018) after ``session`` (default the last row of ``table``):
    for each item ``j`` learned before it, ``f_j = max_{l in [learned_at_j, session-1]} a_{l,j}
    - a_{session,j}``; returns (the mean over those items, or None if there is none; ``f`` per
    item, NaN for the others).

    Items are classes (the columns of ``table``), or with ``groups`` (lists of column indices,
    e.g. each session's classes) tasks whose accuracy is the mean of their classes' accuracies.
    A class without a test sample in a session is left out of that session's value."""
    a = np.asarray(table, dtype=np.float64)
    first = np.asarray(learned_at, dtype=np.int64)
    if groups is not None:
        cols = []
        firsts = []
        for g in groups:
            g = list(g)
            with np.errstate(all="ignore"):
                cols.append(np.array([np.nanmean(a[s, g]) if np.isfinite(a[s, g]).any() else np.nan
                                      for s in range(a.shape[0])]))
            firsts.append(int(first[g].max()) if g else 0)
        a = np.stack(cols, axis=1) if cols else np.zeros((a.shape[0], 0))
        first = np.asarray(firsts, dtype=np.int64)
    k = a.shape[0] - 1 if session is None else int(session)
    if not 0 <= k < a.shape[0]:
        raise ValueError(f"session {session} is not within 0..{a.shape[0] - 1}")
    f = np.full(a.shape[1], np.nan)
    for j in range(a.shape[1]):
        if first[j] >= k or not math.isfinite(a[k, j]):
            continue
        prev = a[first[j]:k, j]
        prev = prev[np.isfinite(prev)]
        if prev.size:
            f[j] = prev.max() - a[k, j]
    done = f[np.isfinite(f)]
    return (float(done.mean()) if done.size else None), f


def chain_summary(history: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Chain-level figures for results.json's ``incremental`` block: ``average_incremental_acc``
    and ``_macc`` (over ``all``), class-level ``forgetting`` (after the last session, per class,
    and after each session: ``forgetting_per_session``, None for the base), task-level
    ``forgetting_task`` (tasks = the classes each session added) and the per-session
    ``old/new/all`` accuracies."""
    table, classes, learned = accuracy_table(history)
    f_mean, f_cls = forgetting(table, learned) if len(history) else (None, np.zeros(0))
    groups = [list(np.flatnonzero(learned == s)) for s in range(len(history))]
    groups = [g for g in groups if g]
    f_task, _ = forgetting(table, learned, groups=groups) if len(history) else (None, None)
    return {
        "sessions": len(history),
        "average_incremental_acc": average_incremental_accuracy([h["all"]["acc"] for h in history]),
        "average_incremental_macc": average_incremental_accuracy([h["all"]["macc"] for h in history]),
        "forgetting": f_mean,
        "forgetting_per_session": [forgetting(table, learned, session=k)[0] for k in range(len(history))],
        "forgetting_task": f_task,
        "forgetting_per_class": {str(c): _none_if_nan(v) for c, v in zip(classes, f_cls.tolist())
                                 if math.isfinite(v)},
        "per_session": [{"session": h["session"], "num_classes": len(h["classes"]),
                         **{g: {"acc": h[g]["acc"], "macc": h[g]["macc"]} for g in ("old", "new", "all")}}
                        for h in history],
    }


# ============================================================================ figure
def plot_session_accuracy(history: Sequence[Dict[str, Any]], path_stem: Union[str, Path], *,
                          metric: str = "acc", panel_mm: float = 85.0, panel_scale: float = 1.0,
                          dpi: float = 300.0) -> List[Path]:
    """Accuracy per session on all, old and new classes (``metric`` 'acc' or 'macc'), in the
    journal style of :mod:`imbalance.plotting_style`; writes ``<path_stem>.png`` and ``.pdf``
    and returns their paths.  Old classes have no value at the base session (shown as a gap)."""
    from . import plotting_style as ps  # matplotlib only when a figure is drawn

    if metric not in ("acc", "macc"):
        raise ConfigError(f"plot_session_accuracy: metric must be 'acc' or 'macc', got {metric!r}")
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    x = np.asarray([h["session"] for h in history], dtype=float)
    series = [("all", "All classes", ps.OKABE_ITO["black"], "o", "-"),
              ("old", "Old classes", ps.OKABE_ITO["blue"], "s", "-"),
              ("new", "New classes", ps.OKABE_ITO["vermillion"], "^", "--")]
    with ps.journal_style():
        fig, ax = ps.new_figure(panel_mm, panel_scale, 0.62)
        for key, label, color, marker, ls in series:
            y = np.asarray([np.nan if h[key][metric] is None else 100.0 * h[key][metric] for h in history])
            if np.isfinite(y).any():
                ax.plot(x, y, color=color, marker=marker, ls=ls, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{int(s)}\n({len(h['classes'])} cl.)" for s, h in zip(x, history)])
        ax.set_xlabel("Session (classes learned)")
        ax.set_ylabel("Accuracy (%)" if metric == "acc" else "Mean recall (%)")
        ax.set_ylim(0, 105)
        if len(x) == 1:
            ax.set_xlim(x[0] - 0.5, x[0] + 0.5)
        ax.legend(loc="lower left", fontsize=ps.SMALL_SIZE)
        ps.declutter_tick_labels(fig)
        out = ps.save_png_pdf(fig, stem, dpi)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out
