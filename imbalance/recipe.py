"""Checks and decisions about the COMBINATION of methods a run asks for.

Each component is faithful on its own; these rules keep a combination faithful too:

- :func:`resolve_head`: ``model.head=auto`` is a linear head, or the normalised (cosine) head when
  the stage's loss is LDAM, as the official LDAM-DRW code always pairs them; an explicit
  non-normalised head with LDAM is refused (``CE(s * (z - m))`` on raw logits has no fixed margin
  scale and ``s`` times the gradient of CE).
- :func:`stacked_corrections`: a re-weighting or prior-based loss with a re-balancing sampler, or
  a logit-adjusted head/loss with post-hoc adjustment, corrects the same imbalance twice; it runs
  (the seed's own "improved" recipe does it) with one warning that says what is stacked and how
  strongly.
- :func:`unused_user_keys`: a key the user set (on the command line or in a config file, never a
  default) that the chosen methods do not read gets a warning naming it.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

NORMED_HEADS = ("cosine_ldam",)


# ------------------------------------------------------------------------------------- heads
def _canonical_loss(name: str) -> str:
    from .losses import LOSSES

    return LOSSES.canonical(str(name))


def resolve_head(head: str, loss_name: str, *, key: str = "model.head") -> str:
    """The head a stage whose loss is ``loss_name`` uses: ``auto`` -> ``cosine_ldam`` for
    LDAMLoss, else ``linear``; an explicit head is kept, except a non-normalised one with LDAM
    (a ConfigError)."""
    from .heads import HEADS

    is_ldam = _canonical_loss(loss_name) == "LDAMLoss"
    if str(head) == "auto":
        return "cosine_ldam" if is_ldam else "linear"
    name = HEADS.canonical(str(head))
    if is_ldam and name not in NORMED_HEADS:
        raise ConfigError(f"{key}={head} with LDAMLoss is not LDAM: the official code pairs the margin loss with a "
                          f"normalised (cosine) head; use {key}=auto or {key}=cosine_ldam")
    return name


# ------------------------------------------------------------------------- stacked corrections
def loss_class_weights(loss: Any, class_counts: Sequence[int]) -> Optional[np.ndarray]:
    """The per-class weights a re-weighting loss applies (at the end of its schedule), or None."""
    from .losses import CombinedLoss, ProgressiveLoss

    if isinstance(loss, CombinedLoss):
        return None
    if isinstance(loss, ProgressiveLoss):  # its strongest (last) weights
        n = np.asarray(class_counts, dtype=np.float64)
        return None if loss.power_end == 0 else n ** (-float(loss.power_end))
    for attr in ("weight", "drw_weight"):
        w = getattr(loss, attr, None)
        if w is not None and hasattr(w, "numel") and w.numel() > 1:
            if attr == "drw_weight" and getattr(loss, "drw_start", None) is None:
                continue
            return w.detach().cpu().double().numpy()
    alpha = getattr(loss, "alpha", None)
    if alpha is not None and hasattr(alpha, "numel") and alpha.numel() > 1:
        return alpha.detach().cpu().double().numpy()
    return None


def is_prior_based(loss: Any) -> bool:
    """BalancedSoftmaxLoss / LogitAdjustmentLoss with the training prior (not the sampled one)."""
    return type(loss).__name__ in ("BalancedSoftmaxLoss", "LogitAdjustmentLoss") and \
        getattr(loss, "prior", "train") == "train"


def sampler_rebalances(sampler: Any, class_counts: Sequence[int], epochs: int) -> Optional[np.ndarray]:
    """The strongest per-class draw probabilities of ``sampler`` over the stage, or None when it
    never departs from instance-balanced sampling."""
    if sampler is None or not hasattr(sampler, "class_probabilities_at"):
        return None
    n = np.asarray(class_counts, dtype=np.float64)
    inst = n / n.sum()
    worst, spread = None, 0.0
    for e in sorted({0, max(0, int(epochs) - 1)}):
        p = np.asarray(sampler.class_probabilities_at(e), dtype=np.float64)
        mask = n > 0
        d = float(np.abs(p[mask] - inst[mask]).max())
        if d > spread + 1e-12:
            worst, spread = p, d
    return worst if spread > 1e-9 else None


def stacked_corrections(*, stage: int, loss: Any, loss_name: str, sampler: Any, sampler_name: str,
                        class_counts: Sequence[int], epochs: int) -> List[str]:
    """One message per correction of the same imbalance applied twice in a stage (empty: none).

    The measure is each class's share of the loss, ``p_c * w_c`` (its draw probability times its
    loss weight): cRT (class-balanced sampling, plain CE) and instance sampling with ``1/n``
    weights both give every class the same share (ratio 1); stacking both makes the rarest
    class's share ``n_max / n_min`` times the most frequent one's."""
    n = np.asarray(class_counts, dtype=np.float64)
    if sampler_rebalances(sampler, n, epochs) is None:
        return []
    w = loss_class_weights(loss, n)
    if w is not None:
        present = np.flatnonzero(n > 0)
        rare, common = present[np.argmin(n[present])], present[np.argmax(n[present])]
        ratios = []
        for e in sorted({0, max(0, int(epochs) - 1)}):
            share = np.asarray(sampler.class_probabilities_at(e), dtype=np.float64) * w
            ratios.append(float(share[rare] / share[common]))
        lo, hi = min(ratios), max(ratios)
        span = f"{lo:.3g}x" if abs(hi - lo) < 1e-6 * hi else f"{lo:.3g}x to {hi:.3g}x"
        return [f"stage {stage}: the re-weighting loss {loss_name} and the re-balancing sampler {sampler_name} "
                f"stack two corrections of the same imbalance: the rarest class's share of the loss is {span} the "
                f"most frequent class's (either correction alone gives about 1x, as cRT does); intended?"]
    if is_prior_based(loss):
        return [f"stage {stage}: {loss_name} corrects for the training prior, but the sampler {sampler_name} already "
                f"re-balances the batches; set {'loss' if stage == 1 else 'stage2'}.prior=sampled to use the "
                f"prior the batches really have (Ren et al. 2020)"]
    return []


def stacked_logit_adjustment(*, head: str, loss_names: Iterable[str], posthoc: bool) -> List[str]:
    """A logit-adjusted head or prior-corrected loss followed by post-hoc logit adjustment."""
    if not posthoc:
        return []
    msgs = []
    if head == "logit_adjust":
        msgs.append("model.head=logit_adjust already learns the balanced logits (eval mode removes the prior); "
                    "post-hoc logit adjustment subtracts the prior a second time; intended?")
    for name in loss_names:
        if _canonical_loss(name) in ("BalancedSoftmaxLoss", "LogitAdjustmentLoss"):
            msgs.append(f"{name} already trains logits corrected for the prior; post-hoc logit adjustment "
                        "corrects them a second time; intended?")
    return msgs


# -------------------------------------------------------------------------------- user keys
def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                out.update(_flatten(v, key))
            else:
                out[key] = v
    return out


def user_set_keys(cfg: Any, overrides: Sequence[str] = ()) -> Set[str]:
    """The dotted keys the user chose: named in a command-line override, or with a value that
    differs from the schema's default (edited in a config file)."""
    from omegaconf import OmegaConf

    from .config import Config

    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    plain.pop("hydra", None)
    default = _flatten(OmegaConf.to_container(OmegaConf.structured(Config), resolve=True))
    cur = _flatten(plain)
    keys = {k for k, v in cur.items() if k in default and v != default[k]}
    for o in overrides:
        k = str(o).split("=", 1)[0].lstrip("+~")
        if k in cur or any(c.startswith(k + ".") for c in cur):
            keys.add(k)
    return keys


