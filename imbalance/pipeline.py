"""One run: data -> model -> stage 1 -> stage 2 -> stage 3 -> evaluation -> results + figures.

``run(cfg)`` is what ``main.py`` calls with Hydra's composed config. Config is read here, at
the edge, by the ``build_*`` functions, which call the plain-Python constructors of the
components (datasets, samplers, losses, models, optimizers).

Scaling and survival (docs/scaling.md): ``gpus: "0,1"`` wraps the model in DataParallel;
``torchrun --nproc_per_node=N main.py`` runs DistributedDataParallel (:mod:`imbalance.distributed`);
``resume=auto|<run folder>|<checkpoint>`` continues an interrupted run in its own folder
(:mod:`imbalance.checkpoint`); Ctrl-C stops after the last completed epoch's checkpoint and says
how to resume.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import calibration as cal
from . import distributed as D
from .config import parse_tau, parse_temperature, validate, with_schema
from .engine import (EarlyStopping, MetricsWriter, StageResult, atomic_save, fit, predict, unwrap,
                     accuracy_and_macc, set_rng_state)
from .errors import ConfigError, DataError, UserError
from .loader import BatchLoader, TensorPairDataset
from .optim import EpochSchedule, create_optimizer
from .precision import Precision, make_precision
from .recipe import LOSS_KEYMAP
from . import recipe
from .results import data_file_hashes, git_commit, summary_text, versions, write_json
from .stage2 import make_stage2_plan

log = logging.getLogger(__name__)

# =============================================================================================
# Setup
# =============================================================================================
def resolve_run_dir(run_dir: Optional[os.PathLike] = None) -> Path:
    if run_dir is not None:
        return Path(run_dir).resolve()
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1e6) % 1_000_000:06d}"
    return Path("experiments", f"run_{stamp}").resolve()


def original_cwd() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        from hydra.utils import get_original_cwd

        return Path(get_original_cwd())
    return Path.cwd()


def resolve_path(path: Optional[str]) -> Optional[str]:
    """A data path relative to the directory the user started in."""
    if path is None or str(path).strip() == "":
        return None
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute():
        p = original_cwd() / p
    return str(p)


_HANDLER_TAG = "_imbalance_handler"


def setup_logging(run_dir: Path, *, main_process: bool = True) -> None:
    """Console (INFO, short) and logs/training.log (INFO, timestamped, appended to) on the root
    logger. Other ranks of a distributed run (``main_process=False``) log warnings and errors to
    the console only, prefixed with their rank."""
    root = logging.getLogger()
    for h in list(root.handlers):
        # ours from an earlier run in this process, and Hydra's plain console handler
        if getattr(h, _HANDLER_TAG, False) or type(h) is logging.StreamHandler:
            root.removeHandler(h)
            if getattr(h, _HANDLER_TAG, False):
                h.close()
    if not main_process:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter(f"[rank {D.current().rank}] %(levelname)s: %(message)s"))
        console.setLevel(logging.WARNING)
        setattr(console, _HANDLER_TAG, True)
        root.addHandler(console)
        root.setLevel(logging.WARNING)
        return
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    fileh = logging.FileHandler(run_dir / "logs" / "training.log", encoding="utf-8")
    fileh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in (console, fileh):
        setattr(h, _HANDLER_TAG, True)
        h.setLevel(logging.INFO)
        root.addHandler(h)
    root.setLevel(logging.INFO)
    for noisy in ("matplotlib", "PIL", "h5py", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def parse_gpus(gpus: Any) -> List[int]:
    """``"0,1,2,3"`` -> [0, 1, 2, 3] (also an int or a list); a ConfigError otherwise."""
    if isinstance(gpus, (list, tuple)):
        items = [str(g) for g in gpus]
    else:
        items = str(gpus).replace(" ", "").split(",")
    try:
        ids = [int(g) for g in items if g != ""]
    except ValueError:
        raise ConfigError(f"gpus={gpus!r} is not valid; use a comma-separated list such as \"0,1\"") from None
    if any(g < 0 for g in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"gpus={gpus!r} is not valid; list distinct GPU ids >= 0, such as \"0,1\"")
    return ids


def select_device(name: str, gpus: str, dist_env: Optional[D.DistEnv] = None) -> Tuple[torch.device, List[int]]:
    """``auto`` picks CUDA when available; ``gpus`` lists the GPU ids used for DataParallel.

    GPUs listed but not visible are dropped with a warning (SEED's template says "0,1,2,3"; a
    machine with one GPU runs on it, without DataParallel); on the CPU ``gpus`` is ignored (said
    once when it lists several). Under torchrun each rank uses GPU ``LOCAL_RANK`` and ``gpus`` is
    ignored: one process per GPU.
    """
    name = str(name).strip().lower()
    ids = parse_gpus(gpus)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device=%s requested but CUDA is not available; using the CPU", name)
        name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not valid; use auto, cpu, cuda or cuda:N") from None
    env = dist_env or D.current()
    if env.enabled:
        dev = D.device_for(env)
        if device.type == "cuda" and dev is not None:
            if len(ids) > 1 and env.is_main:
                log.info("torchrun: one process per GPU (rank r uses cuda:LOCAL_RANK); gpus=%s is not used", gpus)
            return dev, [dev.index]
        return torch.device("cpu"), []
    if device.type != "cuda":
        if len(ids) > 1:
            log.warning("gpus=%s is ignored: training runs on the CPU (no DataParallel)", gpus)
        return device, []
    n = torch.cuda.device_count()
    bad = [g for g in ids if g >= n]
    if bad:
        ids = [g for g in ids if g < n]
        log.warning("gpus=%s names GPU %s, but only %d GPU(s) are visible; using %s", gpus, bad, n,
                    ids if ids else [device.index or 0])
    if device.index is not None and ids and device.index not in ids:
        ids = [device.index]
    if ids and device.index is None:
        device = torch.device("cuda", ids[0])
    return device, ids


def set_threads(num_threads: int, num_workers: int, processes_per_node: int = 1) -> int:
    """Intra-op threads = cores, shared by the processes of a node under torchrun. Batches are
    gathered in the main process (no DataLoader workers), so ``data.num_workers`` takes no core."""
    if num_workers > 0:
        log.info("data.num_workers=%d is not needed: batches are gathered by index in the main process",
                 num_workers)
    if num_threads <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        num_threads = max(1, cores // max(1, int(processes_per_node)))
    torch.set_num_threads(num_threads)
    return num_threads


def tune_allocator() -> None:
    """Keep big freed tensors in the heap instead of unmapping them (glibc): otherwise every
    tensor over the mmap threshold is page-faulted in again each step, which on the CPU cost up
    to a third of a step in system time (bench/bench_hotspots.py). The process keeps memory up
    to its peak, as PyTorch's CUDA caching allocator does."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def update_latest_link(run_dir: Path, exp_name: str) -> None:
    """``<parent>/<exp_name>_latest`` -> run_dir (replaced atomically)."""
    link = run_dir.parent / f"{exp_name}_latest"
    tmp = run_dir.parent / f".{exp_name}_latest.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
    except OSError as err:  # e.g. a file system without symlinks
        log.warning("could not update %s: %s", link, err)


