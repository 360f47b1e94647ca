"""bench/results: the suite's plans and the tables made from run folders (hand-made folders)."""
from __future__ import annotations

import csv
import json
import os

import pytest

import numpy as np
import scipy.io

import results.holdout_pairs as hp
import results.make_results as mr
import results.run_suite as rs


def test_every_plan_has_unique_job_names_and_one_seed_each():
    for plan, fn in rs.PLANS.items():
        jobs = fn()
        names = [n for n, _ in jobs]
        assert len(names) == len(set(names)), plan
        for name, overrides in jobs:
            assert sum(o.startswith("seed=") for o in overrides) <= 1, (plan, name)
    bundled = rs.plan_bundled()
    assert {n for n, _ in bundled} >= {f"ArrowHead_s{s}" for s in rs.SEEDS}


def test_published_rows_cite_lines_of_the_result_files():
    with open(os.path.join(os.path.dirname(mr.__file__), "published.csv")) as f:
        rows = list(csv.DictReader(f))
    osu = [r for r in rows if r["dataset"] == "OSULeaf" and r["model"] == "Inception (1 network)"]
    assert len(osu) == 5 and {r["file"] for r in osu} == {"results-inception-128.csv"}
    # hfawaz/InceptionTime results-inception-128.csv line 87: OSULeaf, iteration 0, recall 0.8990620...
    first = [r for r in osu if r["line"] == "87"][0]
    assert float(first["recall"]) == pytest.approx(0.8990620490620491)
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)


def _fake_run(folder, oa, macc, val_by_stage):
    os.makedirs(os.path.join(folder, "results"))
    os.makedirs(os.path.join(folder, "logs"))
    res = {"metrics": {"final": {"overall": {"oa": oa, "macc": macc, "few_acc": None, "hm": None, "macro_f1": oa}},
                       "stage1": {"overall": {"oa": oa - 0.1, "macc": macc - 0.1}}},
           "val_metrics": {"acc": 0.5, "macc": 0.5}, "timings": {"total": 12.0}, "calibration": {},
           "model_info": {"name": "FCN", "params": 10}}
    with open(os.path.join(folder, "results", "results.json"), "w") as f:
        json.dump(res, f)
    with open(os.path.join(folder, "logs", "metrics.csv"), "w") as f:
        f.write("stage,epoch,val_macc\n")
        for stage, v in val_by_stage.items():
            f.write(f"{stage},1,0.1\n{stage},2,{v}\n")


def test_tables_mean_std_and_the_two_point_rule(tmp_path):
    root = str(tmp_path)
    for s, oa in enumerate((0.80, 0.84, 0.88)):
        _fake_run(os.path.join(root, "bundled", f"ArrowHead_s{s}"), oa, oa, {1: 0.7})
    for s, oa in enumerate((0.70, 0.72, 0.74)):  # the preset the rule picks for ArrowHead
        _fake_run(os.path.join(root, "bundled_tiny", f"ArrowHead_s{s}"), oa, oa, {1: 1.0})
    _fake_run(os.path.join(root, "bundled", "JapaneseVowels_s0"), 0.99, 0.99, {1: 0.9})
    table = "\n".join(mr.table_bundled(root, mr.published()))
    # mean 84.0, sample std 4.0; published Inception (1 network) ArrowHead mean of 5 runs: 84.69
    assert "| ArrowHead | tsc_small_data (for reading) | 84.0 ± 4.0 | 84.0 ± 4.0 | 3 | 84.7 |" in table
    assert "| -0.7 | yes |" in table
    # the rule's row counts (ArrowHead: tsc_tiny_data, 72.0 -> -12.7), the other is for reading
    assert "| ArrowHead | **tsc_tiny_data** (rule) | 72.0 ± 2.0 | 72.0 ± 2.0 | 3 | 84.7 |" in table
    assert "| -12.7 | no |" in table
    assert "| JapaneseVowels | **tsc_small_data** (rule) | 99.0 | 99.0 | 1 |" in table
    assert "| OSULeaf | **tsc_small_data** (rule) | - | - | 0 |" in table
    assert "within 2 points of the published accuracy on 1 of 2 sets" in table
    assert mr.val_by_stage(os.path.join(root, "bundled", "ArrowHead_s0")) == {1: 0.7}
    assert mr.ms([0.5]) == "50.0" and mr.ms([None]) == "-"


def test_select_small_table_pools_draws_and_pairs_with_the_carve(tmp_path):
    root = str(tmp_path)
    accs = {"carve": (0.50, 0.60, 0.70), "nocarve": (0.60, 0.60, 0.90), "nocarve_long": (0.80, None, None)}
    for variant, values in accs.items():
        for r, oa in enumerate(values):
            if oa is not None:
                _fake_run(os.path.join(root, "select_small", f"ArrowHead_r{r}_{variant}"), oa, oa, {1: 1.0})
    rows = mr.table_select_small(root)
    assert rows[2].startswith("| ArrowHead (") and "| 60.0 ± 10.0 (3) | 70.0 ± 17.3 (3) | 80.0 (1) | - |" in rows[2]
    # paired with the carve of the same draw: nocarve +0.1, 0.0, +0.2 -> +10.0; nocarve_long draw 0: +30.0
    assert rows[-1] == "| paired difference to the carve | - | +10.0 (3) | +30.0 (1) | - |"
    # the select table leaves the select_small folders to this one
    assert all("ArrowHead_r0" not in line for line in mr.table_select(root))


def test_holdout_pairs_split_the_training_split_only(monkeypatch, tmp_path):
    """The select_small plan's data: held-out parts of the TRAINING split; the test split is never read."""
    pytest.importorskip("aeon", reason="aeon (pip install .[archives]) not installed")
    real = hp.load_archive

    def training_only(source, *, split, **kw):
        assert split == "train", "holdout_pairs read the official test split"
        return real(source, split=split, **kw)

    monkeypatch.setattr(hp, "load_archive", training_only)
    (pair0, pair1) = hp.write_holdout_pairs("ucr:ArrowHead", str(tmp_path), fraction=0.3, seeds=(0, 1))
    X_all, y_all, _ = real("ucr:ArrowHead", split="train")
    fit, hold = (scipy.io.loadmat(pair0[k]) for k in ("train", "test"))
    # 36 series, 12 a class: round(3.6) = 4 a class held out, 8 trained on
    assert np.bincount(fit["Y"].ravel().astype(int)).tolist() == [8, 8, 8]
    assert np.bincount(hold["Y"].ravel().astype(int)).tolist() == [4, 4, 4]
    both = np.concatenate([fit["X"], hold["X"]])[:, 0]
    # together they are the training split, each series once (rows matched by value)
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    assert np.allclose(order(both), order(np.asarray(X_all, np.float32)[:, 0]), atol=1e-6)
    assert not np.array_equal(scipy.io.loadmat(pair1["test"])["X"], hold["X"])  # another draw


def test_the_tables_count_the_sets_the_suite_sends_to_the_tiny_preset():
    assert set(mr.TINY_SETS) == {rs._name(src) for src in rs.TINY}
    jobs = dict(rs.plan_select_small())
    assert "data.batch_size=auto" in jobs["ArrowHead_r0_nocarve_bs"]