# loss-section config keys -> loss keyword (DESIGN.md)
LOSS_KEYMAP = {
    "focal_gamma": "gamma", "focal_alpha": "alpha", "cb_beta": "beta", "cb_base": "base",
    "ldam_max_margin": "max_margin", "ldam_scale": "scale", "ldam_drw_start": "drw_start",
    "logit_tau": "tau", "cost_strategy": "cost_strategy", "cost_matrix": "cost_matrix", "prior": "prior",
}


def loss_reads(loss_name: str, keyword: str, combined_parts: Any = None) -> bool:
    """Whether loss ``loss_name`` (or, for CombinedLoss, one of its parts) takes ``keyword``."""
    from .losses import LOSSES, CombinedLoss

    cls = LOSSES.get(str(loss_name))
    if cls is CombinedLoss:
        return keyword in CombinedLoss.shared_keywords(combined_parts)
    return keyword in inspect.signature(cls).parameters


_SAMPLER_KEYS = {"alpha": ("power",), "alpha_start": ("progressive_power",), "alpha_end": ("progressive_power",),
                 "drs_start": ("drs",), "drs_beta": ("drs",)}
_SCHEDULER_KEYS = {"step_size": ("step",), "gamma": ("step",), "plateau_patience": ("plateau",),
                   "plateau_factor": ("plateau",), "restart_period": ("cosine_warmup_restarts",),
                   "restart_mult": ("cosine_warmup_restarts",)}