def check_names(cfg: DictConfig) -> None:
    """Fail fast, before any data is read, on a component name that is not registered."""
    from .losses import LOSSES
    from .models import HEADS, MODELS
    from .optim import OPTIMIZERS
    from .samplers import SAMPLERS
    from .stage2 import STAGE2_MODES

    checks = [(MODELS, cfg.model.name), (LOSSES, cfg.loss.name),
              (SAMPLERS, cfg.sampling.name), (OPTIMIZERS, cfg.training.optimizer)]
    if cfg.model.head != "auto":
        checks.append((HEADS, cfg.model.head))
    if cfg.stage2.enabled:
        checks += [(LOSSES, cfg.stage2.loss), (SAMPLERS, cfg.stage2.sampler), (OPTIMIZERS, cfg.stage2.optimizer),
                   (STAGE2_MODES, cfg.stage2.mode)]
    for registry, name in checks:
        registry.canonical(name)
    recipe.resolve_head(cfg.model.head, cfg.loss.name)  # LDAM with a non-normalised head is refused
    if cfg.stage2.enabled:
        stage2_head(cfg)


# =============================================================================================
# Data
# =============================================================================================
@dataclass
class DataBundle:
    train: Any
    val: Any
    test: Any
    classes: List[Any]
    class_counts: np.ndarray
    num_channels: int
    length: int
    files: Dict[str, str] = field(default_factory=dict)
    train_pool: Any = None  # the training data before the long-tailed subset (for reference)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def build_data(cfg: DictConfig) -> DataBundle:
    from . import data as D

    dcfg = cfg.data
    paths = {k: resolve_path(dcfg[k]) for k in ("path_train", "path_val", "path_test")}
    common = dict(target_length=dcfg.target_length, normalize=bool(dcfg.normalize))
    if paths["path_train"] is None:
        if paths["path_val"] or paths["path_test"]:
            raise ConfigError("data.path_val / data.path_test need data.path_train (null means the built-in data)")
        from .synthetic import builtin_dataset

        s = dcfg.synthetic
        extra = {} if s.difficulty is None else {"difficulty": float(s.difficulty)}
        sets = builtin_dataset(
            num_classes=int(s.num_classes), train_per_class=int(s.train_per_class), val_per_class=0,
            test_per_class=int(s.test_per_class), length=int(s.length), sample_rate=float(s.sample_rate),
            snr_db=tuple(s.snr_db), seed=int(s.seed), **extra,
        )
        full = D.ArraySignalDataset(*sets["train"], **common)
        test = D.ArraySignalDataset(*sets["test"], classes=full.classes, **common)
        val = None
        log.info("data: built-in synthetic ADS-B emitters: %d classes, %d training-pool and %d test bursts "
                 "of %d samples", full.num_classes, len(full), len(test), full.length)
    else:
        kw = dict(common, in_memory=bool(dcfg.in_memory), data_key=dcfg.data_key, label_key=dcfg.label_key)
        full = D.ADSBSignalDataset(paths["path_train"], **kw)
        val = D.ADSBSignalDataset(paths["path_val"], classes=full.classes, **kw) if paths["path_val"] else None
        if paths["path_test"] is None:
            raise ConfigError("data.path_test is null; name the test file (e.g. data.path_test=data/test.mat)")
        test = D.ADSBSignalDataset(paths["path_test"], classes=full.classes, **kw)
        log.info("data: %s (%d samples, %d classes, %d channels x %d), test %s (%d samples)",
                 paths["path_train"], len(full), full.num_classes, full.num_channels, full.length,
                 paths["path_test"], len(test))
    for name, ds in (("test", test), ("validation", val)):
        if ds is not None and (ds.num_channels != full.num_channels or ds.length != full.length):
            raise DataError(
                f"{name} signals are {ds.num_channels} x {ds.length} but training signals are "
                f"{full.num_channels} x {full.length}; set data.target_length to make the lengths agree"
            )

    seed = int(cfg.seed)
    pool = full
    if val is None:
        rest_idx, val_idx = D.stratified_split(full.labels, float(dcfg.val_ratio), seed=seed)
        val = full.subset(val_idx)
        pool = full.subset(rest_idx)
    train = pool
    if cfg.create_imbalance:
        lt = D.make_long_tailed_indices(pool.labels, full.num_classes, float(dcfg.imbalance_ratio), seed=seed)
        train = pool.subset(lt)
    counts = np.bincount(np.asarray(train.labels), minlength=full.num_classes).astype(np.int64)
    log.info("data: train %d (class counts %s), val %d, test %d", len(train), counts.tolist(), len(val), len(test))
    return DataBundle(train=train, val=val, test=test, classes=list(full.classes), class_counts=counts,
                      num_channels=int(full.num_channels), length=int(full.length),
                      files={k: v for k, v in paths.items() if v}, train_pool=pool)


def build_augmentation(cfg: DictConfig) -> Any:
    from .data import build_augmentation as build

    spec = OmegaConf.to_container(cfg.data.augment, resolve=True) or {}
    return build(spec)


