"""Import finished run folders into an MLflow store (``summarize.py --to-mlflow``).

For runs made before the MLflow logger was on: each folder's ``results/results.json``
(config -> params, metrics -> final metrics, git commit, exp_name), ``logs/metrics.csv``
(per-epoch metrics at step = global epoch) and ``results/*.png|*.pdf`` figures,
``results/summary.txt`` and results.json as artifacts, exactly as the live
:class:`imbalance.loggers.MLflowLogger` would have logged them.

Idempotent: a folder whose run is already in the store (tag ``imbalance.run_key``, the sha1 of
the folder's resolved path, with its final metrics logged, whether imported or logged live) is
skipped. The run folder is only read, never written.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from .errors import ConfigError, DataError
from .loggers import FINAL_LOGGED_TAG, RUN_KEY_TAG, MLflowLogger, final_metrics, import_mlflow_client, run_key

log = logging.getLogger(__name__)

__all__ = ["import_run_folder", "import_run_folders", "read_metrics_csv", "sweep_of", "find_imported_run"]

IMPORTED_TAG = "imbalance.imported"
_INT_COLUMNS = ("stage", "epoch", "global_epoch")


def read_metrics_csv(path: os.PathLike) -> List[Dict[str, Any]]:
    """The rows of a logs/metrics.csv with numbers parsed (empty cells dropped). A file without
    a global_epoch column (older runs) numbers the rows 1, 2, ... in file order."""
    rows: List[Dict[str, Any]] = []
    with open(path, newline="") as fh:
        for i, raw in enumerate(csv.DictReader(fh)):
            row: Dict[str, Any] = {}
            for k, v in raw.items():
                if k is None or v is None or v == "":
                    continue
                try:
                    row[k] = int(float(v)) if k in _INT_COLUMNS else float(v)
                except ValueError:
                    continue
            if "stage" not in row:
                continue
            row.setdefault("global_epoch", i + 1)
            rows.append(row)
    return rows


def sweep_of(run_dir: os.PathLike) -> Optional[str]:
    """The sweep's folder name when ``run_dir`` is a job of a Hydra multirun (its parent holds
    ``multirun.yaml``), else None."""
    parent = Path(run_dir).resolve().parent
    return parent.name if (parent / "multirun.yaml").is_file() else None


def find_imported_run(client: Any, run_dir: os.PathLike) -> Optional[str]:
    """The id of a run of any active experiment that holds ``run_dir``'s final metrics, or None."""
    from mlflow.entities import ViewType

    exp_ids: List[str] = []
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        exp_ids += [e.experiment_id for e in page]
        token = getattr(page, "token", None)
        if not token:
            break
    if not exp_ids:
        return None
    flt = f"tags.`{RUN_KEY_TAG}` = '{run_key(run_dir)}' and tags.`{FINAL_LOGGED_TAG}` = 'true'"
    runs = client.search_runs(exp_ids, filter_string=flt, max_results=1)
    return runs[0].info.run_id if runs else None


def import_run_folder(run_dir: os.PathLike, tracking_uri: Optional[str], experiment: Optional[str] = None, *,
                      base_dir: Optional[os.PathLike] = None) -> Optional[str]:
    """Import one finished run folder; return the new MLflow run id, or None when the folder is
    already in the store (skipped).

    ``experiment``: the MLflow experiment; None means the sweep's folder name for a multirun job
    (:func:`sweep_of`) and ``imbalance`` otherwise. ``tracking_uri`` as in the logger (a relative
    sqlite path is relative to ``base_dir``, default the current directory). A folder without
    results.json raises DataError, a missing mlflow package ConfigError; an import that fails
    half-way deletes its partial run.
    """
    try:
        MlflowClient = import_mlflow_client()
    except ImportError as err:
        raise ConfigError(str(err)) from None

    run_dir = Path(run_dir)
    results_path = run_dir / "results" / "results.json"
    if not results_path.is_file():
        raise DataError(f"{run_dir} is not a finished run folder: {results_path} is missing")
    try:
        results = json.loads(results_path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{results_path} cannot be read ({err})") from None
    sweep = sweep_of(run_dir)
    logger = MLflowLogger(tracking_uri=tracking_uri, experiment_name=experiment or sweep or "imbalance",
                          sweep_experiment=False, base_dir=base_dir)
    logger.write_run_file = False  # the folder is only read
    existing = find_imported_run(MlflowClient(tracking_uri=logger.tracking_uri), run_dir)
    if existing is not None:
        log.info("%s: already in the MLflow store (run %s); skipped", run_dir, existing)
        return None
    config = results.get("config") or {}
    exp_name = results.get("exp_name") or config.get("exp_name") or run_dir.name
    logger.start(run_dir, config, exp_name=exp_name, sweep=sweep, git_commit=results.get("git_commit"))
    try:
        logger.client.set_tag(logger.run_id, IMPORTED_TAG, "true")
        metrics_csv = run_dir / "logs" / "metrics.csv"
        if metrics_csv.is_file():
            logger.log_history(read_metrics_csv(metrics_csv))
        res = run_dir / "results"
        figures = sorted(p for p in res.iterdir() if p.suffix.lower() in (".png", ".pdf"))
        logger.log_final(final_metrics(results), results_path=results_path, summary_path=res / "summary.txt",
                         figures=figures, confusion_matrix=results.get("confusion_matrix"),
                         class_names=results.get("class_names"))
        status = str(results.get("status") or "completed")
        logger.close("finished" if status == "completed" else "failed")
    except BaseException:
        run_id = logger.run_id
        if logger.client is not None and run_id is not None:
            try:
                logger.client.delete_run(run_id)
            except Exception:  # noqa: BLE001 - the original error matters more
                log.warning("%s: could not delete the partial MLflow run %s", run_dir, run_id)
        raise
    log.info("%s: imported as MLflow run %s", run_dir, logger.run_id)
    return logger.run_id


def import_run_folders(run_dirs: Iterable[os.PathLike], tracking_uri: Optional[str],
                       experiment: Optional[str] = None, *, base_dir: Optional[os.PathLike] = None
                       ) -> Dict[str, Optional[str]]:
    """:func:`import_run_folder` for each folder: ``{folder: run id or None (skipped)}``."""
    return {str(d): import_run_folder(d, tracking_uri, experiment, base_dir=base_dir) for d in run_dirs}
