"""Class-incremental learning: new emitters (classes) added to a trained model, session by session.

The pieces a training loop needs to run ``mode=incremental`` (the parent run's model and
exemplar memory in, a grown model and a new memory out), as plain functions and modules:

Data
    :func:`session_classes` splits a class list into a base session and later sessions
    (``data.synthetic.sessions=[6,2,2]``), :func:`next_session` finds the session after the
    classes a parent run learned, :func:`samples_of_classes` selects samples,
    :func:`merge_classes` / :func:`label_positions` give the grown model's class order (old
    classes first, each session's new classes appended: the model's class index ``k`` is
    ``classes[k]``, NOT the sorted order of a new file), and :func:`validate_new_session`
    checks a new session's data against the parent (overlapping classes, channels, length).

Classifier
    :func:`grow_classifier` adds rows for new classes to a head (``linear``, ``cosine_ldam``,
    ``logit_adjust``, ``temperature``), old rows bit-exact, prior/margin buffers recomputed;
    :func:`grow_model_classifier` does it on ``model.classifier``.

Methods (registry :data:`INCREMENTAL_METHODS`, key ``incremental.method``)
    ``finetune``  fine-tuning on new data + replayed exemplars with the run's loss (baseline).
    ``lwf``       Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017:
                  :class:`LwFLoss` ``= CE + lambda * KD``, KD the cross-entropy between the
                  previous model's and the current model's old-class softmax at temperature
                  ``T = 2``, no exemplars by default.
    ``icarl``     Rebuffi et al., "iCaRL", CVPR 2017: :class:`ICaRLLoss` (sigmoid binary
                  cross-entropy; old-class targets are the previous model's sigmoid outputs),
                  herding exemplars and the nearest-mean-of-exemplars classifier at evaluation
                  (:class:`imbalance.exemplars.NMEClassifier`).
    ``wa``        Zhao et al., "Maintaining Discrimination and Fairness in Class Incremental
                  Learning", CVPR 2020: :class:`WALoss` ``= (1 - l) CE + l KD`` with
                  ``l = K_old / K``, weight clipping (non-negative FC weights after each step)
                  and, after training, :func:`weight_align` (new rows times
                  ``gamma = mean ||w_old|| / mean ||w_new||``).
    :func:`build_incremental` returns an :class:`IncrementalPlan` (the loss, replay yes/no,
    teacher yes/no, the evaluation classifier, optimizer hooks, the post-training step).
    The teacher (the parent model, frozen, eval mode) gives its logits for the SAME input batch
    through :class:`TeacherHook` (a forward pre-hook on the student), and
    :class:`BoundTeacherLoss` makes the ``(logits, targets, teacher_logits)`` loss a plain
    ``(logits, targets)`` loss, so the one training loop runs unchanged.

    Recommended follow-up for the long tail (the new emitters have few bursts): cRT on memory +
    new data, i.e. the existing stage 2 (``stage2.mode=crt``) run on the memory+new training
    set with ``stage2.sampler=class_balanced``: the classifier is re-trained with the backbone
    frozen on class-balanced batches (old classes are represented by their exemplars only, so
    the balanced sampler is what removes the new/old count bias).

Metrics
    :func:`session_metrics` (acc and mAcc on old, new, all classes of one session),
    :func:`per_class_accuracy`, :func:`accuracy_table`, :func:`average_incremental_accuracy`
    (Rebuffi et al. 2017), :func:`forgetting` (Chaudhry et al., ECCV 2018, "Riemannian Walk":
    ``f_j = max_{l < k} a_{l,j} - a_{k,j}`` averaged over the old classes or tasks ``j``),
    :func:`chain_summary`, and :func:`plot_session_accuracy` (figure, PNG + PDF).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, DataError
from .heads import CosineMarginClassifier, LogitAdjustedLinear, TemperatureScaledClassifier, head_linear
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "INCREMENTAL_METHODS",
    "IncrementalPlan",
    "build_incremental",
    "method_options",
    "session_classes",
    "next_session",
    "samples_of_classes",
    "merge_classes",
    "label_positions",
    "validate_new_session",
    "grow_classifier",
    "grow_model_classifier",
    "frozen_copy",
    "TeacherHook",
    "BoundTeacherLoss",
    "kd_cross_entropy",
    "FinetuneLoss",
    "LwFLoss",
    "ICaRLLoss",
    "WALoss",
    "weight_align",
    "clip_weights_",
    "attach_weight_clipping",
    "per_class_accuracy",
    "session_metrics",
    "session_record",
    "accuracy_table",
    "average_incremental_accuracy",
    "forgetting",
    "chain_summary",
    "plot_session_accuracy",
]


def _fmt(values: Sequence[Any], limit: int = 12) -> str:
    vals = [str(v.item() if isinstance(v, np.generic) else v) for v in values]
    if len(vals) > limit:
        return ", ".join(vals[:limit]) + f", ... ({len(vals)} in all)"
    return ", ".join(vals) if vals else "(none)"


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# ============================================================================ data / sessions
def session_classes(classes: Sequence[Any], sessions: Sequence[int], *,
                    key: str = "data.synthetic.sessions") -> List[List[Any]]:
    """Split ``classes`` (in the given order; pass them sorted) into consecutive sessions of the
    given sizes: ``session_classes(range(10), [6, 2, 2]) -> [[0..5], [6, 7], [8, 9]]``.

    The sizes must be integers >= 1 that add up to ``len(classes)`` (ConfigError naming ``key``)."""
    cls = [_py(c) for c in classes]
    sizes = list(sessions) if sessions is not None else []
    if not sizes:
        raise ConfigError(f"{key} must list the number of classes of each session, e.g. [6, 2, 2]")
    bad = [s for s in sizes if isinstance(s, bool) or not float(s).is_integer() or int(s) < 1]
    if bad:
        raise ConfigError(f"{key}={list(sizes)}: every session needs an integer number of classes >= 1")
    sizes = [int(s) for s in sizes]
    if sum(sizes) != len(cls):
        raise ConfigError(f"{key}={sizes} covers {sum(sizes)} classes but the data have {len(cls)}; "
                          f"the session sizes must add up to the number of classes")
    out, start = [], 0
    for s in sizes:
        out.append(cls[start:start + s])
        start += s
    return out


def next_session(learned_classes: Sequence[Any], plan: Sequence[Sequence[Any]], *,
                 key: str = "data.synthetic.sessions") -> int:
    """Index of the session that follows a parent which learned ``learned_classes``: the
    ``k`` with ``set(plan[0] + ... + plan[k-1]) == set(learned_classes)``.  ConfigError when the
    parent's classes are not such a prefix, or when every session is learned already."""
    learned = {_py(c) for c in learned_classes}
    seen: set = set()
    for k in range(len(plan) + 1):
        if seen == learned:
            if k == len(plan):
                raise ConfigError(f"the parent run already learned all {len(plan)} sessions of {key} "
                                  f"({len(learned)} classes); there is no session left to add")
            return k
        if k < len(plan):
            seen |= {_py(c) for c in plan[k]}
    prefixes = [sum(len(s) for s in plan[:k]) for k in range(1, len(plan) + 1)]
    raise ConfigError(f"the parent run learned classes {_fmt(sorted(learned, key=str))}, which are not the "
                      f"first sessions of {key} (sessions hold {_fmt([list(s) for s in plan])}; "
                      f"a parent must have learned the first {' or '.join(map(str, prefixes))} classes)")


