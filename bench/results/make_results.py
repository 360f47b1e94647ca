"""Tables of the results suite: run folders of ``run_suite.py`` -> the tables of docs/RESULTS.md.

    python bench/results/make_results.py --root experiments/results_suite > tables.md

Reads only ``results/results.json`` and ``logs/metrics.csv`` of each run, and the published
numbers in ``bench/results/published.csv`` (one row per line of the published result files,
with repository, commit, file and line). Prints Markdown tables (mean +- std over seeds, std
with ddof=1); a missing run shows as "-" and the count of seeds says how many finished.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import statistics as st
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))


def load(folder: str) -> Optional[dict]:
    p = os.path.join(folder, "results", "results.json")
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        return json.load(f)


def val_by_stage(folder: str) -> Dict[int, float]:
    """The validation mAcc of the LAST epoch of each stage (logs/metrics.csv)."""
    out: Dict[int, float] = {}
    p = os.path.join(folder, "logs", "metrics.csv")
    if not os.path.isfile(p):
        return out
    with open(p) as f:
        for row in csv.DictReader(f):
            if row.get("val_macc") not in (None, ""):
                out[int(row["stage"])] = float(row["val_macc"])
    return out


def ms(values: Sequence[Optional[float]], pct: bool = True) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    k = 100.0 if pct else 1.0
    if len(vals) == 1:
        return f"{k * vals[0]:.1f}"
    return f"{k * st.mean(vals):.1f} ± {k * st.stdev(vals):.1f}"


def mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return st.mean(vals) if vals else None


def published() -> Dict[tuple, List[dict]]:
    out: Dict[tuple, List[dict]] = defaultdict(list)
    with open(os.path.join(HERE, "published.csv")) as f:
        for r in csv.DictReader(f):
            out[(r["dataset"], r["model"])].append(r)
    return out


def cite(rows: List[dict]) -> str:
    r = rows[0]
    lines = ",".join(x["line"] for x in rows)
    return f"{r['repo']}@{r['commit']} {r['file']} l.{lines}"


def pub_mean(pub, ds: str, model: str, key: str) -> Optional[float]:
    rows = pub.get((ds, model))
    return st.mean(float(r[key]) for r in rows) if rows else None


def seeds(root: str, plan: str, prefix: str) -> List[str]:
    return sorted(glob.glob(os.path.join(root, plan, f"{prefix}_s[0-9]")))


def overall(res: dict, stage: str = "final") -> dict:
    return (res.get("metrics", {}).get(stage) or {}).get("overall") or {}


# ---------------------------------------------------------------------------------------- tables
def table_select(root: str) -> List[str]:
    out = ["| data set | model | val mAcc stage 1 | + cRT | + tau-norm (tau on val) | tau | run s |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for folder in sorted(glob.glob(os.path.join(root, "select*", "*_*"))):
        if os.path.islink(folder) or os.path.basename(os.path.dirname(folder)) == "select_small":
            continue  # the <exp_name>_latest link of the run folders; select_small has its own table
        res = load(folder)
        if res is None:
            continue
        v = val_by_stage(folder)
        name = os.path.basename(folder)
        ds, _, model = name.partition("_")
        tau = (res.get("calibration") or {}).get("tau_norm")
        out.append(f"| {ds} | {model} | {ms([v.get(1)])} | {ms([v.get(2)])} | {ms([res['val_metrics']['macc']])} | "
                   f"{tau if tau is None else round(float(tau), 2)} | {round(res['timings']['total'])} |")
    return out


SMALL_VARIANTS = [("carve", "20% carved, tau on it, 300 ep."), ("nocarve", "no carve, 300 ep."),
                  ("nocarve_long", "no carve, 1000 ep."), ("nocarve_bs", "no carve, 300 ep., batch N/10")]


def table_select_small(root: str) -> List[str]:
    """Held-out accuracy (30% of each training split, 3 draws) of each way to train a very small set;
    the last row pools every (set, draw) pair, the paired column compares with the carve."""
    names = [label for _, label in SMALL_VARIANTS]
    out = ["| data set (held-out series per draw) | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    pooled: Dict[str, List[float]] = {v: [] for v, _ in SMALL_VARIANTS}
    pairs: Dict[str, List[float]] = {v: [] for v, _ in SMALL_VARIANTS}
    stage1: Dict[str, List[float]] = {v: [] for v, _ in SMALL_VARIANTS}
    sets = sorted({os.path.basename(f).split("_r")[0] for f in glob.glob(os.path.join(root, "select_small", "*_r*_*"))})
    for ds in sets:
        cells, n_hold = [], "?"
        base = {r: load(os.path.join(root, "select_small", f"{ds}_r{r}_carve")) for r in range(3)}
        for v, _ in SMALL_VARIANTS:
            accs = []
            for r in range(3):
                res = load(os.path.join(root, "select_small", f"{ds}_r{r}_{v}"))
                if res is None:
                    continue
                accs.append(overall(res).get("oa"))
                stage1[v].append(overall(res, "stage1").get("oa"))
                n_hold = str(sum(sum(row) for row in res.get("confusion_matrix") or []))
                if base[r] is not None:
                    pairs[v].append(overall(res)["oa"] - overall(base[r])["oa"])
            pooled[v] += accs
            cells.append(f"{ms(accs)} ({len(accs)})" if accs else "-")
        out.append(f"| {ds} ({n_hold}) | " + " | ".join(cells) + " |")
    out.append("| all pairs, stage 1 only (before cRT) | " + " | ".join(
        f"{ms(stage1[v])} ({len(stage1[v])})" for v, _ in SMALL_VARIANTS) + " |")
    out.append("| all pairs (set, draw): mean | " + " | ".join(f"{ms(pooled[v])} ({len(pooled[v])})"
                                                           for v, _ in SMALL_VARIANTS) + " |")
    out.append("| paired difference to the carve | " + " | ".join(
        "-" if v == "carve" or not pairs[v] else f"{100 * mean(pairs[v]):+.1f} ({len(pairs[v])})"
        for v, _ in SMALL_VARIANTS) + " |")
    return out


BUNDLED = ["ArrowHead", "BasicMotions", "PickupGestureWiimoteZ", "JapaneseVowels", "OSULeaf", "ACSF1"]


#: the sets the small-set rule sends to experiment=tsc_tiny_data (run_suite.TINY)
TINY_SETS = ("ArrowHead", "BasicMotions", "PickupGestureWiimoteZ", "ACSF1")


def table_bundled(root: str, pub) -> List[str]:
    """One row per (set, preset) with runs; the rule's preset (tsc_tiny_data where a 20% carve leaves
    a class fewer than 3 validation series, tsc_small_data elsewhere) is the row that counts, the
    other is for reading; the last line counts the rule's rows within 2 points."""
    out = ["| data set | preset | ours: test acc | ours: mAcc | seeds | Inception (1 net) acc | "
           "InceptionTime (5) acc | ResNet acc | FCN acc | ours - Inception (1 net) | within 2 points |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    counted, within = 0, 0
    for ds in BUNDLED:
        rule = "tsc_tiny_data" if ds in TINY_SETS else "tsc_small_data"
        for preset, plan in (("tsc_small_data", "bundled"), ("tsc_tiny_data", "bundled_tiny")):
            runs = [load(f) for f in seeds(root, plan, ds)]
            if ds == "OSULeaf" and plan == "bundled" and not any(runs):
                runs = [load(f) for f in seeds(root, "donewhen", "OSULeaf_mat")]
            runs = [r for r in runs if r]
            if not runs and preset != rule:
                continue
            acc = [overall(r).get("oa") for r in runs]
            macc = [overall(r).get("macc") for r in runs]
            p1 = pub_mean(pub, ds, "Inception (1 network)", "accuracy")
            p5 = pub_mean(pub, ds, "InceptionTime (ensemble of 5)", "accuracy")
            pr = pub_mean(pub, ds, "ResNet (Wang et al.)", "accuracy")
            pf = pub_mean(pub, ds, "FCN (Wang et al.)", "accuracy")
            ref = p1 if p1 is not None else p5
            gap = None if (ref is None or not runs) else mean(acc) - ref
            ok = None if gap is None else gap >= -0.02
            if preset == rule and ok is not None:
                counted, within = counted + 1, within + int(ok)
            name = f"**{preset}** (rule)" if preset == rule else f"{preset} (for reading)"
            out.append(f"| {ds} | {name} | {ms(acc)} | {ms(macc)} | {len(runs)} | {fmt(p1)} | {fmt(p5)} | {fmt(pr)} | "
                       f"{fmt(pf)} | {'-' if gap is None else f'{100 * gap:+.1f}'} | "
                       f"{'-' if ok is None else ('yes' if ok else 'no')} |")
    out += ["", f"The rule's preset is within 2 points of the published accuracy on {within} of {counted} sets."]
    return out


def table_inception(root: str, pub) -> List[str]:
    out = ["| data set | ours InceptionTime (1 net): test acc | mAcc | seeds | published Inception (1 net) acc |",
           "| --- | --- | --- | --- | --- |"]
    for ds in BUNDLED:
        runs = [r for r in (load(f) for f in seeds(root, "inception", ds)) if r]
        if not runs:
            continue
        p1 = pub_mean(pub, ds, "Inception (1 network)", "accuracy") or pub_mean(pub, ds, "InceptionTime (ensemble of 5)",
                                                                                  "accuracy")
        out.append(f"| {ds} | {ms([overall(r).get('oa') for r in runs])} | {ms([overall(r).get('macc') for r in runs])} "
                   f"| {len(runs)} | {'-' if p1 is None else f'{100 * p1:.1f}'} |")
    return out


def table_donewhen(root: str, pub) -> List[str]:
    runs = [(os.path.basename(f), load(f)) for f in seeds(root, "donewhen", "OSULeaf_mat")]
    runs = [(n, r) for n, r in runs if r]
    rec1 = pub_mean(pub, "OSULeaf", "Inception (1 network)", "recall")
    rec5 = pub_mean(pub, "OSULeaf", "InceptionTime (ensemble of 5)", "recall")
    out = ["| run | test OA | test mAcc | mAcc - published Inception recall (1 net, mean of 5) | training + evaluation s "
           "(wall) |", "| --- | --- | --- | --- | --- |"]
    for n, r in runs:
        m = overall(r).get("macc")
        out.append(f"| {n} | {ms([overall(r).get('oa')])} | {ms([m])} | {100 * (m - rec1):+.1f} | "
                   f"{round(r['timings']['total'])} |")
    if runs:
        ms_ = [overall(r).get("macc") for _, r in runs]
        out.append(f"| mean ± std | {ms([overall(r).get('oa') for _, r in runs])} | {ms(ms_)} | "
                   f"{100 * (mean(ms_) - rec1):+.1f} | {round(mean([r['timings']['total'] for _, r in runs]))} |")
    out.append("")
    out.append(f"Published macro recall on OSULeaf: Inception (1 network) {100 * rec1:.1f} (mean of 5 runs), "
               f"InceptionTime (ensemble) {100 * rec5:.1f}.")
    return out


def table_longtail(root: str) -> List[str]:
    out = ["| data set (training IR) | method | test mAcc | few | HM | OA | seeds |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    groups: Dict[str, Dict[str, List[dict]]] = defaultdict(lambda: defaultdict(list))
    for folder in sorted(glob.glob(os.path.join(root, "longtail", "*_s[0-9]"))):
        res = load(folder)
        if res is None:
            continue
        name = os.path.basename(folder)[:-3]
        ds, ir, method = name.rsplit("_", 2)
        key = f"{ds} ({ir.replace('ir', 'IR ')})"
        if method == "ce":
            for stage, label in (("stage1", "CE"), ("stage2", "CE + cRT"), ("stage3", "CE + cRT + tau-norm")):
                if stage in res["metrics"]:
                    groups[key][label].append(overall(res, stage))
        else:
            groups[key]["Balanced Softmax" if method == "bs" else method].append(overall(res))
    for key, methods in groups.items():
        for label, vals in methods.items():
            out.append(f"| {key} | {label} | {ms([v.get('macc') for v in vals])} | {ms([v.get('few_acc') for v in vals])} "
                       f"| {ms([v.get('hm') for v in vals])} | {ms([v.get('oa') for v in vals])} | {len(vals)} |")
    return out


def table_adsb(root: str) -> List[str]:
    out = ["| imbalance ratio | method | test mAcc | few | HM | OA | seeds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for ratio in (10, 50, 100):
        rows: Dict[str, List[dict]] = defaultdict(list)
        for folder in sorted(glob.glob(os.path.join(root, "adsb", f"adsb_ir{ratio}_*_s[0-9]"))):
            res = load(folder)
            if res is None:
                continue
            method = os.path.basename(folder).split("_")[2]
            if method == "ce":
                for stage, label in (("stage1", "CE"), ("stage2", "CE + cRT"), ("stage3", "CE + cRT + tau-norm")):
                    if stage in res["metrics"]:
                        rows[label].append(overall(res, stage))
            else:
                rows["Balanced Softmax"].append(overall(res))
        for label, vals in rows.items():
            out.append(f"| {ratio} | {label} | {ms([v.get('macc') for v in vals])} | {ms([v.get('few_acc') for v in vals])} "
                       f"| {ms([v.get('hm') for v in vals])} | {ms([v.get('oa') for v in vals])} | {len(vals)} |")
    return out


def table_arrowhead(root: str) -> List[str]:
    res = load(os.path.join(root, "arrowhead", "ArrowHead_readme"))
    if res is None:
        return ["(not run)"]
    f = overall(res)
    return [f"test OA {100 * f['oa']:.1f}%, mAcc {100 * f['macc']:.1f}%, macro-F1 {100 * f['macro_f1']:.1f}%, "
            f"validation mAcc {100 * res['val_metrics']['macc']:.1f}%, {round(res['timings']['total'])} s, "
            f"model {res['model_info']['name']} ({res['model_info']['params']:,} parameters)"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    a = p.parse_args(argv)
    pub = published()
    sections = [("Selection on validation splits", table_select(a.root)),
                ("Very small sets: selection on held-out parts of the training splits", table_select_small(a.root)),
                ("Bundled sets: the preset the small-set rule picks", table_bundled(a.root, pub)),
                ("InceptionTime (one network) with the same recipe", table_inception(a.root, pub)),
                ("Done-when: OSULeaf as a .mat pair", table_donewhen(a.root, pub)),
                ("Long-tailed variants", table_longtail(a.root)),
                ("Built-in ADS-B data", table_adsb(a.root)),
                ("ArrowHead, the README command", table_arrowhead(a.root))]
    for title, lines in sections:
        sys.stdout.write(f"### {title}\n\n" + "\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
