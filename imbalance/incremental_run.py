"""``mode=incremental``: add the classes of a new session to a trained run's model.

``python main.py mode=incremental resume=<parent run> [data.path_train=new.mat data.path_test=all_test.mat]``

The parent run folder is only read: its final model (``checkpoints/final.pt``, rebuilt by
:func:`imbalance.evaluate.load_trained_model`), its exemplar memory (``memory/``,
:class:`imbalance.exemplars.ExemplarMemory`) and its ``results.json`` (the chain's history). The
session writes a new run folder (Hydra's) tagged with its parent (results.json ``incremental``).

One session:

1. data: with the built-in data (``data.path_train`` null) the session after the parent's is
   found from the classes the parent learned (``data.synthetic.sessions``, no index to give): the
   built-in data are made as the parent made them (its ``seed``, ``data.synthetic.*``, split and
   long tail over ALL classes, :func:`imbalance.builders.build_data`) and the session's classes
   are taken; with files, the new classes come from ``data.path_train`` and the test split of all
   learned classes from ``data.path_test``. :func:`imbalance.incremental.validate_new_session`
   refuses classes the parent learned (unless ``incremental.allow_seen_classes``), another channel
   count or signal length, in one line each;
2. model: the parent's classifier chain back to a plain head (:func:`imbalance.incremental.plain_head`),
   the teacher (a frozen copy, when the method distils), the head grown by the new classes (old
   rows bit-exact, new rows as ``model.init`` says);
3. training (stage 1's builders and loop, :func:`imbalance.stages.run_stage1`) on the new data,
   plus the parent's exemplars when the method replays them, with the method's loss
   (:func:`imbalance.incremental_methods.build_incremental`); a fixed number of epochs, the last
   weights kept (as the methods' official code: the validation split holds only the new
   classes, so it cannot select a model that must also keep the old ones); then the method's
   post-training step (WA's weight aligning);
4. the follow-up ``stage2.enabled=true`` (cRT, Kang et al. 2020) re-trains the classifier on the
   memory + the new data with ``stage2.sampler`` (class_balanced by default: the old classes are
   represented by their exemplars only, so balancing is what removes the count bias), and stage 3
   as in a training run;
5. the memory: the old classes reduced to the new quota, exemplars of the new classes added
   (herding on the trained model's features), class means computed; saved in ``memory/``;
6. evaluation on the test data of every learned class with the method's classifier (the head or
   iCaRL's nearest mean of exemplars); old / new / all accuracy and mAcc, the chain's average
   incremental accuracy and forgetting (:mod:`imbalance.incremental_metrics`), the figure
   ``results/incremental_accuracy.png``.

The base session (``mode=train`` with ``data.synthetic.sessions``, or
``incremental.save_memory=true``) calls :func:`base_session` after its evaluation: memory and
``incremental`` block for session 0. Single process only (no torchrun); an interrupted session
is run again (``resume`` names the parent here).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import builders as B
from .errors import ConfigError, DataError, UserError
from .exemplars import ExemplarMemory, NMEModel, extract_features, per_class_quota, update_memory
from .incremental import (frozen_copy, grow_model_classifier, label_positions, merge_classes, new_row_init,
                          next_session, plain_head, session_classes, validate_new_session)
from .incremental_methods import OPTION_KEYS, BoundTeacherLoss, TeacherHook, build_incremental
from .incremental_metrics import chain_summary, plot_session_accuracy, session_metrics, session_record
from .loader import TensorPairDataset
from .results import plain

log = logging.getLogger(__name__)

__all__ = ["run_incremental", "base_session", "keeps_memory", "check_memory_budget", "session_config",
           "prepare_student",
           "MEMORY_FOLDER", "FIGURE_NAME"]

#: The exemplar memory's folder inside a run folder.
MEMORY_FOLDER = "memory"
#: The accuracy-per-session figure (``results/<name>.png`` / ``.pdf``).
FIGURE_NAME = "incremental_accuracy"
# Keys a session takes from its parent: they define the model and (built-in data) the data and split.
INHERITED = ("seed", "model")
INHERITED_BUILTIN = ("create_imbalance", "data.val_ratio", "data.imbalance_ratio", "data.normalize",
                     "data.synthetic")
INHERITED_FILES = ("data.normalize",)


# =============================================================================================
# Configuration
# =============================================================================================
def keeps_memory(cfg: DictConfig) -> bool:
    """Whether a ``mode=train`` run keeps an exemplar memory: ``incremental.save_memory``, or when
    null, a base session of the built-in data (``data.synthetic.sessions``)."""
    flag = cfg.incremental.save_memory
    if flag is not None:
        return bool(flag)
    return cfg.data.path_train is None and bool(cfg.data.synthetic.sessions)


def check_memory_budget(cfg: DictConfig, num_classes: int) -> int:
    """Exemplars per class for ``num_classes`` learned classes (a ConfigError, one line, for a
    budget below one per class), checked before any training."""
    inc = cfg.incremental
    return per_class_quota(num_classes, memory_per_class=inc.memory_per_class, memory_total=inc.memory_total)


def _get(tree: Dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _set(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    *head, last = dotted.split(".")
    for part in head:
        tree = tree[part]
    tree[last] = value


def session_config(cfg: DictConfig, parent_cfg: DictConfig, overrides: Optional[Sequence[str]], *,
                   parent_run: Path, trained_length: int) -> DictConfig:
    """The config a session runs with: this command's, with the parent's ``seed`` and ``model``
    (and, for the built-in data, the keys that define the data and its split), ``mode`` and
    ``resume`` (the parent's folder). A key the user set to another value than the parent's is
    logged and replaced; ``data.synthetic.sessions`` may be left out (the parent's) but not
    changed; ``data.target_length`` may only crop/pad to the parent's signal length."""
    from .recipe import user_set_keys

    cur = OmegaConf.to_container(cfg, resolve=True)
    src = OmegaConf.to_container(parent_cfg, resolve=True)
    builtin = cur["data"]["path_train"] is None
    user = user_set_keys(cfg, overrides or [])
    sessions, parent_sessions = cur["data"]["synthetic"]["sessions"], src["data"]["synthetic"]["sessions"]
    for key in INHERITED + (INHERITED_BUILTIN if builtin else INHERITED_FILES):
        differs = []
        for u in sorted(user):
            if (u == key or u.startswith(key + ".")) and u != "data.synthetic.sessions":
                try:
                    if _get(cur, u) != _get(src, u):
                        differs.append(u)
                except (KeyError, TypeError):
                    differs.append(u)
        if differs:
            log.warning("%s: the parent's value is used (a session continues its parent's %s)", ", ".join(differs),
                        "model" if key == "model" else "data and seed")
        _set(cur, key, _get(src, key))
    if builtin:
        if sessions and parent_sessions and list(sessions) != list(parent_sessions):
            raise ConfigError(f"data.synthetic.sessions={list(sessions)} differs from the parent's "
                              f"{list(parent_sessions)}; a chain keeps one plan (leave the key out to use the parent's)")
        cur["data"]["synthetic"]["sessions"] = list(sessions or parent_sessions or []) or None
    tl = cur["data"]["target_length"]
    if tl is not None and int(tl) != int(trained_length):
        raise ConfigError(f"data.target_length={tl}: the parent model was trained on signals of length "
                          f"{trained_length}; use data.target_length={trained_length} or leave it out")
    if tl is None:
        cur["data"]["target_length"] = src["data"]["target_length"]
    cur["mode"] = "incremental"
    cur["resume"] = str(parent_run)
    from .config import with_schema

    return with_schema(cur)


def _options(cfg: DictConfig) -> Dict[str, Any]:
    inc = OmegaConf.to_container(cfg.incremental, resolve=True)
    return {k: inc[k] for k in OPTION_KEYS}


# =============================================================================================
# Data of a session
# =============================================================================================
@dataclasses.dataclass
class SessionData:
    """One session's data as arrays: signals (N, C, L) float32 and ORIGINAL label values."""

    index: int
    old: List[Any]
    new: List[Any]
    seen: List[Any]
    classes: List[Any]  # the grown model's order: old, then new
    train: Tuple[np.ndarray, np.ndarray]
    train_indices: np.ndarray  # in the session's training set (the memory records them)
    val: Tuple[np.ndarray, np.ndarray]
    test: Tuple[np.ndarray, np.ndarray]
    files: Dict[str, str]
    plan: Optional[List[List[Any]]] = None  # the built-in data's sessions


def _arrays(ds: Any, classes: Sequence[Any], keep: Optional[Sequence[Any]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(signals, original label values) of a data set, only the samples of classes ``keep``."""
    values = np.asarray(list(classes))[ds.labels]
    rows = np.arange(len(ds)) if keep is None else np.flatnonzero(np.isin(values, np.asarray(list(keep))))
    x = ds.x[torch.as_tensor(rows)] if ds.x is not None else ds.get_batch(rows)[0]
    return x.numpy().astype(np.float32, copy=False), values[rows]


def _check_shape(x: np.ndarray, channels: int, length: int, where: str) -> None:
    if x.shape[1:] != (channels, length):
        raise DataError(f"{where}: signals are {x.shape[1]} channels x {x.shape[2]} samples but the parent model "
                        f"was trained on {channels} x {length}; a session keeps the channels, and "
                        f"data.target_length={length} crops/pads to the trained length")


def builtin_session(cfg: DictConfig, old: Sequence[Any], shape: Tuple[int, int]) -> SessionData:
    """The next session of the built-in data after a parent that learned ``old``."""
    sizes = cfg.data.synthetic.sessions
    if not sizes:
        raise ConfigError("mode=incremental on the built-in data needs data.synthetic.sessions (e.g. [6,2,2]) to "
                          "know which transmitters a session adds; or give data.path_train=<new classes' file>")
    full_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    full_cfg.data.synthetic.sessions = None
    bundle = B.build_data(full_cfg)  # every class, the long tail over all of them, as the base session drew it
    plan = session_classes(list(bundle.classes), list(sizes))
    k = next_session(list(old), plan)
    new = list(plan[k])
    classes = merge_classes(old, new)
    train = _arrays(bundle.train, bundle.classes, new)
    checked = validate_new_session(old_classes=old, new_labels=train[1], old_shape=shape,
                                   new_shape=(bundle.num_channels, bundle.length), where="the built-in session data")
    rows = np.flatnonzero(np.isin(np.asarray(bundle.classes)[bundle.train.labels], new))
    log.info("session %d of data.synthetic.sessions=%s: new classes %s (%d training bursts)", k, list(sizes), new,
             len(rows))
    return SessionData(index=k, old=list(old), new=new, seen=checked["seen"], classes=classes, train=train,
                       train_indices=rows, val=_arrays(bundle.val, bundle.classes, new),
                       test=_arrays(bundle.test, bundle.classes, classes), files={}, plan=plan)


def file_session(cfg: DictConfig, old: Sequence[Any], shape: Tuple[int, int], index: int) -> SessionData:
    """A session from files: the new classes' ``data.path_train`` (validation: ``data.path_val``
    or a stratified split of it), the test file ``data.path_test`` of the learned classes."""
    from .data import ADSBSignalDataset, stratified_split
    from .runtime import resolve_path

    d = cfg.data
    paths = {k: resolve_path(d[k]) for k in ("path_train", "path_val", "path_test")}
    if paths["path_test"] is None:
        raise ConfigError("mode=incremental with data.path_train needs data.path_test=<test file of the classes "
                          "learned so far>")
    kw = dict(target_length=d.target_length, normalize=bool(d.normalize), in_memory=bool(d.in_memory),
              data_key=d.data_key, label_key=d.label_key)
    ds = ADSBSignalDataset(paths["path_train"], **kw)
    x, y = _arrays(ds, ds.classes)
    checked = validate_new_session(old_classes=old, new_labels=y, old_shape=shape, new_shape=x.shape[1:],
                                   allow_seen_classes=bool(cfg.incremental.allow_seen_classes),
                                   where=paths["path_train"])
    classes = merge_classes(old, checked["new"])
    if paths["path_val"]:
        vds = ADSBSignalDataset(paths["path_val"], **kw)
        val = _arrays(vds, vds.classes, classes)
        _check_shape(val[0], *shape, paths["path_val"])
        tr = np.arange(len(y))
    else:
        tr, va = stratified_split(ds.labels, float(d.val_ratio), seed=int(cfg.seed))
        val = (x[va], y[va])
    tds = ADSBSignalDataset(paths["path_test"], **kw)
    test = _arrays(tds, tds.classes)
    _check_shape(test[0], *shape, paths["path_test"])
    unknown = sorted({plain(v) for v in test[1].tolist()} - {plain(c) for c in classes}, key=str)
    if unknown:
        if not bool(cfg.evaluation.skip_unknown_classes):
            raise DataError(f"{paths['path_test']}: label value(s) {', '.join(map(str, unknown[:10]))} are not among "
                            f"the classes learned so far; pass evaluation.skip_unknown_classes=true to test on the "
                            f"learned ones only")
        log.warning("%s: classes %s not learned yet are left out of the test", paths["path_test"], unknown)
        test = _arrays(tds, tds.classes, classes)
    log.info("session %d from %s: new classes %s, seen %s (%d training samples)", index, paths["path_train"],
             checked["new"], checked["seen"], len(tr))
    return SessionData(index=index, old=list(old), new=list(checked["new"]), seen=list(checked["seen"]),
                       classes=classes, train=(x[tr], y[tr]), train_indices=np.asarray(tr, dtype=np.int64),
                       val=val, test=test, files={k: v for k, v in paths.items() if v})


def _pairs(x: np.ndarray, values: np.ndarray, classes: Sequence[Any], where: str) -> TensorPairDataset:
    return TensorPairDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                             torch.from_numpy(label_positions(values, classes, where=where)))


def _bundle(train: Tuple[np.ndarray, np.ndarray], s: SessionData, shape: Tuple[int, int]) -> B.DataBundle:
    tr = _pairs(*train, s.classes, "training data")
    counts = np.bincount(tr.labels, minlength=len(s.classes)).astype(np.int64)
    return B.DataBundle(train=tr, val=_pairs(*s.val, s.classes, "validation data"),
                        test=_pairs(*s.test, s.classes, "test data"), classes=list(s.classes), class_counts=counts,
                        num_channels=int(shape[0]), length=int(shape[1]), files=dict(s.files))


def _with_memory(s: SessionData, memory: Optional[ExemplarMemory], what: str) -> Tuple[np.ndarray, np.ndarray]:
    if memory is None:
        raise DataError(f"{what} needs the parent's exemplar memory, but the parent kept none; train the parent "
                        f"with incremental.save_memory=true (or use incremental.method=lwf without stage 2)")
    return (np.concatenate([memory.signals, s.train[0]]),
            np.concatenate([memory.labels, s.train[1]]))


# =============================================================================================
# Model of a session
# =============================================================================================
def prepare_student(model: nn.Module, num_new: int, *, class_counts: Sequence[int], init: Optional[Any],
                    teacher: bool) -> Tuple[nn.Module, Optional[nn.Module], List[str]]:
    """The parent ``model`` made the session's student, in place: its classifier chain back to a
    plain head (:func:`plain_head`), every parameter trainable, the head grown by ``num_new``
    rows (old rows bit-exact, new rows by ``init``); and the teacher, a frozen copy of the plain
    parent taken before the head grew (None unless ``teacher``). Returns (student, teacher, notes)."""
    head, notes = plain_head(model.classifier)
    model.classifier = head
    for p in model.parameters():
        p.requires_grad_(True)
    frozen = frozen_copy(model) if teacher else None
    grow_model_classifier(model, num_new, class_counts=class_counts, init=init)
    return model, frozen, notes


def _early_stopping_off(plan: B.StagePlan) -> B.StagePlan:
    es = plan.early_stopping
    es.enabled = False
    return dataclasses.replace(plan, restore_best=False)


# =============================================================================================
# Records
# =============================================================================================
def _memory_info(memory: Optional[ExemplarMemory]) -> Optional[Dict[str, Any]]:
    if memory is None:
        return None
    return {"folder": MEMORY_FOLDER, "per_class": int(memory.per_class), "total": len(memory),
            "selection": memory.selection, "counts": {str(k): v for k, v in memory.counts().items()}}


def _parent_history(parent: Any, results: Dict[str, Any], classes: Sequence[Any]) -> List[Dict[str, Any]]:
    """The chain so far: the parent's ``incremental.history``, or for a plain training run its test
    predictions as session 0."""
    inc = results.get("incremental") or {}
    if inc.get("history"):
        return list(inc["history"])
    if parent.predictions_npz.is_file():
        with np.load(parent.predictions_npz, allow_pickle=False) as z:
            return [session_record(session=0, classes=list(classes), num_old=0, y_true=z["y_true"], y_pred=z["y_pred"])]
    return []


def _figure(cfg: DictConfig, folder: Any, history: List[Dict[str, Any]]) -> None:
    if not cfg.visualization.enabled:
        return
    try:
        v = cfg.visualization
        plot_session_accuracy(history, folder.results / FIGURE_NAME, metric="macc", panel_mm=float(v.panel_mm),
                              panel_scale=float(v.panel_scale), dpi=float(v.dpi))
    except Exception as err:  # a figure never loses the results
        log.exception("incremental figure failed: %s", err)


def _block(*, parent: Optional[str], s_index: int, old: Sequence[Any], new: Sequence[Any], rec: Dict[str, Any],
           memory: Optional[ExemplarMemory], history: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
    block = {"parent_run": parent, "session": int(s_index), "classes_old": [plain(c) for c in old],
             "classes_new": [plain(c) for c in new], "old": rec["old"], "new": rec["new"], "all": rec["all"],
             "memory": _memory_info(memory)}
    block.update(extra)
    block["history"] = history
    block["summary"] = chain_summary(history)
    return block


# =============================================================================================
# The base session (mode=train)
# =============================================================================================
def base_session(cfg: DictConfig, folder: Any, model: nn.Module, data: B.DataBundle, final: Dict[str, Any], *,
                 device: torch.device) -> Dict[str, Any]:
    """After a training run's evaluation: its exemplar memory (selected from the training split
    with the final model's features) saved in ``<run>/memory/``, and the results.json
    ``incremental`` block of session 0 (figure too when figures are on)."""
    inc = cfg.incremental
    x, values = _arrays(data.train, data.classes)
    herding = inc.selection == "herding"
    memory = update_memory(None, x, values, memory_per_class=inc.memory_per_class, memory_total=inc.memory_total,
                           features=extract_features(model, x, device=device) if herding else None,
                           selection=inc.selection, seed=int(cfg.seed), session=0)
    memory = memory.compute_class_means(model, device=device)
    memory.save(folder.root / MEMORY_FOLDER)
    arrays = final["_arrays"]
    rec = session_record(session=0, classes=list(data.classes), num_old=0, y_true=arrays["y_true"],
                         y_pred=arrays["y_pred"])
    sizes = cfg.data.synthetic.sessions if cfg.data.path_train is None else None
    log.info("exemplar memory: %d exemplars (%d per class, %s) in %s", len(memory), memory.per_class,
             memory.selection, folder.root / MEMORY_FOLDER)
    block = _block(parent=None, s_index=0, old=[], new=list(data.classes), rec=rec, memory=memory, history=[rec],
                   method=None, sessions=list(sizes) if sizes else None)
    _figure(cfg, folder, [rec])
    return block


# =============================================================================================
# mode=incremental
# =============================================================================================
def run_incremental(cfg: DictConfig, run_dir: os.PathLike, *, on_batch_end: Optional[Any] = None) -> float:
    """``mode=incremental``: one session after the run ``cfg.resume`` (only read), written to
    ``run_dir``; returns the validation mAcc of the final classifier (the new classes' split)."""
    from .analysis import accuracy_and_macc
    from .checkpoint import save_final_model
    from .classifier_chain import describe_chain
    from .engine import predict
    from .evaluate import load_trained_model
    from .evaluation import evaluate_model, public, save_predictions, write_figures, write_tables
    from .models import model_complexity
    from .precision import make_precision
    from .recipe import warn_unused_user_keys
    from .results import build_results, format_pct, write_results
    from .run_folder import MetricsWriter, RunFolder, update_latest_link
    from .runtime import attach_run_log, cli_overrides, detach_run_log, resolve_path, seed_everything, select_device
    from .stages import RunContext, run_stage1, run_stage2, run_stage3

    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    overrides = cli_overrides()
    device, _ = select_device(cfg.device, cfg.gpus)
    # ---- the parent (read only) and this session's config, data and folder
    model, info = load_trained_model(resolve_path(cfg.resume), device=device)
    if info.source_run is None:
        raise UserError(f"mode=incremental needs the parent's run folder (its memory and results), not the "
                        f"checkpoint file {info.checkpoint}")
    parent = RunFolder(info.source_run)
    folder = RunFolder(Path(run_dir).resolve())
    if folder.root == parent.root.resolve():
        raise UserError(f"the session's run folder {folder.root} is its parent's; a session writes a new folder")
    shape = (info.num_channels, info.length)
    cfg = session_config(cfg, info.config, overrides, parent_run=parent.root, trained_length=info.length)
    seed_everything(int(cfg.seed))
    parent_results = parent.read_results() or {}
    parent_inc = parent_results.get("incremental") or {}
    old = [plain(c) for c in info.classes]
    memory = ExemplarMemory.load(parent.root / MEMORY_FOLDER) if (parent.root / MEMORY_FOLDER).is_dir() else None
    if memory is not None and [plain(c) for c in memory.classes.tolist()] != old:
        raise DataError(f"the exemplar memory of {parent.root} holds classes {memory.classes.tolist()} but its model "
                        f"{old}; the run folder is inconsistent")
    t0 = time.perf_counter()
    if cfg.data.path_train is None:
        s = builtin_session(cfg, old, shape)
    else:
        s = file_session(cfg, old, shape, int(parent_inc.get("session", 0)) + 1)
    timings["data"] = time.perf_counter() - t0
    method, options = cfg.incremental.method, _options(cfg)
    if s.seen and method == "lwf" and options["lwf_ce"] == "new":
        raise ConfigError(f"the new data hold learned classes {s.seen}; incremental.method=lwf needs "
                          "incremental.lwf_ce=all to train on them")
    history = _parent_history(parent, parent_results, old)
    num_old, K = len(old), len(s.classes)
    probe = build_incremental(method, num_old=num_old, num_classes=K, **options)  # option errors before any file
    check_memory_budget(cfg, K)
    train = _with_memory(s, memory, f"incremental.method={method} (replay)") if probe.replay else s.train
    crt_train = _with_memory(s, memory, "stage 2 (cRT on memory + new data)") if cfg.stage2.enabled else None

    folder.root.mkdir(parents=True, exist_ok=True)
    handler = attach_run_log(folder.root)
    try:
        update_latest_link(folder.root, cfg.exp_name)
        log.info("run folder: %s (session %d after %s)", folder.root, s.index, parent.root)
        warn_unused_user_keys(cfg, overrides or [])
        precision = make_precision(device, bool(cfg.amp), cfg.amp_dtype)
        data = _bundle(train, s, shape)
        B.resolve_batch_size(cfg, len(data.train))  # data.batch_size=auto: from this session's training data
        counts_head = np.where(data.class_counts > 0, data.class_counts,
                               np.concatenate([np.asarray(info.class_counts), np.ones(K - num_old, np.int64)]))
        model, teacher, notes = prepare_student(
            model, K - num_old, class_counts=counts_head.tolist(), teacher=probe.needs_teacher,
            init=new_row_init(info.config.model.init, num_classes=K))
        for note in notes:
            log.warning("%s", note)
        log.info("classes: %d old + %d new = %d (%s); %s", num_old, K - num_old, K, s.new, probe.describe())

        writer = MetricsWriter(folder.metrics_csv)
        bs_eval = B.cfg_eval_batch(cfg)
        ctx = RunContext(folder=folder, device=device, precision=precision, data=data, model=model, metrics=writer,
                         val_loader=B.make_loader(data.val, bs_eval, device, cfg),
                         test_loader=B.make_loader(data.test, bs_eval, device, cfg),
                         config=OmegaConf.to_container(cfg, resolve=True),
                         progress=B.progress_enabled(cfg.progress_bar), console_log_interval=int(cfg.console_log_interval),
                         pin_memory=bool(cfg.data.pin_memory), on_batch_end=on_batch_end)
        metrics: Dict[str, Any] = {}
        stages: Dict[str, Any] = {}
        analyzer = B.build_analyzer(cfg, data.class_counts.tolist())

        # ---- the session's training with the method's loss
        t0 = time.perf_counter()
        plan1 = _early_stopping_off(B.build_stage1(cfg, data, model, device))
        base = plan1.loss_fn
        if method == "lwf" and options["lwf_ce"] == "new" and num_old > 0:
            new_counts = data.class_counts[num_old:]
            t = cfg.training
            base = B.build_loss(cfg.loss.name, new_counts, B.loss_kwargs(cfg.loss, label_smoothing=float(t.label_smoothing),
                                total_epochs=int(t.epochs)), OmegaConf.to_container(cfg.loss.params, resolve=True),
                                head=model.classifier, epochs=int(t.epochs)).to(device)
        from .losses import LOSSES

        if method == "icarl" and LOSSES.canonical(cfg.loss.name) == "CrossEntropy":
            base = None  # iCaRL's own loss; a configured other loss is reported by build_incremental
        plan = build_incremental(method, num_old=num_old, num_classes=K, base_loss=base, **options)
        hook = TeacherHook(model, teacher) if plan.needs_teacher else None
        plan1 = dataclasses.replace(plan1, loss_fn=BoundTeacherLoss(plan.loss, hook).to(device),
                                    description=plan1.description + f", incremental.method={method}, last epoch kept")
        handles = plan.attach(plan1.optimizer, model)
        try:
            r1 = run_stage1(ctx, plan1)
        finally:
            for h in handles:
                h.remove()
            if hook is not None:
                hook.remove()
        extras = plan.after_training(model)
        stages["stage1"] = {"epochs_run": r1.epochs_run, "best_epoch": None, "best_value": None}
        timings["stage1"] = time.perf_counter() - t0
        metrics["stage1"] = public(evaluate_model(model, ctx.test_loader, analyzer, precision=precision))

        # ---- follow-up: stage 2 (cRT on memory + new data) and stage 3
        if cfg.stage2.enabled:
            t0 = time.perf_counter()
            if method == "wa":
                log.warning("stage 2 after incremental.method=wa re-trains the classifier that weight aligning aligned")
            if plan.eval_classifier == "nme":
                log.warning("stage 2 re-trains the head, but the session is evaluated by the nearest mean of exemplars "
                            "(incremental.eval_classifier=nme); the head's figures are in metrics.stage2")
            ctx.data = _bundle(crt_train, s, shape)
            analyzer = B.build_analyzer(cfg, ctx.data.class_counts.tolist())
            plan2 = _early_stopping_off(B.build_stage2(cfg, ctx.data, model, device))
            r2 = run_stage2(ctx, plan2, stage1=stages["stage1"])
            stages["stage2"] = {"epochs_run": r2.epochs_run, "best_epoch": None, "best_value": None,
                                "class_counts": ctx.data.class_counts.tolist()}
            timings["stage2"] = time.perf_counter() - t0
            metrics["stage2"] = public(evaluate_model(model, ctx.test_loader, analyzer, precision=precision))
        plan3 = B.build_stage3(cfg)
        if "auto" in (plan3.tau_norm, plan3.logit_tau, plan3.eval_logit_tau, plan3.temperature) and plan3.ran:
            log.warning("stage 3 'auto' values are chosen on the session's validation split, which holds the new "
                        "classes only")
        calib = run_stage3(ctx, plan3)
        if plan3.ran:
            metrics["stage3"] = public(evaluate_model(model, ctx.test_loader, analyzer, precision=precision))

        # ---- the memory after the session
        t0 = time.perf_counter()
        new_memory = None
        if memory is not None:
            inc = cfg.incremental
            x_new, y_new = s.train
            feats = extract_features(model, x_new, device=device) if inc.selection == "herding" else None
            new_memory = update_memory(memory, x_new, y_new, memory_per_class=inc.memory_per_class,
                                       memory_total=inc.memory_total, features=feats, selection=inc.selection,
                                       seed=int(cfg.seed), indices=s.train_indices, session=s.index)
            new_memory = new_memory.compute_class_means(model, device=device)
            new_memory.save(folder.root / MEMORY_FOLDER)
        else:
            log.warning("the parent kept no exemplar memory; this session keeps none either")
        timings["memory"] = time.perf_counter() - t0

        # ---- evaluation with the method's classifier
        t0 = time.perf_counter()
        evaluator = model
        if plan.eval_classifier == "nme":
            if new_memory is None:
                raise DataError("incremental.eval_classifier=nme needs an exemplar memory; the parent kept none")
            evaluator = NMEModel(model, new_memory.nme_classifier().to(device))
        final = evaluate_model(evaluator, ctx.test_loader, analyzer, precision=precision, features=True)
        metrics["final"] = public(final)
        val_out = predict(evaluator, ctx.val_loader, precision=precision)
        val_acc, val_macc = accuracy_and_macc(val_out["logits"].argmax(1), val_out["labels"], K)
        arrays = final["_arrays"]
        rec = session_record(session=s.index, classes=s.classes, num_old=num_old, y_true=arrays["y_true"],
                             y_pred=arrays["y_pred"], extra=extras)
        if evaluator is not model:  # the head's figures beside NME's
            head_pred = predict(model, ctx.test_loader, precision=precision)["logits"].argmax(1).numpy()
            extras["head"] = session_metrics(arrays["y_true"], head_pred, num_old=num_old, num_classes=K)
        history = history + [rec]
        classes = [plain(c) for c in s.classes]
        save_final_model(folder.final_checkpoint, model_state=model.state_dict(),
                         classifier_chain=describe_chain(model.classifier), calibration=calib, classes=classes,
                         class_counts=ctx.data.class_counts.tolist(), num_channels=shape[0], length=shape[1],
                         config=ctx.config)
        class_names = B.class_names_for(cfg, classes)
        save_predictions(folder, final, class_counts=ctx.data.class_counts, classes=classes,
                         max_samples=int(cfg.visualization.max_samples), seed=int(cfg.seed))
        write_tables(folder, final, class_names)
        timings["evaluation"] = time.perf_counter() - t0

        block = _block(parent=str(parent.root), s_index=s.index, old=old, new=s.new, rec=rec, memory=new_memory,
                       history=history, method=plan.method, plan=plan.describe(), seen=[plain(c) for c in s.seen],
                       sessions=s.plan and [[plain(c) for c in p] for p in s.plan], stage2=bool(cfg.stage2.enabled),
                       eval_classifier=plan.eval_classifier, **extras)
        results = build_results(
            exp_name=cfg.exp_name, run_dir=folder.root, config=ctx.config, class_counts=ctx.data.class_counts,
            classes=classes, class_names=class_names, metrics=metrics, final=final, calibration=calib,
            model_info={"name": cfg.model.name, **model_complexity(model, shape[0], shape[1])},
            precision=precision.name, device=str(device), data_files=s.files.values(), timings=timings,
            mode="incremental", val_metrics={"acc": val_acc, "macc": val_macc}, stages=stages, incremental=block)
        write_results(folder, results, t_start)
        _figure(cfg, folder, history)
        if cfg.visualization.enabled:
            write_figures(folder, cfg.visualization, class_names, results, t_start)
        summ = block["summary"]
        log.info("session %d (%s): mAcc old %s  new %s  all %s; average incremental mAcc %s, forgetting %s",
                 s.index, method, format_pct(rec["old"]["macc"]), format_pct(rec["new"]["macc"]),
                 format_pct(rec["all"]["macc"]), format_pct(summ["average_incremental_macc"]),
                 format_pct(summ["forgetting"]))
        log.info("results: %s", folder.results_json)
        return float(val_macc)
    finally:
        detach_run_log(handler)
