"""summarize.py on hand-made run folders (the results.json contract), broken folders included.

Expected numbers are recomputed here with numpy from the metric values written into the folders,
independently of the pandas code in imbalance.summary.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

import summarize as cli  # noqa: E402
from imbalance.errors import ConfigError, DataError  # noqa: E402
from imbalance.summary import METRICS, collect_runs, describe_config, summarize  # noqa: E402

# (exp_name, loss, sampler, stage2 (loss, sampler) or None, stage3 mode, extra config)
CONFIGS = {
    "baseline": ("CrossEntropy", "none", None, "none", {}),
    "focal": ("FocalLoss", "none", None, "none", {}),
    "inv": ("CrossEntropy", "inv_freq", None, "none", {}),
    "crt_cs_pp": ("CrossEntropy", "none", ("CostSensitiveCE", "progressive_power"), "none", {}),
    "crt_ce_cb": ("CrossEntropy", "none", ("CrossEntropy", "class_balanced"), "tau_norm", {}),
    "baseline_lr": ("CrossEntropy", "none", None, "none", {"lr": 0.1}),
}
SEEDS = {"baseline": [0, 1, 2], "focal": [0, 1, 2], "inv": [0, 1], "crt_cs_pp": [0, 1, 2],
         "crt_ce_cb": [0], "baseline_lr": [0]}


def make_config(exp, seed):
    loss, sampler, s2, s3, extra = CONFIGS[exp]
    return {
        "exp_name": exp, "seed": seed, "device": "cpu",
        "data": {"path_train": None, "imbalance_ratio": 100.0, "num_workers": 0},
        "model": {"name": "ConvNetADSB", "width": 32},
        "loss": {"name": loss, "focal_gamma": 2.0},
        "sampling": {"name": sampler, "alpha": 0.5},
        "training": {"epochs": 3, "lr": extra.get("lr", 0.003)},
        # a disabled stage 2 still carries its (unused) settings, which must not split groups
        "stage2": {"enabled": s2 is not None, "mode": "crt",
                   "loss": s2[0] if s2 else ("FocalLoss" if seed % 2 else "CrossEntropy"),
                   "sampler": s2[1] if s2 else "class_balanced"},
        "stage3": {"mode": s3, "tau_norm": 1.0},
        "evaluation": {"eval_logit_adjust": "none"},
        "visualization": {"enabled": seed == 0, "dpi": 300},
    }


def write_run(root: Path, folder: str, exp, seed, overall, status="completed", val=None):
    d = root / folder
    (d / "results").mkdir(parents=True)
    (d / ".hydra").mkdir()
    (d / "logs").mkdir()
    cfg = make_config(exp, seed)
    (d / ".hydra" / "config.yaml").write_text("exp_name: wrong\n")  # results.json's config wins
    stages = {"stage1": {"overall": {k: v - 0.01 if v is not None else None for k, v in overall.items()},
                         "group_wise": {}}}
    if cfg["stage2"]["enabled"]:
        stages["stage2"] = {"overall": overall, "group_wise": {}}
    stages["final"] = {"overall": overall, "group_wise": {}}
    res = {"config": cfg, "class_counts": [500, 120, 40, 5], "classes": [1, 2, 3, 4], "class_names": None,
           "metrics": stages, "per_class": {}, "confusion_matrix": [[1, 0], [0, 1]],
           "timings": {"stage1": 10.0, "evaluation": 2.5}, "model_info": {"name": "ConvNetADSB", "params": 1234},
           "exp_name": exp, "run_dir": str(d), "status": status}
    if val is not None:  # the final model's validation accuracy and mAcc, as the pipeline writes them
        res["val_metrics"] = val
    (d / "results" / "results.json").write_text(json.dumps(res))
    (d / "results" / "summary.txt").write_text("mAcc: 99.99 (never read)\n")
    return d


def random_overall(rng):
    o = {m: float(rng.uniform(0.2, 0.95)) for m in METRICS}
    o["nll"] = float(rng.uniform(0.3, 2.0))
    o["medium_acc"] = None if rng.random() < 0.2 else o["medium_acc"]  # an empty group is null
    return o


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    rng = np.random.default_rng(123)
    root = tmp_path_factory.mktemp("exps") / "experiments"
    truth = []  # (exp, seed, overall)
    k = 0
    for exp, seeds in SEEDS.items():
        for s in seeds:
            k += 1
            o = random_overall(rng)
            # multirun-style nesting for some runs: any depth is searched
            folder = (f"multirun_20250101-000000-000001/{exp}_{k}" if exp == "focal"
                      else f"{exp}_20250101-0000{k:02d}-123456")
            write_run(root, folder, exp, s, o)
            truth.append((exp, s, o))
    # broken folders: crashed (no results.json), still running, unreadable JSON, no metrics
    crashed = root / "crashed_20250102-000000-000000"
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / "logs").mkdir()
    (crashed / "logs" / "training.log").write_text("epoch 1 ok\nRuntimeError: CUDA out of memory\n")
    write_run(root, "running_20250102-000000-000001", "baseline", 7, random_overall(rng), status="running")
    bad = root / "badjson_20250102-000000-000002"
    (bad / "results").mkdir(parents=True)
    (bad / "results" / "results.json").write_text('{"config": {"exp_name": "x"}, "metrics": ')
    nom = write_run(root, "nometrics_20250102-000000-000003", "baseline", 8, random_overall(rng))
    data = json.loads((nom / "results" / "results.json").read_text())
    del data["metrics"]["final"]
    (nom / "results" / "results.json").write_text(json.dumps(data))
    # a <exp_name>_latest link must not count the run twice
    os.symlink(next(root.glob("baseline_*")), root / "baseline_latest")
    return root, truth


def expected_groups(truth):
    """Configuration -> {metric: array over seeds}, computed from what was written."""
    out = {}
    for exp, _, o in truth:
        out.setdefault(exp, {m: [] for m in METRICS})
        for m in METRICS:
            out[exp][m].append(np.nan if o[m] is None else o[m])
    return {e: {m: np.array(v, dtype=float) for m, v in d.items()} for e, d in out.items()}


@pytest.fixture(scope="module")
def summary(fixture_root, tmp_path_factory):
    root, truth = fixture_root
    out = tmp_path_factory.mktemp("out") / "analysis"
    out_dir, st, skipped = summarize(root, out=out)
    tables = {p.stem: pd.read_csv(p) for p in out_dir.glob("*.csv")}
    return out_dir, st, skipped, tables, truth


def exp_of_config(tables):
    """config label -> exp_name (each configuration here has one exp_name)."""
    r = tables["ranking_overall"]
    return dict(zip(r["config"], r["exp_names"]))


def test_every_seed_csv_is_written(summary):
    out_dir, *_ = summary
    names = {"ranking_overall", "comparison_by_type", "comparison_sampling", "comparison_loss", "matrix_oa",
             "matrix_macc", "matrix_hm", "best_configurations", "improvement_over_baseline", "all_results_full"}
    assert names <= {p.stem for p in out_dir.glob("*.csv")}
    assert (out_dir / "REPORT.md").is_file() and (out_dir / "methods_comparison.png").stat().st_size > 1000


def test_broken_folders_are_skipped_with_reasons(summary):
    _, _, skipped, _, _ = summary
    reasons = {Path(s.path).name.split("_")[0]: s.reason for s in skipped}
    assert set(reasons) == {"crashed", "running", "badjson", "nometrics"}
    assert "no results/results.json" in reasons["crashed"] and "CUDA out of memory" in reasons["crashed"]
    assert "'running'" in reasons["running"]
    assert "not valid JSON" in reasons["badjson"]
    assert "metrics.final" in reasons["nometrics"]


def test_all_results_full_has_one_row_per_completed_run(summary):
    _, _, _, t, truth = summary
    full = t["all_results_full"]
    assert len(full) == len(truth)  # the _latest symlink and the broken folders are not rows
    got = {(e, s): row for e, s, row in zip(full["exp_name"], full["seed"], full.to_dict("records"))}
    for exp, seed, o in truth:
        row = got[(exp, seed)]
        for m in METRICS:
            if o[m] is None:
                assert math.isnan(row[m])
            else:
                assert row[m] == pytest.approx(o[m], rel=1e-5)
        assert row["stage1_macc"] == pytest.approx(o["macc"] - 0.01, rel=1e-5)
        assert row["time_total_s"] == pytest.approx(12.5)
        assert row["cfg.training.lr"] == pytest.approx(make_config(exp, seed)["training"]["lr"])


def test_ranking_groups_seeds_mean_std_n(summary):
    _, _, _, t, truth = summary
    exp = expected_groups(truth)
    rank = t["ranking_overall"]
    assert len(rank) == len(SEEDS)  # seeds grouped; disabled-stage-2 leftovers and viz do not split groups
    by_exp = {row["exp_names"]: row for row in rank.to_dict("records")}
    for e, vals in exp.items():
        row = by_exp[e]
        assert row["n"] == len(SEEDS[e])
        assert sorted(str(row["seeds"]).split()) == sorted(map(str, SEEDS[e]))
        for m in METRICS:
            v = vals[m][~np.isnan(vals[m])]
            if len(v) == 0:
                assert math.isnan(row[f"{m}_mean"])
                continue
            assert row[f"{m}_mean"] == pytest.approx(v.mean(), rel=1e-5)
            if len(v) >= 2:
                assert row[f"{m}_std"] == pytest.approx(v.std(ddof=1), rel=1e-4)
            else:
                assert math.isnan(row[f"{m}_std"])
    # ranked by mean mAcc, best first
    order = sorted(exp, key=lambda e: -exp[e]["macc"].mean())
    assert list(rank["exp_names"]) == order
    assert list(rank["rank"]) == list(range(1, len(order) + 1))


def test_same_label_configurations_are_disambiguated(summary):
    _, _, _, t, _ = summary
    labels = exp_of_config(t)
    inv = {v: k for k, v in labels.items()}
    assert "training.lr=0.1" in inv["baseline_lr"] and "training.lr=0.003" in inv["baseline"]
    assert inv["crt_cs_pp"].startswith("CrossEntropy+none -> crt:CostSensitiveCE+progressive_power")


def test_types_and_comparisons(summary):
    _, _, _, t, truth = summary
    type_of = {"baseline": "baseline", "baseline_lr": "baseline", "focal": "loss-only", "inv": "sampling-only",
               "crt_cs_pp": "two-stage: combined", "crt_ce_cb": "two-stage: sampling-only + calibration"}
    loss_of = {e: (CONFIGS[e][2][0] if CONFIGS[e][2] else CONFIGS[e][0]) for e in CONFIGS}
    sampler_of = {e: (CONFIGS[e][2][1] if CONFIGS[e][2] else CONFIGS[e][1]) for e in CONFIGS}
    for table, key_of, col in (("comparison_by_type", type_of, "type"), ("comparison_loss", loss_of, "loss"),
                               ("comparison_sampling", sampler_of, "sampler")):
        df = t[table].set_index(col)
        keys = set(key_of.values())
        assert set(df.index) == keys
        for k in keys:
            vals = np.array([o["macc"] for e, _, o in truth if key_of[e] == k])
            hm = np.array([o["hm"] for e, _, o in truth if key_of[e] == k])
            assert df.loc[k, "n_runs"] == len(vals)
            assert df.loc[k, "macc_mean"] == pytest.approx(vals.mean(), rel=1e-5)
            assert df.loc[k, "hm_mean"] == pytest.approx(hm.mean(), rel=1e-5)
            if len(vals) > 1:
                assert df.loc[k, "macc_std"] == pytest.approx(vals.std(ddof=1), rel=1e-4)


@pytest.mark.parametrize("metric", ["oa", "macc", "hm"])
def test_loss_sampler_matrices(summary, metric):
    _, _, _, t, truth = summary
    mat = t[f"matrix_{metric}"].set_index("loss \\ sampler")
    cells = {}
    for e, _, o in truth:
        loss = CONFIGS[e][2][0] if CONFIGS[e][2] else CONFIGS[e][0]
        sampler = CONFIGS[e][2][1] if CONFIGS[e][2] else CONFIGS[e][1]
        cells.setdefault((loss, sampler), []).append(o[metric])
    for loss in mat.index:
        for sampler in mat.columns:
            if (loss, sampler) in cells:
                assert mat.loc[loss, sampler] == pytest.approx(np.mean(cells[(loss, sampler)]), rel=1e-5)
            else:
                assert math.isnan(mat.loc[loss, sampler])
    assert set(cells) <= {(lo, s) for lo in mat.index for s in mat.columns}


def test_without_validation_metrics_nothing_is_selected(summary):
    # No run of this fixture records val_metrics: no configuration may be named best (a maximum
    # over test figures would select on the test set); every run is listed as lacking them.
    out_dir, st, _, t, truth = summary
    assert st.selected is None and len(st.runs_without_val) == len(truth)
    assert t["best_configurations"].empty
    assert not t["ranking_overall"]["selected"].any() and t["ranking_overall"]["val_rank"].isna().all()
    rep = (out_dir / "REPORT.md").read_text()
    assert "**no configuration is selected**" in rep
    assert f"{len(truth)} of {len(truth)} runs lack validation mAcc" in rep
    assert t["comparison_by_type"]["selected_config"].isna().all()


def test_improvement_over_automatic_baseline(summary):
    _, st, _, t, truth = summary
    exp = expected_groups(truth)
    imp = t["improvement_over_baseline"]
    labels = exp_of_config(t)
    # baseline: stage 2 off, CE, no sampler, no calibration; of the two, the one agreeing on lr
    assert set(imp["baseline"].map(labels)) == {"baseline"}
    assert set(imp["config"].map(labels)) == {"focal", "inv", "crt_cs_pp", "crt_ce_cb"}
    for row in imp.to_dict("records"):
        e = labels[row["config"]]
        for m in ("macc", "few_acc", "hm", "oa"):
            assert row[f"delta_{m}"] == pytest.approx(exp[e][m].mean() - exp["baseline"][m].mean(), rel=1e-5)
        if len(SEEDS[e]) >= 2:
            se = math.sqrt(exp[e]["macc"].var(ddof=1) / len(SEEDS[e]) + exp["baseline"]["macc"].var(ddof=1) / 3)
            assert row["delta_macc_se"] == pytest.approx(se, rel=1e-4)
    assert "automatic" in st.baseline_note


def test_named_baseline(fixture_root, tmp_path):
    root, truth = fixture_root
    exp = expected_groups(truth)
    _, st, _ = summarize(root, out=tmp_path / "o", baseline="focal", make_figure=False)
    imp = st.tables["improvement_over_baseline"]
    assert len(imp) == len(SEEDS) - 1 and imp["baseline"].nunique() == 1
    row = imp[imp["config"].str.startswith("CrossEntropy+inv_freq")].iloc[0]
    assert row["delta_macc"] == pytest.approx(exp["inv"]["macc"].mean() - exp["focal"]["macc"].mean())
    assert "--baseline 'focal'" in st.baseline_note
    report = (tmp_path / "o" / "REPORT.md").read_text()
    assert "--baseline 'focal'" in report


def test_report_reads_well(summary):
    out_dir, st, skipped, t, _ = summary
    rep = (out_dir / "REPORT.md").read_text()
    lines = rep.splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert lines[first_table].startswith("| # | Configuration | Type | n | mAcc | Many | Medium | Few | HM | Macro-F1")
    assert lines[first_table].endswith("| OA | Val mAcc |")
    heading = "## Key results (sorted by test mAcc, for reading only; selection is by validation)"
    assert lines.index("## Selected configuration (by validation mAcc)") < lines.index(heading)
    assert "## Best configuration per metric" not in rep
    assert "![mAcc, Few and HM per configuration](methods_comparison.png)" in rep
    for s in skipped:
        assert s.path in rep
    # the best configuration's mAcc printed as a percentage with its std
    best = t["ranking_overall"].iloc[0]
    assert f"{100 * best['macc_mean']:.2f} ± {100 * best['macc_std']:.2f}" in rep
    # summary.txt is never read: its fake 99.99 does not appear
    assert "99.99" not in rep


def test_pattern_filters_folders(fixture_root, tmp_path):
    root, _ = fixture_root
    runs, skipped = collect_runs(root, pattern="focal_*")
    assert {r.exp_name for r in runs} == {"focal"} and len(runs) == 3 and not skipped
    runs, _ = collect_runs(root, pattern="multirun_")  # substring of the path
    assert {r.exp_name for r in runs} == {"focal"}


def test_describe_config_types():
    assert describe_config({"loss.name": "CrossEntropy", "sampling.name": "none"})["type"] == "baseline"
    d = describe_config({"loss.name": "LDAMLoss", "sampling.name": "sqrt", "stage2.enabled": False,
                         "stage2.loss": "FocalLoss", "evaluation.eval_logit_adjust": "posthoc"})
    assert d["type"] == "combined + calibration" and d["loss"] == "LDAMLoss" and d["stage2_loss"] == "-"
    d = describe_config({"loss.name": "CrossEntropy", "sampling.name": "none", "stage2.enabled": True,
                         "stage2.loss": "CrossEntropy", "stage2.sampler": "none"})
    assert d["type"] == "two-stage: plain"


# ------------------------------------------------------------------ bad input: one clear line
def run_cli(argv, capsys):
    rc = cli.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_root_missing(tmp_path, capsys):
    rc, _, err = run_cli(["--root", str(tmp_path / "nope")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "does not exist" in err and str(tmp_path / "nope") in err


def test_cli_no_runs_says_where(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    rc, _, err = run_cli(["--root", str(tmp_path / "empty")], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "no run folders" in err and str((tmp_path / "empty").resolve()) in err


def test_cli_only_broken_runs(tmp_path, capsys):
    (tmp_path / "r" / "x_1" / ".hydra").mkdir(parents=True)
    rc, _, err = run_cli(["--root", str(tmp_path / "r")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "1 skipped" in err and "x_1" in err


def test_cli_baseline_matches_nothing(fixture_root, tmp_path, capsys):
    root, _ = fixture_root
    rc, _, err = run_cli(["--root", str(root), "--out", str(tmp_path / "o"), "--baseline", "nosuch"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "'nosuch' matches no run" in err and "baseline" in err and "focal" in err
    with pytest.raises(ConfigError):
        summarize(root, out=tmp_path / "o2", baseline="nosuch")
    with pytest.raises(DataError):
        summarize(tmp_path / "missing")


def test_cli_success_prints_report_path(fixture_root, tmp_path, capsys, monkeypatch):
    root, _ = fixture_root
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(["--root", str(root), "--no-figure"], capsys)
    assert rc == 0, err
    made = list(tmp_path.glob("analysis_results_*"))
    assert len(made) == 1 and (made[0] / "REPORT.md").is_file()
    assert "REPORT.md" in out and "4 folders skipped" in out


# ------------------------------------------------------------------ selection on validation
# Hand-set figures: the test-best configuration (focal) is not the validation-best (inv), the
# configuration with the highest test mAcc of all (crt_cs_pp) records no validation metrics,
# and baseline_lr has one run with and one without.
SEL = {  # exp -> [(seed, test macc, val macc, val acc)]; val None = results.json without val_metrics
    "baseline": [(0, 0.60, 0.70, 0.95), (1, 0.62, 0.72, 0.93)],
    "focal": [(0, 0.80, 0.65, 0.90), (1, 0.82, 0.67, 0.92)],
    "inv": [(0, 0.70, 0.75, 0.80), (1, 0.71, 0.77, 0.82)],
    "crt_cs_pp": [(0, 0.90, None, None), (1, 0.88, None, None)],
    "baseline_lr": [(0, 0.50, 0.70, 0.60), (1, 0.52, None, None)],
}


@pytest.fixture(scope="module")
def selection_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sel") / "experiments"
    for exp, runs in SEL.items():
        for seed, test_macc, vmacc, vacc in runs:
            o = {m: 0.5 for m in METRICS}
            o.update(macc=test_macc, few_acc=test_macc - 0.2, hm=test_macc - 0.1)
            val = None if vmacc is None else {"acc": vacc, "macc": vmacc}
            write_run(root, f"{exp}_s{seed}", exp, seed, o, val=val)
    return root


def _mean(exp, k):
    return float(np.mean([r[k] for r in SEL[exp] if r[k] is not None]))


def test_selection_is_by_validation_and_reports_test_figures(selection_root, tmp_path, capsys):
    out, st, _ = summarize(selection_root, out=tmp_path / "o", make_figure=False)
    labels = exp_of_config({"ranking_overall": st.tables["ranking_overall"]})
    # the test-best configurations (crt_cs_pp overall, focal among those with val) are not selected
    assert labels[st.tables["ranking_overall"]["config"].iloc[0]] == "crt_cs_pp"
    sel = st.groups[st.groups["config_id"] == st.selected].iloc[0]
    assert sel["exp_names"] == "inv"
    best = st.tables["best_configurations"].set_index("selected_by")
    assert list(best.index) == ["val_macc", "val_acc"]
    assert labels[best.loc["val_macc", "config"]] == "inv"
    assert best.loc["val_macc", "val_mean"] == pytest.approx(_mean("inv", 2))
    assert best.loc["val_macc", "test_macc_mean"] == pytest.approx(_mean("inv", 1))
    assert best.loc["val_macc", "n_val"] == 2
    # the report names the validation-best and prints its TEST mAcc
    rep = (out / "REPORT.md").read_text()
    section = rep.split("## Selected configuration (by validation mAcc)")[1].split("## Key results")[0]
    assert sel["config"] in section and labels_of(st, "focal") not in section.split("order (top")[0]
    assert f"{100 * _mean('inv', 1):.2f} ± " in section.split("order (top")[0]
    assert f"validation mAcc {100 * _mean('inv', 2):.2f} ± " in section
    assert f"{sel['config']} **(selected)**" in rep
    # the command line names it too
    assert cli.main(["--root", str(selection_root), "--out", str(tmp_path / "c"), "--no-figure"]) == 0
    printed = capsys.readouterr().out
    assert f"selected by val_macc: {sel['config']}" in printed
    assert f"test mAcc {100 * _mean('inv', 1):.2f}%" in printed


def labels_of(st, exp):
    r = st.tables["ranking_overall"]
    return r.loc[r["exp_names"] == exp, "config"].iloc[0]


def test_select_by_val_acc(selection_root, tmp_path, capsys):
    _, st, _ = summarize(selection_root, out=tmp_path / "o", make_figure=False, select_by="val_acc")
    assert st.selected == st.groups.loc[st.groups["exp_names"] == "baseline", "config_id"].iloc[0]
    assert st.tables["best_configurations"]["selected_by"].tolist() == ["val_acc", "val_macc"]
    assert cli.main(["--root", str(selection_root), "--out", str(tmp_path / "c"), "--no-figure",
                     "--select-by", "val_acc"]) == 0
    assert f"selected by val_acc: {labels_of(st, 'baseline')}" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="val_macc, val_acc"):
        summarize(selection_root, out=tmp_path / "x", make_figure=False, select_by="macc")


def test_runs_without_validation_are_excluded_from_selection_not_tables(selection_root, tmp_path):
    out, st, _ = summarize(selection_root, out=tmp_path / "o", make_figure=False)
    rank = st.tables["ranking_overall"].set_index("exp_names")
    # crt_cs_pp: in the tables with its test figures, but never ranked on validation
    assert rank.loc["crt_cs_pp", "macc_mean"] == pytest.approx(_mean("crt_cs_pp", 1))
    assert rank.loc["crt_cs_pp", "val_macc_count"] == 0 and math.isnan(rank.loc["crt_cs_pp", "val_rank"])
    # baseline_lr: the run without val_metrics counts for test figures, not for the selection score
    assert rank.loc["baseline_lr", "n"] == 2 and rank.loc["baseline_lr", "val_macc_count"] == 1
    assert rank.loc["baseline_lr", "val_macc_mean"] == pytest.approx(0.70)
    assert rank.loc["baseline_lr", "macc_mean"] == pytest.approx(0.51)
    val_order = sorted((e for e in SEL if e != "crt_cs_pp"), key=lambda e: (-_mean(e, 2), -len(SEL[e])))
    assert list(rank["val_rank"].dropna().sort_values().index) == val_order
    assert sorted(st.runs_without_val) == ["baseline_lr_s1", "crt_cs_pp_s0", "crt_cs_pp_s1"]
    rep = (out / "REPORT.md").read_text()
    assert "3 of 10 runs lack validation mAcc" in rep and "`crt_cs_pp_s0`" in rep and "`baseline_lr_s1`" in rep
    # per-type / per-sampler picks are by validation too: among sampler 'none', baseline (val 71%)
    # and not focal (test-best of that sampler)
    samp = st.tables["comparison_sampling"].set_index("sampler")
    assert samp.loc["none", "selected_config"] == labels_of(st, "baseline")
    assert samp.loc["none", "selected_val_macc_mean"] == pytest.approx(_mean("baseline", 2))
    # improvements are listed in validation order, the selected configuration first and marked
    imp = st.tables["improvement_over_baseline"]
    assert imp["selected"].tolist()[0] and imp["selected"].sum() == 1
    assert imp["config"].iloc[0] == labels_of(st, "inv")