def samples_of_classes(labels: Sequence[Any], classes: Sequence[Any]) -> np.ndarray:
    """Indices (int64, ascending) of the samples whose label (original value) is in ``classes``."""
    y = np.asarray(labels)
    return np.flatnonzero(np.isin(y, np.asarray(list(classes)))).astype(np.int64)


def merge_classes(old_classes: Sequence[Any], new_classes: Sequence[Any]) -> List[Any]:
    """The grown model's class order: ``old_classes`` as they are, then the classes of
    ``new_classes`` not among them, sorted."""
    old = [_py(c) for c in old_classes]
    have = set(old)
    extra = sorted({_py(c) for c in new_classes} - have, key=lambda v: (str(type(v)), v))
    return old + extra


def label_positions(labels: Sequence[Any], classes: Sequence[Any], *, where: str = "data") -> np.ndarray:
    """Positions (int64) of ``labels`` (original values) in ``classes``: the model's class
    indices.  A label not in ``classes`` is a DataError naming it.

    To re-index a data set whose ``labels`` are 0..K-1 in its own sorted ``classes``:
    ``label_positions(ds.classes[ds.labels], session_order)``."""
    y = np.asarray(labels)
    pos = {c: k for k, c in enumerate(_py(c) for c in classes)}
    out = np.empty(y.shape[0], dtype=np.int64)
    missing = set()
    for i, v in enumerate(y.tolist()):
        k = pos.get(v)
        if k is None:
            missing.add(v)
        else:
            out[i] = k
    if missing:
        raise DataError(f"{where}: label value(s) {_fmt(sorted(missing, key=str))} are not among the classes "
                        f"{_fmt(list(pos))}")
    return out


def validate_new_session(*, old_classes: Sequence[Any], new_labels: Sequence[Any],
                         old_shape: Tuple[int, int], new_shape: Tuple[int, int],
                         allow_seen_classes: bool = False, where: str = "the new training data") -> Dict[str, List]:
    """Check a new session's training data against the parent run; returns
    ``{"new": [...], "seen": [...]}`` (the session's classes not learned yet / learned already).

    ``old_shape`` / ``new_shape``: ``(channels, length)`` of the parent's and the new signals.
    Errors (one line each): classes the parent learned (ConfigError unless
    ``allow_seen_classes``), a different channel count or signal length (DataError)."""
    c_old, l_old = (int(v) for v in old_shape)
    c_new, l_new = (int(v) for v in new_shape)
    if c_new != c_old:
        raise DataError(f"{where} have {c_new} channel(s) but the parent model was trained on {c_old}; "
                        f"a session must keep the channel count (complex data give 2: I and Q)")
    if l_new != l_old:
        raise DataError(f"{where} have signal length {l_new} but the parent run's signals have length "
                        f"{l_old}; set data.target_length={l_old} to crop/pad them to the parent's length")
    old = {_py(c) for c in old_classes}
    present = sorted({_py(v) for v in np.asarray(new_labels).tolist()}, key=lambda v: (str(type(v)), v))
    seen = [c for c in present if c in old]
    new = [c for c in present if c not in old]
    if seen and not allow_seen_classes:
        raise ConfigError(f"{where} hold class(es) {_fmt(seen)} that the parent run already learned; "
                          f"set incremental.allow_seen_classes=true to train on them as old classes, "
                          f"or remove them")
    if not new:
        logger.warning("%s hold no class the parent has not learned: the session adds no class", where)
    return {"new": new, "seen": seen}