def unused_user_keys(cfg: Any, user_keys: Set[str]) -> List[Tuple[str, str]]:
    """``(key, why)`` for every user-set key that the configured methods do not read."""
    from .samplers import SAMPLERS

    out: List[Tuple[str, str]] = []
    s1_loss = cfg.loss.name
    s2 = cfg.stage2
    parts = (cfg.loss.params or {}).get("losses") if hasattr(cfg.loss, "params") else None

    def sampler_name(name: str) -> str:
        return SAMPLERS.canonical(str(name))

    for key in sorted(user_keys):
        sect, _, leaf = key.partition(".")
        why = None
        if sect == "loss" and leaf in LOSS_KEYMAP:
            kw = LOSS_KEYMAP[leaf]
            s2_inherits = bool(s2.enabled) and s2.get(leaf, None) is None and loss_reads(s2.loss, kw, parts)
            if not loss_reads(s1_loss, kw, parts) and not s2_inherits:
                why = f"{s1_loss} has no {kw!r}" + (f" and stage 2's {s2.loss} does not inherit it" if s2.enabled else "")
        elif sect == "stage2" and leaf and not s2.enabled and leaf != "enabled":
            why = "stage 2 is disabled (stage2.enabled=false)"
        elif sect == "stage2" and leaf in LOSS_KEYMAP:
            if not loss_reads(s2.loss, LOSS_KEYMAP[leaf], parts if s2.loss == s1_loss else None):
                why = f"stage 2's loss {s2.loss} has no {LOSS_KEYMAP[leaf]!r}"
        elif sect in ("sampling", "stage2") and leaf in _SAMPLER_KEYS:
            name = sampler_name(cfg.sampling.name if sect == "sampling" else s2.sampler)
            if name not in _SAMPLER_KEYS[leaf]:
                why = f"the sampler {name} does not use it (used by: {', '.join(_SAMPLER_KEYS[leaf])})"
        elif sect == "scheduler" and leaf in _SCHEDULER_KEYS and cfg.scheduler.name not in _SCHEDULER_KEYS[leaf]:
            why = f"scheduler.name={cfg.scheduler.name} does not use it"
        elif key in ("training.momentum",) and str(cfg.training.optimizer).lower() != "sgd":
            why = f"training.optimizer={cfg.training.optimizer} has no momentum"
        elif key == "stage2.momentum" and str(s2.optimizer).lower() != "sgd":
            why = f"stage2.optimizer={s2.optimizer} has no momentum"
        elif key == "stage2.clf_lr_mult" and s2.mode != "finetune":
            why = f"only stage2.mode=finetune uses it (mode is {s2.mode})"
        elif key in ("stage2.reinit_classifier",) and s2.mode != "crt":
            why = f"only stage2.mode=crt uses it (mode is {s2.mode})"
        elif key == "stage3.tau_norm" and cfg.stage3.mode not in ("tau_norm", "both"):
            why = f"stage3.mode={cfg.stage3.mode} does not tau-normalise"
        elif key == "stage3.logit_tau" and cfg.stage3.mode not in ("logit_adjust", "both"):
            why = f"stage3.mode={cfg.stage3.mode} does not adjust logits"
        elif key == "evaluation.eval_logit_tau" and cfg.evaluation.eval_logit_adjust != "posthoc":
            why = "evaluation.eval_logit_adjust is not posthoc"
        elif key.startswith("data.synthetic.") and cfg.data.path_train is not None:
            why = "data.path_train names a file, so the built-in data is not used"
        elif key.startswith("data.augment.") and key != "data.augment.enabled" and not cfg.data.augment.enabled:
            why = "data.augment.enabled is false"
        elif key == "compile_cache_dir" and str(cfg.compile).lower() == "false":
            why = "compile=false: nothing is compiled"
        elif key.startswith("model.head_params.") and str(cfg.model.head) in ("auto", "linear"):
            why = f"model.head={cfg.model.head} has no options"
        elif key in ("early_stopping.patience", "early_stopping.min_delta", "early_stopping.min_epochs") and \
                not cfg.early_stopping.enabled:
            why = "early_stopping.enabled is false"
        if why:
            out.append((key, why))
    return out


def warn_unused_user_keys(cfg: Any, overrides: Sequence[str] = ()) -> List[str]:
    """Log one warning per user-set key that no configured method reads; return the keys."""
    found = unused_user_keys(cfg, user_set_keys(cfg, overrides))
    for key, why in found:
        log.warning("%s is set but not used: %s", key, why)
    return [k for k, _ in found]
