"""The MLflow backend (``logger=[csv,mlflow]``, the ``[tracking]`` extra): one MLflow run per run
folder, one MLflow experiment per sweep, through ``MlflowClient`` only."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError
from .logger_base import (LOGGERS, RunLogger, check_option, config_yaml, epoch_scalars, flatten_config, is_number,
                          plain_string, render_confusion_matrix_png)

log = logging.getLogger(__name__)

__all__ = ["MLflowLogger", "resolve_tracking_uri", "import_mlflow_client", "run_key", "DEFAULT_TRACKING_URI",
           "MLFLOW_RUN_FILE", "RUN_KEY_TAG", "RUN_DIR_TAG", "FINAL_LOGGED_TAG"]

DEFAULT_TRACKING_URI = "sqlite:///experiments/mlflow.db"
#: where the MLflow run id is kept inside a run folder (read again on resume)
MLFLOW_RUN_FILE = Path("logs") / "mlflow_run.json"
#: tags that identify the run folder an MLflow run belongs to (the importer skips such folders)
RUN_KEY_TAG = "imbalance.run_key"
RUN_DIR_TAG = "imbalance.run_dir"
FINAL_LOGGED_TAG = "imbalance.final_logged"


def run_key(run_dir: os.PathLike) -> str:
    """A stable id of a run folder (sha1 of its resolved path), stored as an MLflow tag."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------
_MLFLOW_KEY_BAD = re.compile(r"[^/\w.\- ]")


def _mlflow_key(key: str, limit: int = 250) -> str:
    """A param / metric name MLflow accepts (slashes, alphanumerics, _ . - and spaces)."""
    return _MLFLOW_KEY_BAD.sub("_", str(key))[:limit]


def resolve_tracking_uri(uri: Optional[str], base_dir: os.PathLike) -> Optional[str]:
    """Make a local store's relative path absolute against ``base_dir`` (where the user started):
    ``sqlite:///experiments/mlflow.db`` -> ``sqlite:////<base>/experiments/mlflow.db``, a plain
    path or ``file:`` path -> ``file:///<abs>``. Server and database URIs are returned as they are;
    None stays None (MLflow then uses MLFLOW_TRACKING_URI or its own default)."""
    if uri is None:
        return None
    base = Path(base_dir)
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path.startswith("/") or path == ":memory:" or path == "":
            return uri
        return "sqlite:///" + str((base / path).resolve())
    if uri.startswith("file:"):
        rest = uri[len("file:"):]
        if rest.startswith("//"):
            return uri
        return (base / rest).resolve().as_uri()
    if uri in ("databricks", "databricks-uc", "uc") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        return uri  # http(s)://, postgresql://, databricks, databricks://profile, ...
    return (base / uri).resolve().as_uri()


def _local_store_path(uri: Optional[str]) -> Optional[Path]:
    """The file or folder of a local store (sqlite file / file: folder), else None."""
    if uri is None:
        return None
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        return Path(uri[len("sqlite:///"):])
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    return None


@contextlib.contextmanager
def _store_lock(uri: Optional[str]) -> Iterator[None]:
    """Serialise the creation of a local sqlite store and its experiments across the processes of
    a parallel sweep (concurrent schema migrations or experiment creations would fail)."""
    path = _local_store_path(uri)
    if path is None or not (uri or "").startswith("sqlite"):
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def import_mlflow_client() -> Any:
    """``mlflow.MlflowClient``; ImportError with the install command when mlflow is missing."""
    try:
        from mlflow import MlflowClient
    except ImportError as err:
        raise ImportError(f"the mlflow logger needs the mlflow package ({err}); install it with "
                          "`pip install mlflow` (or `pip install .[tracking]`)") from None
    return MlflowClient


def _param_limits() -> Tuple[int, int]:
    try:
        from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

        return int(MAX_ENTITY_KEY_LENGTH), int(MAX_PARAM_VAL_LENGTH)
    except ImportError:  # pragma: no cover - old MLflow: its historical limits
        return 250, 500


