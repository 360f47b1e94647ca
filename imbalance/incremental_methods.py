"""Class-incremental methods: what one session trains with, as plain modules and functions.

Registry :data:`INCREMENTAL_METHODS`, key ``incremental.method``:

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
the balanced sampler is what removes the new/old count bias). ``mode=incremental`` runs it
when ``stage2.enabled=true`` (:mod:`imbalance.incremental_run`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .heads import CosineMarginClassifier, head_linear
from .registry import Registry
from .teacher import BoundTeacherLoss, TeacherHook  # public here too (shared with imbalance.distill)

logger = logging.getLogger(__name__)

__all__ = [
    "INCREMENTAL_METHODS",
    "OPTION_KEYS",
    "IncrementalPlan",
    "build_incremental",
    "method_options",
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
]


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


class _WrapsBaseLoss(nn.Module):
    """A loss built around the run's classification loss ``base_loss``: ``set_epoch`` reaches it
    (e.g. LDAM's deferred re-weighting)."""

    base_loss: nn.Module

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base_loss, "set_epoch"):
            self.base_loss.set_epoch(epoch)


class FinetuneLoss(_WrapsBaseLoss):
    """Fine-tuning baseline: the run's classification loss ``base_loss(logits, targets)``
    (default cross-entropy) on new data + replayed exemplars; the teacher is not used."""

    def __init__(self, *, base_loss: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.base_loss = base_loss if base_loss is not None else nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.base_loss(logits, targets)


class LwFLoss(_WrapsBaseLoss):
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


class WALoss(_WrapsBaseLoss):
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


#: The ``incremental.*`` keys a method may read (:func:`build_incremental` options).
OPTION_KEYS = ("replay", "eval_classifier", "temperature", "lwf_lambda", "lwf_ce", "wa_clip", "wa_scale_bias")


def build_incremental(method: str, *, num_old: int, num_classes: int, base_loss: Optional[nn.Module] = None,
                      **options: Any) -> IncrementalPlan:
    """The :class:`IncrementalPlan` of ``method`` (registry :data:`INCREMENTAL_METHODS`) for a
    session with ``num_old`` learned and ``num_classes`` total classes.  ``base_loss`` is the
    run's classification loss (built for the ``num_classes`` classes of the training set), used
    by finetune, lwf (``lwf_ce=all``, or built for the new classes with ``lwf_ce=new``) and wa.
    ``options``: ``replay`` (None = the method's default), ``eval_classifier`` (auto|head|nme),
    ``temperature``, ``lwf_lambda``, ``lwf_ce``, ``wa_clip``, ``wa_scale_bias``; a key not in
    this list is a ConfigError (options another method reads are accepted and ignored)."""
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(f"unknown incremental option(s) {', '.join(unknown)}; valid: {', '.join(OPTION_KEYS)}")
    if not 0 <= int(num_old) <= int(num_classes):
        raise ConfigError(f"an incremental session needs 0 <= num_old ({num_old}) <= num_classes ({num_classes})")
    builder = INCREMENTAL_METHODS.get(method)
    return builder(num_old=int(num_old), num_classes=int(num_classes), base_loss=base_loss, **options)