# ============================================================================ growing the head
def _init_new_rows(init: Optional[Callable], weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    if init is not None and weight.shape[0] > 0:
        init(weight, bias)


def _grow_linear(lin: nn.Linear, num_new: int, init: Optional[Callable]) -> nn.Linear:
    k = lin.out_features
    new = nn.Linear(lin.in_features, k + num_new, bias=lin.bias is not None)
    new = new.to(device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight[:k].copy_(lin.weight)
        if lin.bias is not None:
            new.bias[:k].copy_(lin.bias)
        _init_new_rows(init, new.weight[k:], None if lin.bias is None else new.bias[k:])
    new.weight.requires_grad_(lin.weight.requires_grad)
    if lin.bias is not None:
        new.bias.requires_grad_(lin.bias.requires_grad)
    return new


def _grow_plain_linear(head: nn.Linear, num_new: int, *, class_counts, init) -> nn.Module:
    return _grow_linear(head, num_new, init)


def _grow_cosine(head: CosineMarginClassifier, num_new: int, *, class_counts, init) -> nn.Module:
    k = head.num_classes
    if class_counts is None and bool((head.margins != 0).any()):
        raise ConfigError(f"grow_classifier: the cosine head holds LDAM margins; pass class_counts for all "
                          f"{k + num_new} classes (old and new) so that its margins are recomputed")
    new = CosineMarginClassifier(in_features=head.in_features, num_classes=k + num_new,
                                 class_counts=class_counts, scale=head.scale, ldam_power=head.ldam_power,
                                 ldam_max_m=head.ldam_max_m)
    new = new.to(device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        new.weight[:k].copy_(head.weight)
        _init_new_rows(init, new.weight[k:], None)
    new.weight.requires_grad_(head.weight.requires_grad)
    return new


def _grow_logit_adjust(head: LogitAdjustedLinear, num_new: int, *, class_counts, init) -> nn.Module:
    k = head.num_classes
    if class_counts is None:
        raise ConfigError(f"grow_classifier: the logit_adjust head needs class_counts for all {k + num_new} "
                          f"classes (its log prior)")
    new = LogitAdjustedLinear(in_features=head.in_features, num_classes=k + num_new, class_counts=class_counts,
                              tau=head.tau, bias=head.linear.bias is not None)
    new = new.to(device=head.linear.weight.device)
    new.linear = _grow_linear(head.linear, num_new, init)
    return new


def _grow_temperature(head: TemperatureScaledClassifier, num_new: int, *, class_counts, init) -> nn.Module:
    k = head.num_classes
    new = TemperatureScaledClassifier(in_features=head.in_features, num_classes=k + num_new,
                                      learnable=head.log_t.requires_grad, bias=head.linear.bias is not None)
    new = new.to(device=head.linear.weight.device, dtype=head.log_t.dtype)
    with torch.no_grad():
        new.log_t.copy_(head.log_t)
    new.linear = _grow_linear(head.linear, num_new, init)
    return new


# Head type -> grower (looked up along the head's MRO, so subclasses are served).
_GROWERS: Dict[type, Callable[..., nn.Module]] = {
    nn.Linear: _grow_plain_linear,
    CosineMarginClassifier: _grow_cosine,
    LogitAdjustedLinear: _grow_logit_adjust,
    TemperatureScaledClassifier: _grow_temperature,
}


def grow_classifier(head: nn.Module, num_new: int, *, class_counts: Optional[Sequence[float]] = None,
                    init: Optional[Callable[[torch.Tensor, Optional[torch.Tensor]], None]] = None) -> nn.Module:
    """A new head with ``num_new`` more classes: rows ``0..K-1`` (weights and bias) copied
    bit-exactly from ``head``, rows ``K..K+num_new-1`` initialised as the head type initialises
    itself (``nn.Linear``'s default; Xavier-uniform for the cosine head) or by
    ``init(weight_rows, bias_rows_or_None)`` (in place, under ``no_grad``).

    Buffers that depend on the class counts are recomputed from ``class_counts`` (length
    ``K + num_new``): the cosine head's LDAM ``margins`` (required when it has non-zero margins)
    and the logit_adjust head's ``log_prior`` (required).  Device, dtype and ``requires_grad``
    follow the old head.  Put the result in ``model.classifier`` (or use
    :func:`grow_model_classifier`) BEFORE building the optimizer."""
    if isinstance(num_new, bool) or not float(num_new).is_integer() or int(num_new) < 0:
        raise ConfigError(f"grow_classifier: num_new must be an integer >= 0, got {num_new!r}")
    grower = next((_GROWERS[c] for c in type(head).__mro__ if c in _GROWERS), None)
    if grower is None:
        raise ConfigError(f"grow_classifier cannot grow a {type(head).__name__} head; supported: nn.Linear "
                          f"(linear), CosineMarginClassifier (cosine_ldam), LogitAdjustedLinear (logit_adjust), "
                          f"TemperatureScaledClassifier (temperature)")
    new = grower(head, int(num_new), class_counts=class_counts, init=init)
    new.train(head.training)
    return new


def grow_model_classifier(model: nn.Module, num_new: int, *, class_counts: Optional[Sequence[float]] = None,
                          init: Optional[Callable] = None) -> nn.Module:
    """:func:`grow_classifier` on ``model.classifier`` in place (also ``model.num_classes``);
    returns ``model``."""
    if not hasattr(model, "classifier"):
        raise ConfigError(f"{type(model).__name__} has no classifier attribute; cannot grow it")
    model.classifier = grow_classifier(model.classifier, num_new, class_counts=class_counts, init=init)
    if hasattr(model, "num_classes"):
        model.num_classes = int(model.num_classes) + int(num_new)
    logger.info("classifier grown by %d classes", int(num_new))
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with ``requires_grad=False`` (the teacher)."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


# ============================================================================ teacher outputs
class TeacherHook:
    """Computes the teacher's logits on the very input of every training-mode forward of
    ``student`` (a forward pre-hook), in eval mode and without gradients; they are in
    :attr:`logits` until the next forward.  ``remove()`` detaches the hook.

    This is the LwF / iCaRL / WA distillation target: the previous model's output on the same
    (augmented) input batch.  In eval mode the student's forward does not run the teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        self.teacher = teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.logits: Optional[torch.Tensor] = None
        self._handle = student.register_forward_pre_hook(self._pre_forward)

    def _pre_forward(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        if not module.training:
            return
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            self.logits = self.teacher(args[0]).detach()

    def remove(self) -> None:
        self._handle.remove()
        self.logits = None


class BoundTeacherLoss(nn.Module):
    """``forward(logits, targets)`` = ``loss(logits, targets, hook.logits)``: an incremental loss
    usable where the training loop calls ``criterion(logits, targets)``."""

    def __init__(self, loss: nn.Module, hook: Optional[TeacherHook]) -> None:
        super().__init__()
        self.loss = loss
        self.hook = hook

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = None if self.hook is None else self.hook.logits
        if t is not None and t.shape[0] != logits.shape[0]:
            raise RuntimeError(f"teacher logits are for a batch of {t.shape[0]}, the student's for "
                               f"{logits.shape[0]}: the student must be called on the batch just before the loss")
        return self.loss(logits, targets, t)


# ============================================================================ losses
def kd_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float = 2.0) -> torch.Tensor:
    """Distillation loss ``-1/B sum_b sum_c softmax(t_b / T)_c log softmax(s_b / T)_c`` (batch
    mean, computed in at least float32; the teacher is detached).  This is LwF's
    ``L_old = -sum y'_o log yhat'_o`` (official code: ``vl_nnsoftmaxdiff`` 'MI' mode, the
    recorded probabilities raised to ``1/T`` and renormalised = ``softmax(t / T)``) and the KD
    term of WA (PyCIL ``_KD_loss``).  Not multiplied by ``T**2`` (neither official code does)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    dt = torch.promote_types(student_logits.dtype, torch.float32)
    t = F.softmax(teacher_logits.detach().to(dt) / temperature, dim=1)
    log_s = F.log_softmax(student_logits.to(dt) / temperature, dim=1)
    return -(t * log_s).sum(dim=1).mean()


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ConfigError(f"incremental.temperature must be a number > 0, got {temperature!r}")
    return t


def _teacher_part(teacher_logits: Optional[torch.Tensor], num_old: int, who: str) -> torch.Tensor:
    if teacher_logits is None:
        raise RuntimeError(f"{who} needs the previous model's logits (attach a TeacherHook)")
    if teacher_logits.shape[1] < num_old:
        raise ValueError(f"{who}: the teacher gives {teacher_logits.shape[1]} logits for {num_old} old classes")
    return teacher_logits[:, :num_old]


class FinetuneLoss(nn.Module):
    """Fine-tuning baseline: the run's classification loss ``base_loss(logits, targets)``
    (default cross-entropy) on new data + replayed exemplars; the teacher is not used."""

    def __init__(self, *, base_loss: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.base_loss = base_loss if base_loss is not None else nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.base_loss(logits, targets)


class LwFLoss(nn.Module):
    """Learning without Forgetting (Li & Hoiem 2016/2017): ``CE + lambda * KD``.

    ``KD = kd_cross_entropy(logits[:, :num_old], teacher_logits[:, :num_old], T)`` with the
    previous model's logits on the same input as the target (:class:`TeacherHook`).  Paper and
    official code (lizhitwo/LearningWithoutForgetting): ``T = 2``, ``lambda_o = 1``, KD not
    scaled by ``T**2``.  The official code records the original network's responses once,
    before training, on the new task's images; here they are computed on the fly on the same
    batch (the form of PyCIL and most re-implementations), which is the same where the input is
    not randomly augmented.

    ``ce_over='new'`` (default, LwF: the new task's loss is over the new task's outputs):
    ``CE(logits[:, num_old:], targets - num_old)``; every target must be a new class.
    ``ce_over='all'``: CE over all logits (needed when exemplars of old classes are replayed).
    ``base_loss`` replaces the plain CE (it then sees the chosen logits)."""

    def __init__(self, *, num_old: int, temperature: float = 2.0, lambda_kd: float = 1.0,
                 ce_over: str = "new", base_loss: Optional[nn.Module] = None) -> None:
        super().__init__()
        if ce_over not in ("new", "all"):
            raise ConfigError(f"incremental.lwf_ce must be 'new' or 'all', got {ce_over!r}")
        if not (math.isfinite(float(lambda_kd)) and float(lambda_kd) >= 0):
            raise ConfigError(f"incremental.lwf_lambda must be a number >= 0, got {lambda_kd!r}")
        self.num_old = int(num_old)
        self.temperature = _check_temperature(temperature)
        self.lambda_kd = float(lambda_kd)
        self.ce_over = ce_over
        self.base_loss = base_loss if base_loss is not None else nn.CrossEntropyLoss()
        self.last_terms: Dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        k = self.num_old
        if self.ce_over == "new" and k > 0:
            if bool((targets < k).any()):
                raise ConfigError("incremental.lwf_ce=new cannot train on samples of old classes (replayed "
                                  "exemplars); set incremental.lwf_ce=all or incremental.replay=false")
            ce = self.base_loss(logits[:, k:], targets - k)
        else:
            ce = self.base_loss(logits, targets)
        if k == 0:
            self.last_terms = {"ce": ce.detach()}
            return ce
        kd = kd_cross_entropy(logits[:, :k], _teacher_part(teacher_logits, k, "LwF"), self.temperature)
        self.last_terms = {"ce": ce.detach(), "kd": kd.detach()}
        return ce + self.lambda_kd * kd


class ICaRLLoss(nn.Module):
    """iCaRL's representation-learning loss (Rebuffi et al. 2017, Algorithm 3, as the official
    code computes it): sigmoid binary cross-entropy on every output, with targets one-hot for
    the label and, in the old classes' columns, the previous model's sigmoid outputs on the
    same input (for EVERY sample, exemplars included, as the official code overwrites them).
    Mean over batch and classes.  The official code has outputs for all classes of all future
    sessions from the start (their targets 0); here only the classes learned so far, so the
    mean divides by ``K`` rather than the final class count (a constant scale)."""

    def __init__(self, *, num_old: int) -> None:
        super().__init__()
        self.num_old = int(num_old)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        dt = torch.promote_types(logits.dtype, torch.float32)
        z = logits.to(dt)
        target = F.one_hot(targets, z.shape[1]).to(dt)
        if self.num_old > 0:
            old = _teacher_part(teacher_logits, self.num_old, "iCaRL")
            target = torch.cat([torch.sigmoid(old.detach().to(dt)), target[:, self.num_old:]], dim=1)
        return F.binary_cross_entropy_with_logits(z, target)


class WALoss(nn.Module):
    """Weight Aligning's training loss (Zhao et al. 2020, eq. 5): ``(1 - l) * CE + l * KD`` with
    ``l = num_old / num_classes`` (the paper's ``n / (n + m)``) and ``KD`` =
    :func:`kd_cross_entropy` at ``T = 2`` on the old classes' logits.  Same form in PyCIL
    (``models/wa.py``) and DER's re-implementation (KL, same gradient); the unofficial
    hugoycj repository weights ``KD * T**2 + (1 - l) CE`` instead, which is not followed."""

    def __init__(self, *, num_old: int, num_classes: int, temperature: float = 2.0,
                 base_loss: Optional[nn.Module] = None) -> None:
        super().__init__()
        if not 0 <= int(num_old) <= int(num_classes):
            raise ValueError(f"num_old={num_old} must be within 0..num_classes={num_classes}")
        self.num_old = int(num_old)
        self.num_classes = int(num_classes)
        self.lam = self.num_old / self.num_classes if self.num_classes else 0.0
        self.temperature = _check_temperature(temperature)
        self.base_loss = base_loss if base_loss is not None else nn.CrossEntropyLoss()
        self.last_terms: Dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        ce = self.base_loss(logits, targets)
        if self.num_old == 0:
            self.last_terms = {"ce": ce.detach()}
            return ce
        kd = kd_cross_entropy(logits[:, :self.num_old], _teacher_part(teacher_logits, self.num_old, "WA"),
                              self.temperature)
        self.last_terms = {"ce": ce.detach(), "kd": kd.detach()}
        return (1.0 - self.lam) * ce + self.lam * kd


# ============================================================================ weight aligning
def _fc_weight(head: nn.Module, who: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    lin = head_linear(head)
    if lin is not None:
        return lin.weight, lin.bias
    if isinstance(head, CosineMarginClassifier):
        return head.weight, None
    raise ConfigError(f"{who} needs a linear or cosine head, got {type(head).__name__}")


@torch.no_grad()
def weight_align(head: nn.Module, num_old: int, *, scale_bias: bool = False) -> float:
    """Weight Aligning (Zhao et al. 2020, eq. 7-8), in place: the new classes' weight rows
    (``num_old..K-1``) are multiplied by ``gamma = mean_old ||w_i|| / mean_new ||w_j||``
    (norms in float64); returns gamma.  The old rows and the bias are untouched (PyCIL's
    ``weight_align``; the paper's FC has no bias); ``scale_bias=True`` scales the new classes'
    bias too, which equals scaling their logits (DER's WA post-processor).

    ``gamma > 1`` is possible and then scales the new classes UP: it happens when the new
    classes are the minority of the training set, e.g. few-shot new emitters against a larger
    memory per old class (the paper's setting has many samples per new class); the rule is the
    same either way.

    A cosine head normalises its rows, so aligning their norms changes nothing: ConfigError."""
    if isinstance(head, CosineMarginClassifier):
        raise ConfigError("incremental.method=wa aligns weight norms, which a cosine head (model.head="
                          "cosine_ldam) normalises away; use model.head=linear with wa")
    w, b = _fc_weight(head, "weight_align")
    k = w.shape[0]
    if not 0 < int(num_old) < k:
        raise ConfigError(f"weight_align needs 0 < num_old < {k} classes, got num_old={num_old}")
    norms = w.detach().double().norm(dim=1)
    new_mean = norms[num_old:].mean()
    if not float(new_mean) > 0:
        raise ValueError("weight_align: the new classes' weight vectors are all zero")
    gamma = norms[:num_old].mean() / new_mean
    w[num_old:] = (w[num_old:].double() * gamma).to(w.dtype)
    if scale_bias and b is not None:
        b[num_old:] = (b[num_old:].double() * gamma).to(b.dtype)
    logger.info("weight aligning: gamma = %.4f (mean norm old %.4f, new %.4f)", float(gamma),
                float(norms[:num_old].mean()), float(new_mean))
    return float(gamma)


@torch.no_grad()
def clip_weights_(head: nn.Module) -> None:
    """WA's weight clipping: the classifier's weights set to ``max(w, 0)`` in place (the
    features after ReLU and pooling are non-negative; the paper clips after every optimisation
    step, DER's WA clamps the classifier's parameters to >= 0 after each step).  The bias, if
    any, is not clipped."""
    w, _ = _fc_weight(head, "weight clipping")
    w.clamp_(min=0)


def attach_weight_clipping(optimizer: torch.optim.Optimizer, model_or_head: nn.Module):
    """Clip the classifier's weights after every ``optimizer.step()`` (a step post-hook);
    returns the hook handle (``.remove()``).  Pass the model (its ``classifier`` is used) or the
    head itself.  The head is looked up at each step, so it may be swapped later."""
    def _hook(opt, args, kwargs):
        head = getattr(model_or_head, "classifier", model_or_head)
        clip_weights_(head)
    return optimizer.register_step_post_hook(_hook)


# ============================================================================ methods
@dataclass
class IncrementalPlan:
    """What one incremental session of a method needs (see :func:`build_incremental`).

    ``loss(logits, targets, teacher_logits)``; wrap it with :class:`BoundTeacherLoss` and a
    :class:`TeacherHook` for a ``(logits, targets)`` loop.  ``replay``: train on new data +
    exemplars (else new data only).  ``eval_classifier``: 'head' or 'nme'.
    ``attach(optimizer, model)`` installs per-step hooks (WA clipping) and returns their
    handles; ``after_training(model)`` runs the post-training step (WA) and returns what it
    did, for results.json."""

    method: str
    num_old: int
    num_classes: int
    loss: nn.Module
    replay: bool
    needs_teacher: bool
    eval_classifier: str
    clip_weights: bool = False
    post_training: Optional[Callable[[nn.Module], Dict[str, Any]]] = None
    options: Dict[str, Any] = field(default_factory=dict)

    def attach(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> List[Any]:
        return [attach_weight_clipping(optimizer, model)] if self.clip_weights else []

    def after_training(self, model: nn.Module) -> Dict[str, Any]:
        return self.post_training(model) if self.post_training is not None else {}

    def describe(self) -> Dict[str, Any]:
        return {"method": self.method, "num_old": self.num_old, "num_classes": self.num_classes,
                "replay": self.replay, "teacher": self.needs_teacher, "eval_classifier": self.eval_classifier,
                "weight_clipping": self.clip_weights, **self.options}


INCREMENTAL_METHODS = Registry("incremental method")

# incremental.* keys each method reads (besides method, memory_*, selection, allow_seen_classes).
_METHOD_KEYS: Dict[str, Tuple[str, ...]] = {
    "finetune": ("replay", "eval_classifier"),
    "lwf": ("replay", "eval_classifier", "temperature", "lwf_lambda", "lwf_ce"),
    "icarl": ("eval_classifier",),
    "wa": ("replay", "eval_classifier", "temperature", "wa_clip", "wa_scale_bias"),
}


def method_options(method: str) -> Tuple[str, ...]:
    """The ``incremental.*`` options ``method`` reads (for warnings on user-set keys it ignores)."""
    return _METHOD_KEYS[INCREMENTAL_METHODS.canonical(method)]


def _eval_choice(eval_classifier: str, default: str) -> str:
    if eval_classifier in (None, "auto"):
        return default
    if eval_classifier not in ("head", "nme"):
        raise ConfigError(f"incremental.eval_classifier must be auto, head or nme, got {eval_classifier!r}")
    return eval_classifier


def _replay_choice(replay: Optional[bool], default: bool) -> bool:
    return default if replay is None else bool(replay)


@INCREMENTAL_METHODS.register("finetune")
def _plan_finetune(*, num_old: int, num_classes: int, base_loss: Optional[nn.Module] = None,
                   replay: Optional[bool] = None, eval_classifier: str = "auto", **_: Any) -> IncrementalPlan:
    return IncrementalPlan(method="finetune", num_old=num_old, num_classes=num_classes,
                           loss=FinetuneLoss(base_loss=base_loss), replay=_replay_choice(replay, True),
                           needs_teacher=False, eval_classifier=_eval_choice(eval_classifier, "head"))


@INCREMENTAL_METHODS.register("lwf")
def _plan_lwf(*, num_old: int, num_classes: int, base_loss: Optional[nn.Module] = None,
              replay: Optional[bool] = None, eval_classifier: str = "auto", temperature: float = 2.0,
              lwf_lambda: float = 1.0, lwf_ce: str = "new", **_: Any) -> IncrementalPlan:
    rep = _replay_choice(replay, False)
    if rep and lwf_ce == "new":
        raise ConfigError("incremental.method=lwf with incremental.replay=true needs incremental.lwf_ce=all "
                          "(replayed exemplars have old labels)")
    loss = LwFLoss(num_old=num_old, temperature=temperature, lambda_kd=lwf_lambda, ce_over=lwf_ce,
                   base_loss=base_loss)
    return IncrementalPlan(method="lwf", num_old=num_old, num_classes=num_classes, loss=loss, replay=rep,
                           needs_teacher=num_old > 0, eval_classifier=_eval_choice(eval_classifier, "head"),
                           options={"temperature": loss.temperature, "lwf_lambda": loss.lambda_kd, "lwf_ce": lwf_ce})


@INCREMENTAL_METHODS.register("icarl")
def _plan_icarl(*, num_old: int, num_classes: int, base_loss: Optional[nn.Module] = None,
                replay: Optional[bool] = None, eval_classifier: str = "auto", **_: Any) -> IncrementalPlan:
    if replay is not None and not replay:
        raise ConfigError("incremental.method=icarl trains on its exemplars; incremental.replay=false is not iCaRL "
                          "(use lwf for an exemplar-free method)")
    if base_loss is not None:
        logger.warning("incremental.method=icarl uses its own sigmoid loss; the configured loss is not used")
    return IncrementalPlan(method="icarl", num_old=num_old, num_classes=num_classes,
                           loss=ICaRLLoss(num_old=num_old), replay=True, needs_teacher=num_old > 0,
                           eval_classifier=_eval_choice(eval_classifier, "nme"))


@INCREMENTAL_METHODS.register("wa")
def _plan_wa(*, num_old: int, num_classes: int, base_loss: Optional[nn.Module] = None,
             replay: Optional[bool] = None, eval_classifier: str = "auto", temperature: float = 2.0,
             wa_clip: bool = True, wa_scale_bias: bool = False, **_: Any) -> IncrementalPlan:
    loss = WALoss(num_old=num_old, num_classes=num_classes, temperature=temperature, base_loss=base_loss)

    def post(model: nn.Module) -> Dict[str, Any]:
        if num_old == 0 or num_old == num_classes:
            return {}
        return {"wa_gamma": weight_align(getattr(model, "classifier", model), num_old, scale_bias=wa_scale_bias)}

    return IncrementalPlan(method="wa", num_old=num_old, num_classes=num_classes, loss=loss,
                           replay=_replay_choice(replay, True), needs_teacher=num_old > 0,
                           eval_classifier=_eval_choice(eval_classifier, "head"), clip_weights=bool(wa_clip),
                           post_training=post,
                           options={"temperature": loss.temperature, "wa_clip": bool(wa_clip),
                                    "wa_scale_bias": bool(wa_scale_bias)})


_ALL_OPTIONS = ("replay", "eval_classifier", "temperature", "lwf_lambda", "lwf_ce", "wa_clip", "wa_scale_bias")


def build_incremental(method: str, *, num_old: int, num_classes: int, base_loss: Optional[nn.Module] = None,
                      **options: Any) -> IncrementalPlan:
    """The :class:`IncrementalPlan` of ``method`` (registry :data:`INCREMENTAL_METHODS`) for a
    session with ``num_old`` learned and ``num_classes`` total classes.  ``base_loss`` is the
    run's classification loss (built for the ``num_classes`` classes of the training set), used
    by finetune, lwf (``lwf_ce=all``, or built for the new classes with ``lwf_ce=new``) and wa.
    ``options``: ``replay`` (None = the method's default), ``eval_classifier`` (auto|head|nme),
    ``temperature``, ``lwf_lambda``, ``lwf_ce``, ``wa_clip``, ``wa_scale_bias``; a key not in
    this list is a ConfigError (options another method reads are accepted and ignored)."""
    unknown = sorted(set(options) - set(_ALL_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown incremental option(s) {', '.join(unknown)}; valid: {', '.join(_ALL_OPTIONS)}")
    if not 0 <= int(num_old) <= int(num_classes):
        raise ConfigError(f"an incremental session needs 0 <= num_old ({num_old}) <= num_classes ({num_classes})")
    builder = INCREMENTAL_METHODS.get(method)
    return builder(num_old=int(num_old), num_classes=int(num_classes), base_loss=base_loss, **options)


# ============================================================================ metrics
def per_class_accuracy(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Recall of each class 0..K-1 (float64); NaN for a class without test samples."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    n = np.bincount(t, minlength=num_classes)[:num_classes].astype(np.float64)
    hit = np.bincount(t[t == p], minlength=num_classes)[:num_classes].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hit / np.where(n > 0, n, 1.0), np.nan)


def _group(t: np.ndarray, p: np.ndarray, pc: np.ndarray, cls: np.ndarray) -> Dict[str, Any]:
    sel = np.isin(t, cls)
    tested = cls[np.isfinite(pc[cls])] if cls.size else cls
    return {
        "acc": float((t[sel] == p[sel]).mean()) if sel.any() else None,
        "macc": float(np.mean(pc[tested])) if tested.size else None,
        "n_classes": int(cls.size),
        "n_classes_tested": int(tested.size),
        "n_samples": int(sel.sum()),
    }


def session_metrics(y_true: Sequence[int], y_pred: Sequence[int], *, num_old: int,
                    num_classes: int) -> Dict[str, Dict[str, Any]]:
    """Accuracy (``acc``: correct / samples of the group) and ``macc`` (mean recall of the
    group's classes with test samples) on the ``old`` classes (indices ``< num_old``), the
    ``new`` ones and ``all``; predictions are over all classes (an old sample predicted as a new
    class is wrong).  An empty group gives None, never 0."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"true labels must be within 0..{num_classes - 1}")
    pc = per_class_accuracy(t, p, num_classes)
    k = int(num_old)
    return {
        "old": _group(t, p, pc, np.arange(0, k)),
        "new": _group(t, p, pc, np.arange(k, num_classes)),
        "all": _group(t, p, pc, np.arange(num_classes)),
    }


def _none_if_nan(v: float) -> Optional[float]:
    return None if v is None or not math.isfinite(v) else float(v)


def session_record(*, session: int, classes: Sequence[Any], num_old: int, y_true: Sequence[int],
                   y_pred: Sequence[int], extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One session's entry of the chain history (JSON-ready): ``session``, ``classes`` (original
    values in the model's order), ``num_old``, ``per_class_acc`` (aligned with ``classes``; null
    without test samples) and the :func:`session_metrics` groups ``old``, ``new``, ``all``."""
    k = len(classes)
    pc = per_class_accuracy(y_true, y_pred, k)
    rec = {"session": int(session), "classes": [_py(c) for c in classes], "num_old": int(num_old),
           "per_class_acc": [_none_if_nan(v) for v in pc.tolist()]}
    rec.update(session_metrics(y_true, y_pred, num_old=num_old, num_classes=k))
    if extra:
        rec.update(extra)
    return rec


def accuracy_table(history: Sequence[Dict[str, Any]]) -> Tuple[np.ndarray, List[Any], np.ndarray]:
    """From a chain history (:func:`session_record` entries, in session order): ``table``
    (S, K) of per-class accuracies (NaN where a class was not learned yet or had no test
    sample), the classes (in order of first appearance) and ``learned_at`` (K,) (the session
    index in which each class first appears)."""
    classes: List[Any] = []
    learned: List[int] = []
    for s, rec in enumerate(history):
        for c in rec["classes"]:
            if c not in classes:
                classes.append(c)
                learned.append(s)
    pos = {c: k for k, c in enumerate(classes)}
    table = np.full((len(history), len(classes)), np.nan)
    for s, rec in enumerate(history):
        for c, a in zip(rec["classes"], rec["per_class_acc"]):
            table[s, pos[c]] = np.nan if a is None else float(a)
    return table, classes, np.asarray(learned, dtype=np.int64)


def average_incremental_accuracy(accuracies: Sequence[Optional[float]]) -> Optional[float]:
    """Average incremental accuracy (Rebuffi et al. 2017): the mean, over the sessions so far
    (the base session included), of the accuracy on all classes learned by then."""
    vals = [float(a) for a in accuracies if a is not None and math.isfinite(float(a))]
    return float(np.mean(vals)) if vals else None


def forgetting(table: np.ndarray, learned_at: Sequence[int], *, session: Optional[int] = None,
               groups: Optional[Sequence[Sequence[int]]] = None) -> Tuple[Optional[float], np.ndarray]:
    """Forgetting (Chaudhry et al. 2018) after ``session`` (default the last row of ``table``):
    for each item ``j`` learned before it, ``f_j = max_{l in [learned_at_j, session-1]} a_{l,j}
    - a_{session,j}``; returns (the mean over those items, or None if there is none; ``f`` per
    item, NaN for the others).

    Items are classes (the columns of ``table``), or with ``groups`` (lists of column indices,
    e.g. each session's classes) tasks whose accuracy is the mean of their classes' accuracies.
    A class without a test sample in a session is left out of that session's value."""
    a = np.asarray(table, dtype=np.float64)
    first = np.asarray(learned_at, dtype=np.int64)
    if groups is not None:
        cols = []
        firsts = []
        for g in groups:
            g = list(g)
            with np.errstate(all="ignore"):
                cols.append(np.array([np.nanmean(a[s, g]) if np.isfinite(a[s, g]).any() else np.nan
                                      for s in range(a.shape[0])]))
            firsts.append(int(first[g].max()) if g else 0)
        a = np.stack(cols, axis=1) if cols else np.zeros((a.shape[0], 0))
        first = np.asarray(firsts, dtype=np.int64)
    k = a.shape[0] - 1 if session is None else int(session)
    if not 0 <= k < a.shape[0]:
        raise ValueError(f"session {session} is not within 0..{a.shape[0] - 1}")
    f = np.full(a.shape[1], np.nan)
    for j in range(a.shape[1]):
        if first[j] >= k or not math.isfinite(a[k, j]):
            continue
        prev = a[first[j]:k, j]
        prev = prev[np.isfinite(prev)]
        if prev.size:
            f[j] = prev.max() - a[k, j]
    done = f[np.isfinite(f)]
    return (float(done.mean()) if done.size else None), f


def chain_summary(history: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Chain-level figures for results.json's ``incremental`` block: ``average_incremental_acc``
    and ``_macc`` (over ``all``), class-level ``forgetting`` (after the last session, per class,
    and after each session: ``forgetting_per_session``, None for the base), task-level
    ``forgetting_task`` (tasks = the classes each session added) and the per-session
    ``old/new/all`` accuracies."""
    table, classes, learned = accuracy_table(history)
    f_mean, f_cls = forgetting(table, learned) if len(history) else (None, np.zeros(0))
    groups = [list(np.flatnonzero(learned == s)) for s in range(len(history))]
    groups = [g for g in groups if g]
    f_task, _ = forgetting(table, learned, groups=groups) if len(history) else (None, None)
    return {
        "sessions": len(history),
        "average_incremental_acc": average_incremental_accuracy([h["all"]["acc"] for h in history]),
        "average_incremental_macc": average_incremental_accuracy([h["all"]["macc"] for h in history]),
        "forgetting": f_mean,
        "forgetting_per_session": [forgetting(table, learned, session=k)[0] for k in range(len(history))],
        "forgetting_task": f_task,
        "forgetting_per_class": {str(c): _none_if_nan(v) for c, v in zip(classes, f_cls.tolist())
                                 if math.isfinite(v)},
        "per_session": [{"session": h["session"], "num_classes": len(h["classes"]),
                         **{g: {"acc": h[g]["acc"], "macc": h[g]["macc"]} for g in ("old", "new", "all")}}
                        for h in history],
    }


# ============================================================================ figure
def plot_session_accuracy(history: Sequence[Dict[str, Any]], path_stem: Union[str, Path], *,
                          metric: str = "acc", panel_mm: float = 85.0, panel_scale: float = 1.0,
                          dpi: float = 300.0) -> List[Path]:
    """Accuracy per session on all, old and new classes (``metric`` 'acc' or 'macc'), in the
    journal style of :mod:`imbalance.plotting_style`; writes ``<path_stem>.png`` and ``.pdf``
    and returns their paths.  Old classes have no value at the base session (shown as a gap)."""
    from . import plotting_style as ps  # matplotlib only when a figure is drawn

    if metric not in ("acc", "macc"):
        raise ConfigError(f"plot_session_accuracy: metric must be 'acc' or 'macc', got {metric!r}")
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    x = np.asarray([h["session"] for h in history], dtype=float)
    series = [("all", "All classes", ps.OKABE_ITO["black"], "o", "-"),
              ("old", "Old classes", ps.OKABE_ITO["blue"], "s", "-"),
              ("new", "New classes", ps.OKABE_ITO["vermillion"], "^", "--")]
    out: List[Path] = []
    ft = logging.getLogger("fontTools")
    if ft.level == logging.NOTSET:
        ft.setLevel(logging.WARNING)
    with ps.journal_style():
        fig, ax = ps.new_figure(panel_mm, panel_scale, 0.62)
        for key, label, color, marker, ls in series:
            y = np.asarray([np.nan if h[key][metric] is None else 100.0 * h[key][metric] for h in history])
            if np.isfinite(y).any():
                ax.plot(x, y, color=color, marker=marker, ls=ls, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{int(s)}\n({len(h['classes'])} cl.)" for s, h in zip(x, history)])
        ax.set_xlabel("Session (classes learned)")
        ax.set_ylabel("Accuracy (%)" if metric == "acc" else "Mean recall (%)")
        ax.set_ylim(0, 105)
        if len(x) == 1:
            ax.set_xlim(x[0] - 0.5, x[0] + 0.5)
        ax.legend(loc="lower left", fontsize=ps.SMALL_SIZE)
        ps.declutter_tick_labels(fig)
        for ext in ("png", "pdf"):
            p = stem.with_suffix("." + ext)
            fig.savefig(p, dpi=dpi)
            out.append(p)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out
