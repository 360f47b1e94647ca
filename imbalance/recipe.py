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
- :func:`check_method_combinations`: batch mixing, SAM/ImbSAM, shift BN, MaxNorm and the
  prototype classifiers refuse the combinations they cannot run, in one line each.
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
    """BalancedSoftmaxLoss / LogitAdjustmentLoss with the training prior (not the sampled one), or
    VSLoss with an additive term ``tau * log(pi)``, ``tau > 0`` (always the training prior)."""
    if type(loss).__name__ == "VSLoss":
        return float(getattr(loss, "tau", 0.0)) > 0
    return type(loss).__name__ in ("BalancedSoftmaxLoss", "LogitAdjustmentLoss") and \
        getattr(loss, "prior", "train") == "train"


def scales_logits_by_class(loss: Any) -> bool:
    """VSLoss / CDTLoss with ``gamma > 0``: logits divided by ``(n_max / n_c)^gamma`` in training."""
    return type(loss).__name__ in ("VSLoss", "CDTLoss") and float(getattr(loss, "vs_gamma", 0.0)) > 0


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
    section = "loss" if stage == 1 else "stage2"
    if is_prior_based(loss) and type(loss).__name__ == "VSLoss":
        return [f"stage {stage}: {loss_name}'s additive term tau * log(prior) ({section}.logit_tau="
                f"{float(loss.tau):g}) corrects for the training prior, but the sampler {sampler_name} already "
                f"re-balances the batches; intended? ({section}.logit_tau=0 keeps only its multiplicative part)"]
    if is_prior_based(loss):
        return [f"stage {stage}: {loss_name} corrects for the training prior, but the sampler {sampler_name} already "
                f"re-balances the batches; set {section}.prior=sampled to use the "
                f"prior the batches really have (Ren et al. 2020)"]
    if scales_logits_by_class(loss):
        return [f"stage {stage}: {loss_name} scales the logits by class counts (class-dependent temperatures), but "
                f"the sampler {sampler_name} already re-balances the batches: two corrections of the same imbalance; "
                "intended?"]
    return []


def stacked_logit_adjustment(*, head: str, loss_names: Iterable[str], posthoc: bool,
                             logit_taus: Optional[Sequence[float]] = None) -> List[str]:
    """A logit-adjusted head or prior-corrected loss followed by post-hoc logit adjustment.
    ``logit_taus`` (parallel to ``loss_names``): each loss's ``logit_tau``; VSLoss corrects for
    the prior only with a tau > 0 (unknown: assumed)."""
    if not posthoc:
        return []
    msgs = []
    if head == "logit_adjust":
        msgs.append("model.head=logit_adjust already learns the balanced logits (eval mode removes the prior); "
                    "post-hoc logit adjustment subtracts the prior a second time; intended?")
    names = list(loss_names)
    taus = list(logit_taus) if logit_taus is not None else [None] * len(names)
    for name, tau in zip(names, taus):
        canon = _canonical_loss(name)
        if canon in ("BalancedSoftmaxLoss", "LogitAdjustmentLoss") or (
                canon == "VSLoss" and (tau is None or float(tau) > 0)):
            msgs.append(f"{name} already trains logits corrected for the prior; post-hoc logit adjustment "
                        "corrects them a second time; intended?")
    return msgs


# ------------------------------------------------------------------- refused combinations
def stage2_loss_name(loss: str, label_aware_smoothing: bool) -> str:
    """Stage 2's loss: ``loss``, or LabelAwareSmoothing when ``stage2.label_aware_smoothing`` is on
    (it replaces the cross-entropy; any other stage-2 loss is a ConfigError)."""
    if not label_aware_smoothing:
        return str(loss)
    if _canonical_loss(loss) not in ("CrossEntropy", "LabelAwareSmoothing"):
        raise ConfigError(f"stage2.label_aware_smoothing=true makes stage 2's loss LabelAwareSmoothing (a cross-entropy "
                          f"with per-class smoothing); it cannot replace stage2.loss={loss}: keep stage2.loss="
                          "CrossEntropy")
    return "LabelAwareSmoothing"