# =============================================================================================
# Components
# =============================================================================================
def build_model(cfg: DictConfig, data: DataBundle, device: torch.device, n_devices: int = 1) -> nn.Module:
    from .models import create_model, init_model_for_imbalanced, swap_classifier

    m = cfg.model
    per_device_batch = max(1, int(cfg.data.batch_size) // max(1, n_devices))
    params = OmegaConf.to_container(m.params, resolve=True) or {}
    model = create_model(
        m.name, num_classes=data.num_classes, in_channels=data.num_channels, dropout_rate=float(m.dropout),
        use_attention=bool(m.use_attention), norm_kind=m.norm_kind, width=m.width, depth=m.depth,
        per_device_batch=per_device_batch, **params,
    )
    if data.length < getattr(model, "min_length", 1):
        raise DataError(f"signal length {data.length} is shorter than {m.name}'s minimum of {model.min_length}")
    head = recipe.resolve_head(m.head, cfg.loss.name)
    if head != "linear":
        head_params = OmegaConf.to_container(m.head_params, resolve=True) or {}
        swap_classifier(model, head, class_counts=data.class_counts.tolist(), **head_params)
    if m.init != "default" or m.log_prior_bias:
        init_model_for_imbalanced(model, data.class_counts.tolist(), init_type=m.init,
                                  use_log_prior_bias=bool(m.log_prior_bias), temperature=float(m.init_temperature))
    return model.to(device)


def stage2_head(cfg: DictConfig) -> Optional[str]:
    """The head stage 2 swaps in, or None: with ``model.head=auto`` and an LDAM stage-2 loss, cRT
    re-initialises the classifier as the normalised head LDAM needs. Fine-tuning and LWS keep the
    trained head, so they need a normalised one already (else a ConfigError)."""
    s2 = cfg.stage2
    if recipe.resolve_head("auto", s2.loss) != "cosine_ldam":
        return None
    stage1_head = recipe.resolve_head(cfg.model.head, cfg.loss.name)
    if stage1_head in recipe.NORMED_HEADS:
        return None
    if cfg.model.head == "auto" and s2.mode == "crt" and bool(s2.reinit_classifier):
        return "cosine_ldam"
    raise ConfigError(f"stage2.loss={s2.loss} needs a normalised (cosine) head, but stage 2 ({s2.mode}) keeps the "
                      f"stage-1 head ({stage1_head}); use stage2.mode=crt with model.head=auto, or "
                      "model.head=cosine_ldam")


def loss_kwargs(section: Any, *, fallback: Any = None, label_smoothing: float = 0.0,
                total_epochs: int = 1) -> Dict[str, Any]:
    """Keyword arguments for ``create_loss`` from a config section (stage 2's null values fall
    back to the ``loss:`` section)."""
    out: Dict[str, Any] = {}
    for key, kw in LOSS_KEYMAP.items():
        value = section.get(key) if key in section else None
        if value is None and fallback is not None and key in fallback:
            value = fallback.get(key)
        if value is not None:
            out[kw] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    out["label_smoothing"] = float(label_smoothing)
    out["total_epochs"] = int(total_epochs)
    return out


def adapt_loss_to_head(name: str, mapped: Dict[str, Any], head: Optional[nn.Module]) -> Dict[str, Any]:
    """LDAM on a cosine head (Cao et al. 2019: ``s * (cos - m_y)``): the head already multiplies
    by s, so the loss uses scale 1 and margins ``s * m`` instead of scaling twice. An LWS wrapper
    (per-class scales on the head's logits) is looked through: the scale is still applied once."""
    from .heads import CosineMarginClassifier
    from .losses import LOSSES
    from .stage2 import LWSClassifier

    if LOSSES.canonical(name) != "LDAMLoss":
        return mapped
    base = head.head if isinstance(head, LWSClassifier) else head
    if not isinstance(base, CosineMarginClassifier):
        raise ConfigError(f"LDAMLoss needs the normalised (cosine) head of the official code, not "
                          f"{type(base).__name__}; use model.head=auto or model.head=cosine_ldam")
    s = float(base.scale)
    out = dict(mapped)
    out["max_margin"] = s * float(mapped.get("max_margin", 0.5))
    out["scale"] = 1.0
    log.info("LDAMLoss on the cosine head: loss = CE(%g * (cos - m_y)), margins up to %g", s,
             float(mapped.get("max_margin", 0.5)))
    return out


def build_loss(name: str, class_counts: Sequence[int], mapped: Dict[str, Any],
               explicit: Optional[Dict[str, Any]] = None, head: Optional[nn.Module] = None, *,
               sampler: Any = None, epochs: int = 1, smoothing_key: str = "training.label_smoothing",
               prior_key: str = "loss.prior") -> nn.Module:
    """``create_loss`` with the mapped config keys the loss accepts, plus ``explicit`` extras
    (``loss.params``), which must all be accepted. ``head``: the model's classifier, for losses
    whose form depends on it (LDAM on a cosine head). ``sampler``: the stage's sampler, whose
    per-epoch class distribution is the loss's prior with ``prior=sampled``. Label smoothing on
    a loss that has none is refused (``smoothing_key`` names the key to change)."""
    from .losses import LOSSES, CombinedLoss, create_loss, loss_accepts
    from .samplers import sampling_prior

    cls = LOSSES.get(name)
    canon = LOSSES.canonical(name)
    accepted = set(inspect.signature(cls).parameters)
    mapped = adapt_loss_to_head(name, mapped, head)
    smoothing = float(mapped.get("label_smoothing", 0.0) or 0.0)
    if smoothing > 0 and not loss_accepts(canon, "label_smoothing"):
        raise ConfigError(f"{smoothing_key}={smoothing:g}: label smoothing is defined for the cross-entropy family "
                          f"only, not for {canon}; set {smoothing_key}=0")
    kwargs = {k: v for k, v in mapped.items() if k in accepted}
    for k, v in (explicit or {}).items():
        if k not in accepted:
            valid = sorted(accepted - {"class_counts", "self"})
            raise ConfigError(f"loss {name} has no parameter {k!r}; its parameters: {', '.join(valid)}")
        kwargs[k] = v
    if cls is CombinedLoss:
        wanted = CombinedLoss.shared_keywords(kwargs.get("losses"))
        kwargs["shared"] = {**{k: v for k, v in mapped.items() if k in wanted and k != "total_epochs"},
                            **(kwargs.get("shared") or {})}
    if kwargs.get("prior") == "sampled":
        table = np.stack([sampling_prior(sampler, class_counts, e) for e in range(max(1, int(epochs)))])
        kwargs["sampled_prior"] = table
        log.info("%s: prior=sampled, the class distribution the sampler draws (%s)", canon,
                 "per epoch" if sampler is not None else "no sampler: the training prior")
    return create_loss(name, class_counts=list(map(int, class_counts)), **kwargs)


def build_sampler(name: str, labels: np.ndarray, *, alpha: float, alpha_start: float, alpha_end: float,
                  total_epochs: int, seed: int, num_classes: int, shard: bool = True,
                  drs_start: Optional[int] = None, drs_beta: Optional[float] = None) -> Any:
    """The stage's sampler; under torchrun (``shard``) each rank takes its slice of one global
    draw (``num_replicas``/``rank``), which keeps the class distribution exact."""
    from .samplers import make_sampler

    env = D.current()
    replicas, rank = (env.world_size, env.rank) if (shard and env.enabled) else (1, 0)
    extra = {k: v for k, v in (("drs_start", drs_start), ("drs_beta", drs_beta)) if v is not None}
    return make_sampler(np.asarray(labels), name, alpha=float(alpha), alpha_start=float(alpha_start),
                        alpha_end=float(alpha_end), total_epochs=int(total_epochs), seed=int(seed),
                        num_classes=int(num_classes), num_replicas=replicas, rank=rank, **extra)


def make_loader(ds: Any, batch_size: int, device: torch.device, cfg: DictConfig, *, train: bool = False,
                sampler: Any = None, augment: Any = None, seed: int = 0, shard: bool = True) -> BatchLoader:
    """A batch loader over ``ds``. Under torchrun (``shard``) a training loader takes this rank's
    strided slice of the epoch with ``batch_size // world_size`` per batch (``batch_size`` is the
    global batch); an evaluation loader takes this rank's contiguous block (gathered by
    ``engine.predict``)."""
    env = D.current()
    replicas, rank = (env.world_size, env.rank) if (shard and env.enabled) else (1, 0)
    if train and replicas > 1:
        batch_size = D.per_rank_batch(batch_size, env)
    n_local = math.ceil(len(ds) / replicas) if sampler is None else len(sampler)
    drop_last = bool(cfg.data.drop_last) and train and n_local > batch_size
    return BatchLoader(ds, batch_size, shuffle=train, sampler=sampler, drop_last=drop_last, augment=augment,
                       seed=seed, device=device, pin_memory=bool(cfg.data.pin_memory), num_replicas=replicas,
                       rank=rank, even_shards=train)


def progress_enabled(setting: Any) -> bool:
    s = str(setting).lower()
    if s == "auto":
        return sys.stderr.isatty()
    return s == "true"


# =============================================================================================
# Stages
# =============================================================================================
@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    device: torch.device
    precision: Precision
    data: DataBundle
    model: nn.Module  # possibly DataParallel / DistributedDataParallel-wrapped
    metrics: Optional[MetricsWriter]  # None on ranks other than 0
    progress: bool
    val_loader: BatchLoader
    test_loader: BatchLoader
    global_epoch: int = 0
    resume: Any = None  # a checkpoint.ResumePoint when continuing a run
    kill_hook: Any = None  # test hook: on_batch_end(global_epoch, batch)

    @property
    def is_main(self) -> bool:
        return D.current().is_main

    @property
    def ckpt_out(self) -> Optional[Path]:
        """Where this process writes checkpoints (rank 0 only)."""
        return self.ckpt_dir if self.is_main else None

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def net(self) -> nn.Module:
        return unwrap(self.model)


def _resume_for(ctx: RunContext, stage: int) -> Optional[Dict[str, Any]]:
    point = ctx.resume
    return point.state if point is not None and point.stage == stage else None


def _restore_stage(ctx: RunContext, stage: int, *, holder: nn.Module, optimizer: Any, schedule: Any,
                   es: EarlyStopping) -> Tuple[int, Optional[Dict[str, torch.Tensor]]]:
    """Load a resumed stage's state; return (start epoch, best weights so far)."""
    from .checkpoint import CheckpointError, best_state_for

    state = _resume_for(ctx, stage)
    if state is None:
        return 0, None
    try:
        holder.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{ctx.resume.checkpoint} does not fit the model/optimizer of this run's config "
                              f"({str(err).splitlines()[0][:160]})") from None
    schedule.load_state_dict(state["schedule"])
    es.load_state_dict(state["early_stopping"])
    if ctx.precision.scaler is not None and state.get("scaler"):
        ctx.precision.scaler.load_state_dict(state["scaler"])
    best = best_state_for(ctx.resume, stage) if es.best is not None else None
    env = D.current()
    ranks = state.get("rng_ranks")
    if env.enabled and ranks and len(ranks) == env.world_size:
        set_rng_state(ranks[env.rank])
    else:
        set_rng_state(state["rng"])
    log.info("stage %d: resumed after epoch %d of %d", stage, int(state["epoch"]), int(state.get("epochs", 0)))
    return int(state["epoch"]), best


