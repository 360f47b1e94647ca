"""ClassificationAnalyzer against scikit-learn / imbalanced-learn and hand-computed values."""
from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest
from imblearn.metrics import geometric_mean_score
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
)

from imbalance.analysis import (
    ClassificationAnalyzer,
    assign_groups,
    expected_calibration_error,
    summarize_text,
    write_confusion_matrix_csv,
    write_per_class_csv,
)
from imbalance.errors import ConfigError, DataError

COUNTS = [500, 300, 150, 101, 100, 60, 20, 19, 5, 1]  # many: 0-3, medium: 4-6, few: 7-9


def _random_case(seed: int, k: int = 10, n: int = 2000, acc: float = 0.6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    y_pred = np.where(rng.random(n) < acc, y, rng.integers(0, k, n))
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y_pred] += 3.0
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, y_pred, prob


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overall_metrics_match_sklearn_and_imblearn(seed):
    y, yp, prob = _random_case(seed)
    r = ClassificationAnalyzer(COUNTS).analyze_predictions(y, yp, prob)
    o = r["overall"]
    assert o["oa"] == pytest.approx(accuracy_score(y, yp), abs=1e-12)
    assert o["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, yp), abs=1e-12)
    assert o["macc"] == pytest.approx(np.mean(recall_score(y, yp, average=None)), abs=1e-12)
    assert o["macro_f1"] == pytest.approx(f1_score(y, yp, average="macro"), abs=1e-12)
    assert o["gmean"] == pytest.approx(geometric_mean_score(y, yp), abs=1e-12)
    assert o["nll"] == pytest.approx(log_loss(y, prob, labels=range(10)), rel=1e-9)
    pc = r["per_class"]
    np.testing.assert_allclose([p["recall"] for p in pc], recall_score(y, yp, average=None), atol=1e-12)
    np.testing.assert_allclose([p["precision"] for p in pc], precision_score(y, yp, average=None), atol=1e-12)
    np.testing.assert_allclose([p["f1"] for p in pc], f1_score(y, yp, average=None), atol=1e-12)
    assert [p["support"] for p in pc] == np.bincount(y, minlength=10).tolist()
    assert [p["count"] for p in pc] == COUNTS
    assert r["confusion_matrix"] == confusion_matrix(y, yp, labels=range(10)).tolist()


def test_group_accuracy_is_mean_recall_not_sample_weighted():
    # many class 0 has 90 samples all right, many class 1 has 10 samples all wrong
    counts = [200, 150, 50, 10]
    y = np.array([0] * 90 + [1] * 10 + [2] * 10 + [3] * 10)
    yp = y.copy()
    yp[90:100] = 0
    r = ClassificationAnalyzer(counts).analyze_predictions(y, yp)
    assert r["grouping"] == "absolute"
    assert r["overall"]["many_acc"] == pytest.approx(0.5)  # (1 + 0)/2, sample-weighted would be 0.9
    assert r["overall"]["medium_acc"] == pytest.approx(1.0)
    assert r["overall"]["few_acc"] == pytest.approx(1.0)
    assert r["overall"]["hm"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    gw = r["group_wise"]
    assert gw["many"]["classes"] == [0, 1] and gw["many"]["n_classes"] == 2
    assert gw["many"]["support"] == 100


def test_gmean_zero_recall_is_zero_as_imblearn():
    y = np.array([0, 0, 1, 1, 2, 2])
    yp = np.array([0, 0, 1, 1, 0, 0])  # class 2 recall 0
    r = ClassificationAnalyzer([10, 10, 10]).analyze_predictions(y, yp)
    assert r["overall"]["gmean"] == 0.0
    assert geometric_mean_score(y, yp) == 0.0


def test_class_absent_from_test_set_is_excluded_like_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)  # class 4 never in y_true
    yp = np.where(rng.random(300) < 0.7, y, rng.integers(0, 5, 300))
    assert (yp == 4).any()
    r = ClassificationAnalyzer([100, 80, 60, 40, 10]).analyze_predictions(y, yp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bal = balanced_accuracy_score(y, yp)  # sklearn warns and drops class 4
    assert r["overall"]["balanced_acc"] == pytest.approx(bal, abs=1e-12)
    assert r["overall"]["macc"] == pytest.approx(bal, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = f1_score(y, yp, average="macro")  # labels = union: class 4 counts with F1 0
    assert r["overall"]["macro_f1"] == pytest.approx(f1, abs=1e-12)
    assert r["per_class"][4]["recall"] is None
    assert r["per_class"][4]["f1"] == 0.0
    assert r["overall"]["gmean"] == pytest.approx(
        geometric_mean_score(y, yp, labels=[0, 1, 2, 3]), abs=1e-12
    )


def test_class_absent_everywhere_has_null_metrics():
    y = np.array([0, 0, 1, 1])
    r = ClassificationAnalyzer([5, 5, 5]).analyze_predictions(y, y)
    row = r["per_class"][2]
    assert row["recall"] is None and row["precision"] is None and row["f1"] is None
    assert r["overall"]["macro_f1"] == pytest.approx(f1_score(y, y, average="macro"))


def test_ece_matches_hand_computation():
    # 15 bins of width 1/15; confidences land in known bins
    prob = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 0])
    # bin of 0.95: acc 0.5 conf 0.95 -> |0.45| * 2/4 ; 0.6: acc 1 conf 0.6 -> 0.4/4 ; 0.7 wrong -> 0.7/4
    expected = 0.45 * 2 / 4 + 0.4 / 4 + 0.7 / 4
    assert expected_calibration_error(prob, y, n_bins=15) == pytest.approx(expected)
    r = ClassificationAnalyzer([10, 10]).analyze_predictions(y, prob.argmax(1), prob)
    assert r["overall"]["ece"] == pytest.approx(expected)


def test_ece_per_group_is_ece_of_group_samples():
    y, yp, prob = _random_case(5)
    a = ClassificationAnalyzer(COUNTS)
    r = a.analyze_predictions(y, yp, prob)
    for g in ("many", "medium", "few"):
        m = np.isin(y, r["group_wise"][g]["classes"])
        assert r["group_wise"][g]["ece"] == pytest.approx(expected_calibration_error(prob[m], y[m]))


def test_absolute_grouping_thresholds():
    groups, mode = assign_groups(COUNTS, grouping="absolute", many_thresh=100, few_thresh=20)
    assert mode == "absolute"
    assert groups == ["many"] * 4 + ["medium"] * 3 + ["few"] * 3  # 100 is medium, 20 is medium


def test_quantile_grouping_thirds():
    counts = [90, 80, 70, 60, 50, 40, 30, 20, 10]
    groups, mode = assign_groups(counts, grouping="quantile")
    assert mode == "quantile"
    assert groups == ["many"] * 3 + ["medium"] * 3 + ["few"] * 3


def test_auto_falls_back_to_quantile_without_few_class():
    counts = [1000, 800, 500, 300, 200, 150]  # absolute: no class below 20
    a = ClassificationAnalyzer(counts, grouping="auto")
    assert a.grouping == "quantile"
    assert a.groups == ["many", "many", "medium", "medium", "few", "few"]
    b = ClassificationAnalyzer(COUNTS, grouping="auto")
    assert b.grouping == "absolute"


def test_absolute_with_empty_few_group_reports_null():
    counts = [1000, 500, 50]
    y = np.array([0, 1, 2, 2])
    r = ClassificationAnalyzer(counts, grouping="absolute").analyze_predictions(y, y)
    assert r["overall"]["few_acc"] is None
    assert r["group_wise"]["few"]["acc"] is None and r["group_wise"]["few"]["n_classes"] == 0
    assert r["overall"]["hm"] is None
    assert r["overall"]["many_acc"] == 1.0
    json.dumps(r)


def test_one_class():
    a = ClassificationAnalyzer([7])
    assert a.groups == ["medium"]
    r = a.analyze_predictions([0, 0, 0], [0, 0, 0], np.ones((3, 1)))
    o = r["overall"]
    assert o["oa"] == 1.0 and o["macc"] == 1.0 and o["gmean"] == 1.0
    assert o["many_acc"] is None and o["few_acc"] is None and o["hm"] is None
    assert o["medium_acc"] == 1.0
    assert o["nll"] == pytest.approx(0.0, abs=1e-9)


def test_result_is_plain_json():
    y, yp, prob = _random_case(7)
    r = ClassificationAnalyzer(COUNTS).analyze_predictions(y, yp, prob.astype(np.float32))

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                assert isinstance(k, str)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert x is None or type(x) in (int, float, str), type(x)
            if isinstance(x, float):
                assert math.isfinite(x)

    walk(r)
    assert set(r) == {"overall", "group_wise", "per_class", "confusion_matrix", "grouping"}
    assert set(r["overall"]) == {"oa", "macc", "balanced_acc", "macro_f1", "gmean", "many_acc",
                                 "medium_acc", "few_acc", "hm", "nll", "ece"}
    for v in r["overall"].values():
        if v is not None and v is not r["overall"]["nll"]:
            assert 0.0 <= v <= 1.0
    r2 = ClassificationAnalyzer(COUNTS).analyze_predictions(y, yp)
    assert "nll" not in r2["overall"] and "ece" not in r2["group_wise"]["many"]


@pytest.mark.parametrize(
    "kwargs, y, yp, prob, err",
    [
        ({}, [0, 10], [0, 1], None, DataError),   # label out of range
        ({}, [0, -1], [0, 1], None, DataError),
        ({}, [0, 1, 2], [0, 1], None, DataError),  # length mismatch
        ({}, [0, 1], [0, 1], np.ones((2, 3)), DataError),  # prob shape
        ({}, [], [], None, DataError),
        ({"grouping": "thirds"}, [0], [0], None, ConfigError),
    ],
)
def test_user_errors(kwargs, y, yp, prob, err):
    with pytest.raises(err) as ei:
        ClassificationAnalyzer(COUNTS, **kwargs).analyze_predictions(y, yp, prob)
    assert "\n" not in str(ei.value)
    if kwargs.get("grouping"):
        assert "quantile" in str(ei.value)


def test_csv_writers(tmp_path):
    y, yp, prob = _random_case(9, k=3, n=100)
    r = ClassificationAnalyzer([50, 20, 5]).analyze_predictions(y, yp, prob)
    p = write_per_class_csv(r, tmp_path / "per_class.csv", class_names=["a", "b", "c"])
    rows = list(csv.DictReader(p.open()))
    assert [row["name"] for row in rows] == ["a", "b", "c"]
    assert float(rows[1]["recall"]) == pytest.approx(recall_score(y, yp, average=None)[1])
    assert int(rows[2]["support"]) == int((y == 2).sum())
    q = write_confusion_matrix_csv(r, tmp_path / "cm.csv")
    lines = list(csv.reader(q.open()))
    assert lines[0] == ["true\\pred", "0", "1", "2"]
    assert [list(map(int, ln[1:])) for ln in lines[1:]] == confusion_matrix(y, yp).tolist()
    with pytest.raises(ConfigError):
        write_per_class_csv(r, tmp_path / "x.csv", class_names=["a"])
    txt = summarize_text(r, "Final")
    assert "mAcc" in txt and f"{100 * r['overall']['macc']:.2f}" in txt


def test_100k_predictions_fast():
    import time

    rng = np.random.default_rng(0)
    k, n = 100, 100_000
    y = rng.integers(0, k, n)
    yp = np.where(rng.random(n) < 0.5, y, rng.integers(0, k, n))
    prob = rng.dirichlet(np.ones(k), n).astype(np.float32)
    a = ClassificationAnalyzer(rng.integers(1, 1000, k))
    t = time.perf_counter()
    r = a.analyze_predictions(y, yp, prob)
    assert time.perf_counter() - t < 1.0
    assert r["overall"]["oa"] == pytest.approx(float((y == yp).mean()))
