"""Open-set metrics and thresholds (fractions in [0, 1]).

Convention: a detector's score is HIGHER for samples more likely KNOWN.  Test labels ``y_true``
hold the known classes as 0..K-1 and every unknown sample as a negative value
(:data:`imbalance.openset_protocols.UNKNOWN_LABEL` = -1); ``y_pred`` is the closed-set
prediction (argmax over the K known classes) of every test sample.

Metrics (known = positive class):

* ``auroc``    area under the ROC curve of knowns against unknowns,
               ``sklearn.metrics.roc_auc_score(is_known, score)`` (ties count one half).
* ``aupr_in``  average precision with the knowns positive: ``average_precision_score(is_known,
               score)``; ``aupr_out``: the unknowns positive, scored by ``-score``.
* ``fpr95``    the fraction of unknowns accepted at the first operating point whose TPR (knowns
               accepted) reaches 95%: ``fpr[argmax(tpr >= 0.95)]`` on
               ``roc_curve(is_known, score, drop_intermediate=False)``, as OpenOOD computes it.
* ``oscr``     open-set classification rate (Dhamija et al. 2018, "Reducing network
               agnostophobia"): for a threshold t, CCR(t) = |{known x: y_pred = y and score >= t}|
               / |known|, FPR(t) = |{unknown x: score >= t}| / |unknown|; OSCR is the area under
               CCR against FPR over all t, from (0, 0) to (1, closed-set accuracy), trapezoidal
               over the distinct scores (tied scores move along a straight segment, as the ROC
               AUC does), so with every known sample correct OSCR equals the AUROC.  The usual
               code (Chen et al.'s ARPL ``compute_oscr``, also Vaze et al. 2022) pairs the FPR at
               one sorted position with the CCR at the next, an off-by-one that moves the area by
               at most 1/n; here the definition is followed.
* ``open_macro_f1``  macro F1 over the K known classes plus the unknown class of the open-set
               prediction at the chosen threshold (score < threshold -> unknown, else y_pred),
               ``sklearn.metrics.f1_score(average="macro")`` over the classes present in the
               labels or the predictions (the rule of ``imbalance.analysis``' macro_f1).
* ``closed_macc``  mean per-class recall of the closed-set prediction on the known test samples
               (classes with test samples), no rejection.
* group_wise ``{many, medium, few}.auroc``: the AUROC of the unknowns against the known test
               samples whose class is in the group; groups from the TRAINING counts (many n >
               many_thresh, few n < few_thresh, medium otherwise; ``imbalance.analysis.
               assign_groups``); a group with no class or no test sample is None.

Thresholds are chosen on KNOWN validation scores only (:func:`threshold_at_tpr`,
:func:`choose_threshold` take nothing else): with ``tpr95`` the threshold is the largest t
with at least 95% of the known validation samples scoring >= t.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .analysis import GROUP_NAMES, assign_groups
from .errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "METRIC_KEYS",
    "auroc",
    "aupr_in",
    "aupr_out",
    "fpr_at_tpr",
    "oscr",
    "oscr_curve",
    "roc_points",
    "threshold_at_tpr",
    "choose_threshold",
    "open_set_predict",
    "open_macro_f1",
    "closed_macc",
    "group_auroc",
    "openset_report",
]

#: Keys of ``overall`` in :func:`openset_report` (results.json ``metrics.final.openset.<det>``).
METRIC_KEYS: Tuple[str, ...] = ("auroc", "aupr_in", "aupr_out", "fpr95", "oscr", "open_macro_f1",
                                "closed_macc")


def _f(x: Any) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _scores(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor (bf16 included)
        a = a.detach().float().cpu().numpy()
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        raise DataError(f"{name} holds {int((~np.isfinite(x)).sum())} non-finite score(s)")
    return x


def _binary(known: Any, unknown: Any) -> Tuple[np.ndarray, np.ndarray]:
    k, u = _scores(known, "known scores"), _scores(unknown, "unknown scores")
    if k.size == 0 or u.size == 0:
        raise DataError(f"open-set metrics need known and unknown samples; got {k.size} known and "
                        f"{u.size} unknown")
    y = np.concatenate([np.ones(k.size, dtype=np.int64), np.zeros(u.size, dtype=np.int64)])
    return y, np.concatenate([k, u])


# ----------------------------------------------------------------------------- detection
def auroc(known_scores: Any, unknown_scores: Any) -> float:
    """AUROC with the knowns as positives (higher score = known)."""
    from sklearn.metrics import roc_auc_score

    y, s = _binary(known_scores, unknown_scores)
    return float(roc_auc_score(y, s))


def aupr_in(known_scores: Any, unknown_scores: Any) -> float:
    """Average precision with the knowns as positives (AUPR-In)."""
    from sklearn.metrics import average_precision_score

    y, s = _binary(known_scores, unknown_scores)
    return float(average_precision_score(y, s))


def aupr_out(known_scores: Any, unknown_scores: Any) -> float:
    """Average precision with the unknowns as positives, scored by ``-score`` (AUPR-Out)."""
    from sklearn.metrics import average_precision_score

    y, s = _binary(known_scores, unknown_scores)
    return float(average_precision_score(1 - y, -s))


def roc_points(known_scores: Any, unknown_scores: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of sklearn's ``roc_curve`` (knowns positive), every point kept."""
    from sklearn.metrics import roc_curve

    y, s = _binary(known_scores, unknown_scores)
    return roc_curve(y, s, drop_intermediate=False)