def _ckpt_extra(ctx: RunContext, sampler: Any, loss_fn: Any, stages: Dict[str, Any]):
    cfg_plain = OmegaConf.to_container(ctx.cfg, resolve=True)

    def extra() -> Dict[str, Any]:
        return {**_schedule_state(sampler, loss_fn), "config": cfg_plain, "previous_stages": dict(stages),
                "world_size": D.current().world_size}

    return extra


def run_stage1(ctx: RunContext) -> StageResult:
    cfg = ctx.cfg
    t = cfg.training
    data = ctx.data
    sampler = build_sampler(cfg.sampling.name, data.train.labels, alpha=cfg.sampling.alpha,
                            alpha_start=cfg.sampling.alpha_start, alpha_end=cfg.sampling.alpha_end,
                            total_epochs=int(t.epochs), seed=int(cfg.seed), num_classes=data.num_classes,
                            drs_start=cfg.sampling.drs_start, drs_beta=cfg.sampling.drs_beta)
    loss_fn = build_loss(cfg.loss.name, data.class_counts,
                         loss_kwargs(cfg.loss, label_smoothing=float(t.label_smoothing), total_epochs=int(t.epochs)),
                         OmegaConf.to_container(cfg.loss.params, resolve=True), head=ctx.net.classifier,
                         sampler=sampler, epochs=int(t.epochs))
    loss_fn = loss_fn.to(ctx.device)
    for msg in recipe.stacked_corrections(stage=1, loss=loss_fn, loss_name=cfg.loss.name, sampler=sampler,
                                          sampler_name=cfg.sampling.name, class_counts=data.class_counts,
                                          epochs=int(t.epochs)):
        log.warning("%s", msg)
    train_loader = make_loader(data.train, int(cfg.data.batch_size), ctx.device, cfg, train=True, sampler=sampler,
                               augment=build_augmentation(cfg), seed=int(cfg.seed))
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    optimizer = create_optimizer(t.optimizer, params, lr=float(t.lr), weight_decay=float(t.weight_decay),
                                 momentum=float(t.momentum))
    s = cfg.scheduler
    schedule = EpochSchedule(optimizer, s.name, epochs=int(t.epochs), warmup_epochs=int(s.warmup_epochs),
                             warmup_multiplier=float(s.warmup_multiplier), min_lr=float(s.min_lr),
                             step_size=int(s.step_size), gamma=float(s.gamma), plateau_patience=int(s.plateau_patience),
                             plateau_factor=float(s.plateau_factor), plateau_mode=cfg.early_stopping.mode,
                             restart_period=int(s.restart_period), restart_mult=int(s.restart_mult))
    min_epochs = stage_min_epochs(cfg.early_stopping.min_epochs, stage=1, epochs=int(t.epochs),
                                  warmup=int(s.warmup_epochs) if s.name != "none" else 0, loss_fn=loss_fn,
                                  sampler_name=cfg.sampling.name, sampler=sampler)
    es = EarlyStopping(monitor=cfg.early_stopping.monitor, mode=cfg.early_stopping.mode,
                       patience=int(cfg.early_stopping.patience), min_delta=float(cfg.early_stopping.min_delta),
                       enabled=bool(cfg.early_stopping.enabled), min_epochs=min_epochs)
    log.info("stage 1: %s, sampler %s, %s, lr %g, %d epochs, %d batches/epoch", cfg.loss.name, cfg.sampling.name,
             t.optimizer, float(t.lr), int(t.epochs), len(train_loader))
    start, best = _restore_stage(ctx, 1, holder=ctx.net, optimizer=optimizer, schedule=schedule, es=es)
    res = fit(ctx.model, stage=1, train_loader=train_loader, val_loader=ctx.val_loader, loss_fn=loss_fn,
              optimizer=optimizer, schedule=schedule, epochs=int(t.epochs), num_classes=data.num_classes,
              early_stopping=es, precision=ctx.precision, metrics=ctx.metrics, ckpt_dir=ctx.ckpt_out,
              checkpoint_extra=_ckpt_extra(ctx, sampler, loss_fn, {}),
              grad_clip=float(t.grad_clip or 0) or None, accumulation_steps=int(t.accumulation_steps),
              global_epoch_offset=ctx.global_epoch, console_log_interval=int(cfg.console_log_interval),
              progress_bar=ctx.progress, skip_nonfinite=bool(t.skip_nonfinite), start_epoch=start,
              best_state=best, on_batch_end=_epoch_hook(ctx, 0), val_loss_fn=plain_ce(),
              restore_best=t.checkpoint_select == "best")
    ctx.global_epoch += res.epochs_run
    if t.checkpoint_select == "last":
        log.info("stage 1: keeping the last epoch's weights (training.checkpoint_select=last)")
    return res


def plain_ce() -> nn.Module:
    """The validation loss of every stage (``monitor=val_loss``): plain cross-entropy, whatever the
    training loss (whose definition may change during training, e.g. at a DRW switch)."""
    return nn.CrossEntropyLoss()


