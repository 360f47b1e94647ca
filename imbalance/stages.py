"""The three stages of a run, on plain arguments (no config): train a stage, stage 2 on cached
features, stage 3 calibration.

:func:`imbalance.builders.build_stage1` / :func:`~imbalance.builders.build_stage2` /
:func:`~imbalance.builders.build_stage3` turn the config into the plans these functions run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from . import calibration as cal
from . import distributed as D
from .analysis import accuracy_and_macc, expected_calibration_error
from .builders import DataBundle, Stage3Plan, StagePlan
from .checkpoint import CheckpointError, ResumePoint, StageCheckpointer, best_state_for, set_rng_state
from .engine import StageResult, fit, predict
from .loader import BatchLoader, TensorPairDataset
from .precision import Precision
from .run_folder import MetricsWriter, RunFolder

log = logging.getLogger(__name__)

__all__ = ["RunContext", "run_stage", "run_stage1", "run_stage2", "run_stage3", "cached_features", "plain_ce",
           "fit_prototype_classifier"]


@dataclass
class RunContext:
    """What the stages share: the folder, device, precision, data, model and loaders."""

    folder: RunFolder
    device: torch.device
    precision: Precision
    data: DataBundle
    model: nn.Module  # possibly DataParallel / DistributedDataParallel-wrapped
    metrics: Optional[MetricsWriter]  # None on ranks other than 0
    val_loader: BatchLoader
    test_loader: BatchLoader
    config: Dict[str, Any] = field(default_factory=dict)  # the resolved config, stored in checkpoints
    progress: bool = False
    console_log_interval: int = 1
    pin_memory: bool = True
    global_epoch: int = 0
    resume: Optional[ResumePoint] = None
    on_batch_end: Optional[Callable[[int, int], None]] = None  # (global epoch, batch), 1-based
    on_epoch_end: Optional[Callable[[Dict[str, Any], Dict[str, torch.Tensor]], None]] = None  # (row, val predictions)

    @property
    def is_main(self) -> bool:
        return D.current().is_main

    @property
    def net(self) -> nn.Module:
        return D.unwrap(self.model)


def plain_ce() -> nn.Module:
    """The validation loss of every stage (``monitor=val_loss``): plain cross-entropy, whatever the
    training loss (whose definition may change during training, e.g. at a DRW switch)."""
    return nn.CrossEntropyLoss()


def _restore_stage(ctx: RunContext, stage: int, plan: StagePlan) -> Tuple[int, Optional[Dict[str, torch.Tensor]]]:
    """Load a resumed stage's state; return (start epoch, best weights so far)."""
    point = ctx.resume
    state = point.state if point is not None and point.stage == stage else None
    if state is None:
        return 0, None
    try:
        ctx.net.load_state_dict(state["model"])
        plan.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{point.checkpoint} does not fit the model/optimizer of this run's config "
                              f"({str(err).splitlines()[0][:160]})") from None
    plan.schedule.load_state_dict(state["schedule"])
    plan.early_stopping.load_state_dict(state["early_stopping"])
    if plan.extras is not None:
        plan.extras.load_state_dict(state.get("extras") or {})
    if ctx.precision.scaler is not None and state.get("scaler"):
        ctx.precision.scaler.load_state_dict(state["scaler"])
    best = best_state_for(point, stage) if plan.early_stopping.best is not None else None
    env = D.current()
    ranks = state.get("rng_ranks")
    if env.enabled and ranks and len(ranks) == env.world_size:
        set_rng_state(ranks[env.rank])
    else:
        set_rng_state(state["rng"])
    log.info("stage %d: resumed after epoch %d of %d", stage, int(state["epoch"]), int(state.get("epochs", 0)))
    return int(state["epoch"]), best


def _checkpointer(ctx: RunContext, plan: StagePlan, previous: Dict[str, Any]) -> Optional[StageCheckpointer]:
    if not ctx.is_main:
        return None
    sampler, loss_fn, extras = plan.sampler, plan.loss_fn, plan.extras

    def extra() -> Dict[str, Any]:
        return {"sampler_epoch": getattr(sampler, "epoch", None), "loss_epoch": getattr(loss_fn, "epoch", None),
                "config": ctx.config, "previous_stages": dict(previous), "world_size": D.current().world_size,
                "extras": extras.state_dict() if extras is not None else {}}

    return StageCheckpointer(ctx.folder.checkpoints, plan.stage, extra)


