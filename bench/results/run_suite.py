"""The results suite: train datasets x methods x seeds, one run at a time, with the command line.

    python bench/results/run_suite.py PLAN [PLAN ...] [--root experiments/results_suite] [--dry-run]
    python bench/results/run_suite.py --list

Each job is ``python main.py <overrides> hydra.run.dir=<root>/<plan>/<job>``; a job whose
``results/results.json`` exists is skipped, so an interrupted suite continues where it stopped.
Every finished job appends one line to ``<root>/suite_log.jsonl`` (wall and CPU seconds, exit
status). ``bench/results/make_results.py`` turns the run folders into docs/RESULTS.md.

Plans (see docs/RESULTS.md for what each is for and its epoch budget):
    select     model and long-tail stage for small data on VALIDATION splits
    select_norm  per-series normalisation of multivariate series on VALIDATION splits
    select_small  no validation carve for very small sets, on hold-out parts of training splits
    bundled    experiment=tsc_small_data on the bundled UCR/UEA sets, 3 seeds
    bundled_tiny  experiment=tsc_tiny_data on the sets the small-set rule names, 3 seeds
    inception  InceptionTime with the same recipe on the cheaper bundled sets, 3 seeds
    longtail   long-tailed variants (create_imbalance on the training split): CE + cRT + tau-norm
               in one run, and Balanced Softmax, 3 seeds
    adsb       the built-in ADS-B data at imbalance ratio 10 / 50 / 100: CE+cRT+tau and
               Balanced Softmax, 3 seeds
    donewhen   OSULeaf as a .mat pair (export_archive), experiment=tsc_small_data, 3 seeds
    arrowhead  python main.py data.source=ucr:ArrowHead experiment=tsc_small_data (with figures)
    plaid      PLAID (variable length, naturally imbalanced) as a .mat pair with its mask, 1 seed
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = (0, 1, 2)
QUIET = ["num_threads=1", "visualization.enabled=false"]

#: The bundled UCR/UEA sets and the epoch budget each gets (chosen so that one run takes at most
#: ~30 minutes of one loaded core; docs/RESULTS.md states it beside the numbers).
BUNDLED: Dict[str, int] = {
    "ucr:ArrowHead": 300,
    "uea:BasicMotions": 300,
    "ucr:PickupGestureWiimoteZ": 300,
    "uea:JapaneseVowels": 150,
    "ucr:OSULeaf": 200,
    "ucr:ACSF1": 100,
}

Job = Tuple[str, List[str]]


def _name(source: str) -> str:
    return source.split(":", 1)[1]


def plan_select() -> List[Job]:
    """Model and long-tail stage for small data, on VALIDATION splits (val_ratio 0.2, so that
    JapaneseVowels has 54 and OSULeaf 40 validation series): stage 1, then cRT (stage 2) and
    tau-norm with tau chosen on validation (stage 3); logs/metrics.csv holds the validation
    mAcc after each stage."""
    base = ["experiment=tsc_small_data", "stage2.enabled=true", "stage2.mode=crt", "stage3.mode=tau_norm",
            "stage3.tau_norm=auto", "data.val_ratio=0.2", "seed=0"]
    jobs = []
    for src, epochs in (("uea:JapaneseVowels", 100), ("ucr:OSULeaf", 100)):
        for model in ("fcn", "resnet_tsc", "inception_time"):
            jobs.append((f"{_name(src)}_{model}", base + [f"data.source={src}", f"model={model}",
                                                          f"training.epochs={epochs}"]))
    return jobs


def plan_select_norm() -> List[Job]:
    """Per-series normalisation for multivariate data on VALIDATION (JapaneseVowels, 54 series):
    zscore per channel (the select plan's FCN run) against rms over all channels and none."""
    base = ["experiment=tsc_small_data", "stage2.enabled=true", "stage2.mode=crt", "stage3.mode=tau_norm",
            "stage3.tau_norm=auto", "data.val_ratio=0.2", "seed=0", "data.source=uea:JapaneseVowels", "model=fcn",
            "training.epochs=100"]
    return [("JapaneseVowels_fcn_rms", base + ["data.normalize_mode=rms"]),
            ("JapaneseVowels_fcn_none", base + ["data.normalize=false"])]


def plan_bundled() -> List[Job]:
    """OSULeaf is not repeated here: the donewhen plan trains the same split from its .mat pair."""
    return [(f"{_name(src)}_s{s}", ["experiment=tsc_small_data", f"data.source={src}", f"training.epochs={ep}",
                                    f"seed={s}"])
            for src, ep in BUNDLED.items() if src != "ucr:OSULeaf" for s in SEEDS]


#: The sets the rule sends to experiment=tsc_tiny_data (docs/RESULTS.md): a 20% carve would leave a
#: class fewer than 3 validation series (ArrowHead 12 series a class, BasicMotions and ACSF1 10,
#: PickupGestureWiimoteZ 5), with the epoch budget of each (the preset's 300; ACSF1's 1,460-sample
#: series at batch 10 cost about 20 minutes per 200 epochs of one core, so it gets 200).
TINY: Dict[str, int] = {
    "ucr:ArrowHead": 300,
    "uea:BasicMotions": 300,
    "ucr:PickupGestureWiimoteZ": 300,
    "ucr:ACSF1": 200,
}


def plan_bundled_tiny() -> List[Job]:
    return [(f"{_name(src)}_s{s}", ["experiment=tsc_tiny_data", f"data.source={src}", f"training.epochs={ep}",
                                    f"seed={s}"])
            for src, ep in TINY.items() for s in SEEDS]


def plan_inception() -> List[Job]:
    cheap = ("ucr:ArrowHead", "uea:BasicMotions", "ucr:PickupGestureWiimoteZ", "uea:JapaneseVowels")
    return [(f"{_name(src)}_s{s}", ["experiment=tsc_small_data", "model=inception_time", f"data.source={src}",
                                    f"training.epochs={BUNDLED[src]}", f"seed={s}"])
            for src in cheap for s in SEEDS]


LONGTAIL = {"ucr:OSULeaf": (10, 150), "uea:JapaneseVowels": (10, 150)}


def plan_longtail() -> List[Job]:
    jobs = []
    for src, (ratio, ep) in LONGTAIL.items():
        common = ["experiment=tsc_long_tail", f"data.source={src}", f"data.imbalance_ratio={ratio}",
                  f"training.epochs={ep}"]
        for s in SEEDS:
            jobs.append((f"{_name(src)}_ir{ratio}_ce_s{s}", common + [f"seed={s}"]))
            jobs.append((f"{_name(src)}_ir{ratio}_bs_s{s}", common + [f"seed={s}", "loss=balanced_softmax",
                                                                      "stage2.enabled=false", "stage3.mode=none"]))
    return jobs


def plan_adsb() -> List[Job]:
    jobs = []
    for ratio in (10, 50, 100):
        for s in SEEDS:
            common = [f"data.imbalance_ratio={ratio}", f"seed={s}", "stage3.mode=tau_norm", "stage3.tau_norm=auto"]
            jobs.append((f"adsb_ir{ratio}_ce_s{s}", common))
            jobs.append((f"adsb_ir{ratio}_bs_s{s}", common + ["loss=balanced_softmax", "stage2.enabled=false",
                                                              "stage3.mode=none"]))
    return jobs


#: Where the .mat pairs of the donewhen / plaid plans lie (python -m imbalance.archives ... --out DIR).
DATA_DIR = os.environ.get("IMBALANCE_SUITE_DATA", "data/results_suite")
DONEWHEN_DIR = os.path.join(DATA_DIR, "OSULeaf")


def plan_donewhen() -> List[Job]:
    files = [f"data.path_train={DONEWHEN_DIR}/train.mat", f"data.path_test={DONEWHEN_DIR}/test.mat"]
    return [(f"OSULeaf_mat_s{s}", ["experiment=tsc_small_data", *files, "create_imbalance=false", f"seed={s}"])
            for s in SEEDS]


#: Small sets for the select_small plan: two of the table's smallest and two development sets
#: that are not in the table (GunPoint, ItalyPowerDemand), each as hold-out pairs of its training
#: split (bench/results/holdout_pairs.py writes them to DATA_DIR/holdout).
SMALL = ("ArrowHead", "PickupGestureWiimoteZ", "GunPoint", "ItalyPowerDemand")


def plan_select_small() -> List[Job]:
    """How to train on very small sets, on VALIDATION data only: 30% of each set's training split
    is held out (3 draws) and scored; the rest is trained on with (a) the preset as it is (20%
    carved again for validation, tau chosen on it), (b) no carve (every series trains; validation
    is the training split, the last epoch kept, tau 0), (c) (b) with 1000 epochs and (d) (b) with
    the batch size of the official FCN / ResNet code, int(min(N / 10, 16)) for N training series
    (data.batch_size=auto; the runs in docs/RESULTS.md passed the same numbers, 2 / 3 / 3 / 4, by
    hand before auto existed, and their results.json record them)."""
    jobs = []
    for name in SMALL:
        for r in SEEDS:
            d = os.path.join(DATA_DIR, "holdout", f"{name}_r{r}")
            files = [f"data.path_train={d}/train.mat", f"data.path_test={d}/test.mat", "create_imbalance=false",
                     f"seed={r}", "experiment=tsc_small_data"]
            nocarve = [f"data.path_val={d}/train.mat", "stage3.mode=none"]
            jobs.append((f"{name}_r{r}_carve", files + ["training.epochs=300"]))
            jobs.append((f"{name}_r{r}_nocarve", files + nocarve + ["training.epochs=300"]))
            jobs.append((f"{name}_r{r}_nocarve_long", files + nocarve + ["training.epochs=1000"]))
            jobs.append((f"{name}_r{r}_nocarve_bs", files + nocarve + ["training.epochs=300", "data.batch_size=auto"]))
    return jobs


def plan_plaid() -> List[Job]:
    """PLAID (naturally imbalanced, variable length 100..1344) as a .mat pair with its mask, the
    issue's motivating case; one seed (about an hour of one loaded core)."""
    d = os.path.join(DATA_DIR, "PLAID")
    return [("PLAID_mat_s0", ["experiment=tsc_small_data", f"data.path_train={d}/train.mat",
                              f"data.path_test={d}/test.mat", "training.epochs=100", "seed=0"])]


def plan_arrowhead() -> List[Job]:
    return [("ArrowHead_readme", ["data.source=ucr:ArrowHead", "experiment=tsc_small_data"])]


PLANS = {"select": plan_select, "select_norm": plan_select_norm, "select_small": plan_select_small,
         "bundled_tiny": plan_bundled_tiny, "bundled": plan_bundled, "inception": plan_inception, "longtail": plan_longtail,
         "adsb": plan_adsb, "donewhen": plan_donewhen, "arrowhead": plan_arrowhead,
         "plaid": plan_plaid}


def run_job(plan: str, name: str, overrides: List[str], root: str, dry: bool) -> None:
    out = os.path.join(root, plan, name)
    if os.path.isfile(os.path.join(out, "results", "results.json")):
        print(f"skip {plan}/{name} (done)", flush=True)
        return
    quiet = [] if plan == "arrowhead" else QUIET
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *overrides, *quiet, f"hydra.run.dir={out}"]
    print(" ".join(cmd[1:]), flush=True)
    if dry:
        return
    t0, c0 = time.time(), os.times()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    c1 = os.times()
    rec = {"plan": plan, "job": name, "overrides": overrides, "rc": proc.returncode,
           "wall_s": round(time.time() - t0, 1),
           "cpu_s": round((c1.children_user - c0.children_user) + (c1.children_system - c0.children_system), 1),
           "load": os.getloadavg()[0], "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    if proc.returncode:
        rec["stderr"] = proc.stderr[-1500:]
    with open(os.path.join(root, "suite_log.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"  -> rc {proc.returncode}, {rec['wall_s']} s wall, {rec['cpu_s']} s CPU", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plans", nargs="*")
    p.add_argument("--root", default="experiments/results_suite")
    p.add_argument("--only", default=None, help="run only jobs whose name contains this")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--list", action="store_true")
    a = p.parse_args(argv)
    if a.list or not a.plans:
        for k, fn in PLANS.items():
            print(f"{k}: {len(fn())} jobs")
        return 0
    os.makedirs(a.root, exist_ok=True)
    for plan in a.plans:
        for name, ov in PLANS[plan]():
            if a.only and a.only not in name:
                continue
            run_job(plan, name, ov, a.root, a.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
