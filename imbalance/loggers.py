"""Experiment trackers: TensorBoard and MLflow behind one interface the training loop calls.

``logs/metrics.csv`` (one row per epoch and stage) is always written by the training loop,
whatever ``logger`` says; the backends here mirror the same rows into a tracker so that
researchers can watch and compare runs::

    run_logger = make_loggers(["csv", "tensorboard", "mlflow"], {"mlflow": {...}})  # rank 0
    run_logger = null_logger()                                                    # other ranks
    run_logger.start(run_dir, config_dict, exp_name="baseline", resume_global_epoch=None,
                     sweep="multirun_20250101-120000-000000", git_commit="abc123")
    run_logger.log_epoch(row, group_recall={"many": 0.9, "medium": 0.6, "few": 0.2})
    run_logger.log_final(final_metrics(results), results_path=..., summary_path=...,
                         figures=[...png], confusion_matrix=cm, class_names=names)
    run_logger.close()                       # or close(status="failed" | "killed")

``row`` is a row of logs/metrics.csv (``stage``, ``epoch``, ``global_epoch``, ``lr``,
``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``val_macc``, ``epoch_time``). Every
numeric column other than stage/epoch/global_epoch becomes the scalar ``stage<k>/<column>`` at
step ``global_epoch`` (``stage1/val_macc``, ``stage2/lr``, ...); group recalls become
``stage<k>/val_recall_<group>``. Final metrics are flat names from :func:`final_metrics`
(``test/final/macc``, ``test/stage1/few_acc``, ``val/macc``, ...).

Backends (registry :data:`LOGGERS`, keyed by the config names):

* ``csv``: nothing to do here (the CSV is the loop's own file); the name exists so that
  ``logger: [csv]`` is the valid default.
* ``tensorboard`` (:class:`TensorBoardLogger`): ``<run_dir>/tb/``; scalars per stage, the
  config as text, hparams + final metrics in the SAME log dir as the scalars (so the HParams tab
  of ``tensorboard --logdir experiments`` lines up every run of a sweep), the run's PNG figures
  and the confusion matrix as images.
* ``mlflow`` (:class:`MLflowLogger`, optional dependency): params (flattened config), metrics
  per epoch (step = global epoch), final metrics, results.json / summary.txt / config.yaml /
  figures as artifacts; one MLflow experiment per sweep.

Failures never stop training: :class:`CompositeLogger` wraps every call of every backend; a
backend that raises (disk full, server down, missing package) is reported with ONE warning and
disabled for the rest of the run. The run folder's own files are never touched by a backend
(TensorBoard writes only ``tb/``, MLflow only ``logs/mlflow_run.json``).

Resume: ``start(..., resume_global_epoch=G)`` continues the same tracker run. TensorBoard
removes the events of steps > G written before the interruption from the run's event files
(:func:`drop_events_after`), opens the writer with ``purge_step=G + 1`` as well, and ignores
rows with ``global_epoch <= G``. MLflow reopens the run whose id is stored in ``logs/mlflow_run.json``;
MLflow cannot delete metric values, so a step already in the run's history is not logged again
(a resumed run continues bit-for-bit, so the kept value is the value the re-run computes).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

from .errors import ConfigError
from .logger_base import (LOGGERS, CompositeLogger, CSVLogger, RunLogger, epoch_scalars, final_metrics,
                          flatten_config, group_recall, null_logger, render_confusion_matrix_png)
# registration order = the order of the valid names in messages: csv, tensorboard, mlflow
from .logger_tensorboard import TensorBoardLogger, drop_events_after
from .logger_mlflow import (DEFAULT_TRACKING_URI, FINAL_LOGGED_TAG, MLFLOW_RUN_FILE, RUN_DIR_TAG, RUN_KEY_TAG,
                            MLflowLogger, import_mlflow_client, resolve_tracking_uri, run_key)

__all__ = [
    "LOGGERS", "RunLogger", "CSVLogger", "TensorBoardLogger", "MLflowLogger", "CompositeLogger", "make_loggers",
    "epoch_hook", "log_run_end",
    "null_logger", "flatten_config", "epoch_scalars", "final_metrics", "group_recall",
    "render_confusion_matrix_png", "drop_events_after", "resolve_tracking_uri", "import_mlflow_client", "run_key",
    "MLFLOW_RUN_FILE", "DEFAULT_TRACKING_URI", "RUN_KEY_TAG", "RUN_DIR_TAG", "FINAL_LOGGED_TAG",
]


def make_loggers(names: Sequence[str] | str, options: Optional[Mapping[str, Mapping[str, Any]]] = None, *,
                 base_dir: Optional[os.PathLike] = None) -> CompositeLogger:
    """A :class:`CompositeLogger` of the backends ``names`` (registry :data:`LOGGERS`).

    ``options[name]`` holds that backend's keyword arguments (the ``logger.<name>`` config
    section as a plain dict; sections of backends not named are ignored). ``base_dir`` (where
    the user started) is handed to backends that take it (MLflow's relative store path).
    An unknown name raises UnknownNameError; an unknown option or a bad value raises
    ConfigError, both naming what is valid.
    """
    if isinstance(names, str):
        names = [names]
    options = options or {}
    backends: List[RunLogger] = []
    seen = set()
    for raw in names:
        name = LOGGERS.canonical(str(raw))
        if name in seen:
            continue
        seen.add(name)
        cls = LOGGERS.get(name)
        kwargs = dict(options.get(name) or {})
        params = inspect.signature(cls).parameters
        valid = [p for p in params if p != "base_dir"]
        unknown = sorted(k for k in kwargs if k not in valid)
        if unknown:
            raise ConfigError(f"unknown key(s) logger.{name}.{', logger.{name}.'.join(unknown)}; valid keys: "
                              + (", ".join(valid) if valid else f"none (the {name} logger takes no options)"))
        if "base_dir" in params:
            kwargs["base_dir"] = base_dir
        backends.append(cls(**kwargs))
    return CompositeLogger(backends)


# ---------------------------------------------------------------------------------------------
# What the run calls (imbalance.pipeline): plain values in
# ---------------------------------------------------------------------------------------------
def epoch_hook(logger: RunLogger, class_groups: Sequence[str]) -> Callable[[Mapping[str, Any], Mapping[str, Any]], None]:
    """``hook(row, val)`` for the training loop's ``on_epoch_end``: the metrics.csv ``row`` and the
    validation recall of each group (from the validation predictions ``val["logits"]``,
    ``val["labels"]``; ``class_groups[c]`` is class c's group from TRAINING counts) go to the
    loggers. Nothing is computed when no backend is active."""
    groups = list(class_groups)

    def hook(row: Mapping[str, Any], val: Mapping[str, Any]) -> None:
        if not getattr(logger, "active", True):
            return
        logger.log_epoch(row, group_recall(val["labels"], val["logits"].argmax(1), groups))

    return hook


def log_run_end(logger: RunLogger, results: Mapping[str, Any], *, results_path: os.PathLike,
                summary_path: os.PathLike, figures_dir: Optional[os.PathLike] = None) -> None:
    """The finished run's final metrics (:func:`final_metrics` of the results record), its
    results.json and summary.txt, the figures in ``figures_dir`` (PNG and PDF; TensorBoard shows
    the PNGs) and the final confusion matrix, to the loggers (closing is left to the caller: ``with logger: ...``)."""
    figures = sorted(p for p in Path(figures_dir).iterdir() if p.suffix.lower() in (".png", ".pdf")) \
        if figures_dir is not None else []
    names = results.get("class_names") or [str(c) for c in results.get("classes") or []]
    logger.log_final(final_metrics(results), results_path=results_path, summary_path=summary_path, figures=figures,
                     confusion_matrix=results.get("confusion_matrix"), class_names=names)
