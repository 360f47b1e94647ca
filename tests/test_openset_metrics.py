"""Open-set metrics and thresholds (imbalance.openset_metrics) against float64 references
computed from their definitions (pairwise counts, brute-force thresholds) and scikit-learn."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from imbalance.errors import ConfigError, DataError
from imbalance.openset_metrics import (
    METRIC_KEYS,
    aupr_in,
    aupr_out,
    auroc,
    choose_threshold,
    closed_macc,
    fpr_at_tpr,
    group_auroc,
    open_macro_f1,
    open_set_predict,
    openset_report,
    oscr,
    oscr_curve,
    threshold_at_tpr,
)


def _pairwise_auc(pos, neg):
    """P(pos > neg) + 1/2 P(pos == neg), by counting every pair (float64)."""
    pos = np.asarray(pos, np.float64)[:, None]
    neg = np.asarray(neg, np.float64)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def _ap_reference(y, s):
    """Average precision by its definition: sum over distinct thresholds t (high to low) of
    (R(t) - R(previous t)) * P(t), with score >= t predicted positive."""
    y = np.asarray(y)
    ap, r_prev = 0.0, 0.0
    for t in np.unique(s)[::-1]:
        pred = s >= t
        tp = float((pred & (y == 1)).sum())
        r = tp / (y == 1).sum()
        p = tp / pred.sum()
        ap += (r - r_prev) * p
        r_prev = r
    return ap


def _scores(seed=0, nk=300, nu=120, ties=False):
    rng = np.random.default_rng(seed)
    k = rng.normal(1.0, 1.0, nk)
    u = rng.normal(0.0, 1.0, nu)
    if ties:
        k, u = np.round(k, 1), np.round(u, 1)
    return k, u


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_is_the_pairwise_probability(ties):
    k, u = _scores(1, ties=ties)
    assert auroc(k, u) == pytest.approx(_pairwise_auc(k, u), abs=1e-12)
    assert auroc(u, k) == pytest.approx(1.0 - auroc(k, u), abs=1e-12)   # direction: knowns positive
    y = np.r_[np.ones(k.size), np.zeros(u.size)]
    assert auroc(k, u) == pytest.approx(roc_auc_score(y, np.r_[k, u]), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_aupr_in_and_out_follow_the_average_precision_definition(ties):
    k, u = _scores(2, ties=ties)
    s = np.r_[k, u]
    y = np.r_[np.ones(k.size), np.zeros(u.size)]
    assert aupr_in(k, u) == pytest.approx(_ap_reference(y, s), abs=1e-12)
    assert aupr_out(k, u) == pytest.approx(_ap_reference(1 - y, -s), abs=1e-12)
    assert aupr_in(k, u) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert aupr_out(k, u) == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)


def _fpr95_reference(k, u, tpr=0.95):
    for t in np.unique(np.r_[k, u])[::-1]:      # thresholds from high to low
        if (k >= t).sum() >= math.ceil(tpr * k.size - 1e-9):
            return float((u >= t).mean())
    return 1.0


@pytest.mark.parametrize("nk,ties", [(20, False), (300, False), (300, True), (37, True)])
def test_fpr95_is_the_fpr_at_the_first_threshold_accepting_95_percent(nk, ties):
    k, u = _scores(3, nk=nk, ties=ties)
    assert fpr_at_tpr(k, u, 0.95) == pytest.approx(_fpr95_reference(k, u), abs=1e-12)
    assert fpr_at_tpr(k, u, 0.5) == pytest.approx(_fpr95_reference(k, u, 0.5), abs=1e-12)


def test_perfect_and_inverted_separation():
    k, u = np.linspace(2, 3, 50), np.linspace(-1, 1, 30)
    assert auroc(k, u) == 1.0
    assert aupr_in(k, u) == pytest.approx(1.0, abs=1e-12) and aupr_out(k, u) == pytest.approx(1.0, abs=1e-12)
    assert fpr_at_tpr(k, u) == 0.0
    assert auroc(u, k) == 0.0 and fpr_at_tpr(u, k) == 1.0


def test_oscr_is_accuracy_times_auroc_of_correct_knowns():
    """CCR(t) = |correct known >= t| / |known|, so the area under CCR(FPR) is the accuracy times
    the pairwise AUROC of the CORRECT knowns against the unknowns (ties count one half)."""
    rng = np.random.default_rng(4)
    for ties in (False, True):
        k, u = _scores(5, nk=200, nu=90, ties=ties)
        correct = rng.random(k.size) < 0.7
        ref = correct.mean() * _pairwise_auc(k[correct], u)
        assert oscr(k, correct, u) == pytest.approx(ref, abs=1e-12)
        # every known correct: OSCR equals the AUROC (scikit-learn)
        y = np.r_[np.ones(k.size), np.zeros(u.size)]
        assert oscr(k, np.ones(k.size, bool), u) == pytest.approx(roc_auc_score(y, np.r_[k, u]), abs=1e-12)
    # none correct -> 0; curve ends at (1, closed-set accuracy)
    assert oscr(k, np.zeros(k.size, bool), u) == 0.0
    fpr, ccr = oscr_curve(k, correct, u)
    assert (fpr[0], ccr[0]) == (0.0, 0.0) and fpr[-1] == 1.0 and ccr[-1] == pytest.approx(correct.mean())
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(ccr) >= 0)


def _oscr_arpl(x1, x2, correct):
    """The widely used compute_oscr of Chen et al. (ARPL), rewritten: FPR at sorted position k,
    CCR at position k + 1."""
    k_target = np.r_[correct.astype(float), np.zeros(len(x2))]
    u_target = np.r_[np.zeros(len(x1)), np.ones(len(x2))]
    predict = np.r_[x1, x2]
    n = len(predict)
    ccr, fpr = [0.0] * (n + 2), [0.0] * (n + 2)
    idx = predict.argsort()
    sk, su = k_target[idx], u_target[idx]
    for j in range(n - 1):
        ccr[j] = sk[j + 1:].sum() / len(x1)
        fpr[j] = su[j:].sum() / len(x2)
    ccr[n + 1] = fpr[n + 1] = 1.0
    roc = sorted(zip(fpr, ccr), reverse=True)
    return sum((roc[j][0] - roc[j + 1][0]) * (roc[j][1] + roc[j + 1][1]) / 2 for j in range(n + 1))


def test_oscr_differs_from_the_arpl_code_by_at_most_one_over_n():
    for n in (40, 400):
        k, u = _scores(6, nk=n, nu=n // 2)
        correct = np.random.default_rng(7).random(n) < 0.8
        assert abs(oscr(k, correct, u) - _oscr_arpl(k, u, correct)) <= 2.0 / n


def test_threshold_at_tpr_sees_known_validation_scores_only():
    # the threshold functions take nothing that could hold an unknown sample
    assert list(inspect.signature(threshold_at_tpr).parameters) == ["known_val_scores", "tpr"]
    assert list(inspect.signature(choose_threshold).parameters) == ["spec", "known_val_scores"]
    rng = np.random.default_rng(8)
    for n in (1, 19, 20, 21, 100, 257):
        s = np.round(rng.normal(size=n), 1)  # ties too
        t = threshold_at_tpr(s, 0.95)
        assert (s >= t).mean() >= 0.95
        higher = s[s > t]
        if higher.size:   # the next larger candidate accepts fewer than 95%
            assert (s >= higher.min()).mean() < 0.95
    s = np.arange(20, dtype=float)   # 20 samples: exactly 19 accepted at the 2nd lowest value
    assert threshold_at_tpr(s, 0.95) == 1.0
    assert choose_threshold("tpr95", s) == 1.0
    assert choose_threshold("TPR90", s) == threshold_at_tpr(s, 0.90) == 2.0


def test_choose_threshold_numbers_and_bad_specs():
    assert choose_threshold(0.25) == 0.25
    assert choose_threshold(-3) == -3.0
    assert choose_threshold("0.5") == 0.5
    for bad in ("tpr0", "tpr101", "fpr95", "auto", True, float("nan")):
        with pytest.raises(ConfigError, match="openset.threshold"):
            choose_threshold(bad, np.arange(5.0))
    with pytest.raises(ConfigError, match="validation"):
        choose_threshold("tpr95", None)
    with pytest.raises(DataError):
        threshold_at_tpr(np.array([]))


def test_open_set_predict_macro_f1_and_closed_macc_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, -1, -1, -1])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2, 1])
    score = np.array([.9, .8, .3, .9, .7, .2, .6, .1])
    p = open_set_predict(y_pred, score, 0.5)
    assert p.tolist() == [0, 1, -1, 1, 2, -1, 2, -1]
    # per class F1 by hand: class 0: TP1 FP0 FN1 -> 2/3; class 1: TP1 FP1 FN1 -> 1/2;
    # class 2: TP1 FP1 FN0 -> 2/3; unknown: TP2 FP1 FN1 -> 2/3
    assert open_macro_f1(y_true, p) == pytest.approx((2 / 3 + 1 / 2 + 2 / 3 + 2 / 3) / 4, abs=1e-12)
    assert open_macro_f1(y_true, p) == pytest.approx(f1_score(y_true, p, average="macro"), abs=1e-12)
    known = y_true >= 0
    assert closed_macc(y_true[known], y_pred[known]) == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert closed_macc([], []) is None


def test_group_auroc_equals_auroc_on_the_group_subset():
    counts = [500, 150, 60, 30, 12, 3]           # many: 0, 1; medium: 2, 3; few: 4, 5
    rng = np.random.default_rng(9)
    y = np.r_[rng.integers(0, 6, 400), -np.ones(150, int)]
    s = rng.normal(size=y.size) + (y >= 0) * (1.0 + 0.3 * np.maximum(y, 0))
    g = group_auroc(s, y, counts)
    unknown = s[y < 0]
    for name, classes in (("many", [0, 1]), ("medium", [2, 3]), ("few", [4, 5])):
        sub = s[np.isin(y, classes)]
        assert g[name]["auroc"] == pytest.approx(_pairwise_auc(sub, unknown), abs=1e-12)
    # a group without any class is None (never 0)
    g2 = group_auroc(s[y < 2], y[y < 2], [500, 150])
    assert g2["medium"] == {"auroc": None} and g2["few"] == {"auroc": None}
    assert g2["many"]["auroc"] is not None


def test_openset_report_has_exactly_the_results_keys():
    counts = [300, 120, 40, 10]
    rng = np.random.default_rng(10)
    y = np.r_[rng.integers(0, 4, 200), -np.ones(80, int)]
    pred = np.where(rng.random(y.size) < 0.8, np.maximum(y, 0), 1)
    s = rng.normal(size=y.size) + (y >= 0)
    rep = openset_report(torch.tensor(s, dtype=torch.bfloat16), y, pred, threshold=0.3, class_counts=counts)
    assert set(rep) == {"overall", "group_wise"}
    assert tuple(rep["overall"]) == METRIC_KEYS == ("auroc", "aupr_in", "aupr_out", "fpr95", "oscr",
                                                    "open_macro_f1", "closed_macc")
    assert set(rep["group_wise"]) == {"many", "medium", "few"}
    for v in rep["overall"].values():
        assert isinstance(v, float) and 0.0 <= v <= 1.0
    s16 = torch.tensor(s, dtype=torch.bfloat16).float().numpy().astype(np.float64)
    known = y >= 0
    assert rep["overall"]["auroc"] == pytest.approx(_pairwise_auc(s16[known], s16[~known]), abs=1e-12)
    assert rep["overall"]["closed_macc"] == pytest.approx(closed_macc(y[known], pred[known]))


def test_openset_report_without_unknowns_gives_null_detection_metrics():
    rep = openset_report(np.array([.5, .6, .7]), np.array([0, 1, 1]), np.array([0, 1, 0]), threshold=0.55,
                         class_counts=[5, 5])
    for key in ("auroc", "aupr_in", "aupr_out", "fpr95", "oscr"):
        assert rep["overall"][key] is None
    assert rep["overall"]["closed_macc"] == pytest.approx(0.75)
    with pytest.raises(DataError, match="-1"):
        openset_report(np.zeros(3), np.array([0, 1, 2]), np.zeros(3, int), threshold=0.0, class_counts=[5, 5])
    with pytest.raises(DataError, match="non-finite"):
        auroc(np.array([np.nan, 1.0]), np.array([0.0]))
