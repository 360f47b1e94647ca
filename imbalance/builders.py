"""From the config to components: the only module that reads config sections.

Every ``build_*`` function here reads the composed config and calls the plain keyword-only
constructors of the components (data sets, models, losses, samplers, loaders, optimizers,
schedules, early stopping); :mod:`imbalance.stages` then runs what they built without seeing the
config. The order in which :mod:`imbalance.pipeline` calls them is the order in which random
numbers are drawn, so it is part of what makes a run repeatable.
"""
from __future__ import annotations

import inspect
import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import distributed as D
from . import recipe
from .engine import EarlyStopping
from .errors import ConfigError, DataError
from .loader import BatchLoader
from .optim import EpochSchedule, create_optimizer
from .recipe import LOSS_KEYMAP
from .runtime import resolve_path
from .stage2 import make_stage2_plan

log = logging.getLogger(__name__)


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
    model_options_from(cfg)


def model_options_from(cfg: DictConfig) -> Dict[str, Any]:
    """The model-specific keywords of ``model:`` (its typed option fields that are set, and
    ``model.params``), checked against the model named: an option that model does not take is a
    ConfigError listing its options, before any data is read."""
    from .config import MODEL_OPTION_KEYS
    from .models import MODELS, model_options

    m = cfg.model
    name = MODELS.canonical(m.name)
    opts: Dict[str, Any] = {}
    for key in MODEL_OPTION_KEYS:
        value = m.get(key)
        if value is not None:
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            if key == "spectral_window" and str(value).lower() in ("none", "null", ""):
                value = None
            opts[key] = value
    params = OmegaConf.to_container(m.params, resolve=True) or {}
    both = sorted(set(opts) & set(params))
    if both:
        raise ConfigError(f"model option(s) {', '.join(both)} set both as model.<option> and model.params; keep one")
    opts.update(params)
    valid = model_options(name)
    bad = sorted(k for k in opts if k not in valid)
    if bad:
        raise ConfigError(f"model {name} has no option(s) {', '.join(bad)}; its options: "
                          f"{', '.join(valid) if valid else '(none)'}")
    return opts


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

def place_data(cfg: DictConfig, data: DataBundle, device: torch.device) -> DataBundle:
    """``data.on_device``: the bundle with its training and validation sets copied once to the
    accelerator (:class:`~imbalance.loader.DeviceResidentData`) when the setting and their size
    allow (:func:`~imbalance.loader.resolve_on_device`); on the CPU the bundle itself."""
    import dataclasses

    from .loader import DeviceResidentData, dataset_nbytes, resolve_on_device

    nbytes = dataset_nbytes(data.train) + dataset_nbytes(data.val)
    keep, why = resolve_on_device(cfg.data.on_device, device, nbytes)
    if device.type != "cpu":
        log.info("data: %s", why)
    if not keep:
        return data
    return dataclasses.replace(data, train=DeviceResidentData(data.train, device),
                               val=DeviceResidentData(data.val, device))


def planned_compile_steps(cfg: DictConfig, data: DataBundle) -> int:
    """Training steps of the configured schedule (``compile: auto``): stage-1 epochs x batches,
    plus stage 2's when it runs the backbone (no feature cache); early stopping not counted."""
    from .compilation import planned_steps

    n, bs, drop = len(data.train), int(cfg.data.batch_size), bool(cfg.data.drop_last)
    steps = planned_steps(n_samples=n, batch_size=bs, epochs=int(cfg.training.epochs), drop_last=drop)
    s2 = cfg.stage2
    cached = bool(s2.feature_cache) and s2.mode in ("crt", "lws") and (s2.mode == "lws" or bool(s2.freeze_bn)) \
        and build_augmentation(cfg) is None
    if s2.enabled and not cached:
        steps += planned_steps(n_samples=n, batch_size=bs, epochs=int(s2.epochs), drop_last=drop)
    return steps