def run_stage(ctx: RunContext, plan: StagePlan, *, trainee: nn.Module, train_loader: Any, val_loader: Any,
              previous: Optional[Dict[str, Any]] = None, set_train_mode: Optional[Callable] = None,
              progress: Optional[bool] = None) -> StageResult:
    """Train one stage as ``plan`` says (resuming it when ``ctx.resume`` is in it); advances
    ``ctx.global_epoch``."""
    log.info("%s", plan.description)
    start, best = _restore_stage(ctx, plan.stage, plan)
    offset = ctx.global_epoch
    hook = None
    if ctx.on_batch_end is not None:
        hook = lambda epoch, batch: ctx.on_batch_end(offset + epoch, batch)  # noqa: E731
    res = fit(trainee, stage=plan.stage, train_loader=train_loader, val_loader=val_loader, loss_fn=plan.loss_fn,
              optimizer=plan.optimizer, schedule=plan.schedule, epochs=plan.epochs,
              num_classes=ctx.data.num_classes, early_stopping=plan.early_stopping, precision=ctx.precision,
              metrics=ctx.metrics, checkpointer=_checkpointer(ctx, plan, previous or {}),
              set_train_mode=set_train_mode, grad_clip=plan.grad_clip, accumulation_steps=plan.accumulation_steps,
              global_epoch_offset=offset, console_log_interval=ctx.console_log_interval,
              progress_bar=ctx.progress if progress is None else progress, save_module=ctx.model,
              skip_nonfinite=plan.skip_nonfinite, start_epoch=start, best_state=best, on_batch_end=hook,
              val_loss_fn=plain_ce(), restore_best=plan.restore_best, on_epoch_end=ctx.on_epoch_end,
              extras=plan.extras)
    ctx.global_epoch += res.epochs_run
    if not plan.restore_best:
        log.info("stage %d: keeping the last epoch's weights (checkpoint_select=last)", plan.stage)
    return res


def run_stage1(ctx: RunContext, plan: StagePlan) -> StageResult:
    return run_stage(ctx, plan, trainee=ctx.model, train_loader=plan.train_loader, val_loader=ctx.val_loader)


@torch.no_grad()
def cached_features(ctx: RunContext, ds: Any, batch_size: int) -> TensorPairDataset:
    """``(features, labels)`` of ``ds`` through the frozen backbone (eval mode), on the device."""
    from .builders import make_eval_loader

    out = predict(ctx.model, make_eval_loader(ds, batch_size, ctx.device, pin_memory=ctx.pin_memory),
                  precision=ctx.precision, features=True)
    return TensorPairDataset(out["features"].to(ctx.device), out["labels"].to(ctx.device))


def run_stage2(ctx: RunContext, plan: StagePlan, stage1: Optional[Dict[str, Any]] = None) -> StageResult:
    """Stage 2 (cRT / fine-tune / LWS) from stage 1's weights (already in ``ctx.model``).

    Under torchrun, a classifier trained on cached features runs the same full computation on
    every rank (a linear layer on features gathered from all ranks: cheaper than synchronising,
    and identical to one process); otherwise the model is re-wrapped in DDP after the stage's
    freezing so that only the trainable parameters are synchronised."""
    if D.is_enabled() and not plan.feature_cache:
        ctx.model = D.wrap_ddp(ctx.net, ctx.device)
    if plan.feature_cache:
        t0 = time.perf_counter()
        train_ds = cached_features(ctx, ctx.data.train, plan.eval_batch_size)
        val_ds = cached_features(ctx, ctx.data.val, plan.eval_batch_size)
        log.info("stage 2: backbone frozen, features cached once (%.1fs); training the classifier on them",
                 time.perf_counter() - t0)
        bs = plan.batch_size
        train_loader = BatchLoader(train_ds, bs, sampler=plan.sampler, shuffle=True, seed=plan.loader_seed,
                                   drop_last=plan.drop_last and len(train_ds) > bs)
        res = run_stage(ctx, plan, trainee=ctx.net.classifier, train_loader=train_loader,
                        val_loader=BatchLoader(val_ds, plan.eval_batch_size), previous={"stage1": stage1} if stage1 else {},
                        set_train_mode=lambda m: m.train(), progress=False)
    else:
        res = run_stage(ctx, plan, trainee=ctx.model, train_loader=plan.train_loader, val_loader=ctx.val_loader,
                        previous={"stage1": stage1} if stage1 else {}, set_train_mode=plan.set_train_mode)
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    return res


