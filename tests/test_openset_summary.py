"""summarize.py on open-set runs: open-set columns, a table per detector, the report section."""
from __future__ import annotations

import json

import numpy as np
import pytest

from imbalance.summary import OPENSET_KEY_METRICS, summarize


def _write(root, name, cfg_stage2, seed, scores):
    d = root / name
    (d / "results").mkdir(parents=True)
    overall = {"oa": 0.8, "macc": 0.7, "few_acc": 0.5, "many_acc": 0.9, "hm": 0.64}
    openset = {det: {"overall": {"auroc": a, "aupr_in": 0.9, "aupr_out": 0.4, "fpr95": f, "oscr": o,
                                 "open_macro_f1": 0.6, "closed_macc": 0.7},
                     "group_wise": {"many": {"auroc": m}, "medium": {"auroc": None}, "few": {"auroc": fw}}}
               for det, (a, f, o, m, fw) in scores.items()}
    cfg = {"exp_name": name, "seed": seed, "loss": {"name": "CrossEntropy"}, "sampling": {"name": "none"},
           "stage2": {"enabled": cfg_stage2, "mode": "crt", "loss": "CrossEntropy", "sampler": "class_balanced"},
           "stage3": {"mode": "none"}, "model": {"name": "ConvNetADSB"}, "openset": {"enabled": True}}
    res = {"status": "completed", "config": cfg, "val_metrics": {"macc": 0.7, "acc": 0.8},
           "metrics": {"final": {"overall": overall, "group_wise": {}, "openset": openset}}}
    (d / "results" / "results.json").write_text(json.dumps(res))


def test_open_set_tables_and_report(tmp_path):
    root = tmp_path / "runs"
    s1 = {0: {"msp": (0.70, 0.80, 0.55, 0.85, 0.60), "knn": (0.60, 0.90, 0.45, 0.70, 0.50)},
          1: {"msp": (0.74, 0.70, 0.57, 0.87, 0.64), "knn": (0.62, 0.88, 0.47, 0.72, 0.52)}}
    for seed, sc in s1.items():
        _write(root, f"ce_{seed}", False, seed, sc)
    _write(root, "crt_0", True, 0, {"msp": (0.65, 0.85, 0.50, 0.80, 0.55)})   # crt: msp only
    out, st, _ = summarize(root, out=tmp_path / "out", make_figure=False)
    msp, knn = st.tables["openset_msp"], st.tables["openset_knn"]
    assert len(msp) == 2 and len(knn) == 1                        # knn only in the CE configuration
    ce = msp[msp["n"] == 2].iloc[0]
    for i, m in enumerate(("auroc", "fpr95", "oscr", "many_auroc", "few_auroc")):
        vals = [s1[0]["msp"][i], s1[1]["msp"][i]]
        assert ce[f"openset.msp.{m}_mean"] == pytest.approx(np.mean(vals))
        assert ce[f"openset.msp.{m}_std"] == pytest.approx(np.std(vals, ddof=1))
    assert np.isnan(ce["openset.msp.medium_auroc_mean"])          # empty group stays empty
    ranking = st.tables["ranking_overall"]
    assert {"openset.msp.auroc_mean", "openset.knn.fpr95_mean", "openset.knn.oscr_mean"} <= set(ranking.columns)
    assert "openset.msp.auroc" in st.tables["all_results_full"].columns
    report = (out / "REPORT.md").read_text()
    assert "## Open set" in report and "### msp" in report and "### knn" in report
    assert "72.00 ± 2.83" in report                                 # msp AUROC of CE over two seeds
    assert len(OPENSET_KEY_METRICS) == 7 and (out / "openset_msp.csv").is_file()


def test_runs_without_open_set_have_no_open_set_tables(tmp_path):
    root = tmp_path / "runs"
    _write(root, "a", False, 0, {})
    _, st, _ = summarize(root, out=tmp_path / "out", make_figure=False)
    assert not [k for k in st.tables if k.startswith("openset_")]
    assert "## Open set" not in (tmp_path / "out" / "REPORT.md").read_text()
