"""Knowledge distillation in stage 1: a finished run's final model teaches the configured model.

``distill.teacher=<run folder>`` loads that run's ``checkpoints/final.pt`` with its classifier
chain (any architecture, cRT/LWS head, tau-norm, logit adjustment, temperature:
:func:`imbalance.evaluate.load_trained_model`) as a :class:`~imbalance.teacher.FrozenTeacher`
(eval mode always, no gradients). During stage 1 a :class:`~imbalance.teacher.TeacherHook` gives
its logits on the student's own (augmented) batch, in the student's precision, and
:class:`DistillationLoss` adds the distillation term to the configured stage-1 loss. Stage 2 and
stage 3 then run as usual on the student (the hook is removed after stage 1).

Methods (``distill.method``), with ``s``/``t`` the student's/teacher's logits, ``T`` the
temperature and ``alpha`` the weight:

``kd``  Hinton et al. 2015, "Distilling the Knowledge in a Neural Network":
        ``L = base(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))`` (batch mean of the
        per-sample KL). ``T^2`` keeps the soft term's gradient scale independent of ``T``
        (Hinton et al., section 2). This is the KD the BKD authors compare with
        (EricZsy/BalancedKnowledgeDistillation ``losses.py`` ``KDLoss``: CE + alpha T^2 KL).
        Hinton et al. write a weighted average ``(1 - l) CE + l T^2 KL``, which is the same
        objective times ``(1 - l)`` with ``alpha = l / (1 - l)``.
``bkd`` Zhang et al. 2021, "Balanced Knowledge Distillation for Long-tailed Learning": the
        instance-balanced CE (the configured stage-1 loss; the paper's is plain CE) plus a
        class-balanced KD. As the official code (``BKDLoss``) computes it, the class weights
        ``w`` multiply the teacher's soft targets, which are renormalised per sample:
        ``q = softmax(t/T) * w / sum_c(softmax(t/T)_c w_c)``, ``L = base + alpha * T^2 *
        KL(q || softmax(s/T))``; ``w`` are the effective-number weights of Cui et al. 2019,
        ``w_c = (1 - beta) / (1 - beta^{n_c})`` normalised to sum to K (beta = 0.9999;
        :func:`bkd_class_weights`). The paper writes the weights on the per-class KL terms
        (``sum_c w_c q_c log(q_c / p_c)``) instead; we follow the code. The official
        CIFAR-10 run applies the weights from epoch 160 of 200 (its DRW rule with betas
        [0, 0.9999]; weights 1 before, i.e. plain KD) and CIFAR-100 from the start:
        ``distill.bkd_start`` (default 0). Official defaults: ``T = 2``, ``alpha = 1``.

Teacher logits may be cached (``distill.cache=true``): computed once for every training sample
and looked up per batch (:class:`~imbalance.teacher.TeacherCache`). Exact when the student's
input is the stored sample, i.e. without augmentation (refused otherwise), because the teacher is
frozen and deterministic in eval mode (the values can differ from the per-batch forward in the
last bits only, from kernels run on a different batch composition).

results.json gets ``distill`` (:func:`distill_record`): the teacher's run folder, model, size
and final/validation metrics (from its results.json), method, T, alpha and the BKD weights.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .class_priors import effective_number_weights
from .errors import ConfigError
from .results import plain
from .teacher import BoundTeacherLoss, FrozenTeacher, TeacherCache, TeacherHook

log = logging.getLogger(__name__)

__all__ = ["DISTILL_METHODS", "kd_divergence", "bkd_class_weights", "DistillationLoss", "load_teacher",
           "teacher_summary", "distill_record", "distillation", "DistillRun"]

DISTILL_METHODS = ("kd", "bkd")
#: Metrics of the teacher recorded in results.json (metrics.final.overall of its run).
TEACHER_METRICS = ("oa", "macc", "many_acc", "medium_acc", "few_acc", "hm", "macro_f1")


def _positive(key: str, value: Any) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"{key} must be a number > 0, got {value!r}")
    return v


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                  class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``1/B sum_b KL(q_b || softmax(s_b / T))`` with ``q = softmax(t / T)``, or with
    ``class_weights`` ``q = softmax(t/T) * w`` renormalised per sample (BKD's official target).
    Computed in at least float32; the teacher is detached. Not multiplied by ``T^2``."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    dt = torch.promote_types(student_logits.dtype, torch.float32)
    q = F.softmax(teacher_logits.detach().to(dt) / temperature, dim=1)
    if class_weights is not None:
        q = q * class_weights.to(device=q.device, dtype=dt)
        q = q / q.sum(dim=1, keepdim=True)
    log_p = F.log_softmax(student_logits.to(dt) / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean")


def bkd_class_weights(class_counts: Sequence[int], beta: float = 0.9999) -> np.ndarray:
    """BKD's per-class weights (official code, after Cui et al. 2019):
    ``w_c = (1 - beta) / (1 - beta^{n_c})``, normalised to sum to K (float64)."""
    return effective_number_weights(class_counts, beta)


class DistillationLoss(nn.Module):
    """``forward(logits, targets, teacher_logits) = base_loss(logits, targets) + alpha * T^2 *
    KL(q || softmax(logits / T))`` (module docstring): ``method='kd'`` (Hinton et al.) or
    ``'bkd'`` (Zhang et al. 2021, class-balanced soft targets from epoch ``bkd_start``).
    ``set_epoch`` is passed to ``base_loss`` too; :attr:`last_terms` holds the last base and KD
    terms (detached)."""

    def __init__(self, *, base_loss: nn.Module, method: str = "kd", temperature: float = 2.0,
                 alpha: float = 1.0, class_counts: Optional[Sequence[int]] = None, bkd_beta: float = 0.9999,
                 bkd_start: int = 0) -> None:
        super().__init__()
        if method not in DISTILL_METHODS:
            raise ConfigError(f"distill.method={method!r} is not valid; valid values: {', '.join(DISTILL_METHODS)}")
        self.method = method
        self.base_loss = base_loss
        self.temperature = _positive("distill.temperature", temperature)
        self.alpha = float(alpha)
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ConfigError(f"distill.alpha must be a number >= 0, got {alpha!r}")
        self.bkd_start = int(bkd_start)
        if self.bkd_start < 0:
            raise ConfigError(f"distill.bkd_start must be an epoch >= 0, got {bkd_start!r}")
        weights = None
        if method == "bkd":
            if class_counts is None:
                raise ConfigError("distill.method=bkd needs the training class counts")
            weights = torch.as_tensor(bkd_class_weights(class_counts, bkd_beta), dtype=torch.float32)
        self.register_buffer("class_weights", weights)
        self.epoch = 0
        self.last_terms: Dict[str, torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.base_loss, "set_epoch"):
            self.base_loss.set_epoch(epoch)

    def weights_now(self) -> Optional[torch.Tensor]:
        """The class weights on the teacher's targets at this epoch (None: plain KD)."""
        if self.class_weights is None or self.epoch < self.bkd_start:
            return None
        return self.class_weights

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        if teacher_logits is None:
            raise RuntimeError("DistillationLoss needs the teacher's logits of the batch (attach a TeacherHook)")
        base = self.base_loss(logits, targets)
        t = self.temperature
        kd = kd_divergence(logits, teacher_logits, t, self.weights_now()) * (t * t)
        self.last_terms = {"base": base.detach(), "kd": kd.detach()}
        return base + self.alpha * kd