def stage_min_epochs(setting: Any, *, stage: int, epochs: int, warmup: int, loss_fn: Any,
                     sampler_name: str, sampler: Any = None) -> int:
    """The epoch after which early-stopping patience counts: ``setting`` when given, else the
    last scheduled switch of the stage (the warm-up end, LDAM's DRW start, the DRS start, the end
    of a progressive sampler or loss schedule)."""
    if setting is not None:
        return int(setting)
    switches = {"warm-up": warmup}
    drw = getattr(loss_fn, "drw_start", None)
    if drw is not None:
        switches["DRW start"] = int(drw)
    drs = getattr(sampler, "drs_start", None)
    if drs is not None:
        switches["DRS start"] = int(drs)
    if str(sampler_name).startswith("progressive"):
        switches[f"end of the {sampler_name} schedule"] = epochs - 1
    if hasattr(loss_fn, "power_at"):  # ProgressiveLoss
        switches["end of the ProgressiveLoss schedule"] = epochs - 1
    why, value = max(switches.items(), key=lambda kv: kv[1])
    if value > 0:
        log.info("stage %d: early-stopping patience counts after epoch %d (%s)", stage, value, why)
    return max(0, value)


def _epoch_hook(ctx: RunContext, offset: int):
    if ctx.kill_hook is None:
        return None
    return lambda epoch, batch: ctx.kill_hook(offset + epoch, batch)


def _schedule_state(sampler: Any, loss_fn: Any) -> Dict[str, Any]:
    return {"sampler_epoch": getattr(sampler, "epoch", None), "loss_epoch": getattr(loss_fn, "epoch", None)}


def stage2_loss(cfg: DictConfig, class_counts: np.ndarray, head: Optional[nn.Module] = None,
                sampler: Any = None) -> nn.Module:
    s2 = cfg.stage2
    smoothing = s2.label_smoothing if s2.label_smoothing is not None else cfg.training.label_smoothing
    mapped = loss_kwargs(s2, fallback=cfg.loss, label_smoothing=float(smoothing), total_epochs=int(s2.epochs))
    explicit = OmegaConf.to_container(cfg.loss.params, resolve=True) if s2.loss == cfg.loss.name else {}
    key = "stage2.label_smoothing" if s2.label_smoothing is not None else "training.label_smoothing (inherited by stage 2)"
    return build_loss(s2.loss, class_counts, mapped, explicit, head=head, sampler=sampler, epochs=int(s2.epochs),
                      smoothing_key=key, prior_key="stage2.prior")


@torch.no_grad()
def cached_features(ctx: RunContext, ds: Any) -> TensorPairDataset:
    loader = make_loader(ds, int(cfg_eval_batch(ctx.cfg)), ctx.device, ctx.cfg)
    out = predict(ctx.model, loader, precision=ctx.precision, features=True)
    return TensorPairDataset(out["features"].to(ctx.device), out["labels"].to(ctx.device))


def stage1_checkpoint_name(cfg: DictConfig) -> str:
    """The stage-1 checkpoint that stage 2 starts from (``training.checkpoint_select``)."""
    return f"stage1_{cfg.training.checkpoint_select}.pt"


def cfg_eval_batch(cfg: DictConfig) -> int:
    return int(cfg.evaluation.batch_size)


def run_stage2(ctx: RunContext, stage1: Optional[Dict[str, Any]] = None) -> StageResult:
    """Stage 2 (cRT / fine-tune / LWS) from stage 1's best weights (already in ``ctx.model``).

    Under torchrun, a classifier trained on cached features runs the same full computation on
    every rank (a linear layer on features gathered from all ranks: cheaper than synchronising,
    and identical to one process); otherwise the model is re-wrapped in DDP after the stage's
    freezing so that only the trainable parameters are synchronised."""
    cfg = ctx.cfg
    s2 = cfg.stage2
    data = ctx.data
    best1 = ctx.ckpt_dir / stage1_checkpoint_name(cfg)
    if ctx.is_main and not best1.exists():
        raise UserError(f"stage 2 needs stage 1's checkpoint, but {best1} does not exist")
    new_head = stage2_head(cfg)
    if new_head is not None:
        from .models import swap_classifier

        swap_classifier(ctx.net, new_head, class_counts=data.class_counts.tolist())
        ctx.net.classifier.to(ctx.device)
        log.info("stage 2: %s with model.head=auto: the re-initialised classifier is the normalised %s head",
                 s2.loss, new_head)
    plan = make_stage2_plan(s2.mode, ctx.model, lr=float(s2.lr), clf_lr_mult=float(s2.clf_lr_mult),
                            freeze_bn=bool(s2.freeze_bn), reinit_classifier=bool(s2.reinit_classifier),
                            num_classes=data.num_classes)
    epochs = int(s2.epochs)
    augment = build_augmentation(cfg)
    eval_mode_backbone = s2.mode == "lws" or bool(s2.freeze_bn)
    use_cache = bool(s2.feature_cache) and plan.frozen_backbone and eval_mode_backbone and augment is None
    sampler = build_sampler(s2.sampler, data.train.labels, alpha=s2.alpha, alpha_start=s2.alpha_start,
                            alpha_end=s2.alpha_end, total_epochs=epochs, seed=int(cfg.seed) + 1,
                            num_classes=data.num_classes, shard=not use_cache, drs_start=s2.drs_start,
                            drs_beta=s2.drs_beta)
    loss_fn = stage2_loss(cfg, data.class_counts, head=ctx.net.classifier, sampler=sampler).to(ctx.device)
    for msg in recipe.stacked_corrections(stage=2, loss=loss_fn, loss_name=s2.loss, sampler=sampler,
                                          sampler_name=s2.sampler, class_counts=data.class_counts, epochs=epochs):
        log.warning("%s", msg)
    bs = int(cfg.data.batch_size)
    if D.is_enabled() and not use_cache:
        ctx.model = D.wrap_ddp(ctx.net, ctx.device)
    if use_cache:
        t0 = time.perf_counter()
        train_ds, val_ds = cached_features(ctx, data.train), cached_features(ctx, data.val)
        log.info("stage 2: backbone frozen, features cached once (%.1fs); training the classifier on them",
                 time.perf_counter() - t0)
        trainee: nn.Module = ctx.net.classifier
        train_loader = BatchLoader(train_ds, bs, sampler=sampler, shuffle=True, seed=int(cfg.seed) + 1,
                                   drop_last=bool(cfg.data.drop_last) and len(train_ds) > bs)
        val_loader = BatchLoader(val_ds, cfg_eval_batch(cfg))
        set_mode = lambda m: m.train()  # noqa: E731  (the head alone)
    else:
        trainee = ctx.model
        train_loader = make_loader(data.train, bs, ctx.device, cfg, train=True, sampler=sampler, augment=augment,
                                   seed=int(cfg.seed) + 1)
        val_loader = ctx.val_loader
        set_mode = plan.set_train_mode
    optimizer = create_optimizer(s2.optimizer, plan.param_groups, lr=float(s2.lr),
                                 weight_decay=float(s2.weight_decay), momentum=float(s2.momentum))
    schedule = EpochSchedule(optimizer, s2.scheduler, epochs=epochs, warmup_epochs=0,
                             plateau_mode=cfg.early_stopping.mode)
    min_epochs = stage_min_epochs(s2.min_epochs, stage=2, epochs=epochs, warmup=0, loss_fn=loss_fn,
                                  sampler_name=s2.sampler, sampler=sampler)
    es = EarlyStopping(monitor=cfg.early_stopping.monitor, mode=cfg.early_stopping.mode,
                       patience=int(s2.patience if s2.patience is not None else cfg.early_stopping.patience),
                       min_delta=float(cfg.early_stopping.min_delta), enabled=bool(cfg.early_stopping.enabled),
                       min_epochs=min_epochs)
    log.info("stage 2: %s with %s, sampler %s, lr %g, %d epochs", s2.mode, s2.loss, s2.sampler, float(s2.lr), epochs)
    start, best = _restore_stage(ctx, 2, holder=ctx.net, optimizer=optimizer, schedule=schedule, es=es)
    res = fit(trainee, stage=2, train_loader=train_loader, val_loader=val_loader, loss_fn=loss_fn,
              optimizer=optimizer, schedule=schedule, epochs=epochs, num_classes=data.num_classes,
              early_stopping=es, precision=ctx.precision, metrics=ctx.metrics, ckpt_dir=ctx.ckpt_out,
              checkpoint_extra=_ckpt_extra(ctx, sampler, loss_fn, {"stage1": stage1} if stage1 else {}),
              set_train_mode=set_mode, grad_clip=float(cfg.training.grad_clip or 0) or None,
              global_epoch_offset=ctx.global_epoch, console_log_interval=int(cfg.console_log_interval),
              progress_bar=ctx.progress and not use_cache, save_module=ctx.model,
              skip_nonfinite=bool(cfg.training.skip_nonfinite), start_epoch=start, best_state=best,
              on_batch_end=_epoch_hook(ctx, ctx.global_epoch), val_loss_fn=plain_ce(),
              restore_best=s2.checkpoint_select == "best")
    ctx.global_epoch += res.epochs_run
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    return res


