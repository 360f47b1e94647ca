"""bench/results: the suite's plans and the tables made from run folders (hand-made folders)."""
from __future__ import annotations

import csv
import json
import os

import pytest

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
    table = "\n".join(mr.table_bundled(root, mr.published()))
    # mean 84.0, sample std 4.0; published Inception (1 network) ArrowHead mean of 5 runs: 84.69
    assert "| ArrowHead | 84.0 ± 4.0 | 84.0 ± 4.0 | 3 | 84.7 |" in table
    assert "| -0.7 | yes |" in table
    assert "| OSULeaf | - | - | 0 |" in table
    assert mr.val_by_stage(os.path.join(root, "bundled", "ArrowHead_s0")) == {1: 0.7}
    assert mr.ms([0.5]) == "50.0" and mr.ms([None]) == "-"