# ============================================================================= the teacher
def load_teacher(run: str, *, device: torch.device, classes: Sequence[Any], num_channels: int,
                 length: int) -> Tuple[FrozenTeacher, Any]:
    """The final model of run folder (or checkpoint) ``run``, frozen, on ``device``, and what it
    was trained with (:class:`imbalance.evaluate.TrainedModelInfo`). Its classes must be this
    run's classes in the same order and its input channels this run's (ConfigError)."""
    from .evaluate import load_trained_model

    model, info = load_trained_model(run, device)
    mine = [plain(c) for c in classes]
    theirs = [plain(c) for c in info.classes]
    if mine != theirs:
        raise ConfigError(f"distill.teacher={run} was trained on classes {theirs} but this run's data has {mine}; "
                          "the teacher must predict the same classes in the same order")
    if int(info.num_channels) != int(num_channels):
        raise ConfigError(f"distill.teacher={run} takes {info.num_channels} input channels but this run's "
                          f"signals have {num_channels}")
    if int(info.length) != int(length):
        log.warning("distill.teacher was trained on %d-sample signals; this run's are %d samples long",
                    info.length, length)
    return FrozenTeacher(model).to(device), info


def teacher_summary(run: str) -> Dict[str, Any]:
    """The teacher's run folder, checkpoint, model, size and metrics (from its
    ``results/results.json``; ``metrics`` None when the checkpoint has no run folder beside it)."""
    from .evaluate import find_checkpoint

    ckpt = find_checkpoint(run)
    folder = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    out: Dict[str, Any] = {"run": str(folder) if folder is not None else None, "checkpoint": str(ckpt),
                           "exp_name": None, "model": None, "params": None, "metrics": None, "val_metrics": None}
    res_path = folder / "results" / "results.json" if folder is not None else None
    if res_path is not None and res_path.is_file():
        res = json.loads(Path(res_path).read_text(encoding="utf-8"))
        overall = ((res.get("metrics") or {}).get("final") or {}).get("overall") or {}
        info = res.get("model_info") or {}
        out.update(exp_name=res.get("exp_name"), model=info.get("name"), params=info.get("params"),
                   flops_per_sample=info.get("flops_per_sample"),
                   metrics={k: overall.get(k) for k in TEACHER_METRICS}, val_metrics=res.get("val_metrics"),
                   seed=(res.get("config") or {}).get("seed"))
    return out