@torch.no_grad()
def run_stage3(ctx: RunContext) -> Dict[str, Any]:
    """tau-norm and/or logit adjustment (stage 3), post-hoc evaluation adjustment and temperature
    scaling, in that order, each with its value fixed or chosen on the validation split. The
    network is in eval mode throughout (a head such as ``logit_adjust`` differs in train mode).
    Returns what was applied (for results.json); the final classifier chain is left in
    ``ctx.net.classifier``."""
    cfg = ctx.cfg
    mode = cfg.stage3.mode
    posthoc = cfg.evaluation.eval_logit_adjust == "posthoc"
    want_la = mode in ("logit_adjust", "both")
    temperature = parse_temperature(cfg.stage3.temperature)
    info: Dict[str, Any] = {"stage3_mode": mode, "eval_logit_adjust": cfg.evaluation.eval_logit_adjust}
    if mode == "none" and not posthoc and temperature is None:
        return info
    K = ctx.data.num_classes
    counts = ctx.data.class_counts
    net = ctx.net
    net.eval()
    val = predict(ctx.model, make_loader(ctx.data.val, cfg_eval_batch(cfg), ctx.device, cfg),
                  precision=ctx.precision, features=True)
    feats, labels = val["features"].to(ctx.device), val["labels"]
    reason = cal.validation_too_small(labels, K)

    def logits_of(head: nn.Module) -> torch.Tensor:
        with ctx.precision.autocast():
            return head(feats).float().cpu()

    def choose(value: Any, key: str, high: float, grid: Sequence[float], logits_for) -> float:
        tau = parse_tau(value, key, high)
        if tau != "auto":
            return float(tau)
        if reason:
            log.warning("%s=auto: the validation split is too small to choose tau (%s); using tau=1", key, reason)
            info[f"{key}_fallback"] = reason
            return 1.0
        best, curve = cal.search_tau(logits_for, labels, grid, K)
        info[f"{key}_curve"] = curve
        log.info("%s=auto: chose %.2f on the validation split (val mAcc %.2f%%)", key, best,
                 100 * max(r["val_macc"] for r in curve))
        return best

    if mode in ("tau_norm", "both"):
        head = net.classifier
        _, base_macc = accuracy_and_macc(logits_of(head).argmax(1), labels, K)
        info["tau_norm_baseline_val_macc"] = base_macc  # the untouched classifier, bias included
        tau = choose(cfg.stage3.tau_norm, "stage3.tau_norm", 2.0, cal.TAU_NORM_GRID,
                     lambda t: logits_of(cal.tau_normalize(head, t)))
        net.classifier = cal.tau_normalize(head, tau)
        info["tau_norm"] = tau
        log.info("stage 3: tau-normalised classifier f @ (W / ||W||^%.2f)^T, bias dropped (untouched classifier: "
                 "val mAcc %.2f%%)", tau, 100 * base_macc)
    if want_la or posthoc:
        if want_la and posthoc:
            log.warning("stage3.mode=%s and evaluation.eval_logit_adjust=posthoc are the same logit adjustment; "
                        "applying it once, with stage3.logit_tau", mode)
        key, value = ("stage3.logit_tau", cfg.stage3.logit_tau) if want_la else (
            "evaluation.eval_logit_tau", cfg.evaluation.eval_logit_tau)
        base = logits_of(net.classifier)
        prior = cal.log_prior(counts)
        tau = choose(value, key, 3.0, cal.LOGIT_TAU_GRID, lambda t: base - t * prior)
        net.classifier = cal.LogitAdjustedOutput(net.classifier, counts.tolist(), tau).to(ctx.device)
        info["logit_tau"] = tau
        log.info("logit adjustment: z - %.2f * log(prior)", tau)
    if temperature is not None:
        from .analysis import expected_calibration_error

        z = logits_of(net.classifier)
        if temperature == "auto":
            if reason:
                log.warning("stage3.temperature=auto: the validation split is too small to fit T (%s); using T=1",
                            reason)
                info["stage3.temperature_fallback"] = reason
                temperature = 1.0
            else:
                temperature = cal.fit_temperature(z, labels)
        y = labels.cpu().numpy()
        before = {"nll": cal.nll(z, labels), "ece": expected_calibration_error(torch.softmax(z, 1).numpy(), y)}
        after = {"nll": cal.nll(z, labels, temperature),
                 "ece": expected_calibration_error(torch.softmax(z / temperature, 1).numpy(), y)}
        net.classifier = cal.TemperatureScaledOutput(net.classifier, temperature).to(ctx.device)
        info["temperature"] = float(temperature)
        info["temperature_val"] = {"before": before, "after": after}
        log.info("temperature scaling: T=%.3f; validation NLL %.4f -> %.4f, ECE %.4f -> %.4f", temperature,
                 before["nll"], after["nll"], before["ece"], after["ece"])
    net.eval()  # the wrappers added above, too
    return info


# =============================================================================================
# Evaluation and results
# =============================================================================================
def evaluate_test(ctx: RunContext, *, features: bool = False) -> Dict[str, Any]:
    from .analysis import ClassificationAnalyzer

    out = predict(ctx.model, ctx.test_loader, precision=ctx.precision, features=features)
    prob = torch.softmax(out["logits"], dim=1).numpy()
    y_true = out["labels"].numpy()
    y_pred = prob.argmax(1)
    e = ctx.cfg.experiment
    analyzer = ClassificationAnalyzer(ctx.data.class_counts.tolist(), grouping=e.grouping,
                                      many_thresh=int(e.many_thresh), few_thresh=int(e.few_thresh))
    result = analyzer.analyze_predictions(y_true, y_pred, prob)
    result["_arrays"] = {"y_true": y_true, "y_pred": y_pred, "prob": prob.astype(np.float32)}
    if features:
        result["_arrays"]["features"] = out["features"].numpy()
    return result