def _chunks(items: List[Any], n: int) -> Iterator[List[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


@LOGGERS.register("mlflow")
class MLflowLogger(RunLogger):
    """An MLflow run per run folder (MlflowClient only; no global ``mlflow.start_run`` state).

    * experiment: the sweep's folder name in a multirun (``sweep_experiment``), else
      ``experiment_name``; created on first use, for a local store with its artifacts beside the
      store (``<store folder>/mlartifacts/<experiment>``) unless ``artifact_location`` says where.
    * run name: ``exp_name`` (in a sweep the run folder's name, ``<exp_name>_<job>``, so that runs
      differ); tags ``mlflow.source.git.commit``, ``imbalance.sweep``, ``imbalance.exp_name``,
      ``imbalance.run_dir`` and ``imbalance.run_key`` (see :func:`run_key`).
    * params: the flattened config (dotted keys, values as text: strings as they are, others as
      JSON), keys and values cut to MLflow's limits, sent 100 per request.
    * metrics: ``stage<k>/<column>`` at step = global epoch; final metrics at the last step.
    * artifacts: ``config.yaml``, ``results.json``, ``summary.txt``, ``figures/<file>``,
      ``confusion_matrix.png`` (``log_artifacts: false`` keeps only config.yaml).

    ``tracking_uri``: a relative sqlite / file path is taken relative to ``base_dir`` (where the
    user started); null means MLflow's own default (the MLFLOW_TRACKING_URI variable).
    """

    name = "mlflow"
    #: record the run id in ``<run_dir>/logs/mlflow_run.json`` (read on resume); the importer,
    #: which only reads run folders, turns it off
    write_run_file = True

    def __init__(self, *, tracking_uri: Optional[str] = DEFAULT_TRACKING_URI, experiment_name: str = "imbalance",
                 sweep_experiment: bool = True, artifact_location: Optional[str] = None,
                 log_artifacts: bool = True, base_dir: Optional[os.PathLike] = None) -> None:
        check_option("logger.mlflow.tracking_uri", tracking_uri, str, allow_none=True)
        check_option("logger.mlflow.experiment_name", experiment_name, str)
        if len(experiment_name) > 500:
            raise ConfigError(f"logger.mlflow.experiment_name is {len(experiment_name)} characters long; "
                              "MLflow allows at most 500")
        check_option("logger.mlflow.sweep_experiment", sweep_experiment, bool)
        check_option("logger.mlflow.artifact_location", artifact_location, str, allow_none=True)
        check_option("logger.mlflow.log_artifacts", log_artifacts, bool)
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self.tracking_uri = resolve_tracking_uri(tracking_uri, self.base_dir)
        self.experiment_name = experiment_name
        self.sweep_experiment = bool(sweep_experiment)
        self.artifact_location = artifact_location
        self.log_artifacts = bool(log_artifacts)
        self.client: Any = None
        self.run_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self._last_step: Dict[str, int] = {}
        self._step = 0

    # -- experiment and run ---------------------------------------------------------------
    def _artifact_root(self, experiment: str) -> Optional[str]:
        if self.artifact_location is not None:
            loc = self.artifact_location
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", loc):
                return loc
            return (self.base_dir / loc).resolve().as_uri()
        store = _local_store_path(self.tracking_uri)
        if store is None:
            return None  # a server or database decides
        folder = store.parent if store.suffix else store
        return (folder / "mlartifacts" / _mlflow_key(experiment, 200).replace("/", "_")).resolve().as_uri()

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, artifact_location=self._artifact_root(name))
            except MlflowException:
                exp = self.client.get_experiment_by_name(name)  # created meanwhile by another job
                if exp is None:
                    raise
        if exp.lifecycle_stage != "active":
            raise RuntimeError(f"MLflow experiment {name!r} is deleted; restore it (`mlflow experiments restore`) "
                               "or remove it for good (`mlflow gc`), or choose another logger.mlflow.experiment_name")
        return exp.experiment_id

    def _reopen(self, run_file: Path) -> Optional[Any]:
        """The run recorded in ``run_file`` if it is in this store and not deleted."""
        try:
            saved = json.loads(run_file.read_text())
        except (OSError, ValueError):
            log.info("mlflow: no readable %s; the resumed run starts a new MLflow run", run_file)
            return None
        if saved.get("tracking_uri") != self._uri_for_file():
            log.info("mlflow: the run was logged to %s, not %s; the resumed run starts a new MLflow run",
                     saved.get("tracking_uri"), self._uri_for_file())
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(saved["run_id"])
        except (MlflowException, KeyError):
            log.info("mlflow: run %s is not in the store; the resumed run starts a new MLflow run", saved.get("run_id"))
            return None
        if run.info.lifecycle_stage != "active":
            return None
        return run

    def _uri_for_file(self) -> str:
        if self.tracking_uri is not None:
            return self.tracking_uri
        import mlflow

        return mlflow.get_tracking_uri()

    def start(self, run_dir: os.PathLike, config: Mapping[str, Any], *, exp_name: str,
              resume_global_epoch: Optional[int] = None, sweep: Optional[str] = None,
              git_commit: Optional[str] = None, varied: Sequence[str] = ()) -> None:
        MlflowClient = import_mlflow_client()
        run_dir = Path(run_dir)
        run_file = run_dir / MLFLOW_RUN_FILE
        experiment = sweep if (sweep and self.sweep_experiment) else self.experiment_name
        with _store_lock(self.tracking_uri):
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            run = self._reopen(run_file) if resume_global_epoch is not None and run_file.exists() else None
            reopened = run is not None
            if run is None:
                self.experiment_id = self._experiment_id(experiment)
                tags = {"imbalance.exp_name": exp_name, RUN_DIR_TAG: str(run_dir.resolve()),
                        RUN_KEY_TAG: run_key(run_dir)}
                if sweep:
                    tags["imbalance.sweep"] = sweep
                if git_commit:
                    tags["mlflow.source.git.commit"] = git_commit
                if varied:
                    tags["imbalance.varied"] = ", ".join(varied)[:5000]
                run_name = run_dir.name if sweep else exp_name
                run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self._step = int(resume_global_epoch or 0)
        if reopened:
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "imbalance.resumed_after", str(int(resume_global_epoch)))
            for key in run.data.metrics:
                hist = self.client.get_metric_history(self.run_id, key)
                if hist:
                    self._last_step[key] = max(int(m.step) for m in hist)
            log.info("mlflow: continuing run %s after global epoch %d", self.run_id, int(resume_global_epoch))
        if self.write_run_file:
            run_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = run_file.with_name(run_file.name + ".tmp")
            tmp.write_text(json.dumps({"tracking_uri": self._uri_for_file(), "experiment_id": self.experiment_id,
                                       "experiment_name": experiment, "run_id": self.run_id}, indent=2) + "\n")
            os.replace(tmp, run_file)
        self._log_params(config, existing=dict(run.data.params))
        if not reopened:
            self.client.log_text(self.run_id, config_yaml(config), "config.yaml")

    def _log_params(self, config: Mapping[str, Any], existing: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        key_max, val_max = _param_limits()
        params: Dict[str, str] = {}
        for k, v in flatten_config(config).items():
            text = plain_string(v)
            if len(text) > val_max:
                text = text[:val_max - 3] + "..."
            params[_mlflow_key(k, key_max)] = text
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            log.info("mlflow: the resumed run keeps its logged values of %s", ", ".join(changed))
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for chunk in _chunks(new, 100):
            self.client.log_batch(self.run_id, params=chunk)

    # -- metrics and files ----------------------------------------------------------------
    def _log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        todo = []
        for k, v in values.items():
            key = _mlflow_key(k)
            if step > self._last_step.get(key, -1):
                todo.append(Metric(key, float(v), ts, int(step)))
                self._last_step[key] = int(step)
        for chunk in _chunks(todo, 1000):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_epoch(self, row: Mapping[str, Any], group_recall: Optional[Mapping[str, Any]] = None) -> None:
        step, values = epoch_scalars(row, group_recall)
        self._log_metrics(values, step)
        self._step = max(self._step, step)

    def log_history(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Many rows at once (the importer): one request per 1000 values."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        todo = []
        for row in rows:
            step, values = epoch_scalars(row)
            for k, v in values.items():
                key = _mlflow_key(k)
                if step > self._last_step.get(key, -1):
                    todo.append(Metric(key, v, ts, step))
                    self._last_step[key] = step
            self._step = max(self._step, step)
        for chunk in _chunks(todo, 1000):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_final(self, metrics: Mapping[str, float], *, results_path: Optional[os.PathLike] = None,
                  summary_path: Optional[os.PathLike] = None, figures: Iterable[os.PathLike] = (),
                  confusion_matrix: Any = None, class_names: Optional[Sequence[str]] = None) -> None:
        values = {k: float(v) for k, v in metrics.items() if is_number(v) and math.isfinite(float(v))}
        self._log_metrics(values, self._step)
        if self.log_artifacts:
            for p in (results_path, summary_path):
                if p is not None and Path(p).is_file():
                    self.client.log_artifact(self.run_id, str(p))
            for p in figures:
                if Path(p).is_file():
                    self.client.log_artifact(self.run_id, str(p), artifact_path="figures")
            if confusion_matrix is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "confusion_matrix.png"
                    path.write_bytes(render_confusion_matrix_png(confusion_matrix, class_names))
                    self.client.log_artifact(self.run_id, str(path))
        self.client.set_tag(self.run_id, FINAL_LOGGED_TAG, "true")

    def close(self, status: str = "finished") -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status.upper())
        self.client = None