def compile_for_run(cfg: DictConfig, data: DataBundle, model: nn.Module, device: torch.device, precision: Any,
                    n_devices: int = 1) -> tuple:
    """``compile`` / ``compile_cache_dir`` applied to the run's model (:mod:`imbalance.compilation`):
    returns (model, decision)."""
    from .compilation import compile_model

    per_device = max(1, int(cfg.data.batch_size) // max(1, n_devices))
    return compile_model(model, cfg.compile, planned=planned_compile_steps(cfg, data),
                         batch_shape=(min(per_device, max(1, len(data.train))), data.num_channels, data.length),
                         device=device, autocast=precision.autocast,
                         eval_batch=min(cfg_eval_batch(cfg), max(1, len(data.val))),
                         cache_dir=cfg.compile_cache_dir, agree=D.broadcast_object if D.is_enabled() else None)


def build_augmentation(cfg: DictConfig) -> Any:
    from .data import build_augmentation as build

    spec = OmegaConf.to_container(cfg.data.augment, resolve=True) or {}
    return build(spec)

def class_names_for(cfg: DictConfig, classes: Sequence[Any]) -> Optional[List[str]]:
    names = cfg.visualization.class_names
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != len(classes):
        raise ConfigError(f"visualization.class_names has {len(names)} names but the data has {len(classes)} classes")
    return names

def build_model(cfg: DictConfig, data: DataBundle, device: torch.device, n_devices: int = 1) -> nn.Module:
    from .models import create_model, init_model_for_imbalanced, swap_classifier

    m = cfg.model
    per_device_batch = max(1, int(cfg.data.batch_size) // max(1, n_devices))
    params = model_options_from(cfg)
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

def stage2_loss(cfg: DictConfig, class_counts: np.ndarray, head: Optional[nn.Module] = None,
                sampler: Any = None) -> nn.Module:
    s2 = cfg.stage2
    smoothing = s2.label_smoothing if s2.label_smoothing is not None else cfg.training.label_smoothing
    mapped = loss_kwargs(s2, fallback=cfg.loss, label_smoothing=float(smoothing), total_epochs=int(s2.epochs))
    explicit = OmegaConf.to_container(cfg.loss.params, resolve=True) if s2.loss == cfg.loss.name else {}
    key = "stage2.label_smoothing" if s2.label_smoothing is not None else "training.label_smoothing (inherited by stage 2)"
    return build_loss(s2.loss, class_counts, mapped, explicit, head=head, sampler=sampler, epochs=int(s2.epochs),
                      smoothing_key=key, prior_key="stage2.prior")

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
    """A batch loader over ``ds`` with the ``data:`` section's ``drop_last`` and ``pin_memory``
    (:func:`make_batch_loader`)."""
    return make_batch_loader(ds, batch_size, device, train=train, sampler=sampler, augment=augment, seed=seed,
                             shard=shard, drop_last=bool(cfg.data.drop_last), pin_memory=bool(cfg.data.pin_memory))


def make_batch_loader(ds: Any, batch_size: int, device: torch.device, *, train: bool = False, sampler: Any = None,
                      augment: Any = None, seed: int = 0, shard: bool = True, drop_last: bool = True,
                      pin_memory: bool = True) -> BatchLoader:
    """A batch loader over ``ds``. Under torchrun (``shard``) a training loader takes this rank's
    strided slice of the epoch with ``batch_size // world_size`` per batch (``batch_size`` is the
    global batch); an evaluation loader takes this rank's contiguous block (gathered by
    ``engine.predict``). ``drop_last`` applies to training loaders only."""
    env = D.current()
    replicas, rank = (env.world_size, env.rank) if (shard and env.enabled) else (1, 0)
    if train and replicas > 1:
        batch_size = D.per_rank_batch(batch_size, env)
    n_local = math.ceil(len(ds) / replicas) if sampler is None else len(sampler)
    drop_last = bool(drop_last) and train and n_local > batch_size
    return BatchLoader(ds, batch_size, shuffle=train, sampler=sampler, drop_last=drop_last, augment=augment,
                       seed=seed, device=device, pin_memory=bool(pin_memory), num_replicas=replicas,
                       rank=rank, even_shards=train)


def make_eval_loader(ds: Any, batch_size: int, device: torch.device, *, pin_memory: bool = True) -> BatchLoader:
    """An evaluation loader (the data set in order; this rank's contiguous block under torchrun)."""
    return make_batch_loader(ds, batch_size, device, pin_memory=pin_memory)


def progress_enabled(setting: Any) -> bool:
    s = str(setting).lower()
    if s == "auto":
        return sys.stderr.isatty()
    return s == "true"

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

def stage1_checkpoint_name(cfg: DictConfig) -> str:
    """The stage-1 checkpoint that stage 2 starts from (``training.checkpoint_select``)."""
    return f"stage1_{cfg.training.checkpoint_select}.pt"

def cfg_eval_batch(cfg: DictConfig) -> int:
    return int(cfg.evaluation.batch_size)


# =============================================================================================
# Stage plans: what a training stage runs, built from the config
# =============================================================================================
@dataclass
class StagePlan:
    """Everything one training stage runs, as built objects and plain values."""

    stage: int
    epochs: int
    loss_fn: nn.Module
    sampler: Any
    optimizer: torch.optim.Optimizer
    schedule: EpochSchedule
    early_stopping: EarlyStopping
    train_loader: Optional[BatchLoader]  # None: stage 2 on cached features (the stage builds it)
    grad_clip: Optional[float] = None
    accumulation_steps: int = 1
    skip_nonfinite: bool = False
    restore_best: bool = True
    set_train_mode: Optional[Callable[[nn.Module], None]] = None
    feature_cache: bool = False  # stage 2: train the classifier on features computed once
    batch_size: int = 128
    eval_batch_size: int = 512
    drop_last: bool = True
    loader_seed: int = 0
    description: str = ""


def early_stopping_for(cfg: DictConfig, *, patience: Any, min_epochs: int) -> EarlyStopping:
    es = cfg.early_stopping
    return EarlyStopping(monitor=es.monitor, mode=es.mode, patience=int(patience), min_delta=float(es.min_delta),
                         enabled=bool(es.enabled), min_epochs=min_epochs)


def build_stage1(cfg: DictConfig, data: DataBundle, model: nn.Module, device: torch.device) -> StagePlan:
    """Stage 1 from ``loss:``, ``sampling:``, ``training:``, ``scheduler:``, ``early_stopping:``."""
    t = cfg.training
    net = D.unwrap(model)
    sampler = build_sampler(cfg.sampling.name, data.train.labels, alpha=cfg.sampling.alpha,
                            alpha_start=cfg.sampling.alpha_start, alpha_end=cfg.sampling.alpha_end,
                            total_epochs=int(t.epochs), seed=int(cfg.seed), num_classes=data.num_classes,
                            drs_start=cfg.sampling.drs_start, drs_beta=cfg.sampling.drs_beta)
    loss_fn = build_loss(cfg.loss.name, data.class_counts,
                         loss_kwargs(cfg.loss, label_smoothing=float(t.label_smoothing), total_epochs=int(t.epochs)),
                         OmegaConf.to_container(cfg.loss.params, resolve=True), head=net.classifier,
                         sampler=sampler, epochs=int(t.epochs))
    loss_fn = loss_fn.to(device)
    for msg in recipe.stacked_corrections(stage=1, loss=loss_fn, loss_name=cfg.loss.name, sampler=sampler,
                                          sampler_name=cfg.sampling.name, class_counts=data.class_counts,
                                          epochs=int(t.epochs)):
        log.warning("%s", msg)
    train_loader = make_loader(data.train, int(cfg.data.batch_size), device, cfg, train=True, sampler=sampler,
                               augment=build_augmentation(cfg), seed=int(cfg.seed))
    params = [p for p in model.parameters() if p.requires_grad]
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
    es = early_stopping_for(cfg, patience=cfg.early_stopping.patience, min_epochs=min_epochs)
    return StagePlan(
        stage=1, epochs=int(t.epochs), loss_fn=loss_fn, sampler=sampler, optimizer=optimizer, schedule=schedule,
        early_stopping=es, train_loader=train_loader, grad_clip=float(t.grad_clip or 0) or None,
        accumulation_steps=int(t.accumulation_steps), skip_nonfinite=bool(t.skip_nonfinite),
        restore_best=t.checkpoint_select == "best",
        description=f"stage 1: {cfg.loss.name}, sampler {cfg.sampling.name}, {t.optimizer}, lr {float(t.lr):g}, "
                    f"{int(t.epochs)} epochs, {len(train_loader)} batches/epoch")


def build_stage2(cfg: DictConfig, data: DataBundle, model: nn.Module, device: torch.device) -> StagePlan:
    """Stage 2 from ``stage2:`` (its loss keys inherit ``loss:``): the head it trains (cRT swaps in
    the normalised head LDAM needs with ``model.head=auto``), what is frozen (the stage-2 mode's
    plan), sampler, loss, optimizer, schedule and early stopping. With a frozen backbone in eval
    mode and no augmentation the classifier trains on cached features (``feature_cache``)."""
    s2 = cfg.stage2
    net = D.unwrap(model)
    new_head = stage2_head(cfg)
    if new_head is not None:
        from .models import swap_classifier

        swap_classifier(net, new_head, class_counts=data.class_counts.tolist())
        net.classifier.to(device)
        log.info("stage 2: %s with model.head=auto: the re-initialised classifier is the normalised %s head",
                 s2.loss, new_head)
    plan = make_stage2_plan(s2.mode, model, lr=float(s2.lr), clf_lr_mult=float(s2.clf_lr_mult),
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
    loss_fn = stage2_loss(cfg, data.class_counts, head=net.classifier, sampler=sampler).to(device)
    for msg in recipe.stacked_corrections(stage=2, loss=loss_fn, loss_name=s2.loss, sampler=sampler,
                                          sampler_name=s2.sampler, class_counts=data.class_counts, epochs=epochs):
        log.warning("%s", msg)
    bs = int(cfg.data.batch_size)
    train_loader = None
    if not use_cache:
        train_loader = make_loader(data.train, bs, device, cfg, train=True, sampler=sampler, augment=augment,
                                   seed=int(cfg.seed) + 1)
    optimizer = create_optimizer(s2.optimizer, plan.param_groups, lr=float(s2.lr),
                                 weight_decay=float(s2.weight_decay), momentum=float(s2.momentum))
    schedule = EpochSchedule(optimizer, s2.scheduler, epochs=epochs, warmup_epochs=0,
                             plateau_mode=cfg.early_stopping.mode)
    min_epochs = stage_min_epochs(s2.min_epochs, stage=2, epochs=epochs, warmup=0, loss_fn=loss_fn,
                                  sampler_name=s2.sampler, sampler=sampler)
    es = early_stopping_for(cfg, patience=s2.patience if s2.patience is not None else cfg.early_stopping.patience,
                            min_epochs=min_epochs)
    return StagePlan(
        stage=2, epochs=epochs, loss_fn=loss_fn, sampler=sampler, optimizer=optimizer, schedule=schedule,
        early_stopping=es, train_loader=train_loader, grad_clip=float(cfg.training.grad_clip or 0) or None,
        skip_nonfinite=bool(cfg.training.skip_nonfinite), restore_best=s2.checkpoint_select == "best",
        set_train_mode=plan.set_train_mode, feature_cache=use_cache, batch_size=bs,
        eval_batch_size=cfg_eval_batch(cfg), drop_last=bool(cfg.data.drop_last), loader_seed=int(cfg.seed) + 1,
        description=f"stage 2: {s2.mode} with {s2.loss}, sampler {s2.sampler}, lr {float(s2.lr):g}, {epochs} epochs")


@dataclass
class Stage3Plan:
    """Stage 3 and post-hoc adjustment as plain values (:func:`imbalance.stages.run_stage3`)."""

    mode: str = "none"
    tau_norm: Any = 1.0
    logit_tau: Any = 1.0
    posthoc: bool = False
    eval_logit_tau: Any = 1.0
    temperature: Any = None
    eval_batch_size: int = 512

    @property
    def ran(self) -> bool:
        """Whether stage 3 changes the classifier (post-hoc adjustment alone is reported as final)."""
        return self.mode != "none" or self.temperature is not None


def build_stage3(cfg: DictConfig) -> Stage3Plan:
    from .config import parse_tau, parse_temperature

    return Stage3Plan(
        mode=str(cfg.stage3.mode), tau_norm=parse_tau(cfg.stage3.tau_norm, "stage3.tau_norm", 2.0),
        logit_tau=parse_tau(cfg.stage3.logit_tau, "stage3.logit_tau", 3.0),
        posthoc=cfg.evaluation.eval_logit_adjust == "posthoc",
        eval_logit_tau=parse_tau(cfg.evaluation.eval_logit_tau, "evaluation.eval_logit_tau", 3.0),
        temperature=parse_temperature(cfg.stage3.temperature), eval_batch_size=cfg_eval_batch(cfg))


def build_analyzer(cfg: DictConfig, class_counts: Sequence[int]) -> Any:
    """The metric analyzer (``experiment:`` grouping thresholds, from the TRAINING counts)."""
    from .analysis import ClassificationAnalyzer

    e = cfg.experiment
    return ClassificationAnalyzer(list(class_counts), grouping=e.grouping, many_thresh=int(e.many_thresh),
                                  few_thresh=int(e.few_thresh))
