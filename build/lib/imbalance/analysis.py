"""Classification analysis for long-tailed problems: overall, per-group and per-class metrics.

All metrics are fractions in [0, 1]. Everything is computed from one confusion matrix built
with ``np.bincount`` (no Python loop over samples), so 100,000 predictions take milliseconds.

Definitions (``K`` classes, ``n_c`` = training count of class c, ``s_c`` = test support):

* ``oa``            accuracy, ``sum_c CM[c, c] / N``.
* recall_c          ``CM[c, c] / s_c``; undefined when ``s_c == 0`` (class absent from the test
                    set). Such classes are **excluded** from every recall average, as
                    ``sklearn.metrics.balanced_accuracy_score`` excludes them.
* ``macc``          mean per-class recall over classes with ``s_c > 0`` (mean per-class accuracy).
* ``balanced_acc``  scikit-learn's balanced accuracy (``adjusted=False``); with the exclusion rule
                    above it is the same number as ``macc``; both are kept because the seed
                    reports both.
* ``macro_f1``      ``F1_c = 2 TP / (2 TP + FP + FN)`` averaged over the classes that occur in the
                    test labels or in the predictions (scikit-learn's ``f1_score(average='macro')``
                    with its default labels; a class that is predicted but absent scores 0).
* ``gmean``         geometric mean of the recalls of the classes with ``s_c > 0`` (Kubat &
                    Matwin 1997). A single zero recall makes it 0, as in imbalanced-learn's
                    ``geometric_mean_score`` (``correction=0``). Unlike imbalanced-learn's default,
                    a class that is predicted but absent from the test labels is excluded rather
                    than counted as recall 0 (it equals ``geometric_mean_score(..., labels=<test
                    classes>)``).
* groups            from TRAINING counts (Kang et al. 2020, "Decoupling representation and
                    classifier"): ``absolute``: many ``n_c > many_thresh``, few
                    ``n_c < few_thresh``, medium otherwise. ``quantile``: many ``n_c > q(2/3)``,
                    few ``n_c < q(1/3)``, medium otherwise, with ``q`` the linear-interpolated
                    quantiles of the training counts (thirds; equal counts always share a group).
                    ``auto``: absolute when it gives non-empty many AND few groups, else quantile.
* ``many_acc`` ...  a group's accuracy is the MEAN RECALL of its classes (with ``s_c > 0``), not a
                    sample-weighted accuracy; an empty group is ``None`` (JSON null), never 0.
* ``hm``            harmonic mean of ``many_acc`` and ``few_acc``; ``None`` if either is None.
* ``nll``           ``-mean_i log p_i[y_i]`` (probabilities clipped at 1e-12).
* ``ece``           expected calibration error (Guo et al. 2017, "On calibration of modern neural
                    networks"): confidence ``max_k p_ik``, prediction ``argmax_k p_ik``,
                    ``n_bins`` equal-width bins ``(m-1)/M < conf <= m/M``,
                    ``ECE = sum_m |B_m|/N * |acc(B_m) - conf(B_m)|``. Per group, the ECE of the
                    samples whose TRUE class is in the group (the tail's calibration).
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any, Sequence, Tuple

import numpy as np
import torch

from .errors import ConfigError, DataError

logger = logging.getLogger(__name__)

GROUP_NAMES: tuple[str, str, str] = ("many", "medium", "few")
GROUPINGS: tuple[str, str, str] = ("auto", "absolute", "quantile")

__all__ = [
    "ClassificationAnalyzer",
    "GROUP_NAMES",
    "GROUPINGS",
    "assign_groups",
    "confusion_matrix_fast",
    "expected_calibration_error",
    "write_per_class_csv",
    "write_confusion_matrix_csv",
    "summarize_text",
]


# ----------------------------------------------------------------------------- helpers
def _f(x: Any) -> float | None:
    """Plain Python float (None for None / NaN) for JSON."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def assign_groups(
    class_counts: Sequence[int] | np.ndarray,
    *,
    grouping: str = "auto",
    many_thresh: float = 100,
    few_thresh: float = 20,
) -> tuple[list[str], str]:
    """Assign each class to 'many' / 'medium' / 'few' from its training count.

    Returns ``(groups, mode_used)`` where ``mode_used`` is 'absolute' or 'quantile'
    (``auto`` resolves to one of them). See the module docstring for the rules.
    """
    counts = np.asarray(class_counts, dtype=np.float64).reshape(-1)
    if grouping not in GROUPINGS:
        raise ConfigError(
            f"experiment.grouping={grouping!r} is not valid; valid values: {', '.join(GROUPINGS)}"
        )

    def absolute() -> np.ndarray:
        g = np.full(counts.shape, "medium", dtype=object)
        g[counts > many_thresh] = "many"
        g[counts < few_thresh] = "few"
        return g

    def quantile() -> np.ndarray:
        g = np.full(counts.shape, "medium", dtype=object)
        if counts.size:
            q1, q2 = np.quantile(counts, [1.0 / 3.0, 2.0 / 3.0])
            g[counts > q2] = "many"
            g[counts < q1] = "few"
        return g

    if grouping == "absolute":
        g, mode = absolute(), "absolute"
    elif grouping == "quantile":
        g, mode = quantile(), "quantile"
    else:
        g = absolute()
        if np.any(g == "many") and np.any(g == "few"):
            mode = "absolute"
        else:
            g, mode = quantile(), "quantile"
    return [str(s) for s in g], mode


