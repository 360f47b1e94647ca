"""Use a trained model: rebuild it from a run folder and evaluate it on another test file.

``python main.py mode=eval resume=<run folder or checkpoint> data.path_test=<file>``

The final model of a run (``checkpoints/final.pt``, written after stage 2 and stage 3) is rebuilt
exactly as it was trained: the network from the run's own resolved config (``model.*``), its head
(``model.head``), the stage-2 LWS wrapper (Kang et al. 2020) when ``stage2.mode=lws``, the
stage-3 / post-hoc logit adjustment ``z - tau * log(pi)`` (Menon et al. 2021) when the run applied
it (tau-norm is already in the weights), then ``load_state_dict(strict=True)``.

The test file is read with the SOURCE run's preprocessing (``data.target_length``,
``data.normalize``) and label mapping (its ``classes``); metrics use the source run's training
class counts, so the many/medium/few groups are the training run's.  A new results folder (this
command's Hydra run folder) gets the same files as a training run: ``results/results.json``
(``mode: "eval"``, ``source_run``, ``metrics.final``, ``per_class``, ``confusion_matrix``...),
``summary.txt``, ``per_class.csv``, ``confusion_matrix.csv``, ``predictions.npz`` and figures.

Label values of the file that the model never saw are an error listing them (with counts);
``evaluation.skip_unknown_classes=true`` (a key the schema needs; see docs/inference.md) evaluates the known ones only and records what was
dropped in results.json ``label_mapping``.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .errors import ConfigError, DataError, UserError
from .results import plain

log = logging.getLogger(__name__)

FINAL_CHECKPOINT = "final.pt"
# Data keys that change what the model sees; the source run's values are used.
PREPROCESSING_KEYS = ("target_length", "normalize")


# =============================================================================================
# Loading a trained model
# =============================================================================================
@dataclass
class TrainedModelInfo:
    """What ``load_trained_model`` read besides the weights (all from the checkpoint)."""

    checkpoint: Path
    source_run: Optional[Path]          # the run folder, when the checkpoint sits in <run>/checkpoints/
    config: DictConfig                  # the source run's resolved config (on the current schema)
    classes: List[Any]                  # original label values, index = model output
    class_counts: np.ndarray            # training class counts (groups come from them)
    num_channels: int
    length: int
    calibration: Dict[str, Any] = field(default_factory=dict)
    mask_channel: bool = False          # the last input channel is the observation mask (series data)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def find_checkpoint(run_or_checkpoint: os.PathLike | str) -> Path:
    """``checkpoints/final.pt`` of a run folder (or its ``_latest`` link, or the checkpoints
    folder itself), or a checkpoint file given directly. UserError with one line otherwise."""
    p = Path(os.path.expanduser(str(run_or_checkpoint)))
    if not p.exists():
        raise UserError(f"run folder or checkpoint not found: {p} (give experiments/<run> or a .pt file)")
    if p.is_file():
        return p.resolve()
    p = p.resolve()
    for cand in (p / "checkpoints" / FINAL_CHECKPOINT, p / FINAL_CHECKPOINT):
        if cand.is_file():
            return cand
    if p.name == "results" and (p.parent / "checkpoints" / FINAL_CHECKPOINT).is_file():
        return p.parent / "checkpoints" / FINAL_CHECKPOINT
    ck = p / "checkpoints"
    if ck.is_dir() or (p / "logs").is_dir() or (p / "results").is_dir():
        found = sorted(f.name for f in ck.glob("*.pt")) if ck.is_dir() else []
        raise UserError(
            f"{p} has no checkpoints/{FINAL_CHECKPOINT}: the run did not finish "
            f"(checkpoints found: {', '.join(found) if found else 'none'}); evaluate a finished run")
    raise UserError(f"{p} is not a run folder (no checkpoints/{FINAL_CHECKPOINT}); "
                    "give experiments/<exp_name>_<timestamp> or a checkpoint file")


def _read_checkpoint(path: Path) -> Dict[str, Any]:
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes); the run was interrupted while saving it")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, unsafe pickle ...
        raise UserError(f"cannot read checkpoint {path}: it is truncated or not a checkpoint of this framework "
                        f"({type(err).__name__}: {_one_line(err)[:200]})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} is not a final model checkpoint (it holds a {type(ckpt).__name__})")
    need = ("model", "config", "classes", "class_counts", "num_channels", "length")
    missing = [k for k in need if k not in ckpt]
    if missing:
        kind = " (a stage checkpoint: evaluate the run's checkpoints/final.pt)" if "optimizer" in ckpt else ""
        raise UserError(f"{path} is not a final model checkpoint{kind}: it lacks {', '.join(missing)}")
    return ckpt


def _source_config(raw: Dict[str, Any], path: Path) -> DictConfig:
    """The checkpoint's config on the current schema (``config.with_schema``): keys the schema
    does not know are an error naming them; keys it lacks (an older run) take the defaults."""
    from .config import with_schema

    try:
        return with_schema(dict(raw))
    except UserError as err:
        raise UserError(f"the config saved in {path} does not fit this version of the framework: "
                        f"{_one_line(err)}") from None


def _state_dict_diff(model: nn.Module, state: Dict[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []

    def show(items: List[str]) -> str:
        return ", ".join(items[:4]) + (f" ... ({len(items)} in all)" if len(items) > 4 else "")

    if missing:
        parts.append(f"missing from the checkpoint: {show(missing)}")
    if unexpected:
        parts.append(f"not in the model: {show(unexpected)}")
    if shapes:
        parts.append(f"shape (checkpoint vs model): {show(shapes)}")
    return "; ".join(parts)


def _build(cfg: DictConfig, info: TrainedModelInfo, n_devices: int,
           chain: Optional[List[Dict[str, Any]]] = None) -> nn.Module:
    """The network from the source config, its classifier as ``final.pt`` recorded it (head and
    stage-2/3 wrappers, :func:`imbalance.classifier_chain.build_chain`); no pipeline replay. A
    checkpoint written before the chain was recorded rebuilds it from its config and calibration."""
    from .builders import DataBundle, build_model, stage2_head
    from .classifier_chain import (LogitAdjustedOutput, LWSClassifier, TemperatureScaledOutput, build_chain,
                                   tau_normalize)
    from .models import swap_classifier

    data = DataBundle(train=None, val=None, test=None, classes=list(info.classes),
                      class_counts=np.asarray(info.class_counts, dtype=np.int64),
                      num_channels=info.num_channels, length=info.length, mask_channel=info.mask_channel)
    model = build_model(cfg, data, torch.device("cpu"), n_devices=n_devices)
    if chain:
        model.classifier = build_chain(chain, in_features=model.feature_dim, num_classes=info.num_classes,
                                       class_counts=info.class_counts.tolist())
        return model
    new_head = stage2_head(cfg) if cfg.stage2.enabled else None  # older checkpoints: no recorded chain
    if new_head is not None:
        swap_classifier(model, new_head, class_counts=data.class_counts.tolist())
    if cfg.stage2.enabled and cfg.stage2.mode == "lws":
        model.classifier = LWSClassifier(model.classifier, info.num_classes)
    calib = info.calibration
    if calib.get("tau_norm") is not None:
        model.classifier = tau_normalize(model.classifier, float(calib["tau_norm"]))
    if calib.get("logit_tau") is not None:
        model.classifier = LogitAdjustedOutput(model.classifier, info.class_counts.tolist(), float(calib["logit_tau"]))
    if calib.get("temperature") is not None:
        model.classifier = TemperatureScaledOutput(model.classifier, float(calib["temperature"]))
    return model


def load_trained_model(run_or_checkpoint: os.PathLike | str,
                       device: str | torch.device = "cpu") -> Tuple[nn.Module, TrainedModelInfo]:
    """The final model of a run (eval mode, on ``device``) and what it was trained with.

    ``run_or_checkpoint``: a run folder (``checkpoints/final.pt`` inside), its ``_latest`` link,
    or a checkpoint file. The network is rebuilt from the run's resolved config as the
    pipeline built it, wrapped as stage 2 (LWS) and stage 3 (logit adjustment) left it, and
    loaded with ``strict=True``. Missing/truncated checkpoint, foreign config keys or a state
    dict that does not fit the model raise :class:`UserError` with one line.
    """
    path = find_checkpoint(run_or_checkpoint)
    ckpt = _read_checkpoint(path)
    cfg = _source_config(ckpt["config"], path)
    info = TrainedModelInfo(
        checkpoint=path,
        source_run=path.parent.parent if path.parent.name == "checkpoints" else None,
        config=cfg, classes=list(ckpt["classes"]),
        class_counts=np.asarray(ckpt["class_counts"], dtype=np.int64),
        num_channels=int(ckpt["num_channels"]), length=int(ckpt["length"]),
        calibration=dict(ckpt.get("calibration") or {}), mask_channel=bool(ckpt.get("mask_channel", False)),
    )
    from .compilation import strip_compile_prefix

    state = strip_compile_prefix(ckpt["model"])  # weights saved from a compiled module load without compile
    # norm_kind=auto depends on the per-device batch, so on how many GPUs the run used
    # (DataParallel): try one device first, then the run's GPU list.
    candidates = [int(ckpt["n_devices"])] if "n_devices" in ckpt else [1]
    if "n_devices" not in ckpt:
        try:
            n_gpus = len([g for g in str(cfg.gpus).replace(" ", "").split(",") if g])
        except Exception:  # pragma: no cover - odd values were rejected at training time
            n_gpus = 1
        if n_gpus > 1:
            candidates.append(n_gpus)
    diff = ""
    for n_dev in candidates:
        try:
            model = _build(cfg, info, n_dev, ckpt.get("classifier_chain"))
        except UserError as err:
            raise UserError(f"cannot rebuild the model of {path} from its config: {err}") from None
        diff = _state_dict_diff(model, state)
        if not diff:
            break
    if diff:
        raise UserError(f"checkpoint {path} does not fit the model its config describes "
                        f"(model.name={cfg.model.name}, head={cfg.model.head}): {diff}")
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(torch.device(device)), info


# =============================================================================================
# mode=eval
# =============================================================================================
def _overrides(task: Optional[List[str]]) -> Optional[List[str]]:
    """The keys given on the command line (Hydra), or None outside a Hydra app."""
    if task is None:
        return None
    return [o.split("=", 1)[0].lstrip("+~") for o in task]


def _default_config() -> Optional[DictConfig]:
    """config.yaml over the schema: what a command that names no key runs with."""
    from .config import PROJECT_ROOT, with_schema

    path = Path(PROJECT_ROOT) / "config.yaml"
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        raw.pop("defaults", None)
        raw.pop("hydra", None)
        return with_schema(raw)
    except Exception:  # pragma: no cover - no/odd config.yaml: fall back to comparing with the source
        return None


def user_set(cfg: DictConfig, key: str, source_value: Any, overrides: Optional[List[str]]) -> bool:
    """Whether the current command chose ``key`` itself: named on Hydra's command line, or
    (composed in-process, where the command line is unknown) a value different from
    config.yaml's default (else from the source run's value)."""
    if overrides is not None:
        return key in overrides
    default = _default_config()
    ref = OmegaConf.select(default, key) if default is not None else source_value
    return OmegaConf.select(cfg, key) != ref


@dataclass
class LabelReport:
    """How the file's labels met the model's classes (results.json ``label_mapping``)."""

    file_classes: List[Any]
    unknown: Dict[str, int]             # label value -> samples, for values the model never saw
    absent: List[Any]                   # model classes with no sample in the file
    skipped: int = 0

    def as_dict(self) -> Dict[str, Any]:
        return {"file_classes": self.file_classes, "unknown_classes": self.unknown,
                "absent_classes": self.absent, "skipped_samples": self.skipped}


def map_to_model_classes(ds: Any, classes: Sequence[Any], *, skip_unknown: bool,
                         where: str) -> Tuple[Any, LabelReport]:
    """Re-map a data set read with its own label values onto the model's ``classes``.

    Label values the model never saw raise DataError listing them with their counts, or with
    ``skip_unknown`` are dropped (reported). Returns the re-mapped data set and the report."""
    from .signal_io import clean_labels

    model_cls = clean_labels(np.asarray(list(classes)), "classes")
    file_cls = np.asarray(ds.classes)
    counts = np.bincount(ds.labels, minlength=len(file_cls))
    try:
        known = np.isin(file_cls, model_cls)
    except TypeError:  # strings vs numbers
        known = np.zeros(len(file_cls), dtype=bool)
    if file_cls.dtype.kind != model_cls.dtype.kind and not (
            file_cls.dtype.kind in "iuf" and model_cls.dtype.kind in "iuf"):
        known[:] = False
    unknown = {str(plain(c)): int(n) for c, n, k in zip(file_cls.tolist(), counts.tolist(), known) if not k}
    absent = [plain(c) for c in model_cls.tolist() if c not in set(file_cls.tolist())]
    report = LabelReport(file_classes=[plain(c) for c in file_cls.tolist()], unknown=unknown, absent=absent)
    if unknown:
        shown = ", ".join(f"{k} ({v} samples)" for k, v in list(unknown.items())[:10])
        if not skip_unknown:
            raise DataError(
                f"{where}: label value(s) {shown} are not among the model's classes "
                f"{', '.join(str(plain(c)) for c in model_cls.tolist())}; the model never saw them. "
                "Pass evaluation.skip_unknown_classes=true to evaluate the known classes only")
        log.warning("%s: label value(s) %s are not among the model's classes; they are left out "
                    "(evaluation.skip_unknown_classes=true)", where, shown)
    keep_rows = np.flatnonzero(known[ds.labels])
    if len(keep_rows) == 0:
        raise DataError(f"{where}: no sample has a label the model knows "
                        f"({', '.join(str(plain(c)) for c in model_cls.tolist())})")
    if len(keep_rows) < len(ds):
        report.skipped = int(len(ds) - len(keep_rows))
        ds = ds.subset(keep_rows)
    remap = np.full(len(file_cls), -1, dtype=np.int64)
    position = {c: i for i, c in enumerate(model_cls.tolist())}  # the model's order (incremental: not sorted)
    remap[known] = [position[c] for c in file_cls[known].tolist()]
    ds._set_labels(remap[ds.labels], model_cls)
    if absent:
        log.info("%s: %d of the model's classes have no sample in this file (%s); their recall is undefined",
                 where, len(absent), ", ".join(map(str, absent[:10])))
    return ds, report


def _check_shape(ds: Any, info: TrainedModelInfo, where: str, hint: str) -> None:
    if ds.num_channels != info.num_channels or ds.length != info.length:
        fix = "" if ds.num_channels != info.num_channels else f"; {hint}"
        raise DataError(
            f"{where}: signals are {ds.num_channels} channels x {ds.length} samples but the model was trained on "
            f"{info.num_channels} channels x {info.length} samples{fix}")


def _load_eval_data(cfg: DictConfig, info: TrainedModelInfo, overrides: Optional[List[str]]):
    """The test data set (labels mapped onto the model's classes), its files and the report."""
    from . import data as D
    from .runtime import resolve_path

    src = info.config.data
    cur = cfg.data
    for key in PREPROCESSING_KEYS:
        if key == "target_length":
            continue
        if user_set(cfg, f"data.{key}", src[key], overrides) and cur[key] != src[key]:
            log.warning("data.%s=%s differs from the source run's %s; using the source run's value "
                        "(the model was trained with it)", key, cur[key], src[key])
    target_length = src.target_length
    if user_set(cfg, "data.target_length", src.target_length, overrides) and cur.target_length != src.target_length:
        if src.target_length is None and cur.target_length is not None and int(cur.target_length) == info.length:
            target_length = int(cur.target_length)  # the user allows crop/pad to the trained length
            log.info("data.target_length=%d: test signals are cropped/padded to the trained length", target_length)
        else:
            raise ConfigError(
                f"data.target_length={cur.target_length} would change what the model sees: it was trained on "
                f"{info.length} samples (source data.target_length={src.target_length}); "
                f"use data.target_length={info.length} or leave it out")
    skip = bool(cfg.evaluation.get("skip_unknown_classes", False))
    hint = f"pass data.target_length={info.length} to crop/pad the test signals to the trained length"
    path_test = resolve_path(cur.path_test)
    if path_test is None:
        path_test = resolve_path(src.path_test) if src.path_train is not None else None
        if path_test is not None:
            log.info("data.path_test not given: evaluating on the source run's test file %s", path_test)
    if path_test is not None:
        data_key = cur.data_key if cur.data_key is not None else src.data_key
        label_key = cur.label_key if cur.label_key is not None else src.label_key
        ds = D.ADSBSignalDataset(path_test, target_length=target_length, normalize=bool(src.normalize),
                                 in_memory=bool(cur.in_memory), data_key=data_key, label_key=label_key)
        _check_shape(ds, info, path_test, hint)
        ds, report = map_to_model_classes(ds, info.classes, skip_unknown=skip, where=path_test)
        return ds, {"path_test": path_test}, report
    if src.path_train is not None:
        raise ConfigError("mode=eval needs data.path_test=<file> (the source run's test file is unknown)")
    # built-in data: regenerate the source run's test split (same emitters); snr_db and
    # test_per_class may be changed on the command line (e.g. another SNR).
    from .synthetic import builtin_dataset

    s = OmegaConf.to_container(src.synthetic, resolve=True)
    for key in ("snr_db", "test_per_class"):
        if user_set(cfg, f"data.synthetic.{key}", s[key], overrides):
            s[key] = OmegaConf.to_container(cur.synthetic, resolve=True)[key]
            log.info("built-in test data with data.synthetic.%s=%s", key, s[key])
    extra = {} if s["difficulty"] is None else {"difficulty": float(s["difficulty"])}
    sets = builtin_dataset(num_classes=int(s["num_classes"]), train_per_class=1, val_per_class=0,
                           test_per_class=int(s["test_per_class"]), length=int(s["length"]),
                           sample_rate=float(s["sample_rate"]), snr_db=tuple(s["snr_db"]), seed=int(s["seed"]),
                           **extra)
    ds = D.ArraySignalDataset(*sets["test"], target_length=target_length, normalize=bool(src.normalize))
    _check_shape(ds, info, "built-in test data", hint)
    if s.get("sessions"):  # class-incremental: the classes learned so far
        skip = True
    ds, report = map_to_model_classes(ds, info.classes, skip_unknown=skip, where="built-in test data")
    log.info("data: built-in synthetic test split (%d bursts, snr_db %s)", len(ds), s["snr_db"])
    return ds, {}, report


def run_eval(cfg: DictConfig, run_dir: os.PathLike) -> float:
    """``mode=eval``: evaluate the final model of ``cfg.resume`` on ``data.path_test`` and write
    a results folder at ``run_dir`` like a training run's; return the test mAcc."""
    from .builders import build_analyzer, class_names_for
    from .evaluation import evaluate_model, public, save_predictions, write_figures, write_tables
    from .loader import BatchLoader
    from .models import model_complexity
    from .precision import make_precision
    from .results import build_results, format_pct, write_results
    from .run_folder import RunFolder, update_latest_link
    from .runtime import attach_run_log, cli_overrides, detach_run_log, resolve_path, seed_everything, \
        select_device

    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    overrides = _overrides(cli_overrides())
    source = resolve_path(cfg.resume)
    folder = RunFolder(Path(run_dir).resolve())
    # read the model before creating anything, so a bad resume= leaves no empty folder behind
    device, _ = select_device(cfg.device, cfg.gpus)
    model, info = load_trained_model(source, device=device)
    src_cfg = info.config
    folder.root.mkdir(parents=True, exist_ok=True)
    handler = attach_run_log(folder.root)
    try:
        update_latest_link(folder.root, cfg.exp_name)
        log.info("evaluation folder: %s", folder.root)
        log.info("model: %s (source run %s)", info.checkpoint, info.source_run or "-")
        seed_everything(int(src_cfg.seed))
        if user_set(cfg, "evaluation.classifier", src_cfg.evaluation.classifier, overrides) and \
                cfg.evaluation.classifier != src_cfg.evaluation.classifier:
            log.warning("evaluation.classifier=%s is not used by mode=eval: the classifier is the one final.pt "
                        "recorded (%s); NCM/kNN are fitted on the training features when a run trains",
                        cfg.evaluation.classifier, src_cfg.evaluation.classifier)
        amp, amp_dtype = (cfg.amp, cfg.amp_dtype) if user_set(cfg, "amp", src_cfg.amp, overrides) else (
            src_cfg.amp, src_cfg.amp_dtype)
        precision = make_precision(device, bool(amp), amp_dtype)
        log.info("device: %s, %d CPU threads, precision %s", device, torch.get_num_threads(), precision.name)

        t0 = time.perf_counter()
        test, files, report = _load_eval_data(cfg, info, overrides)
        timings["data"] = time.perf_counter() - t0

        # Results config: the source run's (it describes the model), with this command's test file,
        # mode and figures; the full config of this command is kept as eval_config.
        res_cfg = OmegaConf.create(OmegaConf.to_container(src_cfg, resolve=True))
        res_cfg.mode = "eval"
        res_cfg.resume = str(info.checkpoint)
        res_cfg.data.path_test = files.get("path_test")
        res_cfg.visualization = OmegaConf.create(OmegaConf.to_container(cfg.visualization, resolve=True))
        if res_cfg.visualization.class_names is None:
            res_cfg.visualization.class_names = src_cfg.visualization.class_names
        class_names = class_names_for(res_cfg, info.classes)
        bs = int(cfg.evaluation.batch_size) if user_set(cfg, "evaluation.batch_size", src_cfg.evaluation.batch_size,
                                                         overrides) else int(src_cfg.evaluation.batch_size)
        loader = BatchLoader(test, bs, device=device, pin_memory=bool(cfg.data.pin_memory))
        if str(cfg.compile).lower() == "true":
            log.info("compile=true: mode=eval runs eagerly (one pass over the test set, with features; a compile "
                     "would not pay back)")

        t0 = time.perf_counter()
        final = evaluate_model(model, loader, build_analyzer(res_cfg, info.class_counts.tolist()), precision=precision,
                               features=True)
        save_predictions(folder, final, class_counts=np.asarray(info.class_counts), classes=list(info.classes),
                         max_samples=int(res_cfg.visualization.max_samples), seed=int(res_cfg.seed))
        write_tables(folder, final, class_names)
        timings["evaluation"] = time.perf_counter() - t0
        results = build_results(
            exp_name=cfg.exp_name, run_dir=folder.root, config=OmegaConf.to_container(res_cfg, resolve=True),
            class_counts=info.class_counts, classes=info.classes, class_names=class_names,
            metrics={"final": public(final)}, final=final, calibration=info.calibration,
            model_info={"name": src_cfg.model.name, **model_complexity(model, info.num_channels, info.length)},
            precision=precision.name, device=str(device), data_files=files.values(), timings=timings,
            mode="eval", source_run=str(info.source_run) if info.source_run else None,
            source_checkpoint=str(info.checkpoint), eval_config=OmegaConf.to_container(cfg, resolve=True),
            label_mapping=report.as_dict(), num_test_samples=len(test))
        write_results(folder, results, t_start)
        if res_cfg.visualization.enabled:
            write_figures(folder, res_cfg.visualization, class_names, results, t_start)

        f = results["metrics"]["final"]["overall"]
        log.info("eval test (%d samples): OA %s  mAcc %s  many %s  medium %s  few %s  HM %s", len(test),
                 format_pct(f["oa"]), format_pct(f["macc"]), format_pct(f.get("many_acc")),
                 format_pct(f.get("medium_acc")), format_pct(f.get("few_acc")), format_pct(f.get("hm")))
        log.info("results: %s", folder.results_json)
        return float(f["macc"]) if f.get("macc") is not None else float("nan")
    finally:
        detach_run_log(handler)
