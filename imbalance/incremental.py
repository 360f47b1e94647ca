"""Class-incremental learning, the data and the classifier: new emitters (classes) added to a
trained model, session by session.

Sessions and class order
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
    :func:`grow_model_classifier` does it on ``model.classifier``; :func:`new_row_init` gives
    the initialisation of the new rows that ``model.init`` names; :func:`plain_head` turns a
    trained classifier chain (stage-2/3 wrappers) back into a head that can grow;
    :func:`frozen_copy` makes the teacher.

The methods (LwF, iCaRL, WA, fine-tuning) are in :mod:`imbalance.incremental_methods`, the
metrics of a chain of sessions in :mod:`imbalance.incremental_metrics`, the exemplar memory in
:mod:`imbalance.exemplars` and ``mode=incremental`` itself in :mod:`imbalance.incremental_run`.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, DataError
from .heads import CosineMarginClassifier, LogitAdjustedLinear, TemperatureScaledClassifier

logger = logging.getLogger(__name__)

__all__ = [
    "session_classes",
    "next_session",
    "samples_of_classes",
    "merge_classes",
    "label_positions",
    "validate_new_session",
    "grow_classifier",
    "grow_model_classifier",
    "new_row_init",
    "plain_head",
    "frozen_copy",
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


# ============================================================================ new rows, plain heads
def _xavier_rows(weight: torch.Tensor, bias: Optional[torch.Tensor], num_classes: int) -> None:
    a = math.sqrt(6.0 / (weight.shape[1] + int(num_classes)))
    nn.init.uniform_(weight, -a, a)
    if bias is not None:
        nn.init.zeros_(bias)


def _row_init_xavier(num_classes: int) -> Callable:
    def init(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        _xavier_rows(weight, bias, num_classes)
    return init


def _row_init_balanced_xavier(num_classes: int) -> Callable:
    def init(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        _xavier_rows(weight, bias, num_classes)
        norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        weight.mul_(norms.mean() / norms)
    return init


def _row_init_kaiming(num_classes: int) -> Callable:
    def init(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        nn.init.normal_(weight, 0.0, math.sqrt(2.0 / weight.shape[1]))
        if bias is not None:
            nn.init.zeros_(bias)
    return init


_ROW_INITS: Dict[str, Optional[Callable[[int], Callable]]] = {
    "default": None,
    "xavier": _row_init_xavier,
    "balanced_xavier": _row_init_balanced_xavier,
    "kaiming": _row_init_kaiming,
}


def new_row_init(init_type: str, *, num_classes: int) -> Optional[Callable[[torch.Tensor, Optional[torch.Tensor]], None]]:
    """The initialisation of a grown head's new rows that ``model.init`` names, as
    :func:`grow_classifier`'s ``init`` (None for ``default``: the head type's own, i.e.
    ``nn.Linear``'s; Xavier-uniform for a cosine head).

    ``xavier``: ``U(-a, a)`` with ``a = sqrt(6 / (D + K))`` (``K`` = ``num_classes``, the grown
    head's class count, as Xavier on the whole ``(K, D)`` matrix), bias 0; ``balanced_xavier``:
    then each new row rescaled to the new rows' mean norm (:mod:`imbalance.initialization`);
    ``kaiming``: ``N(0, 2 / D)`` (fan-in, ReLU gain), bias 0."""
    if init_type not in _ROW_INITS:
        raise ConfigError(f"model.init={init_type!r} is not valid; valid: {', '.join(_ROW_INITS)}")
    make = _ROW_INITS[init_type]
    return None if make is None else make(int(num_classes))


def plain_head(classifier: nn.Module) -> Tuple[nn.Module, List[str]]:
    """A head :func:`grow_classifier` can grow, from a trained classifier chain
    (:mod:`imbalance.classifier_chain`), and notes (one line each) on what was changed.

    - tau-norm (``f @ W_tau^T``, no bias) becomes ``nn.Linear(bias=False)`` with ``W_tau``:
      the same logits;
    - LWS (``s_c * (w_c f + b_c)``) around a linear head is folded into it: rows ``s_c w_c``,
      bias ``s_c b_c``: the same logits;
    - post-hoc logit adjustment and temperature scaling (outputs computed from the parent's
      class counts / validation split) are dropped: the session trains the head under them,
      and its own stage 3 may add them again."""
    from .classifier_chain import LogitAdjustedOutput, LWSClassifier, TauNormalizedLinear, TemperatureScaledOutput

    notes: List[str] = []
    node = classifier
    while isinstance(node, (LogitAdjustedOutput, TemperatureScaledOutput)):
        what = "logit adjustment" if isinstance(node, LogitAdjustedOutput) else "temperature scaling"
        notes.append(f"the parent's {what} is dropped (the new session trains the head without it)")
        node = node.head
    scales = None
    if isinstance(node, LWSClassifier):
        scales = node.scales.detach()
        node = node.head
    if isinstance(node, TauNormalizedLinear):
        lin = nn.Linear(node.weight.shape[1], node.weight.shape[0], bias=False).to(node.weight.device)
        with torch.no_grad():
            lin.weight.copy_(node.weight)
        notes.append(f"the parent's tau-normalised classifier (tau={node.tau:g}) continues as a linear head "
                     f"without bias")
        node = lin
    if scales is not None:
        if type(node) is not nn.Linear:
            raise ConfigError(f"cannot continue a parent whose LWS scales wrap a {type(node).__name__} head; "
                              f"incremental sessions need a plain head (train the parent with stage2.mode=crt)")
        lin = nn.Linear(node.in_features, node.out_features, bias=node.bias is not None)
        lin = lin.to(device=node.weight.device, dtype=node.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(node.weight * scales[:, None].to(node.weight.dtype))
            if node.bias is not None:
                lin.bias.copy_(node.bias * scales.to(node.bias.dtype))
        notes.append("the parent's LWS scales are folded into the head's rows")
        node = lin
    return node, notes
