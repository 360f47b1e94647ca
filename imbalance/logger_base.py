"""The run-logger interface and what every backend shares: :class:`RunLogger`, the registry
:data:`LOGGERS`, :class:`CompositeLogger` (failure isolation), the ``csv`` backend and plain
helpers (metric names, group recall, the confusion-matrix image).

The backends live in :mod:`imbalance.logger_tensorboard` and :mod:`imbalance.logger_mlflow`;
:mod:`imbalance.loggers` gathers them (``make_loggers``) and documents the whole.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import numbers
import os
import struct
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError
from .registry import Registry

log = logging.getLogger(__name__)

__all__ = ["LOGGERS", "STATUSES", "RunLogger", "CSVLogger", "CompositeLogger", "null_logger", "flatten_config",
           "epoch_scalars", "final_metrics", "group_recall", "render_confusion_matrix_png", "png_shape",
           "is_number", "config_yaml", "plain_string", "check_option"]

LOGGERS = Registry("logger")

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


def is_number(v: Any) -> bool:
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
        if k in _ROW_INDEX_COLUMNS or not is_number(v):
            continue
        out[f"stage{stage}/{k}"] = float(v)
    for g, v in (group_recall or {}).items():
        if is_number(v):
            out[f"stage{stage}/val_recall_{g}"] = float(v)
    return step, out


_SKIP_RESULT_KEYS = frozenset({"per_class", "confusion_matrix", "group_wise", "grouping"})


def _flat_numbers(obj: Any, path: Tuple[str, ...], out: Dict[str, float]) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if k in _SKIP_RESULT_KEYS:
                continue
            _flat_numbers(v, path if k == "overall" else path + (str(k),), out)
    elif is_number(obj) and math.isfinite(float(obj)):
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


def config_yaml(config: Mapping[str, Any]) -> str:
    try:
        import yaml

        return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)
    except Exception:  # pragma: no cover - PyYAML comes with omegaconf
        return json.dumps(config, indent=2, default=str)


def plain_string(v: Any) -> str:
    """A config value as text: strings as they are, everything else as JSON (null, true, [1, 2])."""
    if isinstance(v, str):
        return v
    if is_number(v) and not isinstance(v, (int, np.integer)):
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


def png_shape(data: bytes) -> Optional[Tuple[int, int, int]]:
    """(height, width, channels) from a PNG's IHDR chunk, or None if ``data`` is not a PNG."""
    if len(data) < 26 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(height), int(width), _PNG_CHANNELS.get(data[25], 4)


def check_option(name: str, value: Any, kind: type, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str) and value.strip() != ""
    else:
        ok = is_number(value)
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
              git_commit: Optional[str] = None, varied: Sequence[str] = ()) -> None:
        """Begin (or, with ``resume_global_epoch``, continue) the run whose folder is ``run_dir``.
        ``config`` is the resolved config as a plain dict; ``sweep`` names the multirun (its
        folder name), None for a single run; ``varied`` lists the config keys the sweep varies
        (or, for a single run, the keys set on its command line): trackers may show them first."""

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
              git_commit: Optional[str] = None, varied: Sequence[str] = ()) -> None:
        self._call("start", run_dir, config, exp_name=exp_name, resume_global_epoch=resume_global_epoch,
                   sweep=sweep, git_commit=git_commit, varied=list(varied))

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

