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

import contextlib
import hashlib
import inspect
import io
import json
import logging
import math
import numbers
import os
import re
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError
from .registry import Registry

log = logging.getLogger(__name__)

__all__ = [
    "LOGGERS",
    "RunLogger",
    "CSVLogger",
    "TensorBoardLogger",
    "MLflowLogger",
    "CompositeLogger",
    "make_loggers",
    "null_logger",
    "flatten_config",
    "epoch_scalars",
    "final_metrics",
    "group_recall",
    "render_confusion_matrix_png",
    "drop_events_after",
    "resolve_tracking_uri",
    "import_mlflow_client",
    "run_key",
    "MLFLOW_RUN_FILE",
    "DEFAULT_TRACKING_URI",
    "RUN_KEY_TAG",
    "RUN_DIR_TAG",
    "FINAL_LOGGED_TAG",
]

LOGGERS = Registry("logger")

DEFAULT_TRACKING_URI = "sqlite:///experiments/mlflow.db"
#: where the MLflow run id is kept inside a run folder (read again on resume)
MLFLOW_RUN_FILE = Path("logs") / "mlflow_run.json"
#: tags that identify the run folder an MLflow run belongs to (the importer skips such folders)
RUN_KEY_TAG = "imbalance.run_key"
RUN_DIR_TAG = "imbalance.run_dir"
FINAL_LOGGED_TAG = "imbalance.final_logged"
STATUSES = ("finished", "failed", "killed")
_ROW_INDEX_COLUMNS = ("stage", "epoch", "global_epoch")


# ---------------------------------------------------------------------------------------------
# Helpers (plain values in, plain values out)
# ---------------------------------------------------------------------------------------------
def flatten_config(config: Mapping[str, Any], prefix: str = "", sep: str = ".") -> Dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": [1, 2]}`` (lists are leaves; an empty
    mapping is kept as the leaf ``{}`` so that no key disappears)."""
    out: Dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten_config(v, key, sep))
        else:
            out[key] = dict(v) if isinstance(v, Mapping) else v
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def epoch_scalars(row: Mapping[str, Any], group_recall: Optional[Mapping[str, Any]] = None
                  ) -> Tuple[int, Dict[str, float]]:
    """``(global_epoch, {"stage<k>/<column>": value})`` for one metrics.csv row.

    Every numeric column except stage/epoch/global_epoch is kept (None and empty strings are
    skipped); ``group_recall`` adds ``stage<k>/val_recall_<group>`` (a None group is skipped).
    """
    stage = int(row["stage"])
    step = int(row["global_epoch"])
    out: Dict[str, float] = {}
    for k, v in row.items():
        if k in _ROW_INDEX_COLUMNS or not _is_number(v):
            continue
        out[f"stage{stage}/{k}"] = float(v)
    for g, v in (group_recall or {}).items():
        if _is_number(v):
            out[f"stage{stage}/val_recall_{g}"] = float(v)
    return step, out


_SKIP_RESULT_KEYS = frozenset({"per_class", "confusion_matrix", "group_wise", "grouping"})


def _flat_numbers(obj: Any, path: Tuple[str, ...], out: Dict[str, float]) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if k in _SKIP_RESULT_KEYS:
                continue
            _flat_numbers(v, path if k == "overall" else path + (str(k),), out)
    elif _is_number(obj) and math.isfinite(float(obj)):
        out["/".join(path)] = float(obj)


def final_metrics(results: Mapping[str, Any]) -> Dict[str, float]:
    """The flat final metrics of a results.json dict.

    ``metrics.<stage>.overall.<m>`` -> ``test/<stage>/<m>`` (stage1, stage2, stage3, final);
    nested numeric blocks keep their path (``metrics.final.openset.<detector>.overall.auroc`` ->
    ``test/final/openset/<detector>/auroc``); ``val_metrics.<m>`` -> ``val/<m>``. Per-class
    values, confusion matrices, group-wise blocks (already in ``overall`` as many_acc ...) and
    null / non-finite values are left out.
    """
    out: Dict[str, float] = {}
    _flat_numbers(results.get("metrics") or {}, ("test",), out)
    _flat_numbers(results.get("val_metrics") or {}, ("val",), out)
    return out


def group_recall(y_true: Any, y_pred: Any, class_groups: Sequence[str]) -> Dict[str, Optional[float]]:
    """Mean recall of the classes of each group (``many``/``medium``/``few``) on one split.

    ``class_groups[c]`` is class c's group from TRAINING counts
    (:func:`imbalance.analysis.assign_groups`). A class absent from ``y_true`` has no recall and
    is left out of its group's mean (as in :mod:`imbalance.analysis`); a group without any such
    class is None, never 0.
    """
    from .analysis import GROUP_NAMES

    yt = np.asarray(y_true, dtype=np.int64).reshape(-1)
    yp = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    k = len(class_groups)
    support = np.bincount(yt, minlength=k)[:k]
    hits = np.bincount(yt[yt == yp], minlength=k)[:k]
    groups = np.asarray(list(class_groups), dtype=object)
    out: Dict[str, Optional[float]] = {}
    for g in GROUP_NAMES:
        sel = (groups == g) & (support > 0)
        out[g] = float(np.mean(hits[sel] / support[sel])) if sel.any() else None
    return out


def run_key(run_dir: os.PathLike) -> str:
    """A stable id of a run folder (sha1 of its resolved path), stored as an MLflow tag."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode("utf-8")).hexdigest()


