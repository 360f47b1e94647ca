"""The structured config schema (SEED.md's full template, same names and meanings).

The dataclasses below are registered with Hydra's ConfigStore as ``base_config``; config.yaml
lists it first in its defaults, so every key has a typed default, a partial config.yaml (like
SEED's minimal example) still runs, and a misspelt key is an error.

Components never see these objects: ``imbalance.pipeline`` reads them at the edges and calls the
plain-Python constructors.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .errors import ConfigError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
PROJECT_ROOT = os.path.dirname(PACKAGE_DIR)
#: The folder holding ``config.yaml`` and ``conf/``: the project folder in a source checkout (or
#: an editable install), else the copy that ``pip install .`` puts into the package.
CONFIG_DIR = PROJECT_ROOT if os.path.isfile(os.path.join(PROJECT_ROOT, "config.yaml")) and os.path.isdir(
    os.path.join(PROJECT_ROOT, "conf")) else os.path.join(PACKAGE_DIR, "_config")


@dataclass
class SyntheticConfig:
    """The built-in ADS-B emitter data (used when data.path_train is null)."""

    num_classes: int = 10
    train_per_class: int = 600  # balanced pool; the val split is taken first, then the long tail
    test_per_class: int = 200
    length: int = 1024  # 128 us at 8 Msps
    sample_rate: float = 8e6
    snr_db: List[float] = field(default_factory=lambda: [5.0, 20.0])
    difficulty: Optional[float] = None  # None: the generator's tuned default
    seed: int = 0  # the data set (fixed: one benchmark whatever the run's seed); emitters shared by all splits


@dataclass
class AugmentConfig:
    """Training-batch augmentation (imbalance.augment.build_augmentation); applied in the order
    crop, time shift, amplitude, noise, each with probability ``p`` per sample."""

    enabled: bool = False
    p: float = 0.5
    time_shift: int = 0  # max shift in samples (0: off)
    time_shift_mode: str = "roll"  # roll / zero
    amplitude: Optional[List[float]] = None  # [lo, hi] scale range
    amplitude_bias: float = 0.0
    noise_std: Optional[float] = None  # additive Gaussian noise std (or noise_snr_db)
    noise_snr_db: Optional[Any] = None  # a number or [lo, hi]
    crop_length: Optional[int] = None  # random crop / pad to this length


@dataclass
class DataConfig:
    path_train: Optional[str] = None  # null: the built-in synthetic ADS-B data
    path_val: Optional[str] = None  # null: a stratified split of the training file
    path_test: Optional[str] = None
    val_ratio: float = 0.2
    batch_size: int = 128
    num_workers: int = 0
    pin_memory: bool = True
    drop_last: bool = True
    target_length: Optional[int] = None  # null: keep the file's length
    normalize: bool = True
    in_memory: bool = True
    imbalance_ratio: float = 100.0
    data_key: Optional[str] = None
    label_key: Optional[str] = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    on_device: Any = "auto"  # auto (keep train/val tensors on the accelerator when they fit) / true / false


@dataclass
class ModelConfig:
    name: str = "ConvNetADSB"
    dropout: float = 0.1
    use_attention: bool = True
    norm_kind: str = "auto"  # auto / bn / gn / ln
    width: Optional[int] = 32  # null: the origin's full size (ORIGIN_MODELS.md); 32/4 is the quick demo
    depth: Optional[int] = 4
    head: str = "auto"  # auto (linear; cosine_ldam with LDAMLoss) / linear / cosine_ldam / logit_adjust / temperature
    head_params: Dict[str, Any] = field(default_factory=dict)
    init: str = "default"  # default / balanced_xavier / xavier / kaiming
    log_prior_bias: bool = False
    init_temperature: float = 1.0
    # Model-specific options (typed: a misspelt one fails when the config is composed); null keeps
    # the model's own default. Each is checked against the model finally named (conf/model/*.yaml
    # sets a model and shows its options).
    kernel_size: Optional[int] = None  # ConvNetSE
    blocks_per_stage: Optional[int] = None  # ResNet1D, ResNetFrequencyExpert, MixtureOfExpertsResNet
    spectral_mode: Optional[str] = None  # frequency experts and mixtures: powerlog / ri / magphase
    spectral_window: Optional[str] = None  # hann / none
    complex_iq: Optional[bool] = None  # 2 channels are one complex I/Q signal
    experts: Optional[List[str]] = None  # mixtures: a subset of time, tcn, freq
    gate_hidden: Optional[int] = None  # mixtures
    gate_dropout: Optional[float] = None  # mixtures
    load_balance_weight: Optional[float] = None  # mixtures: weight of the gate-entropy regulariser
    params: Dict[str, Any] = field(default_factory=dict)  # further model keywords (checked before data loads)


#: ModelConfig fields that are model-specific options (passed to the model when not null).
MODEL_OPTION_KEYS = ("kernel_size", "blocks_per_stage", "spectral_mode", "spectral_window", "complex_iq", "experts",
                     "gate_hidden", "gate_dropout", "load_balance_weight")


@dataclass
class LossConfig:
    name: str = "CrossEntropy"
    focal_gamma: float = 2.0
    focal_alpha: Optional[Any] = None
    cb_beta: float = 0.9999
    cb_base: str = "softmax"
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    ldam_drw_start: Optional[int] = None
    logit_tau: float = 1.0
    cost_strategy: str = "auto"
    cost_matrix: Optional[Any] = None
    prior: str = "train"  # BalancedSoftmax / LogitAdjustment: train (n_c / N) or sampled (the sampler's)
    params: Dict[str, Any] = field(default_factory=dict)  # any other keyword of the loss


@dataclass
class SamplingConfig:
    name: str = "none"
    alpha: float = 0.5
    alpha_start: float = 0.5
    alpha_end: float = 0.0
    drs_start: Optional[int] = None  # drs: first re-sampled epoch (0-based); null: 80% of the epochs
    drs_beta: Optional[float] = None  # drs: effective-number beta; null: 0.9999 (LDAM-DRW)


@dataclass
class TrainingConfig:
    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "Adam"
    momentum: float = 0.9
    grad_clip: float = 1.0  # 0 or null: off
    label_smoothing: float = 0.0
    accumulation_steps: int = 1  # optimizer step every N batches (effective batch N * batch_size)
    skip_nonfinite: bool = False  # false: a NaN/Inf loss stops the run (epoch, batch); true: skip the batch
    checkpoint_select: str = "best"  # best (by early_stopping.monitor) / last (the fully annealed model)


@dataclass
class SchedulerConfig:
    name: str = "cosine"  # cosine / step / plateau / cosine_warmup_restarts / none
    warmup_epochs: int = 2
    warmup_multiplier: float = 1.0
    min_lr: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    restart_period: int = 10
    restart_mult: int = 2


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    patience: int = 15
    monitor: str = "val_macc"  # val_macc / val_acc / val_loss
    mode: str = "max"  # max / min
    min_delta: float = 0.0
    min_epochs: Optional[int] = None  # patience counts after this epoch; null: the last scheduled switch


@dataclass
class Stage2Config:
    enabled: bool = True
    mode: str = "crt"  # crt / finetune / lws
    epochs: int = 50  # cheap: a frozen backbone trains the classifier on cached features
    lr: float = 1e-2
    weight_decay: float = 1e-4
    optimizer: str = "Adam"
    momentum: float = 0.9
    scheduler: str = "cosine"
    loss: str = "CrossEntropy"
    cost_strategy: str = "auto"
    sampler: str = "class_balanced"
    alpha: float = 0.5
    alpha_start: float = 0.5
    alpha_end: float = 0.0
    drs_start: Optional[int] = None
    drs_beta: Optional[float] = None
    freeze_bn: bool = True
    clf_lr_mult: float = 1.0
    reinit_classifier: bool = True
    feature_cache: bool = True  # crt with a frozen backbone and no augmentation: train on cached features
    patience: Optional[int] = None  # null: early_stopping.patience
    min_epochs: Optional[int] = None  # null: the last scheduled switch of stage 2 (e.g. a progressive sampler's end)
    checkpoint_select: str = "best"  # best / last
    # Loss parameters for stage 2; null inherits the value of the `loss:` section.
    focal_gamma: Optional[float] = None
    focal_alpha: Optional[Any] = None
    cb_beta: Optional[float] = None
    cb_base: Optional[str] = None
    ldam_max_margin: Optional[float] = None
    ldam_scale: Optional[float] = None
    ldam_drw_start: Optional[int] = None
    logit_tau: Optional[float] = None
    cost_matrix: Optional[Any] = None
    prior: Optional[str] = None
    label_smoothing: Optional[float] = None


@dataclass
class Stage3Config:
    mode: str = "none"  # none / tau_norm / logit_adjust / both
    tau_norm: Any = 1.0  # a number in [0, 2] or "auto"
    logit_tau: Any = 1.0  # a number in [0, 3] or "auto"
    temperature: Any = None  # none / auto (fitted on validation NLL) / a number > 0; applied last


@dataclass
class EvaluationConfig:
    eval_logit_adjust: str = "none"  # none / posthoc
    eval_logit_tau: Any = 1.0  # a number in [0, 3] or "auto"
    batch_size: int = 512
    skip_unknown_classes: bool = False  # mode=eval: drop test samples of classes the model never saw


@dataclass
class ExperimentConfig:
    grouping: str = "auto"  # auto / absolute / quantile
    many_thresh: int = 100
    few_thresh: int = 20


@dataclass
class VisualizationConfig:
    enabled: bool = True
    dpi: int = 300
    panel_mm: float = 85.0
    panel_scale: float = 1.0
    max_samples: int = 5000
    plot_training_curves: bool = True
    plot_learning_rate: bool = True
    plot_class_distribution: bool = True
    plot_tsne_2d: bool = True
    plot_tsne_3d: bool = False
    tsne_perplexity: float = 30.0
    tsne_n_iter: int = 1000
    plot_confusion_matrix: bool = True
    cm_normalize: bool = True
    plot_per_class_acc: bool = True
    plot_group_performance: bool = True
    plot_sample_vs_performance: bool = True
    plot_confidence_dist: bool = True
    plot_top_confusions: bool = True
    top_confusions_k: int = 10
    plot_reliability_diagram: bool = True
    class_names: Optional[List[str]] = None


@dataclass
class Config:
    exp_name: str = "demo"
    seed: int = 42
    device: str = "auto"  # auto / cpu / cuda / cuda:N
    gpus: str = "0"
    amp: bool = False
    amp_dtype: str = "auto"  # auto / bf16 / fp16
    console_log_interval: int = 1
    create_imbalance: bool = True
    mode: str = "train"  # train / eval
    resume: Optional[str] = None
    compile: Any = "auto"  # auto (when the planned work pays for it: imbalance.compilation) / true / false
    num_threads: int = 0  # 0: one intra-op thread per core
    progress_bar: str = "auto"  # auto (only on a terminal) / true / false
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    visualization: VisualizationConfig = field(default_factory=VisualizationConfig)
    compile_cache_dir: Optional[str] = None  # torch.compile's cache; null: ~/.cache/imbalance/torch_compile


def with_schema(cfg: Any) -> Any:
    """``cfg`` merged over the schema: missing keys get their defaults (so a config.yaml without
    the ``base_config`` default still runs) and an unknown key is a ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    plain.pop("hydra", None)
    base = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(base, plain)
    except ConfigKeyError as err:
        key = getattr(err, "full_key", None) or str(err).splitlines()[0]
        raise ConfigError(f"unknown config key {key!r}; see config.yaml for the valid keys") from None
    except ValidationError as err:
        raise ConfigError(f"invalid config value: {str(err).splitlines()[0]} (key {getattr(err, 'full_key', '?')})") from None
    OmegaConf.set_struct(merged, True)
    return merged


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)