def check_method_combinations(*, mix: str = "none", sam: bool = False, sam_mode: str = "sam",
                              accumulation_steps: int = 1, stage2_enabled: bool = False, stage2_mode: str = "crt",
                              shift_bn: bool = False, maxnorm: bool = False,
                              head: str = "linear", eval_classifier: str = "linear", stage3_mode: str = "none",
                              posthoc: bool = False) -> None:
    """Raise a ConfigError (one line) for a combination that cannot run. ``head``: the head the
    last training stage trains. Runtime-dependent refusals (fp16 GradScaler, DDP with ImbSAM, a
    loss without per-sample form) are made when the stage is built
    (:func:`imbalance.stage_extras.make_sam`, :func:`imbalance.mixing.check_loss_compatible`)."""
    if sam and int(accumulation_steps) > 1:
        raise ConfigError(f"training.sam.enabled=true takes two forward/backward passes per optimizer step; it does "
                          f"not combine with training.accumulation_steps={accumulation_steps} (set it to 1)")
    if sam and sam_mode == "imbsam" and str(mix) != "none":
        raise ConfigError(f"training.sam.mode=imbsam splits a batch into head and tail samples by their label; a "
                          f"mixed batch (data.augment.mix.name={mix}) has two labels per sample: use "
                          "training.sam.mode=sam or no mixing")
    if stage2_enabled and shift_bn and stage2_mode == "finetune":
        raise ConfigError("stage2.shift_bn=true lets the BatchNorm statistics of a FROZEN backbone follow the stage-2 "
                          "batches (MiSLAS); stage2.mode=finetune trains the backbone: use stage2.freeze_bn=false "
                          "there, or stage2.mode=crt / crt_lws / lws")
    if stage2_enabled and maxnorm:
        if stage2_mode == "lws":
            raise ConfigError("stage2.maxnorm_thresh caps the class norms of the classifier that stage 2 trains; "
                              "stage2.mode=lws trains per-class scales only: use stage2.mode=crt (weight balancing "
                              "fine-tunes the classifier: stage2.reinit_classifier=false)")
        if head in NORMED_HEADS:
            raise ConfigError(f"stage2.maxnorm_thresh caps the class norms of a linear classifier; the {head} head "
                              "normalises its class vectors already")
    if eval_classifier != "linear":
        if stage3_mode in ("tau_norm", "logit_adjust", "both") or posthoc:
            what = f"stage3.mode={stage3_mode}" if stage3_mode != "none" else "evaluation.eval_logit_adjust=posthoc"
            raise ConfigError(f"evaluation.classifier={eval_classifier} scores by distances to training features, "
                              f"which {what} does not apply to (it adjusts a linear head's weights or logits); use "
                              "stage3.mode=none (stage3.temperature still works)")


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
    "vs_gamma": "vs_gamma", "cdt_gamma": "cdt_gamma", "las_smooth_head": "smooth_head",
    "las_smooth_tail": "smooth_tail", "las_shape": "shape", "las_power": "power",
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


_OPENSET_DATA_KEYS = ("data.path_unknown", "data.synthetic.num_unknown", "data.synthetic.unknown_per_class")


def _openset_unused(cfg: Any, key: str) -> Optional[str]:
    """Why an ``openset.*`` key (or an open-set data key) is not read, or None."""
    o = cfg.openset
    if not o.enabled:
        return "openset.enabled is false"
    if key == "openset.seed" and o.protocol not in ("random", "stratified"):
        return f"openset.protocol={o.protocol} draws nothing at random"
    if key == "openset.num_unknown" and o.unknown_classes:
        return "openset.unknown_classes names the held-out classes"
    if key == "data.synthetic.unknown_per_class" and int(cfg.data.synthetic.num_unknown) == 0:
        return "data.synthetic.num_unknown is 0"
    return None