def fpr_at_tpr(known_scores: Any, unknown_scores: Any, tpr: float = 0.95) -> float:
    """FPR (unknowns accepted) at the first ROC point whose TPR (knowns accepted) is >= ``tpr``."""
    if not 0.0 < float(tpr) <= 1.0:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr!r}")
    fpr, tp, _ = roc_points(known_scores, unknown_scores)
    return float(fpr[int(np.argmax(tp >= float(tpr)))])


def oscr_curve(known_scores: Any, known_correct: Any, unknown_scores: Any
               ) -> Tuple[np.ndarray, np.ndarray]:
    """``(fpr, ccr)`` of the OSCR curve (module docstring), one point per distinct score from the
    highest down, starting at (0, 0); ``known_correct[i]``: closed-set prediction of known sample
    i is right."""
    k = _scores(known_scores, "known scores")
    u = _scores(unknown_scores, "unknown scores")
    c = np.asarray(known_correct, dtype=bool).reshape(-1)
    if c.shape != k.shape:
        raise DataError(f"known_correct has {c.size} entries for {k.size} known scores")
    if k.size == 0 or u.size == 0:
        raise DataError(f"OSCR needs known and unknown samples; got {k.size} known and {u.size} unknown")
    s = np.concatenate([k, u])
    w_cc = np.concatenate([c.astype(np.float64), np.zeros(u.size)])
    w_fp = np.concatenate([np.zeros(k.size), np.ones(u.size)])
    order = np.argsort(-s, kind="mergesort")
    s, w_cc, w_fp = s[order], w_cc[order], w_fp[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    cc = np.cumsum(w_cc)[last] / k.size
    fp = np.cumsum(w_fp)[last] / u.size
    return np.r_[0.0, fp], np.r_[0.0, cc]


def oscr(known_scores: Any, known_correct: Any, unknown_scores: Any) -> float:
    """Area under the OSCR curve (Dhamija et al. 2018), in [0, closed-set accuracy]."""
    fpr, ccr = oscr_curve(known_scores, known_correct, unknown_scores)
    return float(np.sum(np.diff(fpr) * (ccr[1:] + ccr[:-1]) / 2.0))


# ----------------------------------------------------------------------------- thresholds
def threshold_at_tpr(known_val_scores: Any, tpr: float = 0.95) -> float:
    """The largest threshold t that accepts (score >= t) at least ``tpr`` of the KNOWN
    validation samples: the ``ceil(tpr * n)``-th highest score.  Nothing else enters: the
    threshold cannot see an unknown sample."""
    s = _scores(known_val_scores, "known validation scores")
    if s.size == 0:
        raise DataError("no known validation scores to choose the open-set threshold from")
    if not 0.0 < float(tpr) <= 1.0:
        raise ConfigError(f"openset.threshold: the TPR must be in (0, 1], got {tpr!r}")
    m = int(math.ceil(float(tpr) * s.size - 1e-9))
    return float(np.sort(s)[::-1][max(m, 1) - 1])


_TPR_SPEC = re.compile(r"^tpr(\d+(?:\.\d+)?)$")


def choose_threshold(spec: Union[str, float, int], known_val_scores: Any = None) -> float:
    """``openset.threshold``: ``"tpr95"`` (or ``"tprNN"``: NN% of the known validation samples
    accepted, :func:`threshold_at_tpr`) or a number (used as it is)."""
    if isinstance(spec, bool):
        raise ConfigError(f"openset.threshold={spec!r} is not valid; give tpr95 (or tprNN) or a number")
    if isinstance(spec, (int, float, np.number)):
        if not math.isfinite(float(spec)):
            raise ConfigError(f"openset.threshold={spec!r} is not valid; give a finite number or tpr95")
        return float(spec)
    m = _TPR_SPEC.match(str(spec).strip().lower())
    if m is None:
        try:
            return choose_threshold(float(str(spec)))
        except ValueError:
            raise ConfigError(f"openset.threshold={spec!r} is not valid; give tpr95 (or tprNN with NN "
                              f"in (0, 100]) or a number") from None
    pct = float(m.group(1))
    if not 0.0 < pct <= 100.0:
        raise ConfigError(f"openset.threshold={spec!r} is not valid; NN of tprNN must be in (0, 100]")
    if known_val_scores is None:
        raise ConfigError(f"openset.threshold={spec} needs known validation scores (no validation split?)")
    return threshold_at_tpr(known_val_scores, pct / 100.0)


# ----------------------------------------------------------------------------- classification
def open_set_predict(y_pred: Any, scores: Any, threshold: float, unknown_label: int = -1) -> np.ndarray:
    """Open-set prediction: ``y_pred`` where ``score >= threshold``, else ``unknown_label``."""
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1).copy()
    s = _scores(scores, "scores")
    if p.shape != s.shape:
        raise DataError(f"{p.size} predictions for {s.size} scores")
    p[s < float(threshold)] = int(unknown_label)
    return p


