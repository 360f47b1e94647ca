"""From the ``loss:`` and ``stage2:`` sections to loss modules (the loss half of :mod:`imbalance.builders`).

The config keys map onto each loss's keywords (:data:`imbalance.recipe.LOSS_KEYMAP`); stage 2's
null values fall back to ``loss:``; LDAM is adapted to the cosine head it is paired with; a
``prior=sampled`` loss gets the class distribution its sampler draws; label smoothing on a loss
that has none is refused.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Dict, Optional, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import recipe
from .errors import ConfigError
from .recipe import LOSS_KEYMAP

log = logging.getLogger("imbalance.builders")

__all__ = ["stage2_loss_name", "stage2_head", "loss_kwargs", "adapt_loss_to_head", "build_loss", "stage2_loss"]


def stage2_loss_name(cfg: DictConfig) -> str:
    """Stage 2's loss: ``stage2.loss``, or LabelAwareSmoothing with ``stage2.label_aware_smoothing``."""
    return recipe.stage2_loss_name(cfg.stage2.loss, bool(cfg.stage2.label_aware_smoothing))


def stage2_head(cfg: DictConfig) -> Optional[str]:
    """The head stage 2 swaps in, or None: with ``model.head=auto`` and an LDAM stage-2 loss, cRT
    re-initialises the classifier as the normalised head LDAM needs. Fine-tuning and LWS keep the
    trained head, so they need a normalised one already (else a ConfigError)."""
    s2 = cfg.stage2
    if recipe.resolve_head("auto", stage2_loss_name(cfg)) != "cosine_ldam":
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
    name = stage2_loss_name(cfg)
    explicit = OmegaConf.to_container(cfg.loss.params, resolve=True) if name == cfg.loss.name else {}
    key = "stage2.label_smoothing" if s2.label_smoothing is not None else "training.label_smoothing (inherited by stage 2)"
    return build_loss(name, class_counts, mapped, explicit, head=head, sampler=sampler, epochs=int(s2.epochs),
                      smoothing_key=key, prior_key="stage2.prior")