def register_resolvers() -> None:
    """``${imbalance_root:}`` -> the config folder (for hydra.searchpath);
    ``${imbalance_fraction:N,f}`` -> ``floor(f * N)`` (a schedule point as a share of the epochs)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("imbalance_root"):
        OmegaConf.register_new_resolver("imbalance_root", lambda: CONFIG_DIR)
    if not OmegaConf.has_resolver("imbalance_fraction"):
        # ${imbalance_fraction:${training.epochs},0.8} -> floor(0.8 * epochs), e.g. a DRW start
        OmegaConf.register_new_resolver("imbalance_fraction",
                                        lambda total, frac: int(math.floor(float(total) * float(frac) + 1e-9)))


def compose(overrides: Optional[List[str]] = None, config_dir: Optional[str] = None) -> Any:
    """The config ``python main.py <overrides>`` would run with, composed in-process (for tests,
    notebooks and scripts). ``hydra.runtime.output_dir`` is not set: pass ``run_dir`` to
    ``imbalance.pipeline.run``."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir or CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


# --------------------------------------------------------------------------------------------
# Validation of values (names are validated by the registries when components are built).
# --------------------------------------------------------------------------------------------
_CHOICES = {
    "early_stopping.monitor": ("val_macc", "val_acc", "val_loss"),
    "early_stopping.mode": ("max", "min"),
    "training.checkpoint_select": ("best", "last"),
    "stage2.checkpoint_select": ("best", "last"),
    "loss.prior": ("train", "sampled"),
    "stage2.prior": (None, "train", "sampled"),
    "stage2.mode": ("crt", "finetune", "lws"),
    "stage3.mode": ("none", "tau_norm", "logit_adjust", "both"),
    "evaluation.eval_logit_adjust": ("none", "posthoc"),
    "experiment.grouping": ("auto", "absolute", "quantile"),
    "mode": ("train", "eval"),
    "amp_dtype": ("auto", "bf16", "fp16"),
    "progress_bar": ("auto", "true", "false", True, False),
    "compile": ("auto", "true", "false", True, False),
    "data.on_device": ("auto", "true", "false", True, False),
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

    for key in ("data.batch_size", "training.epochs", "training.accumulation_steps",
                "evaluation.batch_size", "experiment.many_thresh", "console_log_interval"):
        positive_int(key)
    for key in ("data.num_workers", "scheduler.warmup_epochs", "early_stopping.patience",
                "stage2.epochs", "num_threads", "experiment.few_thresh"):
        positive_int(key, 0)

    val_ratio = float(cfg.data.val_ratio)
    if cfg.data.path_val is None and not 0.0 < val_ratio < 1.0:
        raise ConfigError(f"data.val_ratio={val_ratio} is out of range; it must be in (0, 1)")
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
    parse_tau(cfg.stage3.tau_norm, "stage3.tau_norm", 2.0)
    parse_tau(cfg.stage3.logit_tau, "stage3.logit_tau", 3.0)
    parse_temperature(cfg.stage3.temperature)
    parse_tau(cfg.evaluation.eval_logit_tau, "evaluation.eval_logit_tau", 3.0)
    if cfg.mode == "eval" and not cfg.resume:
        raise ConfigError("mode=eval needs resume=<run folder or checkpoint> naming the trained model")
