"""Sessions, validation of a new session's data, old/new/all metrics, average incremental
accuracy and forgetting (hand-made tables), and the per-session figure."""
from __future__ import annotations

import numpy as np
import pytest

from imbalance.errors import ConfigError, DataError
from imbalance.incremental import (
    label_positions,
    merge_classes,
    next_session,
    samples_of_classes,
    session_classes,
    validate_new_session,
)
from imbalance.incremental_metrics import (
    accuracy_table,
    average_incremental_accuracy,
    chain_summary,
    forgetting,
    per_class_accuracy,
    plot_session_accuracy,
    session_metrics,
    session_record,
)


# ----------------------------------------------------------------------------- sessions
def test_session_classes_split():
    plan = session_classes(list(range(10)), [6, 2, 2])
    assert plan == [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]]
    assert session_classes([1.0, 2.0, 3.0], [1, 2]) == [[1.0], [2.0, 3.0]]
    for bad in ([6, 2, 1], [6, 4, 0], [], [5.5, 4.5]):
        with pytest.raises(ConfigError) as e:
            session_classes(list(range(10)), bad)
        assert "data.synthetic.sessions" in str(e.value) and "\n" not in str(e.value)


def test_next_session_from_the_parents_classes():
    plan = session_classes(list(range(10)), [6, 2, 2])
    assert next_session(range(6), plan) == 1
    assert next_session([7, 6, 5, 4, 3, 2, 1, 0], plan) == 2
    assert next_session([], plan) == 0
    with pytest.raises(ConfigError, match="already learned all 3 sessions"):
        next_session(range(10), plan)
    with pytest.raises(ConfigError, match="not the first sessions"):
        next_session([0, 1, 2], plan)


def test_samples_merge_and_label_positions():
    y = np.array([5, 1, 3, 5, 2, 1])
    assert samples_of_classes(y, [1, 5]).tolist() == [0, 1, 3, 5]
    order = merge_classes([1, 5, 3], [2, 5, 4])
    assert order == [1, 5, 3, 2, 4]  # old order kept, new ones sorted and appended
    assert label_positions(y, order).tolist() == [1, 0, 2, 1, 3, 0]
    with pytest.raises(DataError, match="9"):
        label_positions([9], order)
    # re-indexing a data set whose labels are positions in its own sorted classes
    ds_classes, ds_labels = np.array([2, 4, 5]), np.array([0, 2, 1])
    assert label_positions(ds_classes[ds_labels], order).tolist() == [3, 1, 4]


def test_validate_new_session():
    ok = validate_new_session(old_classes=[0, 1, 2], new_labels=[3, 4, 4], old_shape=(2, 1024), new_shape=(2, 1024))
    assert ok == {"new": [3, 4], "seen": []}
    with pytest.raises(ConfigError) as e:
        validate_new_session(old_classes=[0, 1, 2], new_labels=[2, 3, 1], old_shape=(2, 64), new_shape=(2, 64))
    msg = str(e.value)
    assert "1, 2" in msg and "incremental.allow_seen_classes" in msg and "\n" not in msg
    mixed = validate_new_session(old_classes=[0, 1, 2], new_labels=[2, 3], old_shape=(2, 64), new_shape=(2, 64),
                                 allow_seen_classes=True)
    assert mixed == {"new": [3], "seen": [2]}
    with pytest.raises(DataError, match="1 channel"):
        validate_new_session(old_classes=[0], new_labels=[1], old_shape=(2, 64), new_shape=(1, 64))
    with pytest.raises(DataError, match="data.target_length=64"):
        validate_new_session(old_classes=[0], new_labels=[1], old_shape=(2, 64), new_shape=(2, 128))


