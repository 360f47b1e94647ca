"""From the config to components: the only module that reads config sections.

Every ``build_*`` function here reads the composed config and calls the plain keyword-only
constructors of the components (data sets, models, losses, samplers, loaders, optimizers,
schedules, early stopping); :mod:`imbalance.stages` then runs what they built without seeing the
config. The order in which :mod:`imbalance.pipeline` calls them is the order in which random
numbers are drawn, so it is part of what makes a run repeatable.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import distributed as D
from . import recipe
from .engine import EarlyStopping
from .loss_build import (adapt_loss_to_head, build_loss, loss_kwargs, stage2_head,  # noqa: F401  (public here too)
                         stage2_loss, stage2_loss_name)
from .data_build import (DataBundle, build_augmentation, build_data, build_series_sets,  # noqa: F401  (public here too)
                         class_names_for, open_set_data, resolve_batch_size, validation_is_training)
from .errors import ConfigError, DataError
from .loader import BatchLoader
from .optim import EpochSchedule, create_optimizer
from .runtime import original_cwd, resolve_path
from .stage2 import make_stage2_plan

log = logging.getLogger(__name__)


def check_names(cfg: DictConfig) -> None:
    """Fail fast, before any data is read, on a component name that is not registered."""
    from .losses import LOSSES
    from .models import HEADS, MODELS
    from .optim import OPTIMIZERS
    from .mixing import MIXES
    from .prototypes import PROTOTYPE_CLASSIFIERS
    from .samplers import SAMPLERS
    from .stage2 import STAGE2_MODES

    checks = [(MODELS, cfg.model.name), (LOSSES, cfg.loss.name),
              (SAMPLERS, cfg.sampling.name), (OPTIMIZERS, cfg.training.optimizer)]
    if cfg.model.head != "auto":
        checks.append((HEADS, cfg.model.head))
    if cfg.stage2.enabled:
        checks += [(LOSSES, cfg.stage2.loss), (SAMPLERS, cfg.stage2.sampler), (OPTIMIZERS, cfg.stage2.optimizer),
                   (STAGE2_MODES, cfg.stage2.mode)]
    if cfg.mode == "incremental" or cfg.incremental.save_memory or cfg.data.synthetic.sessions:
        from .exemplars import SELECTORS
        from .incremental_methods import INCREMENTAL_METHODS

        checks += [(INCREMENTAL_METHODS, cfg.incremental.method), (SELECTORS, cfg.incremental.selection)]
    from .loggers import LOGGERS

    checks += [(LOGGERS, name) for name in (cfg.get("logger") or {})]
    if str(cfg.data.augment.mix.name) != "none":
        checks.append((MIXES, cfg.data.augment.mix.name))
    if cfg.evaluation.classifier != "linear":
        checks.append((PROTOTYPE_CLASSIFIERS, cfg.evaluation.classifier))
    for registry, name in checks:
        registry.canonical(name)
    s2, head = cfg.stage2, recipe.resolve_head(cfg.model.head, cfg.loss.name)  # LDAM needs a normalised head
    if s2.enabled:
        stage2_head(cfg)
    model_options_from(cfg)
    if cfg.openset.enabled:
        openset_detectors(cfg)
    recipe.check_method_combinations(  # mixing / SAM / MiSLAS / weight balancing / NCM-kNN refusals
        mix=str(cfg.data.augment.mix.name), sam=bool(cfg.training.sam.enabled), sam_mode=str(cfg.training.sam.mode),
        accumulation_steps=int(cfg.training.accumulation_steps), stage2_enabled=bool(s2.enabled),
        stage2_mode=str(s2.mode), shift_bn=bool(s2.shift_bn), maxnorm=s2.maxnorm_thresh is not None,
        head=(stage2_head(cfg) or head) if s2.enabled else head, eval_classifier=str(cfg.evaluation.classifier),
        stage3_mode=str(cfg.stage3.mode), posthoc=cfg.evaluation.eval_logit_adjust == "posthoc")
    distill_options(cfg)  # a missing teacher run fails before any data is read


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


def build_extras(cfg: DictConfig, data: "DataBundle", device: torch.device, loss_fn: nn.Module, *, stage: int,
                 seed: int, epochs: int, head: Optional[nn.Module] = None) -> Any:
    """The stage's :class:`~imbalance.stage_extras.StageExtras`, None when it adds nothing: the
    batch mix (``data.augment.mix``; stage 2 only with ``mix.stage2``; a loss that cannot take
    its targets is refused here), Balanced-MixUp's second loader (class-balanced, same batch
    size) and stage 2's MaxNorm on ``head`` (``stage2.maxnorm_thresh``)."""
    from .mixing import MIXES, check_loss_compatible, create_mix
    from .stage_extras import StageExtras, make_maxnorm

    m, s2 = cfg.data.augment.mix, cfg.stage2
    mix = mix_loader = maxnorm = weight = None
    if str(m.name) != "none" and (stage == 1 or bool(m.stage2)):
        extra = {"kappa": float(m.kappa), "tau": float(m.tau)} if MIXES.canonical(str(m.name)) == "remix" else {}
        mix = create_mix(str(m.name), alpha=None if m.alpha is None else float(m.alpha), prob=float(m.prob),
                         class_counts=[int(c) for c in data.class_counts], **extra)
        check_loss_compatible(mix, loss_fn)
        if mix.needs_second_batch:
            bal = build_sampler("class_balanced", data.train.labels, alpha=0.0, alpha_start=0.0, alpha_end=0.0,
                                total_epochs=epochs, seed=seed + 7, num_classes=data.num_classes)
            mix_loader = make_loader(data.train, int(cfg.data.batch_size), device, cfg, train=True, sampler=bal,
                                     augment=build_augmentation(cfg, data), seed=seed + 7)
    if stage == 2 and s2.maxnorm_thresh is not None:
        maxnorm, weight = make_maxnorm(head, thresh=float(s2.maxnorm_thresh), every=str(s2.maxnorm_every))
    if mix is None and maxnorm is None:
        return None
    return StageExtras(mix=mix, mix_loader=mix_loader, maxnorm=maxnorm, maxnorm_weight=weight)