def accuracy_and_macc(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> Tuple[float, float]:
    """Overall accuracy and mean per-class recall over the classes present in ``target``."""
    pred = pred.long().cpu()
    target = target.long().cpu()
    correct = (pred == target).long()
    support = torch.bincount(target, minlength=num_classes).double()
    hits = torch.bincount(target, weights=correct.double(), minlength=num_classes)
    present = support > 0
    acc = float(correct.double().mean()) if len(target) else float("nan")
    macc = float((hits[present] / support[present]).mean()) if present.any() else float("nan")
    return acc, macc


def confusion_matrix_fast(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """K x K confusion matrix (rows true, columns predicted) via one ``np.bincount``."""
    k = int(num_classes)
    idx = y_true.astype(np.int64) * k + y_pred.astype(np.int64)
    return np.bincount(idx, minlength=k * k).reshape(k, k)


def _ece_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int):
    """Per-bin (count, sum of confidence, sum of correct) for equal-width bins (lo, hi]."""
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    cnt = np.bincount(b, minlength=n_bins)
    s_conf = np.bincount(b, weights=conf, minlength=n_bins)
    s_acc = np.bincount(b, weights=correct.astype(np.float64), minlength=n_bins)
    return cnt, s_conf, s_acc


def expected_calibration_error(
    prob: np.ndarray, y_true: np.ndarray, *, n_bins: int = 15
) -> float | None:
    """ECE of Guo et al. (2017) with ``n_bins`` equal-width confidence bins; None when empty."""
    prob = np.asarray(prob)
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return None
    conf = prob.max(axis=1).astype(np.float64)
    correct = prob.argmax(axis=1) == y_true
    cnt, s_conf, s_acc = _ece_bins(conf, correct, n_bins)
    return float(np.abs(s_acc - s_conf).sum() / len(y_true))


def reliability_bins(
    prob: np.ndarray, y_true: np.ndarray, *, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Per-bin count, mean confidence and accuracy (NaN for empty bins), bin edges."""
    prob = np.asarray(prob)
    conf = prob.max(axis=1).astype(np.float64)
    correct = prob.argmax(axis=1) == np.asarray(y_true)
    cnt, s_conf, s_acc = _ece_bins(conf, correct, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(cnt > 0, s_conf / np.maximum(cnt, 1), np.nan)
        acc = np.where(cnt > 0, s_acc / np.maximum(cnt, 1), np.nan)
    return {
        "count": cnt,
        "confidence": mean_conf,
        "accuracy": acc,
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
    }


def _hm(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if a + b == 0:
        return 0.0
    return 2.0 * a * b / (a + b)


# ----------------------------------------------------------------------------- analyzer
class ClassificationAnalyzer:
    """Metrics of a K-class long-tailed classifier, grouped by training frequency.

    Parameters
    ----------
    class_counts: training count of each class; its length defines K (labels are 0..K-1).
    grouping: 'auto' | 'absolute' | 'quantile' (see module docstring).
    many_thresh, few_thresh: thresholds of the absolute grouping (many: n > many_thresh,
        few: n < few_thresh; Kang et al. 2020 use 100 and 20).
    n_bins: number of equal-width confidence bins of the ECE (Guo et al. 2017 use 15).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | np.ndarray,
        grouping: str = "auto",
        many_thresh: float = 100,
        few_thresh: float = 20,
        *,
        n_bins: int = 15,
    ) -> None:
        counts = np.asarray(class_counts)
        if counts.ndim != 1 or counts.size == 0:
            raise DataError(
                f"class_counts must be a non-empty 1-D list of training counts, got shape {counts.shape}"
            )
        if not np.all(np.isfinite(counts.astype(np.float64))) or np.any(counts < 0):
            raise DataError("class_counts must hold non-negative finite numbers")
        if isinstance(n_bins, bool) or int(n_bins) != n_bins or int(n_bins) < 1:
            raise ConfigError(f"n_bins must be a positive integer, got {n_bins!r}")
        if few_thresh > many_thresh:
            raise ConfigError(
                f"experiment.few_thresh ({few_thresh}) must not exceed experiment.many_thresh ({many_thresh})"
            )
        self.class_counts = counts.astype(np.int64)
        self.num_classes = int(counts.size)
        self.many_thresh = many_thresh
        self.few_thresh = few_thresh
        self.n_bins = int(n_bins)
        self.groups, self.grouping = assign_groups(
            self.class_counts, grouping=grouping, many_thresh=many_thresh, few_thresh=few_thresh
        )
        self.grouping_requested = grouping
        self._group_masks = {g: np.array([x == g for x in self.groups]) for g in GROUP_NAMES}

    # ------------------------------------------------------------------ validation
    def _labels(self, y: Any, name: str) -> np.ndarray:
        a = np.asarray(y)
        if a.ndim != 1:
            a = a.reshape(-1) if a.ndim == 2 and 1 in a.shape else a
        if a.ndim != 1:
            raise DataError(f"{name} must be 1-D, got shape {np.asarray(y).shape}")
        if a.size and a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise DataError(f"{name} must hold integer class indices 0..{self.num_classes - 1}")
        if a.size and a.dtype.kind not in "iufb":
            raise DataError(f"{name} must hold integer class indices, got dtype {a.dtype}")
        a = a.astype(np.int64)
        if a.size and (a.min() < 0 or a.max() >= self.num_classes):
            raise DataError(
                f"{name} holds class index {int(a.min() if a.min() < 0 else a.max())}; "
                f"valid indices are 0..{self.num_classes - 1} (K = len(class_counts))"
            )
        return a

    # ------------------------------------------------------------------ main entry
    def analyze_predictions(
        self,
        y_true: Any,
        y_pred: Any,
        prob: Any = None,
    ) -> dict[str, Any]:
        """Analyse one set of predictions; returns a JSON-serialisable dict.

        Keys: ``overall``, ``group_wise``, ``per_class``, ``confusion_matrix`` (raw counts,
        rows true, columns predicted), ``grouping`` (the mode actually used).
        """
        yt = self._labels(y_true, "y_true")
        yp = self._labels(y_pred, "y_pred")
        if yt.shape != yp.shape:
            raise DataError(f"y_true and y_pred differ in length: {yt.size} vs {yp.size}")
        if yt.size == 0:
            raise DataError("cannot analyse an empty set of predictions (y_true has 0 samples)")
        k = self.num_classes
        p = None
        if prob is not None:
            p = np.asarray(prob, dtype=np.float64)
            if p.shape != (yt.size, k):
                raise DataError(
                    f"prob must have shape (N, K) = ({yt.size}, {k}), got {p.shape}"
                )
            if not np.all(np.isfinite(p)):
                raise DataError("prob holds NaN or infinite values")

        cm = confusion_matrix_fast(yt, yp, k)
        tp = np.diag(cm).astype(np.float64)
        support = cm.sum(axis=1)
        pred_count = cm.sum(axis=0)
        present = support > 0
        seen = present | (pred_count > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(present, tp / np.maximum(support, 1), np.nan)
            precision = np.where(pred_count > 0, tp / np.maximum(pred_count, 1), 0.0)
            precision = np.where(seen, precision, np.nan)
            denom = 2 * tp + (pred_count - tp) + (support - tp)
            f1 = np.where(seen, 2 * tp / np.maximum(denom, 1), np.nan)
        absent_pred = np.flatnonzero((~present) & (pred_count > 0))
        if absent_pred.size:
            logger.warning(
                "classes %s are predicted but absent from y_true: their recall is undefined and "
                "they are excluded from macc/balanced_acc/gmean and group accuracies",
                absent_pred.tolist()[:20],
            )

        r = recall[present]
        oa = float(tp.sum() / yt.size)
        macc = float(r.mean())
        with np.errstate(divide="ignore"):
            gmean = 0.0 if np.any(r == 0) else float(np.exp(np.mean(np.log(r))))
        macro_f1 = float(np.nanmean(f1[seen]))

        correct = None
        conf = None
        if p is not None:
            conf = p.max(axis=1)
            correct = p.argmax(axis=1) == yt

        group_wise: dict[str, dict[str, Any]] = {}
        for g in GROUP_NAMES:
            m = self._group_masks[g]
            cls = np.flatnonzero(m)
            mp = m & present
            acc = float(recall[mp].mean()) if mp.any() else None
            entry: dict[str, Any] = {
                "acc": acc,
                "n_classes": int(cls.size),
                "classes": [int(c) for c in cls],
                "support": int(support[m].sum()),
            }
            if p is not None:
                sel = m[yt]
                if sel.any():
                    cnt, s_conf, s_acc = _ece_bins(conf[sel], correct[sel], self.n_bins)
                    entry["ece"] = float(np.abs(s_acc - s_conf).sum() / sel.sum())
                else:
                    entry["ece"] = None
            group_wise[g] = entry

        overall: dict[str, Any] = {
            "oa": oa,
            "macc": macc,
            "balanced_acc": macc,
            "macro_f1": macro_f1,
            "gmean": gmean,
            "many_acc": group_wise["many"]["acc"],
            "medium_acc": group_wise["medium"]["acc"],
            "few_acc": group_wise["few"]["acc"],
            "hm": _hm(group_wise["many"]["acc"], group_wise["few"]["acc"]),
        }
        if p is not None:
            pt = np.clip(p[np.arange(yt.size), yt], 1e-12, None)
            overall["nll"] = float(-np.mean(np.log(pt)))
            cnt, s_conf, s_acc = _ece_bins(conf, correct, self.n_bins)
            overall["ece"] = float(np.abs(s_acc - s_conf).sum() / yt.size)

        per_class = [
            {
                "class": int(c),
                "count": int(self.class_counts[c]),
                "group": self.groups[c],
                "precision": _f(precision[c]),
                "recall": _f(recall[c]),
                "f1": _f(f1[c]),
                "support": int(support[c]),
            }
            for c in range(k)
        ]
        return {
            "overall": {key: _f(v) for key, v in overall.items()},
            "group_wise": group_wise,
            "per_class": per_class,
            "confusion_matrix": cm.tolist(),
            "grouping": self.grouping,
        }


# ----------------------------------------------------------------------------- writers
def _names(k: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(k)]
    names = [str(n) for n in class_names]
    if len(names) != k:
        raise ConfigError(
            f"class_names has {len(names)} names but there are {k} classes; give exactly {k} or null"
        )
    return names


def write_per_class_csv(
    result: dict[str, Any], path: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """Write ``result['per_class']`` as CSV: class,name,group,count,support,precision,recall,f1.

    Undefined values (recall of a class absent from the test set) are empty cells.
    """
    rows = result["per_class"]
    names = _names(len(rows), class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["class", "name", "group", "count", "support", "precision", "recall", "f1"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for row, name in zip(rows, names):
            vals = {**row, "name": name}
            w.writerow(["" if vals.get(c) is None else vals[c] for c in cols])
    return path


def write_confusion_matrix_csv(
    result: dict[str, Any], path: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """Write the raw-count confusion matrix as CSV (first column true class, header predicted)."""
    cm = result["confusion_matrix"]
    names = _names(len(cm), class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["true\\pred", *names])
        for name, row in zip(names, cm):
            w.writerow([name, *[int(v) for v in row]])
    return path


def summarize_text(result: dict[str, Any], title: str = "Results") -> str:
    """Human-readable summary (percentages) of an analyzer result."""

    def pct(v: float | None) -> str:
        return "   n/a" if v is None else f"{100.0 * v:6.2f}"

    o = result["overall"]
    lines = [title, "=" * len(title)]
    labels = [
        ("oa", "OA"), ("macc", "mAcc"), ("balanced_acc", "Balanced-Acc"),
        ("macro_f1", "Macro-F1"), ("gmean", "G-Mean"), ("many_acc", "Many-Acc"),
        ("medium_acc", "Medium-Acc"), ("few_acc", "Few-Acc"), ("hm", "HM"),
    ]
    for key, lab in labels:
        lines.append(f"{lab:<14s}{pct(o.get(key))} %")
    if "nll" in o:
        lines.append(f"{'NLL':<14s}{o['nll']:7.4f}" if o["nll"] is not None else "NLL n/a")
    if "ece" in o:
        lines.append(f"{'ECE':<14s}{pct(o.get('ece'))} %")
    lines.append("")
    lines.append(f"Groups ({result.get('grouping', '?')}):")
    for g in GROUP_NAMES:
        e = result["group_wise"][g]
        extra = f"  ECE {pct(e.get('ece'))} %" if "ece" in e else ""
        lines.append(
            f"  {g:<7s} classes {e['n_classes']:4d}  test samples {e['support']:7d}  "
            f"acc {pct(e['acc'])} %{extra}"
        )
    return "\n".join(lines) + "\n"
