"""The checks of a composed config's values that types cannot express: ranges, choices and
combinations of keys, each failing with one line that names the key, its value and what is valid.
:func:`validate` runs them all; :mod:`imbalance.config` re-exports it with the schema."""
from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError


_CHOICES = {
    "early_stopping.monitor": ("val_macc", "val_acc", "val_loss"),
    "early_stopping.mode": ("max", "min"),
    "training.checkpoint_select": ("best", "last"),
    "stage2.checkpoint_select": ("best", "last"),
    "loss.prior": ("train", "sampled"),
    "stage2.prior": (None, "train", "sampled"),
    "stage2.mode": ("crt", "finetune", "lws", "crt_lws"),
    "stage3.mode": ("none", "tau_norm", "logit_adjust", "both"),
    "evaluation.eval_logit_adjust": ("none", "posthoc"),
    "experiment.grouping": ("auto", "absolute", "quantile"),
    "mode": ("train", "eval", "incremental"),
    "incremental.eval_classifier": ("auto", "head", "nme"),
    "incremental.lwf_ce": ("new", "all"),
    "amp_dtype": ("auto", "bf16", "fp16"),
    "progress_bar": ("auto", "true", "false", True, False),
    "compile": ("auto", "true", "false", True, False),
    "data.on_device": ("auto", "true", "false", True, False),
    "openset.protocol": (None, "random", "head_unknown", "tail_unknown", "stratified"),
    "training.sam.mode": ("sam", "imbsam"),
    "stage2.maxnorm_every": ("epoch", "step"),
    "evaluation.classifier": ("linear", "ncm", "knn"),
    "distill.method": ("kd", "bkd"),
    "data.normalize_mode": ("rms", "zscore"),
    "data.mask": ("auto", "true", "false", True, False),
}


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def parse_tau(value: Any, key: str, high: float) -> Any:
    """A tau value: ``"auto"`` or a finite number in [0, high]."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not valid; use a number in [0, {high:g}] or auto") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} is not valid; use a number in [0, {high:g}] or auto")
    if not 0.0 <= float(value) <= high:
        raise ConfigError(f"{key}={value} is out of range; use a number in [0, {high:g}] or auto")
    return float(value)


def parse_batch_size(value: Any) -> Any:
    """``data.batch_size``: an integer >= 1 or ``'auto'`` (:func:`auto_batch_size`)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        ok = not isinstance(value, bool) and float(value) == int(value) and int(value) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"data.batch_size={value!r} is not valid; use an integer >= 1 or auto "
                          "(int(min(N / 10, 16)) for N training samples)")
    return int(value)


def auto_batch_size(n_train: int) -> int:
    """``data.batch_size=auto``: ``int(min(N / 10, 16))``, at least 1, for N training samples - the
    rule of the official FCN / ResNet code for the UCR archive (hfawaz/dl-4-tsc) for small data."""
    return max(1, int(min(n_train / 10.0, 16.0)))