def stratified_subset(labels: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    """At most ``max_samples`` indices, every class kept in proportion (at least one each)."""
    n = len(labels)
    if n <= max_samples:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(len(idx) * max_samples / n)))
        out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out))


def save_predictions(ctx: RunContext, final: Dict[str, Any]) -> None:
    arrays = final["_arrays"]
    keep = stratified_subset(arrays["y_true"], int(ctx.cfg.visualization.max_samples), int(ctx.cfg.seed))
    path = ctx.run_dir / "results" / "predictions.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".predictions.tmp.npz")
    np.savez_compressed(
        tmp, y_true=arrays["y_true"].astype(np.int64), y_pred=arrays["y_pred"].astype(np.int64),
        prob=arrays["prob"], features=arrays["features"][keep].astype(np.float32),
        feature_labels=arrays["y_true"][keep].astype(np.int64), class_counts=ctx.data.class_counts,
        classes=np.asarray(ctx.data.classes),
    )
    os.replace(tmp, path)


def public(result: Dict[str, Any]) -> Dict[str, Any]:
    return {"overall": result["overall"], "group_wise": result["group_wise"]}


def class_names_for(cfg: DictConfig, classes: Sequence[Any]) -> Optional[List[str]]:
    names = cfg.visualization.class_names
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != len(classes):
        raise ConfigError(f"visualization.class_names has {len(names)} names but the data has {len(classes)} classes")
    return names


# =============================================================================================
# The run
# =============================================================================================
TEST_KILL_ENV = "IMBALANCE_TEST_KILL_AFTER_EPOCH"