def _config_yaml(config: Mapping[str, Any]) -> str:
    try:
        import yaml

        return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)
    except Exception:  # pragma: no cover - PyYAML comes with omegaconf
        return json.dumps(config, indent=2, default=str)


def _plain_string(v: Any) -> str:
    """A config value as text: strings as they are, everything else as JSON (null, true, [1, 2])."""
    if isinstance(v, str):
        return v
    if _is_number(v) and not isinstance(v, (int, np.integer)):
        return repr(float(v))
    try:
        return json.dumps(v, default=str)
    except (TypeError, ValueError):  # pragma: no cover
        return str(v)


def render_confusion_matrix_png(confusion_matrix: Any, class_names: Optional[Sequence[str]] = None,
                                *, dpi: int = 120) -> bytes:
    """PNG bytes of a confusion matrix (rows true, columns predicted): colour = row-normalised
    recall, counts written in the cells when K <= 20."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .plotting_style import SEQUENTIAL_CMAP

    cm = np.asarray(confusion_matrix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"a confusion matrix must be square and non-empty, got shape {cm.shape}")
    k = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = float(min(max(3.0, 0.35 * k + 1.5), 16.0))
    fig = Figure(figsize=(side + 0.8, side), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap=SEQUENTIAL_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="recall (row-normalised)")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix")
    if k <= 30:
        names = list(class_names) if class_names is not None and len(class_names) == k else [str(i) for i in range(k)]
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def _png_header(data: bytes) -> Optional[Tuple[int, int, int]]:
    """(height, width, channels) from a PNG's IHDR chunk, or None if ``data`` is not a PNG."""
    if len(data) < 26 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(height), int(width), _PNG_CHANNELS.get(data[25], 4)


def _check_choice(name: str, value: Any, kind: type, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str) and value.strip() != ""
    else:
        ok = _is_number(value)
    if not ok:
        what = {bool: "true or false", str: "a non-empty string", float: "a number"}[kind]
        raise ConfigError(f"{name}={value!r} is not valid; expected {what}" + (" or null" if allow_none else ""))