def distill_record(*, teacher: Optional[str], method: str = "kd", temperature: float = 2.0, alpha: float = 1.0,
                   bkd_beta: float = 0.9999, bkd_start: int = 0, cache: bool = False,
                   class_counts: Optional[Sequence[int]] = None) -> Optional[Dict[str, Any]]:
    """results.json's ``distill`` block (None without a teacher)."""
    if teacher is None:
        return None
    rec: Dict[str, Any] = {"teacher": teacher_summary(teacher), "method": method, "temperature": float(temperature),
                           "alpha": float(alpha), "cache": bool(cache)}
    if method == "bkd":
        rec.update(bkd_beta=float(bkd_beta), bkd_start=int(bkd_start))
        if class_counts is not None:
            rec["class_weights"] = bkd_class_weights(class_counts, bkd_beta).tolist()
    return rec


# ============================================================================= wiring
class DistillRun:
    """What :func:`distillation` attached: the frozen teacher, the hook and the loss."""

    def __init__(self, teacher: FrozenTeacher, hook: TeacherHook, loss: DistillationLoss, info: Any) -> None:
        self.teacher, self.hook, self.loss, self.info = teacher, hook, loss, info


def _stacking(method: str, loss: nn.Module, loss_name: str, sampler: Any, class_counts: Sequence[int],
              epochs: int) -> Optional[str]:
    from .recipe import is_prior_based, loss_class_weights, sampler_rebalances

    if method != "bkd":
        return None
    what = []
    if loss_class_weights(loss, class_counts) is not None or is_prior_based(loss):
        what.append(f"the loss {loss_name}")
    if sampler_rebalances(sampler, class_counts, epochs) is not None:
        what.append("a re-balancing sampler")
    if not what:
        return None
    return (f"distill.method=bkd: BKD pairs an instance-balanced CE with its class-balanced KD (official code); "
            f"{' and '.join(what)} add(s) a second correction of the same imbalance; intended?")


@contextlib.contextmanager
def distillation(ctx: Any, plan: Any, *, teacher: Optional[str], method: str = "kd", temperature: float = 2.0,
                 alpha: float = 1.0, bkd_beta: float = 0.9999, bkd_start: int = 0, cache: bool = False,
                 loss_name: str = "") -> Iterator[Optional[DistillRun]]:
    """Distil ``teacher`` into ``ctx.model`` during the stage ``plan`` describes (stage 1).

    ``ctx``: the run's :class:`imbalance.stages.RunContext` (model, device, precision, data);
    ``plan``: the stage's :class:`imbalance.builders.StagePlan`, whose ``loss_fn`` becomes the
    distillation loss around it (and whose loader draws through the teacher cache with ``cache``)
    until the block ends. Nothing happens when ``teacher`` is None."""
    if teacher is None:
        yield None
        return
    data = ctx.data
    frozen, info = load_teacher(teacher, device=ctx.device, classes=data.classes, num_channels=data.num_channels,
                                length=data.length)
    base = plan.loss_fn
    loss = DistillationLoss(base_loss=base, method=method, temperature=temperature, alpha=alpha,
                            class_counts=data.class_counts.tolist(), bkd_beta=bkd_beta,
                            bkd_start=bkd_start).to(ctx.device)
    msg = _stacking(method, base, loss_name, plan.sampler, data.class_counts, plan.epochs)
    if msg:
        log.warning("%s", msg)
    loader = plan.train_loader
    table = None
    if cache:
        if loader.augment is not None:
            raise ConfigError("distill.cache=true needs un-augmented batches (the cached teacher logits are for the "
                              "stored samples); set data.augment.enabled=false or distill.cache=false")
        table = TeacherCache.compute(frozen, loader.dataset, batch_size=plan.eval_batch_size, device=ctx.device,
                                     autocast=ctx.precision.autocast)
        loader.dataset = table.wrap(loader.dataset)
    hook = TeacherHook(ctx.model, frozen, cache=table)
    plan.loss_fn = BoundTeacherLoss(loss, hook)
    if method == "bkd" and bkd_start > plan.early_stopping.min_epochs:
        plan.early_stopping.min_epochs = int(bkd_start)  # the weights switch on: patience counts after it
    t_cfg = info.config
    log.info("distillation (%s, T=%g, alpha=%g%s): teacher %s (%s%s), frozen in eval mode%s", method, float(temperature),
             float(alpha), f", BKD weights from epoch {bkd_start}" if method == "bkd" else "", teacher,
             t_cfg.model.name, f", {sum(p.numel() for p in frozen.parameters()):,} parameters",
             "; its logits cached once for the training set" if cache else "")
    try:
        yield DistillRun(frozen, hook, loss, info)
    finally:
        hook.remove()
        plan.loss_fn = base
        if table is not None:
            loader.dataset = loader.dataset.dataset