def parse_temperature(value: Any) -> Any:
    """``stage3.temperature``: None/'none' (off), 'auto' (fitted on validation NLL) or a number > 0."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("none", "null", ""):
            return None
        if v == "auto":
            return "auto"
        try:
            value = float(v)
        except ValueError:
            raise ConfigError(f"stage3.temperature={value!r} is not valid; use none, auto or a number > 0") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"stage3.temperature={value!r} is not valid; use none, auto or a number > 0")
    return float(value)


def _number(cfg: Any, key: str, low: float, high: float = math.inf, *, open_low: bool = False,
            open_high: bool = False, allow_none: bool = False) -> None:
    value = _get(cfg, key)
    if value is None and allow_none:
        return
    lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
    span = f"{lo}{low:g}, {'inf' if high == math.inf else f'{high:g}'}{hi}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} must be a number in {span}") from None
    if isinstance(value, bool) or not math.isfinite(v) or v < low or v > high or (open_low and v == low) or \
            (open_high and v == high):
        raise ConfigError(f"{key}={value!r} is out of range; it must be in {span}")


def _validate_methods(cfg: Any) -> None:
    """Ranges of the batch-mixing, SAM and MaxNorm keys (names are checked by their registries)."""
    _number(cfg, "data.augment.mix.alpha", 0.0, open_low=True, allow_none=True)
    _number(cfg, "data.augment.mix.prob", 0.0, 1.0)
    _number(cfg, "data.augment.mix.kappa", 1.0)
    _number(cfg, "data.augment.mix.tau", 0.0, 1.0)
    _number(cfg, "training.sam.rho", 0.0)
    _number(cfg, "training.sam.tail_thresh", 0.0)
    _number(cfg, "training.sam.tail_weight", 0.0, open_low=True)
    _number(cfg, "stage2.maxnorm_thresh", 0.0, allow_none=True)


def validation_is_training(cfg: Any) -> bool:
    """``data.val_ratio=0`` with no ``data.path_val``: nothing is carved, the training split is
    also the 'validation' split (monitored, never chosen on; :func:`_validate_no_carve`)."""
    return cfg.data.path_val is None and float(cfg.data.val_ratio) == 0.0


def _validate_no_carve(cfg: Any) -> None:
    """``data.val_ratio=0``: validation is the training split itself (monitoring only), so
    nothing may be chosen on it; each setting that would choose is refused in one line."""
    why = "data.val_ratio=0 leaves no validation split to choose on"
    fixed = []
    if cfg.early_stopping.enabled:
        fixed.append("early_stopping.enabled=false")
    if cfg.training.checkpoint_select != "last":
        fixed.append("training.checkpoint_select=last")
    if cfg.stage2.enabled and cfg.stage2.checkpoint_select != "last":
        fixed.append("stage2.checkpoint_select=last")
    mode = cfg.stage3.mode
    if mode in ("tau_norm", "both") and parse_tau(cfg.stage3.tau_norm, "stage3.tau_norm", 2.0) == "auto":
        fixed.append("stage3.tau_norm=<a number>")
    if mode in ("logit_adjust", "both") and parse_tau(cfg.stage3.logit_tau, "stage3.logit_tau", 3.0) == "auto":
        fixed.append("stage3.logit_tau=<a number>")
    if parse_temperature(cfg.stage3.temperature) == "auto":
        fixed.append("stage3.temperature=<a number> or none")
    if cfg.evaluation.eval_logit_adjust != "none" and \
            parse_tau(cfg.evaluation.eval_logit_tau, "evaluation.eval_logit_tau", 3.0) == "auto":
        fixed.append("evaluation.eval_logit_tau=<a number>")
    if cfg.openset.enabled:
        fixed.append("openset.enabled=false (its thresholds are set on known validation)")
    if fixed:
        raise ConfigError(f"{why}; set {', '.join(fixed)}, or give data.val_ratio in (0, 1) or data.path_val")


def validate(cfg: Any) -> None:
    """Check value ranges and choices; raise ConfigError with one clear line."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            shown = ", ".join(str(c) for c in choices if isinstance(c, str))
            raise ConfigError(f"{key}={value!r} is not valid; valid values: {shown}")

    def positive_int(key: str, minimum: int = 1) -> None:
        value = _get(cfg, key)
        if value is None or int(value) < minimum:
            raise ConfigError(f"{key}={value} is out of range; it must be an integer >= {minimum}")

    for key in ("training.epochs", "training.accumulation_steps",
                "evaluation.batch_size", "experiment.many_thresh", "console_log_interval"):
        positive_int(key)
    parse_batch_size(cfg.data.batch_size)
    positive_int("data.val_min_per_class")
    for key in ("data.num_workers", "scheduler.warmup_epochs", "early_stopping.patience",
                "stage2.epochs", "num_threads", "experiment.few_thresh"):
        positive_int(key, 0)

    val_ratio = float(cfg.data.val_ratio)
    if cfg.data.path_val is None and not 0.0 <= val_ratio < 1.0:
        raise ConfigError(f"data.val_ratio={val_ratio} is out of range; it must be in [0, 1) "
                          "(0: no validation carve, every training series trains)")
    if validation_is_training(cfg):
        _validate_no_carve(cfg)
    if float(cfg.data.imbalance_ratio) < 1.0:
        raise ConfigError(
            f"data.imbalance_ratio={cfg.data.imbalance_ratio} is out of range; it must be >= 1 "
            "(1 keeps the data balanced)"
        )
    if cfg.data.target_length is not None and int(cfg.data.target_length) < 1:
        raise ConfigError(f"data.target_length={cfg.data.target_length} must be a positive integer or null")
    if float(cfg.training.lr) <= 0:
        raise ConfigError(f"training.lr={cfg.training.lr} must be > 0")
    if cfg.stage2.enabled and float(cfg.stage2.lr) <= 0:
        raise ConfigError(f"stage2.lr={cfg.stage2.lr} must be > 0")
    if float(cfg.training.weight_decay) < 0:
        raise ConfigError(f"training.weight_decay={cfg.training.weight_decay} must be >= 0")
    if not 0.0 <= float(cfg.training.label_smoothing) < 1.0:
        raise ConfigError(f"training.label_smoothing={cfg.training.label_smoothing} must be in [0, 1)")
    if not 0.0 <= float(cfg.model.dropout) < 1.0:
        raise ConfigError(f"model.dropout={cfg.model.dropout} must be in [0, 1)")
    if int(cfg.experiment.few_thresh) > int(cfg.experiment.many_thresh):
        raise ConfigError(
            f"experiment.few_thresh={cfg.experiment.few_thresh} must not exceed "
            f"experiment.many_thresh={cfg.experiment.many_thresh}"
        )
    for key in ("sampling.alpha", "sampling.alpha_start", "sampling.alpha_end",
                "stage2.alpha", "stage2.alpha_start", "stage2.alpha_end"):
        value = float(_get(cfg, key))
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}={value} is out of range; it must be in [0, 1]")
    _validate_methods(cfg)
    parse_tau(cfg.stage3.tau_norm, "stage3.tau_norm", 2.0)
    parse_tau(cfg.stage3.logit_tau, "stage3.logit_tau", 3.0)
    parse_temperature(cfg.stage3.temperature)
    parse_tau(cfg.evaluation.eval_logit_tau, "evaluation.eval_logit_tau", 3.0)
    for key, minimum in (("data.synthetic.num_unknown", 0), ("data.synthetic.unknown_per_class", 1),
                         ("openset.num_unknown", 1)):
        value = _get(cfg, key)
        if value is not None and int(value) < minimum:
            raise ConfigError(f"{key}={value} is out of range; it must be an integer >= {minimum}")
    d = cfg.distill
    if not (math.isfinite(float(d.temperature)) and float(d.temperature) > 0):
        raise ConfigError(f"distill.temperature={d.temperature} must be a number > 0")
    if not (math.isfinite(float(d.alpha)) and float(d.alpha) >= 0):
        raise ConfigError(f"distill.alpha={d.alpha} must be a number >= 0")
    if not 0.0 <= float(d.bkd_beta) < 1.0:
        raise ConfigError(f"distill.bkd_beta={d.bkd_beta} is out of range; it must be in [0, 1)")
    positive_int("distill.bkd_start", 0)
    if cfg.mode == "eval" and not cfg.resume:
        raise ConfigError("mode=eval needs resume=<run folder or checkpoint> naming the trained model")
    if cfg.mode == "incremental" and not cfg.resume:
        raise ConfigError("mode=incremental needs resume=<run folder> naming the parent run (it is only read)")
    inc = cfg.incremental
    for key in ("memory_per_class", "memory_total"):
        value = inc[key]
        if value is not None and int(value) < 1:
            raise ConfigError(f"incremental.{key}={value} is out of range; it must be an integer >= 1 or null")
    if inc.memory_per_class is None and inc.memory_total is None:
        raise ConfigError("incremental.memory_per_class and incremental.memory_total are both null; set one "
                          "(the exemplar budget)")
    if not (math.isfinite(float(inc.temperature)) and float(inc.temperature) > 0):
        raise ConfigError(f"incremental.temperature={inc.temperature} must be a number > 0")
    if not (math.isfinite(float(inc.lwf_lambda)) and float(inc.lwf_lambda) >= 0):
        raise ConfigError(f"incremental.lwf_lambda={inc.lwf_lambda} must be a number >= 0")