# ---------------------------------------------------------------------------------------------
# Interface
# ---------------------------------------------------------------------------------------------
class RunLogger:
    """The interface the training loop calls; this base class does nothing (the no-op logger of
    ranks other than 0). Backends override what they need."""

    name = "none"

    def start(self, run_dir: os.PathLike, config: Mapping[str, Any], *, exp_name: str,
              resume_global_epoch: Optional[int] = None, sweep: Optional[str] = None,
              git_commit: Optional[str] = None) -> None:
        """Begin (or, with ``resume_global_epoch``, continue) the run whose folder is ``run_dir``.
        ``config`` is the resolved config as a plain dict; ``sweep`` names the multirun (its
        folder name), None for a single run."""

    def log_epoch(self, row: Mapping[str, Any], group_recall: Optional[Mapping[str, Any]] = None) -> None:
        """One metrics.csv row (and optionally the validation recall per group)."""

    def log_final(self, metrics: Mapping[str, float], *, results_path: Optional[os.PathLike] = None,
                  summary_path: Optional[os.PathLike] = None, figures: Iterable[os.PathLike] = (),
                  confusion_matrix: Any = None, class_names: Optional[Sequence[str]] = None) -> None:
        """The run's final metrics (flat names, :func:`final_metrics`) and files."""

    def close(self, status: str = "finished") -> None:
        """End the run: ``finished``, ``failed`` (an error) or ``killed`` (interrupted)."""

    def abort(self) -> None:
        """Release local resources after a failure without talking to a server."""


@LOGGERS.register("csv")
class CSVLogger(RunLogger):
    """``logs/metrics.csv`` is written by the training loop itself, whatever ``logger`` says;
    this backend only makes ``logger: [csv]`` (the default) a valid selection."""

    name = "csv"