def open_macro_f1(y_true: Any, y_open_pred: Any) -> float:
    """Macro F1 over the known classes and the unknown class (all negative labels are one
    class), over the classes present in the labels or the predictions."""
    from sklearn.metrics import f1_score

    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_open_pred, dtype=np.int64).reshape(-1)
    t = np.where(t < 0, -1, t)
    p = np.where(p < 0, -1, p)
    return float(f1_score(t, p, average="macro", zero_division=0))


def closed_macc(y_true_known: Any, y_pred_known: Any) -> Optional[float]:
    """Mean per-class recall of the closed-set predictions of the known samples."""
    t = np.asarray(y_true_known, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred_known, dtype=np.int64).reshape(-1)
    if t.size == 0:
        return None
    recalls = [float(np.mean(p[t == c] == c)) for c in np.unique(t)]
    return float(np.mean(recalls))


def group_auroc(scores: Any, y_true: Any, class_counts: Sequence[int], *, many_thresh: float = 100,
                few_thresh: float = 20, grouping: str = "absolute") -> Dict[str, Dict[str, Optional[float]]]:
    """``{many, medium, few}: {"auroc": ...}``: unknowns against the known test samples of each
    group's classes (groups from the TRAINING ``class_counts``); None for an empty group."""
    s = _scores(scores, "scores")
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    groups = np.asarray(assign_groups(class_counts, grouping=grouping, many_thresh=many_thresh,
                                      few_thresh=few_thresh)[0], dtype=object)
    unknown = y < 0
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for g in GROUP_NAMES:
        classes = np.flatnonzero(groups == g)
        member = np.isin(y, classes) & ~unknown
        if not member.any() or not unknown.any():
            out[g] = {"auroc": None}
        else:
            out[g] = {"auroc": auroc(s[member], s[unknown])}
    return out


def openset_report(
    scores: Any,
    y_true: Any,
    y_pred: Any,
    *,
    threshold: float,
    class_counts: Sequence[int],
    many_thresh: float = 100,
    few_thresh: float = 20,
    grouping: str = "absolute",
) -> Dict[str, Dict[str, Any]]:
    """The results.json block of one detector: ``{"overall": {auroc, aupr_in, aupr_out, fpr95,
    oscr, open_macro_f1, closed_macc}, "group_wise": {many, medium, few: {"auroc"}}}``.

    ``scores``: the detector's score of every test sample (higher = known); ``y_true``: known
    classes 0..K-1, unknown < 0; ``y_pred``: closed-set prediction of every test sample;
    ``threshold``: from :func:`choose_threshold` on KNOWN VALIDATION scores; ``class_counts``:
    TRAINING counts of the K known classes (groups).  Detection metrics are None (with a
    warning) when the test split has no unknown or no known sample.
    """
    s = _scores(scores, "scores")
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if not (s.shape == y.shape == p.shape):
        raise DataError(f"scores ({s.size}), y_true ({y.size}) and y_pred ({p.size}) differ in length")
    k = len(class_counts)
    if (y >= k).any():
        raise DataError(f"y_true holds labels >= {k} (the number of known classes); mark unknown "
                        f"samples with -1")
    unknown = y < 0
    known = ~unknown
    overall: Dict[str, Optional[float]] = {key: None for key in METRIC_KEYS}
    if known.any() and unknown.any():
        sk, su = s[known], s[unknown]
        overall["auroc"] = auroc(sk, su)
        overall["aupr_in"] = aupr_in(sk, su)
        overall["aupr_out"] = aupr_out(sk, su)
        overall["fpr95"] = fpr_at_tpr(sk, su, 0.95)
        overall["oscr"] = oscr(sk, p[known] == y[known], su)
    else:
        logger.warning("open-set metrics: the test split has %d known and %d unknown samples; the "
                       "detection metrics need both and are null", int(known.sum()), int(unknown.sum()))
    overall["open_macro_f1"] = open_macro_f1(y, open_set_predict(p, s, threshold))
    overall["closed_macc"] = closed_macc(y[known], p[known])
    return {"overall": {key: _f(v) for key, v in overall.items()},
            "group_wise": group_auroc(s, y, class_counts, many_thresh=many_thresh,
                                      few_thresh=few_thresh, grouping=grouping)}