@torch.no_grad()
def fit_prototype_classifier(ctx: RunContext, classifier: nn.Module, batch_size: int) -> None:
    """Replace the model's classifier by ``classifier`` (NCM / kNN, :mod:`imbalance.prototypes`)
    fitted on the features of every training sample (eval mode, no augmentation, no re-sampling:
    the official ``train_plain`` loader); evaluation then reports its scores like logits."""
    t0 = time.perf_counter()
    train = cached_features(ctx, ctx.data.train, batch_size)
    net = ctx.net
    net.classifier = classifier.fit(train.x, train.y, ctx.data.num_classes).to(ctx.device).eval()
    log.info("evaluation classifier: %r fitted on %d training features (%.1fs); stage 3 and the metrics use it",
             classifier, len(train), time.perf_counter() - t0)


@torch.no_grad()
def run_stage3(ctx: RunContext, plan: Stage3Plan) -> Dict[str, Any]:
    """tau-norm and/or logit adjustment (stage 3), post-hoc evaluation adjustment and temperature
    scaling, in that order, each with its value fixed or chosen on the validation split. The
    network is in eval mode throughout (a head such as ``logit_adjust`` differs in train mode).
    Returns what was applied (for results.json); the final classifier chain is left in
    ``ctx.net.classifier``."""
    mode = plan.mode
    want_la = mode in ("logit_adjust", "both")
    temperature = plan.temperature
    info: Dict[str, Any] = {"stage3_mode": mode, "eval_logit_adjust": "posthoc" if plan.posthoc else "none"}
    if mode == "none" and not plan.posthoc and temperature is None:
        return info
    K = ctx.data.num_classes
    counts = ctx.data.class_counts
    net = ctx.net
    net.eval()
    val = predict(ctx.model, ctx.val_loader, precision=ctx.precision, features=True)
    feats, labels = val["features"].to(ctx.device), val["labels"]
    reason = cal.validation_too_small(labels, K)

    def logits_of(head: nn.Module) -> torch.Tensor:
        with ctx.precision.autocast():
            return head(feats).float().cpu()

    def choose(tau: Any, key: str, grid: Sequence[float], logits_for) -> float:
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
        tau = choose(plan.tau_norm, "stage3.tau_norm", cal.TAU_NORM_GRID,
                     lambda t: logits_of(cal.tau_normalize(head, t)))
        net.classifier = cal.tau_normalize(head, tau)
        info["tau_norm"] = tau
        log.info("stage 3: tau-normalised classifier f @ (W / ||W||^%.2f)^T, bias dropped (untouched classifier: "
                 "val mAcc %.2f%%)", tau, 100 * base_macc)
    if want_la or plan.posthoc:
        if want_la and plan.posthoc:
            log.warning("stage3.mode=%s and evaluation.eval_logit_adjust=posthoc are the same logit adjustment; "
                        "applying it once, with stage3.logit_tau", mode)
        key, value = ("stage3.logit_tau", plan.logit_tau) if want_la else (
            "evaluation.eval_logit_tau", plan.eval_logit_tau)
        base = logits_of(net.classifier)
        prior = cal.log_prior(counts)
        tau = choose(value, key, cal.LOGIT_TAU_GRID, lambda t: base - t * prior)
        net.classifier = cal.LogitAdjustedOutput(net.classifier, counts.tolist(), tau).to(ctx.device)
        info["logit_tau"] = tau
        log.info("logit adjustment: z - %.2f * log(prior)", tau)
    if temperature is not None:
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