@LOGGERS.register("tensorboard")
class TensorBoardLogger(RunLogger):
    """TensorBoard event files in ``<run_dir>/<log_dir>`` (torch.utils.tensorboard).

    Scalars ``stage<k>/<column>`` per epoch at step = global epoch; the config as text
    (``config``); at the end the hparams (flattened config) with the final metrics as hparams
    metrics, written into the same log dir as the scalars (``SummaryWriter.add_hparams`` would
    put them into a sub-run named by the time, which the HParams tab cannot line up with the
    scalars); the run's PNG figures as images ``figures/<file stem>`` and the confusion matrix
    as the image ``confusion_matrix``.
    """

    name = "tensorboard"

    def __init__(self, *, log_dir: str = "tb", flush_secs: float = 30.0, log_images: bool = True) -> None:
        _check_choice("logger.tensorboard.log_dir", log_dir, str)
        if Path(log_dir).is_absolute() or ".." in Path(log_dir).parts:
            raise ConfigError(f"logger.tensorboard.log_dir={log_dir!r} is not valid; expected a folder "
                              "inside the run folder (a relative path such as 'tb')")
        _check_choice("logger.tensorboard.flush_secs", flush_secs, float)
        if not flush_secs > 0:
            raise ConfigError(f"logger.tensorboard.flush_secs={flush_secs!r} is not valid; expected a number > 0")
        _check_choice("logger.tensorboard.log_images", log_images, bool)
        self.log_dir = log_dir
        self.flush_secs = float(flush_secs)
        self.log_images = bool(log_images)
        self.writer: Any = None
        self.path: Optional[Path] = None
        self._floor = 0
        self._step = 0
        self._hparams: Dict[str, Any] = {}

    def start(self, run_dir: os.PathLike, config: Mapping[str, Any], *, exp_name: str,
              resume_global_epoch: Optional[int] = None, sweep: Optional[str] = None,
              git_commit: Optional[str] = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(run_dir) / self.log_dir
        resumed = resume_global_epoch is not None
        self._floor = int(resume_global_epoch) if resumed else 0
        self._step = self._floor
        if resumed and self.path.is_dir():
            dropped = drop_events_after(self.path, self._floor)
            if dropped:
                log.info("tensorboard: %d events after global epoch %d removed from %s", dropped, self._floor,
                         self.path)
        # purge_step as well: TensorBoard's Python reader then drops events of steps > G even if
        # the files above could not be rewritten
        self.writer = SummaryWriter(log_dir=str(self.path), purge_step=self._floor + 1 if resumed else None,
                                    flush_secs=self.flush_secs)
        self._hparams = self._hparam_values(config, exp_name=exp_name, sweep=sweep, git_commit=git_commit)
        if not resumed:
            text = "    " + _config_yaml(config).replace("\n", "\n    ")
            self.writer.add_text("config", text, 0)
            self.writer.flush()

    @staticmethod
    def _hparam_values(config: Mapping[str, Any], **extra: Any) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for k, v in {**flatten_config(config), **{k: v for k, v in extra.items() if v is not None}}.items():
            if _is_number(v) and math.isfinite(float(v)):
                out[k] = int(v) if isinstance(v, (int, np.integer)) else float(v)
            else:
                out[k] = _plain_string(v)
        return out

    def log_epoch(self, row: Mapping[str, Any], group_recall: Optional[Mapping[str, Any]] = None) -> None:
        step, values = epoch_scalars(row, group_recall)
        if step <= self._floor:
            return
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)
        self._step = max(self._step, step)
        self.writer.flush()

    def log_final(self, metrics: Mapping[str, float], *, results_path: Optional[os.PathLike] = None,
                  summary_path: Optional[os.PathLike] = None, figures: Iterable[os.PathLike] = (),
                  confusion_matrix: Any = None, class_names: Optional[Sequence[str]] = None) -> None:
        from torch.utils.tensorboard.summary import hparams

        step = self._step
        values = {k: float(v) for k, v in metrics.items() if _is_number(v) and math.isfinite(float(v))}
        exp, ssi, sei = hparams(self._hparams, values)
        fw = self.writer.file_writer
        for summary in (exp, ssi, sei):
            fw.add_summary(summary, step)
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        if self.log_images:
            for p in figures:
                p = Path(p)
                if p.suffix.lower() == ".png" and p.is_file():
                    self._add_png(f"figures/{p.stem}", p.read_bytes(), step)
            if confusion_matrix is not None:
                self._add_png("confusion_matrix", render_confusion_matrix_png(confusion_matrix, class_names), step)
        self.writer.flush()

    def _add_png(self, tag: str, data: bytes, step: int) -> None:
        """Write an encoded PNG as an image summary as it is (no decoding, no re-encoding)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        head = _png_header(data)
        if head is None:
            log.debug("tensorboard: %s is not a PNG file; skipped", tag)
            return
        h, w, c = head
        img = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=data)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=img)]), step)

    def close(self, status: str = "finished") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def drop_events_after(log_dir: os.PathLike, last_step: int) -> int:
    """Remove the events of steps > ``last_step`` from the event files directly in ``log_dir``;
    return how many were removed.

    TensorBoard's Python reader honours ``purge_step``, but its default fast data server does
    not (it only replaces a series' records from the step a new record has), so events of a
    tag the resumed run does not write again (e.g. a stage that now starts later) would stay.
    The kept events are written to a temporary file that atomically replaces the first event
    file; the other event files are then deleted. Nothing is rewritten when nothing is dropped.
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    log_dir = Path(log_dir)
    files = sorted(p for p in log_dir.iterdir() if "tfevents" in p.name and p.is_file())
    kept: List[bytes] = []
    dropped = 0
    for f in files:
        for raw in RawEventFileLoader(str(f)).Load():
            if Event.FromString(raw).step <= last_step:
                kept.append(raw)
            else:
                dropped += 1
    if not dropped:
        return 0
    tmp = log_dir / ".resume.tmp"
    with open(tmp, "wb") as fh:
        writer = RecordWriter(fh)
        for raw in kept:
            writer.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, files[0])
    for f in files[1:]:
        f.unlink()
    return dropped


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
        _check_choice("logger.mlflow.tracking_uri", tracking_uri, str, allow_none=True)
        _check_choice("logger.mlflow.experiment_name", experiment_name, str)
        if len(experiment_name) > 500:
            raise ConfigError(f"logger.mlflow.experiment_name is {len(experiment_name)} characters long; "
                              "MLflow allows at most 500")
        _check_choice("logger.mlflow.sweep_experiment", sweep_experiment, bool)
        _check_choice("logger.mlflow.artifact_location", artifact_location, str, allow_none=True)
        _check_choice("logger.mlflow.log_artifacts", log_artifacts, bool)
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
              git_commit: Optional[str] = None) -> None:
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
            self.client.log_text(self.run_id, _config_yaml(config), "config.yaml")

    def _log_params(self, config: Mapping[str, Any], existing: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        key_max, val_max = _param_limits()
        params: Dict[str, str] = {}
        for k, v in flatten_config(config).items():
            text = _plain_string(v)
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
        values = {k: float(v) for k, v in metrics.items() if _is_number(v) and math.isfinite(float(v))}
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


# ---------------------------------------------------------------------------------------------
# Composite and factory
# ---------------------------------------------------------------------------------------------
class CompositeLogger(RunLogger):
    """Calls every backend in turn; a backend that raises is reported by ONE warning and
    disabled (its ``abort()`` is called), the others carry on and training never stops.
    ``with make_loggers(...) as lg:`` closes the loggers (``failed`` on an exception, ``killed``
    on Ctrl-C)."""

    name = "composite"

    def __init__(self, backends: Sequence[RunLogger] = ()) -> None:
        self.backends: List[RunLogger] = list(backends)
        #: name -> "ExceptionType: message" of each backend disabled after a failure
        self.disabled: Dict[str, str] = {}
        self._off: set = set()

    @property
    def active(self) -> List[RunLogger]:
        """The backends still logging."""
        return [b for b in self.backends if id(b) not in self._off]

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        for b in self.active:
            try:
                getattr(b, method)(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - a tracker never stops training
                self._off.add(id(b))
                self.disabled[b.name] = f"{type(err).__name__}: {err}"
                log.warning("logger %s failed in %s (%s: %s); it is disabled for the rest of this run "
                            "(training and the run folder's files are not affected)", b.name, method,
                            type(err).__name__, err)
                log.debug("logger %s failure", b.name, exc_info=True)
                with contextlib.suppress(Exception):
                    b.abort()

    def start(self, run_dir: os.PathLike, config: Mapping[str, Any], *, exp_name: str,
              resume_global_epoch: Optional[int] = None, sweep: Optional[str] = None,
              git_commit: Optional[str] = None) -> None:
        self._call("start", run_dir, config, exp_name=exp_name, resume_global_epoch=resume_global_epoch,
                   sweep=sweep, git_commit=git_commit)

    def log_epoch(self, row: Mapping[str, Any], group_recall: Optional[Mapping[str, Any]] = None) -> None:
        self._call("log_epoch", row, group_recall)

    def log_final(self, metrics: Mapping[str, float], *, results_path: Optional[os.PathLike] = None,
                  summary_path: Optional[os.PathLike] = None, figures: Iterable[os.PathLike] = (),
                  confusion_matrix: Any = None, class_names: Optional[Sequence[str]] = None) -> None:
        self._call("log_final", metrics, results_path=results_path, summary_path=summary_path,
                   figures=list(figures), confusion_matrix=confusion_matrix, class_names=class_names)

    def close(self, status: str = "finished") -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not valid; valid: {', '.join(STATUSES)}")
        self._call("close", status)

    def __enter__(self) -> "CompositeLogger":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("finished")
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            self.close("killed")
        else:
            self.close("failed")


def null_logger() -> CompositeLogger:
    """The logger of ranks other than 0 (and of runs with no tracker): every call does nothing."""
    return CompositeLogger([])


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