def build_eval_classifier(cfg: DictConfig) -> Optional[nn.Module]:
    """``evaluation.classifier``: None (the model's head) or the unfitted NCM / kNN classifier."""
    from .prototypes import create_prototype_classifier

    e = cfg.evaluation
    return None if e.classifier == "linear" else create_prototype_classifier(
        str(e.classifier), **(OmegaConf.to_container(e.classifier_params, resolve=True) or {}))


def build_model(cfg: DictConfig, data: DataBundle, device: torch.device, n_devices: int = 1) -> nn.Module:
    from .models import create_model, init_model_for_imbalanced, swap_classifier

    m = cfg.model
    per_device_batch = max(1, int(cfg.data.batch_size) // max(1, n_devices))
    params = model_options_from(cfg)
    if "mask_channel" in params:
        raise ConfigError("model.params.mask_channel is set by the data (data.mask=auto/true/false), not by hand")
    if data.mask_channel:
        params["mask_channel"] = True
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
    if not bool(m.classifier_bias):
        from .heads import remove_bias

        model.classifier = remove_bias(model.classifier)
    if m.init != "default" or m.log_prior_bias:
        init_model_for_imbalanced(model, data.class_counts.tolist(), init_type=m.init,
                                  use_log_prior_bias=bool(m.log_prior_bias), temperature=float(m.init_temperature))
    return model.to(device)


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
    plus stage 2's when it runs the backbone (no feature cache, as :func:`build_stage2` decides);
    early stopping not counted."""
    from .compilation import planned_steps

    n, bs, drop = len(data.train), int(cfg.data.batch_size), bool(cfg.data.drop_last)
    steps = planned_steps(n_samples=n, batch_size=bs, epochs=int(cfg.training.epochs), drop_last=drop)
    s2 = cfg.stage2
    cached = stage2_feature_cache(cfg, frozen_backbone=s2.mode != "finetune", augment=build_augmentation(cfg, data))
    if s2.enabled and not cached:
        steps += planned_steps(n_samples=n, batch_size=bs, epochs=int(s2.epochs), drop_last=drop)
    return steps


def stage2_feature_cache(cfg: DictConfig, *, frozen_backbone: bool, augment: Any) -> bool:
    """Whether stage 2 trains on features cached once: ``stage2.feature_cache``, a frozen backbone
    in eval mode (LWS or ``freeze_bn``, no shift BN), no augmentation and no stage-2 mixing."""
    s2, mix = cfg.stage2, cfg.data.augment.mix
    eval_mode_backbone = (s2.mode == "lws" or bool(s2.freeze_bn)) and not bool(s2.shift_bn)
    mixes = str(mix.name) != "none" and bool(mix.stage2)
    return bool(s2.feature_cache) and frozen_backbone and eval_mode_backbone and augment is None and not mixes


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
    extras: Any = None  # StageExtras: batch mixing, MaxNorm (imbalance.stage_extras)


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
                               augment=build_augmentation(cfg, data), seed=int(cfg.seed))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = create_optimizer(t.optimizer, params, lr=float(t.lr), weight_decay=float(t.weight_decay),
                                 momentum=float(t.momentum))
    extras = build_extras(cfg, data, device, loss_fn, stage=1, seed=int(cfg.seed), epochs=int(t.epochs))
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
    notes = [extras.describe()] if extras is not None else []
    if t.sam.enabled:  # after the schedule, which holds the base optimizer's parameter groups
        from .stage_extras import make_sam

        optimizer = make_sam(optimizer, model=model, mode=str(t.sam.mode), rho=float(t.sam.rho),
                             class_counts=data.class_counts.tolist(), tail_thresh=int(t.sam.tail_thresh),
                             tail_weight=float(t.sam.tail_weight), freeze_bn_second_pass=t.sam.freeze_bn_second_pass,
                             loss_fn=loss_fn, accumulation_steps=int(t.accumulation_steps), distributed=D.is_enabled(),
                             mix=extras.mix if extras is not None else None, has_aux_loss=hasattr(net, "aux_loss"))
        notes.append(f"{optimizer.mode} (rho {optimizer.rho:g})")
    return StagePlan(
        stage=1, epochs=int(t.epochs), loss_fn=loss_fn, sampler=sampler, optimizer=optimizer, schedule=schedule,
        early_stopping=es, train_loader=train_loader, grad_clip=float(t.grad_clip or 0) or None,
        accumulation_steps=int(t.accumulation_steps), skip_nonfinite=bool(t.skip_nonfinite),
        restore_best=t.checkpoint_select == "best", extras=extras,
        description=f"stage 1: {cfg.loss.name}, sampler {cfg.sampling.name}, {t.optimizer}, lr {float(t.lr):g}, "
                    f"{int(t.epochs)} epochs, {len(train_loader)} batches/epoch" + "".join(f"; {n}" for n in notes))


def build_stage2(cfg: DictConfig, data: DataBundle, model: nn.Module, device: torch.device) -> StagePlan:
    """Stage 2 from ``stage2:`` (its loss keys inherit ``loss:``): the head it trains (cRT swaps in
    the normalised head LDAM needs with ``model.head=auto``), what is frozen (the stage-2 mode's
    plan), sampler, loss, optimizer, schedule and early stopping. With a frozen backbone in eval
    mode and no augmentation the classifier trains on cached features (``feature_cache``).
    ``shift_bn`` (MiSLAS: the frozen backbone's BatchNorm statistics follow the stage-2 batches)
    and stage-2 mixing need the inputs, so no feature cache then."""
    s2 = cfg.stage2
    loss_name = stage2_loss_name(cfg)
    net = D.unwrap(model)
    new_head = stage2_head(cfg)
    if new_head is not None:
        from .models import swap_classifier

        swap_classifier(net, new_head, class_counts=data.class_counts.tolist())
        net.classifier.to(device)
        log.info("stage 2: %s with model.head=auto: the re-initialised classifier is the normalised %s head",
                 loss_name, new_head)
    plan = make_stage2_plan(s2.mode, model, lr=float(s2.lr), clf_lr_mult=float(s2.clf_lr_mult),
                            freeze_bn=bool(s2.freeze_bn), reinit_classifier=bool(s2.reinit_classifier),
                            num_classes=data.num_classes)
    epochs = int(s2.epochs)
    augment = build_augmentation(cfg, data)
    use_cache = stage2_feature_cache(cfg, frozen_backbone=plan.frozen_backbone, augment=augment)
    set_train_mode = plan.set_train_mode
    if s2.shift_bn:
        from .bn_tools import with_shift_bn

        set_train_mode = with_shift_bn(plan.set_train_mode)
    sampler = build_sampler(s2.sampler, data.train.labels, alpha=s2.alpha, alpha_start=s2.alpha_start,
                            alpha_end=s2.alpha_end, total_epochs=epochs, seed=int(cfg.seed) + 1,
                            num_classes=data.num_classes, shard=not use_cache, drs_start=s2.drs_start,
                            drs_beta=s2.drs_beta)
    loss_fn = stage2_loss(cfg, data.class_counts, head=net.classifier, sampler=sampler).to(device)
    for msg in recipe.stacked_corrections(stage=2, loss=loss_fn, loss_name=loss_name, sampler=sampler,
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
    extras = build_extras(cfg, data, device, loss_fn, stage=2, seed=int(cfg.seed) + 1, epochs=epochs,
                          head=net.classifier)
    notes = (["shift BN"] if s2.shift_bn else []) + ([extras.describe()] if extras is not None else [])
    return StagePlan(
        stage=2, epochs=epochs, loss_fn=loss_fn, sampler=sampler, optimizer=optimizer, schedule=schedule,
        early_stopping=es, train_loader=train_loader, grad_clip=float(cfg.training.grad_clip or 0) or None,
        skip_nonfinite=bool(cfg.training.skip_nonfinite), restore_best=s2.checkpoint_select == "best",
        set_train_mode=set_train_mode, feature_cache=use_cache, batch_size=bs,
        eval_batch_size=cfg_eval_batch(cfg), drop_last=bool(cfg.data.drop_last), loader_seed=int(cfg.seed) + 1,
        extras=extras,
        description=f"stage 2: {s2.mode} with {loss_name}, sampler {s2.sampler}, lr {float(s2.lr):g}, {epochs} epochs"
                    + "".join(f"; {n}" for n in notes))


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


def distill_options(cfg: DictConfig) -> Dict[str, Any]:
    """The ``distill:`` section as keyword arguments of :func:`imbalance.distill.distillation` and
    :func:`imbalance.distill.distill_record` (``teacher`` None: no distillation). The teacher path is
    resolved against the start folder and must exist."""
    d = cfg.distill
    teacher = resolve_path(d.teacher)
    if teacher is not None and not os.path.exists(teacher):
        raise ConfigError(f"distill.teacher={d.teacher}: not found; give a finished run folder (experiments/<run>) "
                          "or its checkpoints/final.pt")
    return dict(teacher=teacher, method=str(d.method), temperature=float(d.temperature), alpha=float(d.alpha),
                bkd_beta=float(d.bkd_beta), bkd_start=int(d.bkd_start), cache=bool(d.cache))


def build_analyzer(cfg: DictConfig, class_counts: Sequence[int]) -> Any:
    """The metric analyzer (``experiment:`` grouping thresholds, from the TRAINING counts)."""
    from .analysis import ClassificationAnalyzer

    e = cfg.experiment
    return ClassificationAnalyzer(list(class_counts), grouping=e.grouping, many_thresh=int(e.many_thresh),
                                  few_thresh=int(e.few_thresh))


def build_run_logger(cfg: DictConfig, *, main_process: bool = True) -> Any:
    """The run's loggers (``logger:``, a multi-select group: its keys are the backends, each with
    its options; ``logs/metrics.csv`` is written whatever it says). Ranks other than 0 get the
    no-op logger. A relative MLflow store path is taken from where the user started."""
    from .loggers import make_loggers, null_logger

    if not main_process:
        return null_logger()
    section = OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else {}
    return make_loggers(list(section), section, base_dir=original_cwd())


def openset_detectors(cfg: DictConfig) -> tuple:
    """``(detector names or None, params, threshold)`` of ``openset:``, checked before any data is read."""
    from .openset import build_detectors
    from .openset_metrics import parse_threshold

    o = cfg.openset
    names = OmegaConf.to_container(o.detectors, resolve=True) if o.detectors is not None else None
    params = OmegaConf.to_container(o.params, resolve=True) or {}
    build_detectors(names, params)
    return names, params, parse_threshold(o.threshold)


def build_openset(cfg: DictConfig, data: DataBundle, device: torch.device) -> Any:
    """The open-set step's :class:`imbalance.openset_run.OpenSetPlan`: ``openset:`` detectors and
    threshold, ``experiment:`` groups, ``visualization:`` figure settings, and evaluation loaders
    (data order, not sharded: the main process scores everything) of the training, known
    validation, known test and unknown test sets."""
    from .openset_run import OpenSetPlan

    names, params, threshold = openset_detectors(cfg)
    loaders = {k: make_batch_loader(ds, cfg_eval_batch(cfg), device, shard=False, pin_memory=bool(cfg.data.pin_memory))
               for k, ds in (("train", data.train), ("val", data.val), ("test", data.test),
                             ("unknown", data.test_unknown))}
    v, e = cfg.visualization, cfg.experiment
    figures = dict(dpi=int(v.dpi), panel_mm=float(v.panel_mm), panel_scale=float(v.panel_scale), tsne=bool(
        v.plot_tsne_2d), tsne_perplexity=float(v.tsne_perplexity), tsne_n_iter=int(v.tsne_n_iter)) if v.enabled else None
    return OpenSetPlan(loaders=loaders, detectors=names, params=params, threshold=threshold,
                       many_thresh=float(e.many_thresh), few_thresh=float(e.few_thresh), grouping=e.grouping,
                       max_feature_samples=int(v.max_samples), seed=int(cfg.seed), figures=figures,
                       data_info=dict(data.openset or {}))