def _test_kill_hook():
    """Test hook: ``IMBALANCE_TEST_KILL_AFTER_EPOCH=N`` makes the process SIGKILL itself in the
    middle of global epoch N+1 (after its first batch), i.e. after epoch N's checkpoint."""
    value = os.environ.get(TEST_KILL_ENV, "").strip()
    if not value:
        return None
    n = int(value)

    def hook(global_epoch: int, batch: int) -> None:
        if global_epoch == n + 1 and batch == 1:
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _explicit_overrides() -> List[str]:
    """The overrides typed on this command line (Hydra), e.g. ``['resume=auto', 'seed=1']``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        try:
            return [str(o) for o in HydraConfig.get().overrides.task]
        except Exception:  # pragma: no cover - Hydra internals
            return []
    return []


def _prepare_run(cfg: DictConfig, run_dir: Optional[os.PathLike]) -> Tuple[Path, DictConfig, Any, List[str]]:
    """Decide the run folder (rank 0 decides; every rank uses it) and, with ``resume``, the
    checkpoint the run continues from and the config it continues with."""
    from .checkpoint import CheckpointError, ResumePoint, discard_if_empty, load_checkpoint, merged_config, \
        resolve_resume

    env = D.current()
    own = resolve_run_dir(run_dir)
    point = None
    notes: List[str] = []
    if cfg.resume:
        msg, where = None, None
        if env.is_main:
            value = str(cfg.resume).strip()
            if value.lower() != "auto":
                value = resolve_path(value)
            try:
                point = resolve_resume(value, root=own.parent, exp_name=str(cfg.exp_name), exclude=[own],
                                       notes=notes)
                where = None if point is None else (str(point.run_dir), str(point.checkpoint))
            except CheckpointError as err:
                msg = str(err)
        msg, where, notes = D.broadcast_object((msg, where, notes))
        if msg:
            raise CheckpointError(msg)
        if where is not None and point is None:
            point = ResumePoint(Path(where[0]), Path(where[1]), load_checkpoint(Path(where[1])))
    if point is not None:
        saved = point.state.get("config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{point.checkpoint} does not hold the run's config; it cannot be resumed")
        cfg = merged_config(saved, cfg, _explicit_overrides())
        validate(cfg)
        rdir = point.run_dir
    else:
        rdir = Path(D.broadcast_object(str(own)))
    if own != rdir and discard_if_empty(own):
        notes.append(f"removed {own} (this command continues {rdir})")
    return rdir, cfg, point, notes


def _report_interrupt(rdir: Path) -> None:
    lasts = sorted((rdir / "checkpoints").glob("stage*_last.pt"))
    if lasts:
        state = "the last completed epoch is saved in " + str(lasts[-1])
        log.warning("interrupted; %s. Resume with: python main.py resume=%s", state, rdir)
    else:
        log.warning("interrupted before the first epoch completed; nothing to resume (%s)", rdir)


def run(cfg: DictConfig, run_dir: Optional[os.PathLike] = None) -> float:
    """Train and evaluate as ``cfg`` says; write the run folder; return the final val mAcc.

    ``cfg.resume`` (``auto``, a run folder or a checkpoint) continues an interrupted run in its own
    folder. Under torchrun every rank calls this; rank 0 writes. Ctrl-C ends the run with exit
    status 130 after saying how to resume it (the last completed epoch is already saved).
    """
    t_start = time.perf_counter()
    cfg = with_schema(cfg)
    validate(cfg)
    check_names(cfg)
    if cfg.mode == "eval":
        from .evaluate import run_eval

        return run_eval(cfg, resolve_run_dir(run_dir))
    D.init_distributed(str(cfg.device))
    ok = False
    try:
        rdir, cfg, point, notes = _prepare_run(cfg, run_dir)
        try:
            value = _train(cfg, rdir, point, notes, t_start)
        except KeyboardInterrupt:
            _report_interrupt(rdir)
            raise SystemExit(130) from None
        ok = True
        return value
    finally:
        D.cleanup(barrier=ok)


def _train(cfg: DictConfig, rdir: Path, point: Any, notes: List[str], t_start: float) -> float:
    env = D.current()
    main = env.is_main
    rdir.mkdir(parents=True, exist_ok=True)
    setup_logging(rdir, main_process=main)
    if main:
        update_latest_link(rdir, cfg.exp_name)
    timings: Dict[str, float] = {}
    log.info("run folder: %s", rdir)
    for note in notes:
        log.info("%s", note)
    if point is not None:
        from .checkpoint import remove_stale_temporaries

        if main:
            remove_stale_temporaries(rdir)
        log.info("resuming from %s (stage %d, epoch %d)", point.checkpoint, point.stage, point.epoch)
    if env.enabled:
        log.info("distributed: %d processes (%s), global batch %d", env.world_size, env.backend,
                 D.per_rank_batch(int(cfg.data.batch_size), env) * env.world_size)
    recipe.warn_unused_user_keys(cfg, _explicit_overrides())
    posthoc = cfg.stage3.mode in ("logit_adjust", "both") or cfg.evaluation.eval_logit_adjust == "posthoc"
    for msg in recipe.stacked_logit_adjustment(
            head=recipe.resolve_head(cfg.model.head, cfg.loss.name),
            loss_names=[cfg.loss.name] + ([cfg.stage2.loss] if cfg.stage2.enabled else []), posthoc=posthoc):
        log.warning("%s", msg)
    seed_everything(int(cfg.seed))
    tune_allocator()
    device, gpu_ids = select_device(cfg.device, cfg.gpus)
    threads = set_threads(int(cfg.num_threads), int(cfg.data.num_workers),
                          env.local_world_size if env.enabled else 1)
    precision = make_precision(device, bool(cfg.amp), cfg.amp_dtype)
    log.info("device: %s%s, %d CPU threads, precision %s", device,
             f" (DataParallel over GPUs {gpu_ids})" if len(gpu_ids) > 1 else "", threads, precision.name)
    class_names = None

    t0 = time.perf_counter()
    data = build_data(cfg)
    class_names = class_names_for(cfg, data.classes)
    timings["data"] = time.perf_counter() - t0

    n_devices = env.world_size if env.enabled else max(1, len(gpu_ids))
    model = build_model(cfg, data, device, n_devices=n_devices)
    from .models import model_complexity

    info = model_complexity(model, data.num_channels, data.length)
    model_info = {"name": cfg.model.name, **info}
    log.info("model: %s, %s parameters, %s FLOPs per sample", cfg.model.name, f"{info['params']:,}",
             f"{info['flops_per_sample']:,}")
    if env.enabled:
        model = D.wrap_ddp(model, device)
    elif len(gpu_ids) > 1:
        model = nn.DataParallel(model, device_ids=gpu_ids)
    if cfg.compile:
        model = torch.compile(model)

    writer = MetricsWriter(rdir / "logs" / "metrics.csv") if main else None
    if writer is not None and point is not None:
        writer.drop_rows_after(point.stage, point.epoch)  # rows written after the checkpoint
    bs_eval = cfg_eval_batch(cfg)
    ctx = RunContext(cfg=cfg, run_dir=rdir, device=device, precision=precision, data=data, model=model,
                     metrics=writer, progress=progress_enabled(cfg.progress_bar) and main,
                     val_loader=make_loader(data.val, bs_eval, device, cfg),
                     test_loader=make_loader(data.test, bs_eval, device, cfg),
                     resume=point, kill_hook=_test_kill_hook())
    metrics: Dict[str, Any] = {}
    stage_info: Dict[str, Any] = {}

    t0 = time.perf_counter()
    if point is not None and point.stage >= 2:
        # stage 1 had finished: stage 2 starts from its best weights, as fit() left them
        from .checkpoint import load_checkpoint

        ctx.net.load_state_dict(load_checkpoint(ctx.ckpt_dir / stage1_checkpoint_name(cfg))["model"])
        ctx.global_epoch = int(point.state["global_epoch"]) - int(point.state["epoch"])
        stage_info["stage1"] = dict((point.state.get("previous_stages") or {}).get("stage1") or {})
        log.info("stage 1: finished before the interruption (%d epochs); its %s weights restored", ctx.global_epoch,
                 cfg.training.checkpoint_select)
    else:
        r1 = run_stage1(ctx)
        stage_info["stage1"] = {"epochs_run": r1.epochs_run, "best_epoch": r1.best_epoch,
                                "best_value": r1.best_value}
    timings["stage1"] = time.perf_counter() - t0
    metrics["stage1"] = public(evaluate_test(ctx))

    if cfg.stage2.enabled:
        t0 = time.perf_counter()
        r2 = run_stage2(ctx, stage1=stage_info["stage1"])
        timings["stage2"] = time.perf_counter() - t0
        stage_info["stage2"] = {"epochs_run": r2.epochs_run, "best_epoch": r2.best_epoch, "best_value": r2.best_value}
        metrics["stage2"] = public(evaluate_test(ctx))

    t0 = time.perf_counter()
    calib = run_stage3(ctx)
    stage3_ran = cfg.stage3.mode != "none" or parse_temperature(cfg.stage3.temperature) is not None
    if stage3_ran:
        timings["stage3"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    final = evaluate_test(ctx, features=True)
    if stage3_ran:
        metrics["stage3"] = public(final)
    metrics["final"] = public(final)
    val_out = predict(ctx.model, ctx.val_loader, precision=precision)
    val_acc, val_macc = accuracy_and_macc(val_out["logits"].argmax(1), val_out["labels"], data.num_classes)
    if not main:
        return float(val_macc)
    atomic_save({"model": ctx.net.state_dict(), "calibration": {k: v for k, v in calib.items()
                                                                 if not isinstance(v, (list, dict))},
                 "classes": list(map(_plain, data.classes)), "class_counts": data.class_counts.tolist(),
                 "num_channels": data.num_channels, "length": data.length,
                 "config": OmegaConf.to_container(cfg, resolve=True)}, ctx.ckpt_dir / "final.pt")
    save_predictions(ctx, final)
    from .analysis import write_confusion_matrix_csv, write_per_class_csv

    write_per_class_csv(final, rdir / "results" / "per_class.csv", class_names=class_names)
    write_confusion_matrix_csv(final, rdir / "results" / "confusion_matrix.csv", class_names=class_names)
    timings["evaluation"] = time.perf_counter() - t0

    results = {
        "exp_name": cfg.exp_name, "run_dir": str(rdir), "status": "completed",
        "config": OmegaConf.to_container(cfg, resolve=True),
        "class_counts": data.class_counts.tolist(), "classes": [_plain(c) for c in data.classes],
        "class_names": class_names, "metrics": metrics,
        "val_metrics": {"acc": val_acc, "macc": val_macc},
        "per_class": final["per_class"], "confusion_matrix": final["confusion_matrix"],
        "grouping": final.get("grouping"), "stages": stage_info, "calibration": calib,
        "model_info": model_info, "precision": precision.name, "device": str(device),
        "versions": versions(), "git_commit": git_commit(), "data_files": data_file_hashes(data.files.values()),
        "timings": timings,
    }
    if point is not None:
        results["resumed_from"] = {"checkpoint": str(point.checkpoint), "stage": point.stage, "epoch": point.epoch}
    if env.enabled:
        results["distributed"] = {"world_size": env.world_size, "backend": env.backend}
    _write_results(rdir, results, t_start)

    if cfg.visualization.enabled:
        write_figures(rdir, cfg.visualization, class_names, results, t_start)

    f = metrics["final"]["overall"]
    log.info("final test: OA %.2f%%  mAcc %.2f%%  many %s  medium %s  few %s  HM %s  (%.0fs)", 100 * f["oa"],
             100 * f["macc"], _pct(f.get("many_acc")), _pct(f.get("medium_acc")), _pct(f.get("few_acc")),
             _pct(f.get("hm")), timings["total"])
    log.info("results: %s", rdir / "results" / "results.json")
    return float(val_macc)


def write_figures(rdir: Path, viz: Any, class_names: Optional[List[str]], results: Dict[str, Any],
                  t_start: float) -> None:
    """Every enabled figure from the run folder's artifacts; its time goes into results.json.
    A failing figure is logged and never loses the results already written."""
    t0 = time.perf_counter()
    try:
        from .visualization import visualize_all_results

        written = visualize_all_results(rdir, OmegaConf.to_container(viz, resolve=True), class_names=class_names)
        log.info("figures: %d files in %s", len(written), rdir / "results")
    except Exception as err:
        log.exception("figures failed: %s", err)
    results["timings"]["figures"] = time.perf_counter() - t0
    _write_results(rdir, results, t_start)


def _write_results(rdir: Path, results: Dict[str, Any], t_start: float) -> None:
    results["timings"]["total"] = time.perf_counter() - t_start
    write_json(rdir / "results" / "results.json", results)
    from .results import atomic_write_text

    atomic_write_text(rdir / "results" / "summary.txt", summary_text(results))


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
