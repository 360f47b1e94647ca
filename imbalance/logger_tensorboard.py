"""The TensorBoard backend (``logger=[csv,tensorboard]``): event files in ``<run>/tb/``."""
from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from .errors import ConfigError
from .logger_base import (LOGGERS, RunLogger, check_option, config_yaml, epoch_scalars, flatten_config, is_number,
                          plain_string, png_shape, render_confusion_matrix_png)

log = logging.getLogger(__name__)

__all__ = ["TensorBoardLogger", "drop_events_after", "hparam_names", "order_experiment", "FIRST_METRICS"]

#: The HParams tab shows 5 metric columns at first: these, in this order (SEED's paper metrics).
FIRST_METRICS = ("test/final/macc", "test/final/many_acc", "test/final/medium_acc", "test/final/few_acc",
                 "test/final/hm", "val/macc")


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
        check_option("logger.tensorboard.log_dir", log_dir, str)
        if Path(log_dir).is_absolute() or ".." in Path(log_dir).parts:
            raise ConfigError(f"logger.tensorboard.log_dir={log_dir!r} is not valid; expected a folder "
                              "inside the run folder (a relative path such as 'tb')")
        check_option("logger.tensorboard.flush_secs", flush_secs, float)
        if not flush_secs > 0:
            raise ConfigError(f"logger.tensorboard.flush_secs={flush_secs!r} is not valid; expected a number > 0")
        check_option("logger.tensorboard.log_images", log_images, bool)
        self.log_dir = log_dir
        self.flush_secs = float(flush_secs)
        self.log_images = bool(log_images)
        self.writer: Any = None
        self.path: Optional[Path] = None
        self._floor = 0
        self._step = 0
        self._hparams: Dict[str, Any] = {}
        self._varied: List[str] = []

    def start(self, run_dir: os.PathLike, config: Mapping[str, Any], *, exp_name: str,
              resume_global_epoch: Optional[int] = None, sweep: Optional[str] = None,
              git_commit: Optional[str] = None, varied: Sequence[str] = ()) -> None:
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
        self._varied = hparam_names(varied, self._hparams)
        if not resumed:
            text = "    " + config_yaml(config).replace("\n", "\n    ")
            self.writer.add_text("config", text, 0)
            self.writer.flush()

    @staticmethod
    def _hparam_values(config: Mapping[str, Any], **extra: Any) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for k, v in {**flatten_config(config), **{k: v for k, v in extra.items() if v is not None}}.items():
            if is_number(v) and math.isfinite(float(v)):
                out[k] = int(v) if isinstance(v, (int, np.integer)) else float(v)
            else:
                out[k] = plain_string(v)
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
        values = {k: float(v) for k, v in metrics.items() if is_number(v) and math.isfinite(float(v))}
        exp, ssi, sei = hparams(self._hparams, values)
        order_experiment(exp, self._varied, [m for m in FIRST_METRICS if m in values])
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

        head = png_shape(data)
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


def hparam_names(keys: Sequence[str], hparams: Mapping[str, Any]) -> List[str]:
    """The hparam names of config ``keys`` (``stage2.loss``, or a group such as ``loss`` ->
    ``loss.name`` / ``stage2`` -> ``stage2.mode``), in order, once; keys that name no hparam are
    dropped."""
    out: List[str] = []
    for key in keys:
        for name in (key, f"{key}.name", f"{key}.mode"):
            if name in hparams:
                if name not in out:
                    out.append(name)
                break
    return out


def order_experiment(summary: Any, varied: Sequence[str], first_metrics: Sequence[str]) -> None:
    """Reorder the HParams experiment summary in place for TensorBoard's HParams tab, which shows
    the first 5 hyperparameters after sorting those marked ``differs`` to the front, and the first
    5 metrics: the ``varied`` hparams are marked ``differs`` (what a sweep compares, where it is
    known) and ``first_metrics`` lead the metric list."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    value = summary.value[0]
    exp = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
    rank = {name: i for i, name in enumerate(varied)}
    infos = sorted(exp.hparam_infos, key=lambda h: rank.get(h.name, len(rank)))
    for h in infos:
        h.differs = h.name in rank
    mrank = {name: i for i, name in enumerate(first_metrics)}
    metrics = sorted(exp.metric_infos, key=lambda m: mrank.get(m.name.tag, len(mrank)))
    del exp.hparam_infos[:]
    exp.hparam_infos.extend(infos)
    del exp.metric_infos[:]
    exp.metric_infos.extend(metrics)
    content = plugin_data_pb2.HParamsPluginData(experiment=exp, version=metadata.PLUGIN_DATA_VERSION)
    value.metadata.plugin_data.content = content.SerializeToString()