# ----------------------------------------------------------------------------- one session
def test_session_metrics_by_hand():
    # classes 0, 1 old; 2, 3 new
    y_true = [0, 0, 1, 1, 2, 3, 3, 3]
    y_pred = [0, 2, 1, 1, 2, 3, 0, 3]
    m = session_metrics(y_true, y_pred, num_old=2, num_classes=4)
    assert m["old"]["acc"] == pytest.approx(3 / 4) and m["old"]["macc"] == pytest.approx((0.5 + 1) / 2)
    assert m["new"]["acc"] == pytest.approx(3 / 4) and m["new"]["macc"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["all"]["acc"] == pytest.approx(6 / 8)
    assert m["all"]["macc"] == pytest.approx((0.5 + 1 + 1 + 2 / 3) / 4)
    assert (m["old"]["n_samples"], m["new"]["n_samples"], m["all"]["n_classes"]) == (4, 4, 4)
    # base session: no old class -> None, never 0
    base = session_metrics([0, 1], [0, 0], num_old=0, num_classes=2)
    assert base["old"] == {"acc": None, "macc": None, "n_classes": 0, "n_classes_tested": 0, "n_samples": 0}
    assert base["new"]["acc"] == 0.5


def test_class_without_test_samples_is_left_out():
    pc = per_class_accuracy([0, 0, 2], [0, 1, 2], 3)
    assert pc[0] == 0.5 and np.isnan(pc[1]) and pc[2] == 1.0
    m = session_metrics([0, 0, 2], [0, 1, 2], num_old=2, num_classes=3)
    assert m["old"]["macc"] == 0.5 and m["old"]["n_classes"] == 2 and m["old"]["n_classes_tested"] == 1
    rec = session_record(session=1, classes=["a", "b", "c"], num_old=2, y_true=[0, 0, 2], y_pred=[0, 1, 2])
    assert rec["per_class_acc"] == [0.5, None, 1.0] and rec["classes"] == ["a", "b", "c"]


# ----------------------------------------------------------------------------- a chain
def _rec(session, classes, accs, all_acc, num_old):
    return {"session": session, "classes": classes, "num_old": num_old, "per_class_acc": accs,
            "all": {"acc": all_acc, "macc": float(np.nanmean([np.nan if a is None else a for a in accs]))},
            "old": {"acc": None, "macc": None}, "new": {"acc": None, "macc": None}}


HISTORY = [
    _rec(0, ["A", "B"], [0.9, 0.8], 0.85, 0),
    _rec(1, ["A", "B", "C"], [0.7, 0.85, 0.6], 0.70, 2),
    _rec(2, ["A", "B", "C", "D"], [0.75, 0.5, 0.4, 0.9], 0.60, 3),
]


def test_accuracy_table():
    table, classes, learned = accuracy_table(HISTORY)
    assert classes == ["A", "B", "C", "D"] and learned.tolist() == [0, 0, 1, 2]
    assert np.isnan(table[0, 2:]).all() and np.isnan(table[1, 3])
    assert table[2].tolist() == [0.75, 0.5, 0.4, 0.9]


def test_forgetting_on_a_hand_made_table():
    table, _, learned = accuracy_table(HISTORY)
    # after session 2: A max(.9,.7)-.75 = .15; B max(.8,.85)-.5 = .35; C .6-.4 = .2; D is new
    mean, per = forgetting(table, learned)
    assert per[:3] == pytest.approx([0.15, 0.35, 0.2], abs=1e-12) and np.isnan(per[3])
    assert mean == pytest.approx(0.7 / 3, abs=1e-12)
    # after session 1: A .9-.7 = .2; B .8-.85 = -.05 (negative: it improved)
    mean1, _ = forgetting(table, learned, session=1)
    assert mean1 == pytest.approx(0.075, abs=1e-12)
    assert forgetting(table, learned, session=0)[0] is None
    # tasks = the classes each session added: task {A,B}: (.85, .775, .625) -> .225; task {C}: .6-.4
    task_mean, task_per = forgetting(table, learned, groups=[[0, 1], [2], [3]])
    assert task_per[:2] == pytest.approx([0.225, 0.2], abs=1e-12)
    assert task_mean == pytest.approx(0.2125, abs=1e-12)
    # a class without a test sample in the last session is left out
    t2 = table.copy()
    t2[2, 1] = np.nan
    assert forgetting(t2, learned)[0] == pytest.approx((0.15 + 0.2) / 2, abs=1e-12)


def test_average_incremental_accuracy_and_chain_summary():
    assert average_incremental_accuracy([0.85, 0.70, 0.60]) == pytest.approx(0.7166666666666667, abs=1e-12)
    assert average_incremental_accuracy([None]) is None
    s = chain_summary(HISTORY)
    assert s["sessions"] == 3
    assert s["average_incremental_acc"] == pytest.approx((0.85 + 0.70 + 0.60) / 3, abs=1e-12)
    assert s["forgetting"] == pytest.approx(0.7 / 3, abs=1e-12)
    assert s["forgetting_task"] == pytest.approx(0.2125, abs=1e-12)
    assert s["forgetting_per_session"][0] is None
    assert s["forgetting_per_session"][1:] == pytest.approx([0.075, 0.7 / 3], abs=1e-12)
    assert s["forgetting_per_class"] == pytest.approx({"A": 0.15, "B": 0.35, "C": 0.2}, abs=1e-12)
    assert [p["num_classes"] for p in s["per_session"]] == [2, 3, 4]


def test_session_record_chain_from_predictions():
    h0 = session_record(session=0, classes=[10, 20], num_old=0, y_true=[0, 0, 1, 1], y_pred=[0, 0, 1, 0])
    h1 = session_record(session=1, classes=[10, 20, 30], num_old=2, y_true=[0, 0, 1, 1, 2, 2],
                        y_pred=[0, 2, 1, 1, 2, 2])
    assert h1["old"]["acc"] == pytest.approx(0.75) and h1["new"]["acc"] == 1.0
    s = chain_summary([h0, h1])
    # class 10: 1.0 -> 0.5 (forgot .5); class 20: .5 -> 1.0 (-.5)
    assert s["forgetting_per_class"] == pytest.approx({"10": 0.5, "20": -0.5})
    assert s["forgetting"] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- figure
def test_plot_session_accuracy_writes_png_and_pdf(tmp_path):
    h0 = session_record(session=0, classes=[0, 1], num_old=0, y_true=[0, 1], y_pred=[0, 1])
    h1 = session_record(session=1, classes=[0, 1, 2], num_old=2, y_true=[0, 1, 2], y_pred=[0, 2, 2])
    paths = plot_session_accuracy([h0, h1], tmp_path / "fig" / "incremental_accuracy")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:4] == b"%PDF"
    plot_session_accuracy([h0], tmp_path / "one", metric="macc")
    with pytest.raises(ConfigError):
        plot_session_accuracy([h0], tmp_path / "x", metric="f1")
