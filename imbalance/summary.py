"""Compare many runs: find run folders, group seeds, write CSV tables and a Markdown report.

This is the logic behind ``python summarize.py`` (SEED.md "批量实验对比"). A run folder is any
folder under the root that holds ``results/results.json`` (Hydra single runs, multirun jobs and
Optuna trials alike, at any depth). Only ``results.json`` and, when it lacks a ``config``, the
run's ``.hydra/config.yaml`` are read; the text summary never is.

Grouping. Runs whose resolved configs are equal once the keys in :data:`DEFAULT_IGNORED_KEYS`
(``seed``, ``exp_name``, output/visualisation/device settings) are removed form one
*configuration*; every table reports a configuration as mean, sample standard deviation
(``ddof=1``, empty when n = 1) and n over its runs.

Labels. A configuration is labelled by its stage-1 loss and sampler, stage-2 mode/loss/sampler
(when stage 2 is enabled), stage-3 mode and model (``loss.name``, ``sampling.name``,
``stage2.*``, ``stage3.mode``, ``model.name``). The *effective* loss and sampler are stage 2's
when stage 2 is enabled, else stage 1's; they are the axes of the loss x sampler matrices and of
``comparison_loss`` / ``comparison_sampling``.

Type (``comparison_by_type``). A run uses *sampling* when ``sampling.name`` or an enabled
``stage2.sampler`` is not ``none``; it uses a *loss* when ``loss.name`` or an enabled
``stage2.loss`` is not CrossEntropy. The type is ``baseline`` / ``sampling-only`` /
``loss-only`` / ``combined`` accordingly; runs with stage 2 enabled get the prefix
``two-stage:`` (``two-stage: plain`` when stage 2 re-trains with CE and no sampler), and runs
with stage-3 calibration (``stage3.mode`` not none) or post-hoc logit adjustment
(``evaluation.eval_logit_adjust: posthoc``) get the suffix `` + calibration``.

Selection. A configuration is *selected* on VALIDATION data only: the one with the highest
mean of ``select_by`` (:data:`SELECT_METRICS`: ``val_macc``, the default, or ``val_acc``: the
final model's validation mAcc / accuracy that ``results.json`` records as ``val_metrics``)
over its runs that record it; ties go to more runs, then the config id (never to a test
figure). The report gives the TEST figures of what was selected. Runs without
``val_metrics`` are excluded from the selection (and listed), not from the tables; a
configuration none of whose runs records it cannot be selected. Tables sorted by a test
metric (``sort_by``) are for reading only and are labelled so.

Class-incremental runs. A run whose results.json has an ``incremental`` block (a session of
``mode=incremental``, or the base session of a ``mode=train`` run that kept a memory) is grouped
with its session index (``incremental.session``) and without its parent's path (``resume``), so
that the seeds of one method and session form one configuration; ``incremental_sessions`` has
one row per method and session with the old / new / all accuracy and mAcc after it, the chain's
average incremental accuracy and forgetting (REPORT.md "Class-incremental sessions").

Baseline. Unless one is named, the baseline of a configuration is a configuration of type
``baseline`` (stage 2 disabled, CrossEntropy, no sampler, no calibration) with the same model,
the one whose config agrees with it on the most keys; configurations without such a baseline get
no improvement row. A named baseline (exp_name, run folder name, configuration label or id)
is used for every configuration.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import fnmatch
import hashlib
import json
import argparse
import logging
import sys
import math
import os
import textwrap
from pathlib import Path
from typing import Any, Iterable, Sequence

from imbalance.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Overall metrics read from ``metrics.final.overall`` (fractions in [0, 1]).
METRICS: tuple[str, ...] = (
    "oa", "macc", "balanced_acc", "macro_f1", "gmean",
    "many_acc", "medium_acc", "few_acc", "hm", "nll", "ece",
)
#: Validation metrics a configuration can be selected by (``results.json`` ``val_metrics``:
#: the final model on the validation split); higher is better for both.
SELECT_METRICS: tuple[str, ...] = ("val_macc", "val_acc")
SELECT_TITLES: dict[str, str] = {"val_macc": "validation mAcc", "val_acc": "validation accuracy"}
#: Metrics where smaller is better.
LOWER_IS_BETTER: frozenset[str] = frozenset({"nll", "ece"})
#: Metrics of the key table (SEED: "论文报告：mAcc, Many-Acc, Few-Acc, HM").
KEY_METRICS: tuple[str, ...] = ("macc", "many_acc", "medium_acc", "few_acc", "hm", "macro_f1", "oa")
METRIC_TITLES: dict[str, str] = {
    "oa": "OA", "macc": "mAcc", "balanced_acc": "Balanced-Acc", "macro_f1": "Macro-F1",
    "gmean": "G-Mean", "many_acc": "Many", "medium_acc": "Medium", "few_acc": "Few",
    "hm": "HM", "nll": "NLL", "ece": "ECE",
}
#: Open-set metrics read from ``metrics.final.openset.<detector>`` (``overall`` and the group
#: AUROCs of ``group_wise``), as run columns ``openset.<detector>.<metric>``.
OPENSET_METRICS: tuple[str, ...] = ("auroc", "aupr_in", "aupr_out", "fpr95", "oscr", "open_macro_f1", "closed_macc",
                                    "many_auroc", "medium_auroc", "few_auroc")
OPENSET_TITLES: dict[str, str] = {
    "auroc": "AUROC", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out", "fpr95": "FPR95", "oscr": "OSCR",
    "open_macro_f1": "Open F1", "closed_macc": "Closed mAcc", "many_auroc": "AUROC many",
    "medium_auroc": "AUROC medium", "few_auroc": "AUROC few",
}
#: Open-set metrics in the report's table per detector (FPR95: lower is better).
OPENSET_KEY_METRICS: tuple[str, ...] = ("auroc", "fpr95", "oscr", "open_macro_f1", "many_auroc", "medium_auroc",
                                        "few_auroc")
#: Config keys (and key prefixes) that never distinguish configurations.
DEFAULT_IGNORED_KEYS: tuple[str, ...] = (
    "seed", "exp_name", "run_dir", "hydra", "visualization", "console_log_interval",
    "gpus", "device", "data.num_workers", "data.pin_memory", "logger",
)
#: Config keys that label a configuration.
LABEL_KEYS: tuple[str, ...] = (
    "loss.name", "sampling.name", "stage2.enabled", "stage2.mode", "stage2.loss",
    "stage2.sampler", "stage3.mode", "model.name",
)
_CE_NAMES = frozenset({"crossentropy", "ce", "cross_entropy", "crossentropyloss", "softmax"})
_NONE_NAMES = frozenset({"none", "null", "", "natural", "instance", "instance_balanced"})
_SKIP_DIRS = frozenset({"checkpoints", ".hydra", "logs", "results", "__pycache__", ".git", "tb", "mlartifacts"})


@dataclasses.dataclass
class RunRecord:
    """One completed run: where it is, its flattened resolved config and its final metrics."""

    path: Path
    relpath: str
    exp_name: str
    seed: Any
    config: dict[str, Any]
    metrics: dict[str, float]
    extra: dict[str, Any]


@dataclasses.dataclass
class SkippedRun:
    """A run folder that could not be summarised, and why."""

    path: str
    reason: str


@dataclasses.dataclass
class SummaryTables:
    """Everything :func:`write_summary` writes; each table a ``pandas.DataFrame``."""

    tables: dict[str, Any]
    groups: Any
    runs: Any
    sort_by: str
    baseline_note: str
    searches: list[dict[str, Any]]
    select_by: str = "val_macc"
    #: config_id of the configuration selected on validation (None: no run records it)
    selected: str | None = None
    #: run folders (relative) lacking the ``select_by`` validation metric
    runs_without_val: list[str] = dataclasses.field(default_factory=list)


class _Skip(Exception):
    pass


# --------------------------------------------------------------------------- discovery
def _pattern_matches(pattern: str | None, name: str, relpath: str) -> bool:
    if not pattern:
        return True
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(relpath, pattern)
    return pattern in relpath


def discover_runs(root: str | os.PathLike, pattern: str | None = None) -> tuple[list[Path], list[SkippedRun]]:
    """Find run folders under ``root`` (any depth, symlinks not followed).

    Returns the folders that hold ``results/results.json`` and, as skipped, folders that look
    like runs (a ``.hydra/``, ``logs/`` or ``results/`` folder) but have no results.json.
    ``pattern`` filters by folder name or path relative to root: a shell glob if it holds
    ``*?[``, else a substring.
    """
    root_p = Path(root)
    if not root_p.exists():
        raise DataError(f"--root '{root}' does not exist (looked for {root_p.resolve()})")
    if not root_p.is_dir():
        raise DataError(f"--root '{root}' is not a directory ({root_p.resolve()})")
    root_p = root_p.resolve()
    found: list[Path] = []
    skipped: list[SkippedRun] = []
    stack = [root_p]
    while stack:
        d = stack.pop()
        try:
            entries = {e.name: e for e in os.scandir(d)}
        except OSError as exc:
            skipped.append(SkippedRun(str(d), f"cannot list folder: {exc.strerror or exc}"))
            continue
        rel = "." if d == root_p else d.relative_to(root_p).as_posix()
        res = entries.get("results")
        if res is not None and res.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(res.path, "results.json")):
            if _pattern_matches(pattern, d.name, rel):
                found.append(d)
            continue
        looks_like_run = any(
            n in entries and entries[n].is_dir(follow_symlinks=False) for n in (".hydra", "results", "logs")
        ) and "multirun.yaml" not in entries
        if looks_like_run:
            if _pattern_matches(pattern, d.name, rel):
                skipped.append(SkippedRun(rel, _why_incomplete(d)))
            continue
        for name, e in entries.items():
            if name in _SKIP_DIRS or name.startswith("analysis_results_"):
                continue
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
    found.sort()
    skipped.sort(key=lambda s: s.path)
    return found, skipped


def _why_incomplete(d: Path) -> str:
    reason = "no results/results.json (crashed, killed or still running)"
    log = d / "logs" / "training.log"
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 2048))
            tail = fh.read().decode("utf-8", "replace").strip().splitlines()
        if tail:
            last = tail[-1].strip()
            reason += f"; last log line: {last[:160]}"
    except OSError:
        pass
    return reason


# --------------------------------------------------------------------------- loading
def flatten_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys; lists become JSON strings (hashable, comparable)."""
    out: dict[str, Any] = {}
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                if v:
                    out.update(flatten_config(v, key + "."))
                else:
                    out[key] = "{}"
            else:
                out[key] = json.dumps(v, sort_keys=True) if isinstance(v, (list, tuple)) else v
    return out


def _read_hydra_config(folder: Path) -> dict | None:
    p = folder / ".hydra" / "config.yaml"
    if not p.is_file():
        return None
    try:
        import yaml

        with open(p, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        return data if isinstance(data, dict) else None
    except Exception:  # noqa: BLE001 - an unreadable fallback is only a missing fallback
        return None


def _as_float(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def load_run(folder: str | os.PathLike, root: str | os.PathLike | None = None) -> RunRecord:
    """Read one run folder's ``results/results.json``; raise ``_Skip`` with a reason if unusable."""
    folder = Path(folder)
    rel = folder.name if root is None else folder.relative_to(root).as_posix()
    if rel in ("", "."):  # the root itself is the run folder
        rel = folder.name
    path = folder / "results" / "results.json"
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise _Skip(f"results/results.json is not valid JSON (line {exc.lineno} col {exc.colno}: {exc.msg})")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Skip(f"results/results.json cannot be read ({exc})")
    if not isinstance(data, dict):
        raise _Skip("results/results.json is not a JSON object")
    status = data.get("status", "completed")
    if status != "completed":
        raise _Skip(f"status is '{status}', not 'completed'")
    metrics = data.get("metrics")
    final = metrics.get("final") if isinstance(metrics, dict) else None
    overall = final.get("overall") if isinstance(final, dict) else None
    if not isinstance(overall, dict):
        raise _Skip("results.json has no metrics.final.overall")
    cfg = data.get("config")
    if not isinstance(cfg, dict):
        cfg = _read_hydra_config(folder)
        if cfg is None:
            raise _Skip("results.json has no config and .hydra/config.yaml is missing or unreadable")
    flat = flatten_config(cfg)
    vals = {m: _as_float(overall.get(m)) for m in METRICS}
    if all(math.isnan(v) for v in vals.values()):
        raise _Skip("metrics.final.overall holds none of " + ", ".join(METRICS))
    extra: dict[str, Any] = {}
    for stage in ("stage1", "stage2", "stage3"):
        st = metrics.get(stage)
        if isinstance(st, dict) and isinstance(st.get("overall"), dict):
            for m in METRICS:
                extra[f"{stage}_{m}"] = _as_float(st["overall"].get(m))
    extra.update(_openset_columns(final.get("openset")))
    vm = data.get("val_metrics")  # what main.py returns to sweepers (validation split)
    if isinstance(vm, dict) and vm.get("split") != "train":  # data.val_ratio=0: training metrics, not selectable
        for k in ("macc", "acc"):
            if k in vm:
                extra[f"val_{k}"] = _as_float(vm[k])
    timings = data.get("timings")
    if isinstance(timings, dict):
        tot = [_as_float(v) for v in timings.values()]
        tot = [t for t in tot if not math.isnan(t)]
        extra["time_total_s"] = float(sum(tot)) if tot else math.nan
    mi = data.get("model_info")
    if isinstance(mi, dict):
        extra["model_params"] = mi.get("params")
        extra["model_flops_per_sample"] = mi.get("flops_per_sample")
    cc = data.get("class_counts")
    if isinstance(cc, list) and cc:
        extra["num_classes"] = len(cc)
        try:
            extra["imbalance_ratio_observed"] = max(cc) / max(min(cc), 1)
        except TypeError:
            pass
    dist = data.get("distill")
    if isinstance(dist, dict):  # knowledge distillation: the teacher's run and its final metrics
        teacher = dist.get("teacher") or {}
        extra["teacher_run"] = teacher.get("run") or teacher.get("checkpoint")
        extra["teacher_model"] = teacher.get("model")
        tm = teacher.get("metrics") or {}
        for m in ("macc", "few_acc", "hm", "oa"):
            extra[f"teacher_{m}"] = _as_float(tm.get(m))
    extra["git_commit"] = data.get("git_commit")
    inc = data.get("incremental")
    if isinstance(inc, dict):  # a class-incremental session: its index separates configurations, its parent not
        flat["resume"] = None
        flat["incremental.session"] = inc.get("session")
        extra.update(incremental_columns(inc, flat))
    exp_name = data.get("exp_name") or flat.get("exp_name") or folder.name
    return RunRecord(path=folder, relpath=rel, exp_name=str(exp_name), seed=flat.get("seed"),
                     config=flat, metrics=vals, extra=extra)


#: Columns of a class-incremental session (results.json ``incremental``), each a fraction.
INCREMENTAL_METRICS: tuple[str, ...] = ("old_macc", "new_macc", "all_macc", "old_acc", "new_acc", "all_acc",
                                        "aia_macc", "aia_acc", "forgetting")


def incremental_columns(inc: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    """The summary columns of a run's ``incremental`` block: ``inc_session``, ``inc_method``
    (``base`` for session 0; ``+ stage 2`` when cRT followed), old / new / all accuracy and
    mAcc after the session, the chain's average incremental accuracy / mAcc and forgetting."""
    out: dict[str, Any] = {"inc_session": inc.get("session")}
    method = inc.get("method") or "base"
    if method != "base" and _truthy(flat.get("stage2.enabled", False)):
        method += f" + stage 2 ({_name(flat.get('stage2.mode'), 'crt')})"
    out["inc_method"] = method
    for g in ("old", "new", "all"):
        grp = inc.get(g) if isinstance(inc.get(g), dict) else {}
        out[f"inc_{g}_macc"] = _as_float(grp.get("macc"))
        out[f"inc_{g}_acc"] = _as_float(grp.get("acc"))
    summ = inc.get("summary") if isinstance(inc.get("summary"), dict) else {}
    out["inc_aia_macc"] = _as_float(summ.get("average_incremental_macc"))
    out["inc_aia_acc"] = _as_float(summ.get("average_incremental_acc"))
    out["inc_forgetting"] = _as_float(summ.get("forgetting"))
    return out


def incremental_table(runs_df: Any) -> Any:
    """One row per class-incremental configuration and session: ``config``, ``method``,
    ``session``, ``n`` and mean / std over seeds of :data:`INCREMENTAL_METRICS`; empty without
    incremental runs."""
    import pandas as pd

    cols = ["config", "config_id", "method", "session", "n"] + [f"{m}_{s}" for m in INCREMENTAL_METRICS
                                                                for s in ("mean", "std")] + ["run_dirs"]
    if "inc_session" not in runs_df or runs_df["inc_session"].isna().all():
        return pd.DataFrame(columns=cols)
    sub = runs_df[runs_df["inc_session"].notna()]
    rows = []
    for gid, g in sub.groupby("config_id", sort=False):
        row = {"config": g["config"].iloc[0], "config_id": gid, "method": g["inc_method"].iloc[0],
               "session": int(g["inc_session"].iloc[0]), "n": len(g), "run_dirs": " ".join(g["run_dir"])}
        for m in INCREMENTAL_METRICS:
            v = g[f"inc_{m}"].astype(float)
            row[f"{m}_mean"], row[f"{m}_std"] = v.mean(), v.std()
        rows.append(row)
    return pd.DataFrame(rows, columns=cols).sort_values(["session", "method"], kind="stable").reset_index(drop=True)


def _openset_columns(block: Any) -> dict[str, float]:
    """``openset.<detector>.<metric>`` columns of one run's ``metrics.final.openset``."""
    out: dict[str, float] = {}
    if not isinstance(block, dict):
        return out
    for det, rep in block.items():
        rep = rep if isinstance(rep, dict) else {}
        ov = rep.get("overall") if isinstance(rep.get("overall"), dict) else {}
        gw = rep.get("group_wise") if isinstance(rep.get("group_wise"), dict) else {}
        for m in OPENSET_METRICS:
            if m.endswith("_auroc"):
                g = gw.get(m[: -len("_auroc")])
                out[f"openset.{det}.{m}"] = _as_float(g.get("auroc") if isinstance(g, dict) else None)
            else:
                out[f"openset.{det}.{m}"] = _as_float(ov.get(m))
    return out


def openset_detectors_of(columns: Iterable[str]) -> list[str]:
    """Detector names of the ``openset.<detector>.<metric>`` columns, in first-seen order."""
    seen: dict[str, None] = {}
    for c in columns:
        if isinstance(c, str) and c.startswith("openset.") and c.count(".") == 2:
            seen.setdefault(c.split(".")[1], None)
    return list(seen)


def collect_runs(root: str | os.PathLike, pattern: str | None = None) -> tuple[list[RunRecord], list[SkippedRun]]:
    """Discover and load every run under ``root``; unusable folders are returned as skipped."""
    folders, skipped = discover_runs(root, pattern)
    root_p = Path(root).resolve()
    runs: list[RunRecord] = []
    for f in folders:
        try:
            runs.append(load_run(f, root_p))
        except _Skip as exc:
            rel = f.relative_to(root_p).as_posix()
            skipped.append(SkippedRun(f.name if rel in ("", ".") else rel, str(exc)))
    skipped.sort(key=lambda s: s.path)
    return runs, skipped


def find_search_results(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Read every Optuna ``optimization_results.yaml`` (Hydra writes it into the sweep dir) under root.

    Each entry is the file's content (``best_params``, ``best_value``) plus ``sweep_dir``, the
    folder relative to root.
    """
    import yaml

    root_p = Path(root).resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(root_p):
        if ".hydra" in dirnames or "results" in dirnames:  # a run folder: nothing below it
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        if "optimization_results.yaml" in filenames:
            rel = Path(dirpath).relative_to(root_p).as_posix()
            try:
                with open(os.path.join(dirpath, "optimization_results.yaml"), encoding="utf-8") as fh:
                    data = yaml.safe_load(fh) or {}
                if not isinstance(data, dict):
                    data = {"content": data}
            except Exception as exc:  # noqa: BLE001 - reported, never fatal
                data = {"error": f"unreadable: {exc}"}
            data["sweep_dir"] = rel
            out.append(data)
    return sorted(out, key=lambda d: d["sweep_dir"])


# --------------------------------------------------------------------------- labelling
def _is_ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in ignore)


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes", "on")
    return bool(v)


def _name(v: Any, default: str) -> str:
    return default if v is None else str(v)


def _is_ce(name: str) -> bool:
    return name.replace("-", "_").lower() in _CE_NAMES


def _is_none(name: str) -> bool:
    return name.lower() in _NONE_NAMES


def describe_config(flat: dict[str, Any]) -> dict[str, Any]:
    """Label columns of one flattened config: losses, samplers, modes, model, ``type``."""
    s1_loss = _name(flat.get("loss.name"), "CrossEntropy")
    s1_sampler = _name(flat.get("sampling.name"), "none")
    s2 = _truthy(flat.get("stage2.enabled", False))
    s2_mode = _name(flat.get("stage2.mode"), "crt") if s2 else "-"
    s2_loss = _name(flat.get("stage2.loss"), "CrossEntropy") if s2 else "-"
    if s2 and _truthy(flat.get("stage2.label_aware_smoothing", False)):
        s2_loss = "LabelAwareSmoothing"
    s2_sampler = _name(flat.get("stage2.sampler"), "none") if s2 else "-"
    s3_mode = _name(flat.get("stage3.mode"), "none")
    posthoc = _name(flat.get("evaluation.eval_logit_adjust"), "none")
    calib = not _is_none(s3_mode) or posthoc.lower() == "posthoc"
    uses_sampler = not _is_none(s1_sampler) or (s2 and not _is_none(s2_sampler))
    uses_loss = not _is_ce(s1_loss) or (s2 and not _is_ce(s2_loss))
    kind = {(False, False): "baseline", (True, False): "sampling-only",
            (False, True): "loss-only", (True, True): "combined"}[(uses_sampler, uses_loss)]
    if s2:
        kind = "two-stage: " + ("plain" if kind == "baseline" else kind)
    if calib:
        kind += " + calibration"
    distill = _name(flat.get("distill.method"), "kd") if flat.get("distill.teacher") else "-"
    if distill != "-":
        kind += " + distillation"
    return {
        "loss": s2_loss if s2 else s1_loss,
        "sampler": s2_sampler if s2 else s1_sampler,
        "stage1_loss": s1_loss, "stage1_sampler": s1_sampler,
        "stage2_enabled": s2, "stage2_mode": s2_mode, "stage2_loss": s2_loss,
        "stage2_sampler": s2_sampler, "stage3_mode": s3_mode, "posthoc": posthoc,
        "model": _name(flat.get("model.name"), "?"), "type": kind, "extras": _extras(flat, s2),
        "distill": distill,
    }


def _extras(flat: dict[str, Any], s2: bool) -> str:
    """Short tags of the additions a label shows: batch mixing, SAM/ImbSAM, MaxNorm, shift BN,
    the evaluation classifier (empty: none)."""
    tags = []
    mix = _name(flat.get("data.augment.mix.name"), "none")
    if not _is_none(mix):
        tags.append(f"mix:{mix}")
    if _truthy(flat.get("training.sam.enabled", False)):
        tags.append(_name(flat.get("training.sam.mode"), "sam"))
    if s2 and flat.get("stage2.maxnorm_thresh") is not None:
        tags.append("maxnorm")
    if s2 and _truthy(flat.get("stage2.shift_bn", False)):
        tags.append("shift_bn")
    clf = _name(flat.get("evaluation.classifier"), "linear")
    if clf != "linear":
        tags.append(f"eval:{clf}")
    return " + ".join(tags)


def _label(desc: dict[str, Any], with_model: bool) -> str:
    s = f"{desc['stage1_loss']}+{desc['stage1_sampler']}"
    if desc["stage2_enabled"]:
        s += f" -> {desc['stage2_mode']}:{desc['stage2_loss']}+{desc['stage2_sampler']}"
    if not _is_none(desc["stage3_mode"]):
        s += f" -> s3:{desc['stage3_mode']}"
    if desc["posthoc"].lower() == "posthoc":
        s += " (posthoc)"
    if desc.get("extras"):
        s += f" + {desc['extras']}"
    if desc.get("distill", "-") != "-":
        s += f" +{desc['distill'].upper()}"
    if with_model:
        s += f" @{desc['model']}"
    return s


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# --------------------------------------------------------------------------- tables
def build_tables(
    runs: Sequence[RunRecord],
    *,
    baseline: str | None = None,
    sort_by: str = "macc",
    select_by: str = "val_macc",
    ignore_keys: Sequence[str] = DEFAULT_IGNORED_KEYS,
    searches: list[dict[str, Any]] | None = None,
) -> SummaryTables:
    """Group runs by configuration and compute every table (see the module docstring).

    ``sort_by`` (a test metric) only orders tables for reading; ``select_by`` (a validation
    metric of :data:`SELECT_METRICS`) selects the configuration that the report names.
    """
    import numpy as np
    import pandas as pd

    if sort_by not in METRICS:
        raise ConfigError(f"--sort-by '{sort_by}' is not a metric; valid: {', '.join(METRICS)}")
    if select_by not in SELECT_METRICS:
        raise ConfigError(f"--select-by '{select_by}' is not a validation metric; valid: {', '.join(SELECT_METRICS)}")
    if not runs:
        raise DataError("no completed runs to summarise")
    ignore = tuple(ignore_keys)

    # ---- group runs by their config without the ignored keys
    group_of: list[str] = []
    gkeys: dict[str, dict[str, Any]] = {}
    for r in runs:
        kept = {k: v for k, v in r.config.items() if not _is_ignored(k, ignore)}
        if not _truthy(kept.get("stage2.enabled", False)):  # settings of a stage that did not run
            kept = {k: v for k, v in kept.items() if not k.startswith("stage2.") or k == "stage2.enabled"}
        blob = json.dumps(sorted(kept.items(), key=lambda kv: kv[0]), default=str)
        gid = hashlib.sha1(blob.encode()).hexdigest()[:8]
        group_of.append(gid)
        gkeys.setdefault(gid, kept)
    descs = {gid: describe_config(kept) for gid, kept in gkeys.items()}
    with_model = len({d["model"] for d in descs.values()}) > 1
    labels = {gid: _label(d, with_model) for gid, d in descs.items()}
    # Disambiguate configurations sharing a label by the keys in which they differ.
    by_label: dict[str, list[str]] = {}
    for gid, lab in labels.items():
        by_label.setdefault(lab, []).append(gid)
    variants = {gid: "" for gid in gkeys}
    for lab, gids in by_label.items():
        if len(gids) < 2:
            continue
        keys = sorted(set().union(*(gkeys[g].keys() for g in gids)))
        diff = [k for k in keys if len({json.dumps(gkeys[g].get(k), default=str) for g in gids}) > 1]
        for g in gids:
            variants[g] = ", ".join(f"{k}={_fmt_value(gkeys[g].get(k))}" for k in diff[:6])
            if len(diff) > 6:
                variants[g] += f", ... (+{len(diff) - 6} keys)"
    names = {g: labels[g] + (f" [{variants[g]}]" if variants[g] else "") for g in gkeys}

    # ---- one row per run
    rows = []
    for r, gid in zip(runs, group_of):
        d = descs[gid]
        row = {"config": names[gid], "config_id": gid, "exp_name": r.exp_name, "seed": r.seed,
               "run_dir": r.relpath, **d, "variant": variants[gid]}
        row.update(r.metrics)
        row.update(r.extra)
        rows.append(row)
    runs_df = pd.DataFrame(rows)
    for vm in SELECT_METRICS:  # runs written without val_metrics: NaN (excluded from selection)
        if vm not in runs_df:
            runs_df[vm] = math.nan
        runs_df[vm] = runs_df[vm].astype(float)
    runs_without_val = [str(d) for d in runs_df.loc[runs_df[select_by].isna(), "run_dir"]]
    cfg_df = pd.DataFrame([r.config for r in runs]).add_prefix("cfg.")
    full = pd.concat([runs_df, cfg_df], axis=1)

    # ---- one row per configuration
    g = runs_df.groupby("config_id", sort=False)
    agg = g[list(METRICS)].agg(["mean", "std", "count"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    first = g.first()
    info_cols = ["config", "type", "loss", "sampler", "stage1_loss", "stage1_sampler", "stage2_enabled",
                 "stage2_mode", "stage2_loss", "stage2_sampler", "stage3_mode", "model", "distill", "variant"]
    groups = first[info_cols].copy()
    groups["n"] = g.size()
    groups["seeds"] = g["seed"].agg(lambda s: " ".join(str(x) for x in s))
    groups["exp_names"] = g["exp_name"].agg(lambda s: " ".join(sorted(set(map(str, s)))))
    groups["run_dirs"] = g["run_dir"].agg(lambda s: " ".join(s))
    groups = groups.join(agg)
    for vm in SELECT_METRICS:  # validation metrics: mean/std/count over the runs that record them
        groups[f"{vm}_mean"] = g[vm].mean()
        groups[f"{vm}_std"] = g[vm].std()
        groups[f"{vm}_count"] = g[vm].count()
    asc = sort_by in LOWER_IS_BETTER
    groups = groups.sort_values([f"{sort_by}_mean", "oa_mean"], ascending=[asc, False], na_position="last")
    groups.insert(0, "rank", np.arange(1, len(groups) + 1))
    groups.index.name = "config_id"
    groups = groups.reset_index()
    val_order = _selection_order(groups, select_by)
    groups["val_rank"] = math.nan
    groups.loc[val_order, "val_rank"] = np.arange(1, len(val_order) + 1)
    selected = str(groups.loc[val_order[0], "config_id"]) if val_order else None
    groups["selected"] = groups["config_id"] == selected

    ranking_cols = ["rank", "config", "config_id", "type", "model", "n"]
    for m in METRICS:
        ranking_cols += [f"{m}_mean", f"{m}_std"]
    for vm in SELECT_METRICS:
        ranking_cols += [f"{vm}_mean", f"{vm}_std", f"{vm}_count"]
    ranking_cols += ["val_rank", "selected"]
    os_tables, os_cols = _openset_tables(runs_df, g, groups)
    ranking = groups[ranking_cols + os_cols + ["seeds", "exp_names", "run_dirs"]]

    def compare(by: str) -> Any:
        gg = runs_df.groupby(by, sort=True)
        out = gg[list(METRICS)].agg(["mean", "std"])
        out.columns = [f"{m}_{s}" for m, s in out.columns]
        out.insert(0, "n_runs", gg.size())
        out.insert(1, "n_configs", gg["config_id"].nunique())
        # The category's configuration selected on validation (none if no run records it).
        # val_order is best-first; drop_duplicates keeps whole rows (groupby.first would mix
        # columns of different rows around NaN values).
        pick = groups.loc[val_order].drop_duplicates(subset=[by], keep="first").set_index(by)
        out["selected_config"] = pick["config"]
        out[f"selected_{select_by}_mean"] = pick[f"{select_by}_mean"]
        out[f"selected_test_{sort_by}_mean"] = pick[f"{sort_by}_mean"]
        out = out.sort_values(f"{sort_by}_mean", ascending=asc)
        return out.reset_index()

    matrices = {}
    for m in ("oa", "macc", "hm"):
        mat = runs_df.pivot_table(index="loss", columns="sampler", values=m, aggfunc="mean", dropna=False)
        mat.index.name = "loss \\ sampler"
        mat.columns.name = None
        matrices[f"matrix_{m}"] = mat.reset_index()

    # best_configurations: the configuration each validation metric selects (select_by first),
    # with its validation score and its TEST figures. Never a maximum over test metrics.
    best_rows = []
    best_cols = ["selected_by", "config", "config_id", "type", "n", "n_val", "val_mean", "val_std"]
    for m in METRICS:
        best_cols += [f"test_{m}_mean", f"test_{m}_std"]
    best_cols += ["run_dirs"]
    for vm in (select_by,) + tuple(v for v in SELECT_METRICS if v != select_by):
        order = _selection_order(groups, vm)
        if not order:
            continue
        b = groups.loc[order[0]]
        row = {"selected_by": vm, "config": b["config"], "config_id": b["config_id"], "type": b["type"],
               "n": int(b["n"]), "n_val": int(b[f"{vm}_count"]), "val_mean": b[f"{vm}_mean"],
               "val_std": b[f"{vm}_std"], "run_dirs": b["run_dirs"]}
        for m in METRICS:
            row[f"test_{m}_mean"] = b[f"{m}_mean"]
            row[f"test_{m}_std"] = b[f"{m}_std"]
        best_rows.append(row)
    best_cfg = pd.DataFrame(best_rows, columns=best_cols)

    improvement, note = _improvements(groups, gkeys, descs, runs_df, baseline)
    # Improvements in validation order (the selected configuration first), never test order.
    vi = groups.set_index("config_id")
    improvement.insert(4, f"{select_by}_mean", improvement["config_id"].map(vi[f"{select_by}_mean"]).astype(float))
    improvement.insert(5, "selected", improvement["config_id"] == selected)
    improvement = improvement.sort_values(f"{select_by}_mean", ascending=False, na_position="last",
                                          kind="stable").reset_index(drop=True)
    tables = {
        "ranking_overall": ranking,
        "comparison_by_type": compare("type"),
        "comparison_sampling": compare("sampler"),
        "comparison_loss": compare("loss"),
        **matrices,
        "best_configurations": best_cfg,
        "improvement_over_baseline": improvement,
        "all_results_full": full,
        "incremental_sessions": incremental_table(runs_df),
        **os_tables,
    }
    if (runs_df["distill"] != "-").any():
        tables["distillation"] = _distillation_table(groups, gkeys, runs_df)
    return SummaryTables(tables=tables, groups=groups, runs=runs_df, sort_by=sort_by,
                         baseline_note=note, searches=searches or [], select_by=select_by,
                         selected=selected, runs_without_val=runs_without_val)


def _openset_tables(runs_df: Any, g: Any, groups: Any) -> tuple[dict[str, Any], list[str]]:
    """``openset_<detector>`` tables (one row per configuration that has the detector: mean and
    std of every open-set metric over its runs, in ``groups`` order) and the AUROC / FPR95 / OSCR
    mean columns they add to ``groups`` (for the ranking table)."""
    tables: dict[str, Any] = {}
    added: list[str] = []
    for det in openset_detectors_of(runs_df.columns):
        cols = [f"openset.{det}.{m}" for m in OPENSET_METRICS if f"openset.{det}.{m}" in runs_df]
        agg = g[cols].agg(["mean", "std", "count"])
        agg.columns = [f"{c}_{st}" for c, st in agg.columns]
        t = groups[["config_id", "config", "type", "n"]].set_index("config_id").join(agg, how="left")
        t = t[t[f"openset.{det}.auroc_count"] > 0] if f"openset.{det}.auroc_count" in t else t
        tables[f"openset_{det}"] = t.reset_index()
        for m in ("auroc", "fpr95", "oscr"):
            col = f"openset.{det}.{m}_mean"
            if col in agg:
                groups[col] = groups["config_id"].map(agg[col])
                added.append(col)
    return tables, added


def _distillation_table(groups: Any, gkeys: dict, runs_df: Any) -> Any:
    """One row per distilled configuration: its teacher (run, model, test metrics from the
    teacher's results.json), the same configuration without distillation ("alone", when it was
    run) and the distilled student, as means and stds over seeds."""
    import pandas as pd

    def without_distill(kept: dict) -> str:
        return json.dumps(sorted((k, v) for k, v in kept.items() if not k.startswith("distill.")), default=str)

    g = groups.set_index("config_id")
    alone_of: dict[str, str] = {}
    for gid, kept in gkeys.items():
        if not kept.get("distill.teacher"):
            alone_of.setdefault(without_distill(kept), gid)
    rows = []
    for gid in g.index:
        kept = gkeys[gid]
        if not kept.get("distill.teacher"):
            continue
        sub = runs_df[runs_df["config_id"] == gid]
        alone = alone_of.get(without_distill(kept))
        row = {"config": g.loc[gid, "config"], "config_id": gid, "method": kept.get("distill.method"),
               "temperature": kept.get("distill.temperature"), "alpha": kept.get("distill.alpha"),
               "teacher_run": kept.get("distill.teacher"),
               "teacher_model": sub["teacher_model"].dropna().iloc[0] if sub["teacher_model"].notna().any() else None,
               "n": int(g.loc[gid, "n"]), "alone_config": g.loc[alone, "config"] if alone else None,
               "alone_n": int(g.loc[alone, "n"]) if alone else 0}
        for m in ("macc", "few_acc", "hm"):
            row[f"teacher_{m}"] = float(sub[f"teacher_{m}"].mean())
            row[f"alone_{m}_mean"] = g.loc[alone, f"{m}_mean"] if alone else math.nan
            row[f"alone_{m}_std"] = g.loc[alone, f"{m}_std"] if alone else math.nan
            row[f"student_{m}_mean"] = g.loc[gid, f"{m}_mean"]
            row[f"student_{m}_std"] = g.loc[gid, f"{m}_std"]
        rows.append(row)
    return pd.DataFrame(rows)


def _selection_order(groups: Any, select_by: str) -> list[Any]:
    """Row labels of ``groups`` that can be selected (at least one run records ``select_by``),
    best first: highest validation mean, then more runs with it, then config id. No test
    figure takes part."""
    sub = groups[groups[f"{select_by}_count"] > 0]
    if sub.empty:
        return []
    key = sub.assign(_neg=-sub[f"{select_by}_mean"], _negn=-sub[f"{select_by}_count"])
    key = key.sort_values(["_neg", "_negn", "config_id"], kind="stable")
    return list(key.index)


def _improvements(groups: Any, gkeys: dict, descs: dict, runs_df: Any, baseline: str | None) -> tuple[Any, str]:
    import pandas as pd

    gi = groups.set_index("config_id")
    if baseline is not None:
        hit = runs_df[(runs_df["exp_name"].astype(str) == baseline)
                      | (runs_df["run_dir"].astype(str) == baseline)
                      | (runs_df["run_dir"].map(lambda p: Path(str(p)).name) == baseline)
                      | (runs_df["config"].astype(str) == baseline)
                      | (runs_df["config_id"].astype(str) == baseline)]
        ids = list(dict.fromkeys(hit["config_id"]))
        if not ids:
            avail = sorted(set(map(str, runs_df["exp_name"])))
            more = f" (+{len(avail) - 15} more)" if len(avail) > 15 else ""
            raise ConfigError(f"--baseline '{baseline}' matches no run (exp_name, folder name, config label "
                              f"or config id); exp_names found: {', '.join(avail[:15])}{more}")
        if len(ids) > 1:
            raise ConfigError(f"--baseline '{baseline}' matches {len(ids)} different configurations "
                              f"({'; '.join(gi.loc[i, 'config'] for i in ids[:5])}); name one config id of: "
                              f"{', '.join(ids[:10])}")
        base_of = {gid: ids[0] for gid in gi.index if gid != ids[0]}
        note = (f"--baseline '{baseline}': configuration `{gi.loc[ids[0], 'config']}` "
                f"(id {ids[0]}, n={int(gi.loc[ids[0], 'n'])}) for every configuration.")
    else:
        cands = [gid for gid, d in descs.items() if d["type"] == "baseline"]
        base_of = {}
        for gid in gi.index:
            if gid in cands:
                continue
            same_model = [c for c in cands if descs[c]["model"] == descs[gid]["model"]]
            if not same_model:
                continue
            mine = gkeys[gid]

            def score(c: str) -> tuple[int, int]:
                other = gkeys[c]
                eq = sum(1 for k in set(mine) | set(other) if mine.get(k, object()) == other.get(k, object()))
                return eq, int(gi.loc[c, "n"])

            base_of[gid] = max(same_model, key=score)
        used = sorted(set(base_of.values()))
        if used:
            lst = "; ".join(f"`{gi.loc[b, 'config']}` (id {b}, n={int(gi.loc[b, 'n'])})" for b in used)
            note = ("automatic: the configuration with stage 2 disabled, CrossEntropy, no sampler and no "
                    "calibration, same model, agreeing on the most config keys. Used: " + lst + ".")
        else:
            note = ("automatic, but no configuration has stage 2 disabled, CrossEntropy, no sampler and no "
                    "calibration: no improvement computed (name one with --baseline).")
    rows = []
    for gid in gi.index:  # ranking order
        if gid not in base_of:
            continue
        b = base_of[gid]
        row = {"config": gi.loc[gid, "config"], "config_id": gid, "type": gi.loc[gid, "type"],
               "n": int(gi.loc[gid, "n"]), "baseline": gi.loc[b, "config"], "baseline_id": b,
               "baseline_n": int(gi.loc[b, "n"])}
        for m in METRICS:
            v, bv = gi.loc[gid, f"{m}_mean"], gi.loc[b, f"{m}_mean"]
            row[m] = v
            row[f"baseline_{m}"] = bv
            row[f"delta_{m}"] = v - bv
        # standard error of the difference of two means (Welch), when both have n >= 2
        s1, s2 = gi.loc[gid, "macc_std"], gi.loc[b, "macc_std"]
        n1, n2 = gi.loc[gid, "macc_count"], gi.loc[b, "macc_count"]
        row["delta_macc_se"] = math.sqrt(s1 ** 2 / n1 + s2 ** 2 / n2) if n1 >= 2 and n2 >= 2 else math.nan
        row["rel_macc_pct"] = 100.0 * (row["delta_macc"] / row["baseline_macc"]) if row["baseline_macc"] else math.nan
        rows.append(row)
    cols = ["config", "config_id", "type", "n", "baseline", "baseline_id", "baseline_n"]
    for m in METRICS:
        cols += [m, f"baseline_{m}", f"delta_{m}"]
    cols += ["delta_macc_se", "rel_macc_pct"]
    return pd.DataFrame(rows, columns=cols), note


# --------------------------------------------------------------------------- writing
def _pct(mean: float, std: float | None = None, n: int | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    s = f"{100 * mean:.2f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)) and (n or 0) >= 2:
        s += f" ± {100 * std:.2f}"
    return s


def _md_escape(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def plot_comparison(groups: Any, path: Path, *, sort_by: str = "macc", top: int = 20) -> Path:
    """Horizontal bar chart of test mAcc, Few and HM (mean, error bar = std) for the first ``top``
    configurations of ``groups`` (sorted by the test metric ``sort_by``: for reading, not a
    selection)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    sub = groups.head(top).iloc[::-1]
    metrics = [m for m in ("macc", "few_acc", "hm") if sub[f"{m}_mean"].notna().any()]
    y = np.arange(len(sub))
    h = 0.8 / max(len(metrics), 1)
    labels = ["\n".join(textwrap.wrap(f"{c} (n={n})", 48, break_on_hyphens=False))
              for c, n in zip(sub["config"], sub["n"])]
    lines = max((lab.count("\n") + 1 for lab in labels), default=1)
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.3 * len(sub) * max(lines, max(1, len(metrics)) / 1.5)))
    for k, m in enumerate(metrics):
        mean = 100 * sub[f"{m}_mean"].to_numpy(dtype=float)
        std = 100 * sub[f"{m}_std"].fillna(0.0).to_numpy(dtype=float)
        ax.barh(y + (k - (len(metrics) - 1) / 2) * h, np.nan_to_num(mean), height=h, xerr=std,
                label=METRIC_TITLES[m], capsize=2)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_ylim(-0.6, len(sub) - 0.4)
    ax.set_xlabel("%  (mean ± std over seeds)")
    ax.set_xlim(0, 100)
    ax.set_title(f"Sorted by test {METRIC_TITLES.get(sort_by, sort_by)}\n(for reading; selection is by validation)",
                 fontsize=9, loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(metrics), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def write_summary(
    st: SummaryTables,
    out_dir: str | os.PathLike,
    *,
    root: str = "experiments",
    pattern: str | None = None,
    skipped: Sequence[SkippedRun] = (),
    make_figure: bool = True,
) -> Path:
    """Write every CSV, ``REPORT.md`` and the comparison figure into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in st.tables.items():
        df.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
    fig_name = "methods_comparison.png"
    if make_figure:
        plot_comparison(st.groups, out / fig_name, sort_by=st.sort_by)
    (out / "REPORT.md").write_text(_report(st, root=root, pattern=pattern, skipped=skipped,
                                           fig_name=fig_name if make_figure else None), encoding="utf-8")
    return out


def _report(st: SummaryTables, *, root: str, pattern: str | None, skipped: Sequence[SkippedRun],
            fig_name: str | None) -> str:
    g = st.groups
    sb = METRIC_TITLES.get(st.sort_by, st.sort_by)
    sel_title = SELECT_TITLES[st.select_by]
    vcol = f"{st.select_by}_mean"
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    L = ["# Experiment summary", ""]
    where = f"`{root}`" + (f" (pattern `{pattern}`)" if pattern else "")
    L.append(f"Generated {now} from {where}: **{len(st.runs)} runs** in **{len(g)} configurations**"
             + (f"; **{len(skipped)} folders skipped** (listed at the end)." if skipped else "."))
    L.append("")
    L.append("Values are percentages of the final model on the test split, **mean ± std over runs that "
             "differ only in `seed`** (sample std; shown when n ≥ 2). Groups (Many/Medium/Few) come from "
             "the training class counts; HM is the harmonic mean of Many and Few.")
    L.append("")
    L.append(f"**Selection is by {sel_title}** (`val_metrics` in results.json: the final model on the validation "
             f"split; `--select-by {st.select_by}`): the selected configuration has the highest mean "
             f"{sel_title} over its runs, and its test figures are reported as they are. Tables sorted by a "
             "test metric are for reading only; choosing a method from them would select on the test set.")
    L += ["", f"## Selected configuration (by {sel_title})", ""]
    if st.selected is None:
        L.append(f"No run records {sel_title} (`val_metrics` in results.json; runs written before it was "
                 "recorded lack it), so **no configuration is selected**. The tables below are sorted by "
                 f"test {sb} for reading only and must not be used to pick a method.")
    else:
        r = g[g["config_id"] == st.selected].iloc[0]
        nv = int(r[f"{st.select_by}_count"])
        L.append(f"**{_md_escape(r['config'])}** (config id `{r['config_id']}`, type {r['type']}, "
                 f"{int(r['n'])} runs): {sel_title} {_pct(r[vcol], r[f'{st.select_by}_std'], nv)} over "
                 f"{nv} run{'s' if nv != 1 else ''}. Its test figures:")
        L.append("")
        L.append(_md_table([METRIC_TITLES[m] for m in KEY_METRICS],
                           [[_pct(r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_count"]) for m in KEY_METRICS]]))
        order = g.dropna(subset=["val_rank"]).sort_values("val_rank")
        L += ["", f"Configurations in {sel_title} order (top {min(10, len(order))}):", ""]
        L.append(_md_table(["Val #", "Configuration", "n (val)", f"Val {sel_title.split()[-1]}", "Test mAcc",
                            "Test Few", "Test HM"],
                           [[int(x["val_rank"]), x["config"], int(x[f"{st.select_by}_count"]),
                             _pct(x[vcol], x[f"{st.select_by}_std"], x[f"{st.select_by}_count"]),
                             _pct(x["macc_mean"], x["macc_std"], x["macc_count"]),
                             _pct(x["few_acc_mean"], x["few_acc_std"], x["few_acc_count"]),
                             _pct(x["hm_mean"], x["hm_std"], x["hm_count"])] for _, x in order.head(10).iterrows()]))
    if st.runs_without_val:
        k = len(st.runs_without_val)
        shown = ", ".join(f"`{d}`" for d in st.runs_without_val[:20]) + (f" (+{k - 20} more)" if k > 20 else "")
        L += ["", f"{k} of {len(st.runs)} runs lack {sel_title} (`val_metrics.{st.select_by[4:]}` in results.json) "
              f"and are **excluded from the selection** (they remain in every table): {shown}."]
    L += ["", f"## Key results (sorted by test {sb}, for reading only; selection is by validation)", ""]
    rows = []
    for _, r in g.iterrows():
        rows.append([r["rank"], r["config"] + (" **(selected)**" if r["selected"] else ""), r["type"], r["n"]]
                    + [_pct(r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_count"]) for m in KEY_METRICS]
                    + [_pct(r[vcol], r[f"{st.select_by}_std"], r[f"{st.select_by}_count"])])
    L.append(_md_table(["#", "Configuration", "Type", "n"] + [METRIC_TITLES[m] for m in KEY_METRICS]
                       + [f"Val {sel_title.split()[-1]}"], rows))
    inc = st.tables.get("incremental_sessions")
    if inc is not None and len(inc):
        L += ["", "## Class-incremental sessions", "",
              "After each session: mean recall (mAcc) on the old classes, the session's new classes and all learned "
              "classes; the chain's average incremental mAcc (over the sessions so far, the base included) and "
              "forgetting (Chaudhry et al. 2018: the drop of each old class from its best earlier accuracy). Test "
              "figures, mean ± std over seeds.", ""]
        L.append(_md_table(["Method", "Session", "n", "Old mAcc", "New mAcc", "All mAcc", "Avg inc. mAcc", "Forgetting"],
                           [[r["method"], int(r["session"]), int(r["n"])]
                            + [_pct(r[f"{m}_mean"], r[f"{m}_std"], r["n"])
                               for m in ("old_macc", "new_macc", "all_macc", "aia_macc", "forgetting")]
                            for _, r in inc.iterrows()]))
    if fig_name:
        L += ["", "## Method comparison", "", f"![mAcc, Few and HM per configuration]({fig_name})",
              "", f"First {min(20, len(g))} configurations sorted by test {sb} (for reading; selection is by "
              "validation); bars are test means, whiskers the std over seeds."]
    L += _openset_report(st)
    L += ["", "## Improvement over baseline", "", f"Baseline: {st.baseline_note}", ""]
    imp = st.tables["improvement_over_baseline"]
    if len(imp):
        def d(v: float) -> str:
            return "–" if v is None or math.isnan(v) else f"{100 * v:+.2f}"
        L.append(_md_table(["Configuration", "Baseline", f"Val {sel_title.split()[-1]}", "Δ mAcc", "Δ Many", "Δ Few",
                            "Δ HM", "Δ Macro-F1", "Δ OA"],
                           [[r["config"] + (" **(selected)**" if r["selected"] else ""), r["baseline"],
                             _pct(r[vcol]), d(r["delta_macc"]), d(r["delta_many_acc"]),
                             d(r["delta_few_acc"]), d(r["delta_hm"]), d(r["delta_macro_f1"]), d(r["delta_oa"])]
                            for _, r in imp.iterrows()]))
        L += ["", f"Δ in percentage points of test figures (configuration mean − baseline mean); rows in "
              f"{sel_title} order."]
    for key, title in (("matrix_macc", "mAcc"), ("matrix_hm", "HM")):
        mat = st.tables[key]
        if mat.shape[0] * (mat.shape[1] - 1) > 1:
            L += ["", f"## Loss × sampler: test {title}", "",
                  "Final-stage loss (rows) and sampler (columns; stage 2's when it is enabled), mean over runs.", ""]
            L.append(_md_table([str(c) for c in mat.columns],
                               [[r.iloc[0]] + [_pct(v) for v in r.iloc[1:]] for _, r in mat.iterrows()]))
    ct = st.tables["comparison_by_type"]
    L += ["", "## By type", "", f"Test figures over all runs of a type; the selected configuration of each type "
          f"is chosen by {sel_title}.", ""]
    L.append(_md_table(["Type", "runs", "configs", "mAcc", "Few", "HM", f"selected config (by {sel_title})"],
                       [[r["type"], r["n_runs"], r["n_configs"], _pct(r["macc_mean"], r["macc_std"], r["n_runs"]),
                         _pct(r["few_acc_mean"], r["few_acc_std"], r["n_runs"]),
                         _pct(r["hm_mean"], r["hm_std"], r["n_runs"]),
                         r["selected_config"] if isinstance(r["selected_config"], str) else "– (no validation metrics)"]
                        for _, r in ct.iterrows()]))
    if "distillation" in st.tables:
        L += ["", "## Distillation", "", "Each distilled configuration beside its teacher (test figures of the "
              "teacher's run) and the same configuration trained alone (when it was run); mean ± std over seeds.", ""]
        L.append(_md_table(["Configuration", "Teacher", "Teacher mAcc", "Teacher Few", "Alone mAcc", "Alone Few",
                            "Distilled mAcc", "Distilled Few", "n"],
                           [[r["config"], f"{r['teacher_model']} ({Path(str(r['teacher_run'])).name})",
                             _pct(r["teacher_macc"]), _pct(r["teacher_few_acc"]),
                             _pct(r["alone_macc_mean"], r["alone_macc_std"], r["alone_n"]),
                             _pct(r["alone_few_acc_mean"], r["alone_few_acc_std"], r["alone_n"]),
                             _pct(r["student_macc_mean"], r["student_macc_std"], r["n"]),
                             _pct(r["student_few_acc_mean"], r["student_few_acc_std"], r["n"]), r["n"]]
                            for _, r in st.tables["distillation"].iterrows()]))
    if st.searches:
        L += ["", "## Hyper-parameter searches (Optuna)", ""]
        for s in st.searches:
            if "best_params" in s:
                params = ", ".join(f"`{k}={_fmt_value(v)}`" for k, v in (s.get("best_params") or {}).items())
                L.append(f"- `{s['sweep_dir']}/optimization_results.yaml`: best value {s.get('best_value')} with {params}")
            else:
                L.append(f"- `{s['sweep_dir']}/optimization_results.yaml`: {json.dumps(s, default=str)[:300]}")
    if skipped:
        L += ["", "## Skipped run folders", ""]
        L.append(_md_table(["Folder", "Reason"], [[s.path, s.reason] for s in skipped]))
    L += ["", "## Files", "",
          "`ranking_overall.csv` (one row per configuration, sorted by the test `--sort-by` metric, with the "
          "validation means, `val_rank` and `selected`), `comparison_by_type.csv`, "
          "`comparison_sampling.csv`, `comparison_loss.csv`, `matrix_oa.csv`, `matrix_macc.csv`, `matrix_hm.csv` "
          "(loss × sampler), `best_configurations.csv` (the configuration each validation metric selects, with its "
          "test figures), `improvement_over_baseline.csv`, `all_results_full.csv` "
          "(one row per run with its flattened config), `incremental_sessions.csv` (class-incremental runs: one "
          "row per method and session), `openset_<detector>.csv` (open-set runs: every open-set metric per "
          "configuration). Numbers in the CSV files are fractions in [0, 1].", ""]
    return "\n".join(L)


def _openset_report(st: SummaryTables) -> list[str]:
    """``## Open set``: one table per detector (configurations in the key-results order)."""
    names = [k[len("openset_"):] for k in st.tables if k.startswith("openset_")]
    if not names:
        return []
    L = ["", "## Open set", "",
         "Unknown samples (never in training or validation) against the known test samples, final model; "
         "thresholds chosen on known validation. AUROC many/medium/few: unknowns against the known test samples "
         "of that group's classes. FPR95: unknowns accepted when 95% of the knowns are (lower is better). "
         "Closed-set metrics elsewhere in this report are on the known test samples only."]
    for det in names:
        t = st.tables[f"openset_{det}"]
        L += ["", f"### {det}", ""]
        L.append(_md_table(["Configuration", "n"] + [OPENSET_TITLES[m] for m in OPENSET_KEY_METRICS],
                           [[r["config"], int(r["n"])] + [_pct(r.get(f"openset.{det}.{m}_mean"),
                                                                 r.get(f"openset.{det}.{m}_std"),
                                                                 r.get(f"openset.{det}.{m}_count"))
                                                            for m in OPENSET_KEY_METRICS]
                            for _, r in t.iterrows()]))
    return L


def default_out_dir(base: str | os.PathLike = ".") -> Path:
    """``analysis_results_<YYYYmmdd-HHMMSS>`` in ``base``; a numeric suffix avoids collisions."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    p = Path(base) / f"analysis_results_{stamp}"
    k = 1
    while p.exists():
        p = Path(base) / f"analysis_results_{stamp}_{k}"
        k += 1
    return p


def summarize(
    root: str | os.PathLike = "experiments",
    *,
    pattern: str | None = None,
    out: str | os.PathLike | None = None,
    baseline: str | None = None,
    sort_by: str = "macc",
    ignore_keys: Sequence[str] = DEFAULT_IGNORED_KEYS,
    make_figure: bool = True,
    select_by: str = "val_macc",
) -> tuple[Path, SummaryTables, list[SkippedRun]]:
    """Summarise every run under ``root``; returns (output folder, tables, skipped folders).

    ``select_by`` (``val_macc`` or ``val_acc``) selects the configuration the report names;
    ``sort_by`` (a test metric) only orders the tables. Raises
    :class:`~imbalance.errors.DataError` when root does not exist or holds no completed run,
    :class:`~imbalance.errors.ConfigError` for a baseline that matches nothing or an unknown
    metric.
    """
    runs, skipped = collect_runs(root, pattern)
    if not runs:
        where = Path(root).resolve()
        pat = f" matching pattern '{pattern}'" if pattern else ""
        if skipped:
            reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
            raise DataError(f"no completed run folders under {where}{pat}; {len(skipped)} skipped ({reasons})")
        raise DataError(f"no run folders (with results/results.json) found under {where}{pat}")
    searches = find_search_results(root)
    st = build_tables(runs, baseline=baseline, sort_by=sort_by, select_by=select_by, ignore_keys=ignore_keys,
                      searches=searches)
    out_dir = Path(out) if out is not None else default_out_dir()
    write_summary(st, out_dir, root=str(root), pattern=pattern, skipped=skipped, make_figure=make_figure)
    logger.info("summarised %d runs (%d configurations, %d skipped) into %s",
                len(runs), len(st.groups), len(skipped), out_dir)
    return out_dir, st, skipped


# ---------------------------------------------------------------------------------------------
# Command line: python summarize.py / imbalance-summarize
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="summarize.py (imbalance-summarize)",
        description="Aggregate experiment folders into CSV tables and a Markdown report.",
    )
    p.add_argument("--root", default="experiments", help="folder searched (any depth) for run folders "
                   "holding results/results.json (default: experiments)")
    p.add_argument("--pattern", default=None, help="only run folders whose name or path (relative to "
                   "--root) matches this shell glob; text without * ? [ matches as a substring")
    p.add_argument("--out", default=None, help="output folder (default: ./analysis_results_<timestamp>)")
    p.add_argument("--baseline", default=None, help="baseline for improvement_over_baseline: an exp_name, "
                   "run folder name, configuration label or config id (default: the matching run with "
                   "stage 2 disabled, CrossEntropy and no sampler)")
    p.add_argument("--select-by", default="val_macc", choices=SELECT_METRICS,
                   help="validation metric that selects the reported configuration (results.json val_metrics: "
                   "the final model on the validation split; default: val_macc); its test figures are reported")
    p.add_argument("--sort-by", default="macc", choices=METRICS,
                   help="test metric that sorts the tables for reading only; it never selects (default: macc)")
    p.add_argument("--ignore-key", action="append", default=[], metavar="KEY",
                   help="config key (or section) that should not separate configurations, in addition to: "
                   + ", ".join(DEFAULT_IGNORED_KEYS) + " (repeatable)")
    p.add_argument("--no-figure", action="store_true", help="do not draw methods_comparison.png")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the output folder")
    p.add_argument("--to-mlflow", nargs="?", const="sqlite:///experiments/mlflow.db", default=None, metavar="URI",
                   help="instead of the tables, import the finished run folders found (--root, --pattern) into an "
                   "MLflow store (default sqlite:///experiments/mlflow.db, relative to this folder; or a server "
                   "URI); a folder already in the store is skipped. Needs `pip install .[tracking]`")
    p.add_argument("--mlflow-experiment", default=None, metavar="NAME",
                   help="with --to-mlflow: the MLflow experiment of the imported runs (default: a multirun job "
                   "goes to an experiment named after its sweep folder, any other run to 'imbalance')")
    return p


def import_to_mlflow(root: str | os.PathLike, tracking_uri: str, *, pattern: str | None = None,
                     experiment: str | None = None) -> tuple[dict[str, str | None], list[SkippedRun]]:
    """Import every finished run folder under ``root`` into an MLflow store
    (:func:`imbalance.mlflow_import.import_run_folder`); returns ``({folder: new run id or None if
    it was already in the store}, incomplete folders)``."""
    from .errors import UserError
    from .mlflow_import import import_run_folder

    found, skipped = discover_runs(root, pattern)
    if not found:
        raise DataError(f"no run folders (with results/results.json) found under {Path(root).resolve()}"
                        + (f" matching pattern '{pattern}'" if pattern else ""))
    done: dict[str, str | None] = {}
    for folder in found:
        try:
            done[str(folder)] = import_run_folder(folder, tracking_uri, experiment, base_dir=Path.cwd())
        except UserError:
            raise
        except Exception as exc:  # the store or server failed: one line, what is imported stays
            raise DataError(f"{folder}: the MLflow import failed ({type(exc).__name__}: {str(exc)[:300]}); "
                            f"{len(done)} folders before it are imported, and running again continues") from None
    return done, skipped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from .errors import UserError

    if args.to_mlflow is not None:
        return _main_to_mlflow(args)
    try:
        out, st, skipped = summarize(
            args.root, pattern=args.pattern, out=args.out, baseline=args.baseline, sort_by=args.sort_by,
            ignore_keys=tuple(DEFAULT_IGNORED_KEYS) + tuple(args.ignore_key), make_figure=not args.no_figure,
            select_by=args.select_by,
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        print(out)
        return 0
    vm = st.select_by
    print(f"{len(st.runs)} runs in {len(st.groups)} configurations"
          + (f", {len(skipped)} folders skipped (see REPORT.md)" if skipped else ""))
    if st.selected is None:
        print(f"no run records {vm} (val_metrics in results.json): no configuration selected")
    else:
        sel = st.groups[st.groups["config_id"] == st.selected].iloc[0]
        print(f"selected by {vm}: {sel['config']}  {vm} {100 * sel[f'{vm}_mean']:.2f}% "
              f"(n={int(sel[f'{vm}_count'])}) -> test mAcc {100 * sel['macc_mean']:.2f}% (n={int(sel['n'])})")
    if st.runs_without_val:
        print(f"{len(st.runs_without_val)} runs lack {vm} and were excluded from the selection (see REPORT.md)")
    print(f"report: {out / 'REPORT.md'}")
    return 0


def _main_to_mlflow(args: argparse.Namespace) -> int:
    from .errors import UserError

    try:
        done, skipped = import_to_mlflow(args.root, args.to_mlflow, pattern=args.pattern,
                                         experiment=args.mlflow_experiment)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    new = sum(v is not None for v in done.values())
    print(f"{new} runs imported into {args.to_mlflow}, {len(done) - new} already there"
          + (f", {len(skipped)} unfinished folders not imported" if skipped else ""))
    return 0