def unused_user_keys(cfg: Any, user_keys: Set[str]) -> List[Tuple[str, str]]:
    """``(key, why)`` for every user-set key that the configured methods do not read."""
    from .samplers import SAMPLERS

    out: List[Tuple[str, str]] = []
    s1_loss = cfg.loss.name
    s2 = cfg.stage2
    try:
        s2_loss = stage2_loss_name(s2.loss, bool(s2.get("label_aware_smoothing", False)))
    except ConfigError:
        s2_loss = s2.loss
    mix = cfg.data.augment.mix
    sam = cfg.training.sam
    parts = (cfg.loss.params or {}).get("losses") if hasattr(cfg.loss, "params") else None

    def sampler_name(name: str) -> str:
        return SAMPLERS.canonical(str(name))

    for key in sorted(user_keys):
        sect, _, leaf = key.partition(".")
        why = None
        if sect == "loss" and leaf in LOSS_KEYMAP:
            kw = LOSS_KEYMAP[leaf]
            s2_inherits = bool(s2.enabled) and s2.get(leaf, None) is None and loss_reads(s2_loss, kw, parts)
            if not loss_reads(s1_loss, kw, parts) and not s2_inherits:
                why = f"{s1_loss} has no {kw!r}" + (f" and stage 2's {s2_loss} does not inherit it" if s2.enabled else "")
        elif sect == "stage2" and leaf and not s2.enabled and leaf != "enabled":
            why = "stage 2 is disabled (stage2.enabled=false)"
        elif sect == "stage2" and leaf in LOSS_KEYMAP:
            if not loss_reads(s2_loss, LOSS_KEYMAP[leaf], parts if s2_loss == s1_loss else None):
                why = f"stage 2's loss {s2_loss} has no {LOSS_KEYMAP[leaf]!r}"
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
        elif key == "stage2.clf_lr_mult" and s2.mode not in ("finetune", "crt_lws"):
            why = f"only stage2.mode=finetune / crt_lws use it (mode is {s2.mode})"
        elif key in ("stage2.reinit_classifier",) and s2.mode not in ("crt", "crt_lws"):
            why = f"only stage2.mode=crt / crt_lws use it (mode is {s2.mode})"
        elif key == "stage2.maxnorm_every" and s2.maxnorm_thresh is None:
            why = "stage2.maxnorm_thresh is null (MaxNorm is off)"
        elif key == "data.augment.mix" or key.startswith("data.augment.mix."):
            why = _unused_mix_key(leaf.split(".", 2)[-1], mix, bool(s2.enabled))
        elif key.startswith("training.sam.") and key != "training.sam.enabled":
            if not sam.enabled:
                why = "training.sam.enabled is false"
            elif key in ("training.sam.tail_thresh", "training.sam.tail_weight") and sam.mode != "imbsam":
                why = f"only training.sam.mode=imbsam uses it (mode is {sam.mode})"
        elif key.startswith("evaluation.classifier_params.") and cfg.evaluation.classifier == "linear":
            why = "evaluation.classifier=linear (the model's head) has no options"
        elif key == "model.classifier_bias" and resolve_head(cfg.model.head, s1_loss) in NORMED_HEADS:
            why = "the normalised (cosine) head has no bias"
        elif key == "stage3.tau_norm" and cfg.stage3.mode not in ("tau_norm", "both"):
            why = f"stage3.mode={cfg.stage3.mode} does not tau-normalise"
        elif key == "stage3.logit_tau" and cfg.stage3.mode not in ("logit_adjust", "both"):
            why = f"stage3.mode={cfg.stage3.mode} does not adjust logits"
        elif key == "evaluation.eval_logit_tau" and cfg.evaluation.eval_logit_adjust != "posthoc":
            why = "evaluation.eval_logit_adjust is not posthoc"
        elif key.startswith("data.synthetic.") and (cfg.data.path_train is not None or cfg.data.source is not None):
            why = "data.path_train or data.source names the data, so the built-in data is not used"
        elif key == "data.archive_dir" and cfg.data.source is None:
            why = "data.source is null (archive_dir is where ucr:/uea: sources are looked up)"
        elif key == "data.normalize_mode" and not cfg.data.normalize:
            why = "data.normalize is false"
        elif key.startswith("data.augment.") and key != "data.augment.enabled" and not cfg.data.augment.enabled:
            why = "data.augment.enabled is false"
        elif key == "compile_cache_dir" and str(cfg.compile).lower() == "false":
            why = "compile=false: nothing is compiled"
        elif key.startswith("model.head_params.") and str(cfg.model.head) in ("auto", "linear"):
            why = f"model.head={cfg.model.head} has no options"
        elif key in ("early_stopping.patience", "early_stopping.min_delta", "early_stopping.min_epochs") and \
                not cfg.early_stopping.enabled:
            why = "early_stopping.enabled is false"
        elif sect == "incremental" and leaf:
            why = _incremental_unused(cfg, leaf)
        elif key not in ("openset.enabled", "openset") and (sect == "openset" or key in _OPENSET_DATA_KEYS):
            why = _openset_unused(cfg, key)
        elif sect == "distill" and leaf != "teacher" and not cfg.distill.teacher:
            why = "distill.teacher is null (no distillation)"
        elif key in ("distill.bkd_beta", "distill.bkd_start") and cfg.distill.method != "bkd":
            why = f"only distill.method=bkd uses it (method is {cfg.distill.method})"
        elif sect == "model" and leaf in _model_ignores(cfg.model.name):
            why = f"{cfg.model.name} does not use it"
        if why:
            out.append((key, why))
    return out


_MEMORY_KEYS = ("memory_per_class", "memory_total", "selection", "save_memory")


def _incremental_unused(cfg: Any, leaf: str) -> Optional[str]:
    """Why ``incremental.<leaf>`` is not read by this run, or None."""
    from .incremental_methods import OPTION_KEYS, method_options

    inc = cfg.incremental
    if cfg.mode != "incremental":
        keeps = inc.save_memory if inc.save_memory is not None else (
            cfg.data.path_train is None and bool(cfg.data.synthetic.sessions))
        if leaf in _MEMORY_KEYS and (keeps or leaf == "save_memory"):
            return None
        return "only mode=incremental uses it" + ("" if leaf not in _MEMORY_KEYS else
                                                  " (or a run that keeps a memory: incremental.save_memory=true)")
    if leaf == "save_memory":
        return "a session always keeps the memory it continues"
    if leaf in OPTION_KEYS and leaf not in method_options(inc.method):
        return f"incremental.method={inc.method} does not use it"
    if leaf == "allow_seen_classes" and cfg.data.path_train is None:
        return "the built-in data's sessions never share classes"
    return None


def _unused_mix_key(leaf: str, mix: Any, stage2_enabled: bool) -> Optional[str]:
    name = str(mix.name)
    if name == "none":
        return "data.augment.mix.name=none (no batch mixing)"
    if leaf in ("kappa", "tau") and name != "remix":
        return f"only data.augment.mix.name=remix uses it (the mix is {name})"
    if leaf == "stage2" and not stage2_enabled:
        return "stage 2 is disabled (stage2.enabled=false)"
    return None


def _model_ignores(name: str) -> Tuple[str, ...]:
    """create_model's common options that model ``name`` does not read (its
    ``unused_common_options``, e.g. the attention models' use_attention and norm_kind)."""
    from .models import MODELS

    return tuple(getattr(MODELS.get(str(name)), "unused_common_options", ()))


def warn_unused_user_keys(cfg: Any, overrides: Sequence[str] = ()) -> List[str]:
    """Log one warning per user-set key that no configured method reads; return the keys."""
    found = unused_user_keys(cfg, user_set_keys(cfg, overrides))
    for key, why in found:
        log.warning("%s is set but not used: %s", key, why)
    return [k for k, _ in found]
