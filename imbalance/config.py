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

# Value checks (ranges, choices, combinations) live in imbalance.config_checks; public here too.
from .config_checks import parse_tau, parse_temperature, validate  # noqa: F401
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
    sessions: Optional[List[int]] = None  # class-incremental sessions, e.g. [6, 2, 2]: mode=train learns the first
    num_unknown: int = 0  # open set: extra transmitters, never in training or validation, as the test's unknowns
    unknown_per_class: Optional[int] = None  # test bursts per unknown transmitter; null: test_per_class


@dataclass
class MixConfig:
    """Batch mixing of training batches (imbalance.mixing: mixup, Remix, Balanced-MixUp, CutMix 1-D)."""

    name: str = "none"  # none / mixup / remix / balanced_mixup / cutmix1d
    alpha: Optional[float] = None  # Beta parameter; null: the method's default (1.0; balanced_mixup 0.2)
    prob: float = 1.0  # chance that a batch is mixed
    kappa: float = 3.0  # remix: n_a / n_b >= kappa marks a majority
    tau: float = 0.5  # remix: the label goes to the minority when its input share exceeds 1 - tau
    stage2: bool = False  # also mix stage-2 batches (inputs; no cached features then)


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
    mix: MixConfig = field(default_factory=MixConfig)  # batch mixing (independent of `enabled`)


@dataclass
class DataConfig:
    path_train: Optional[str] = None  # null: the built-in synthetic ADS-B data
    path_val: Optional[str] = None  # null: a stratified split of the training file
    path_test: Optional[str] = None
    val_ratio: float = 0.2
    batch_size: Any = 128  # an integer >= 1, or auto: int(min(N / 10, 16)) for N training samples (small data)
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
    path_unknown: Optional[str] = None  # open set: a file whose samples are all unknown (added to the test)
    # Time-series data (imbalance.series_data): archives by name, .ts/.arff/.tsv, masks
    source: Optional[str] = None  # ucr:<Name> / uea:<Name>: an archive's official split (aeon, offline)
    archive_dir: Optional[str] = None  # <archive_dir>/<Name>/<Name>_TRAIN.ts ...; null: aeon's/sktime's copies
    normalize_mode: str = "rms"  # rms / zscore: per series over its own samples (zscore: per channel)
    mask: Any = "auto"  # auto / true / false: observation-mask channel for mask-aware models
    val_min_per_class: int = 1  # validation samples per class at least (smaller classes stay in training)
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
    kernel_size: Optional[int] = None  # ConvNetSE; InceptionTime: the largest kernel (40: 40, 20, 10)
    blocks_per_stage: Optional[int] = None  # ResNet1D, ResNetFrequencyExpert, MixtureOfExpertsResNet
    spectral_mode: Optional[str] = None  # frequency experts and mixtures: powerlog / ri / magphase
    spectral_window: Optional[str] = None  # hann / none
    complex_iq: Optional[bool] = None  # 2 channels are one complex I/Q signal
    experts: Optional[List[str]] = None  # mixtures: a subset of time, tcn, freq
    gate_hidden: Optional[int] = None  # mixtures
    gate_dropout: Optional[float] = None  # mixtures
    load_balance_weight: Optional[float] = None  # mixtures: weight of the gate-entropy regulariser
    patch_length: Optional[int] = None  # SignalTransformer: samples per patch (16)
    patch_stride: Optional[int] = None  # SignalTransformer: samples between patches (null: patch_length)
    stem_layers: Optional[int] = None  # ConvTransformer: stride-2 conv blocks before the encoder (4)
    stem_kernel: Optional[int] = None  # ConvTransformer: their kernel (7)
    positions: Optional[str] = None  # transformers: learnable / sinusoidal
    pooling: Optional[str] = None  # transformers: mean / cls
    num_heads: Optional[int] = None  # transformers: attention heads (null: width // 32)
    mlp_ratio: Optional[float] = None  # transformers: MLP width / model width (4)
    num_positions: Optional[int] = None  # transformers: learned positions before interpolation (512)
    bottleneck_size: Optional[int] = None  # InceptionTime: bottleneck channels (32; 0: none)
    use_residual: Optional[bool] = None  # InceptionTime: shortcut every 3 modules
    params: Dict[str, Any] = field(default_factory=dict)  # further model keywords (checked before data loads)
    classifier_bias: bool = True  # false: a bias-free classifier head (tau-norm, weight balancing)


#: ModelConfig fields that are model-specific options (passed to the model when not null).
MODEL_OPTION_KEYS = ("kernel_size", "blocks_per_stage", "spectral_mode", "spectral_window", "complex_iq", "experts",
                     "gate_hidden", "gate_dropout", "load_balance_weight", "patch_length", "patch_stride",
                     "stem_layers", "stem_kernel", "positions", "pooling", "num_heads", "mlp_ratio", "num_positions",
                     "bottleneck_size", "use_residual")


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
    vs_gamma: float = 0.3  # VSLoss: logits divided by (n_max / n_c)^vs_gamma (its tau is logit_tau)
    cdt_gamma: float = 0.3  # CDTLoss: class-dependent temperatures (n_max / n_c)^cdt_gamma
    las_smooth_head: float = 0.3  # LabelAwareSmoothing: smoothing of the largest class
    las_smooth_tail: float = 0.0  # LabelAwareSmoothing: smoothing of the smallest class
    las_shape: str = "concave"  # LabelAwareSmoothing: concave / linear / convex / exp
    las_power: Optional[float] = None  # LabelAwareSmoothing shape=exp: the exponent


@dataclass
class SamplingConfig:
    name: str = "none"
    alpha: float = 0.5
    alpha_start: float = 0.5
    alpha_end: float = 0.0
    drs_start: Optional[int] = None  # drs: first re-sampled epoch (0-based); null: 80% of the epochs
    drs_beta: Optional[float] = None  # drs: effective-number beta; null: 0.9999 (LDAM-DRW)


@dataclass
class SamConfig:
    """Sharpness-aware training of stage 1 (imbalance.sam): two forward/backward passes per step."""

    enabled: bool = False
    mode: str = "sam"  # sam (Foret et al. 2021) / imbsam (Zhou et al. 2023: SAM on the tail classes' loss)
    rho: float = 0.05  # radius of the weight perturbation
    tail_thresh: int = 20  # imbsam: classes with fewer training samples are tail
    tail_weight: float = 2.0  # imbsam: factor on the tail loss (the official code's 2)
    freeze_bn_second_pass: Optional[bool] = None  # null: as each official code (sam: frozen, imbsam: updated)


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
    sam: SamConfig = field(default_factory=SamConfig)


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
    mode: str = "crt"  # crt / finetune / lws / crt_lws
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
    vs_gamma: Optional[float] = None
    cdt_gamma: Optional[float] = None
    las_smooth_head: Optional[float] = None
    las_smooth_tail: Optional[float] = None
    las_shape: Optional[str] = None
    las_power: Optional[float] = None
    # MiSLAS / weight balancing (docs/methods.md)
    label_aware_smoothing: bool = False  # true: stage 2's loss is LabelAwareSmoothing (las_* keys)
    shift_bn: bool = False  # MiSLAS: the frozen backbone's BatchNorm statistics follow the stage-2 batches
    maxnorm_thresh: Optional[float] = None  # weight balancing: a number turns MaxNorm on (relative radius)
    maxnorm_every: str = "epoch"  # epoch (the official code) / step: when the norms are projected


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
    classifier: str = "linear"  # linear (the model's head) / ncm / knn (fitted on training features)
    classifier_params: Dict[str, Any] = field(default_factory=dict)  # ncm: feat_type, distance; knn: k, vote, temperature


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
class IncrementalConfig:
    """Class-incremental sessions (mode=incremental resume=<parent run>; docs/incremental.md)."""

    method: str = "finetune"  # finetune / lwf / icarl / wa
    memory_per_class: Optional[int] = 20  # exemplars kept per learned class
    memory_total: Optional[int] = None  # a total budget instead (floor(total / classes) per class)
    selection: str = "herding"  # herding / random
    replay: Optional[bool] = None  # train on exemplars + new data; null: the method's default
    eval_classifier: str = "auto"  # auto (the method's) / head / nme (nearest mean of exemplars)
    temperature: float = 2.0  # distillation temperature (lwf, wa)
    lwf_lambda: float = 1.0  # lwf: weight of the distillation term
    lwf_ce: str = "new"  # lwf: cross-entropy over the new classes' outputs (new) or all outputs (all)
    wa_clip: bool = True  # wa: classifier weights clipped to >= 0 after every step
    wa_scale_bias: bool = False  # wa: scale the new classes' bias by gamma too
    allow_seen_classes: bool = False  # a session's data may hold classes the parent learned
    save_memory: Optional[bool] = None  # keep an exemplar memory in the run folder; null: with data.synthetic.sessions


@dataclass
class OpenSetConfig:
    """Open-set recognition (imbalance.openset_run): unknown classes never reach training or
    validation; detectors score the final model's test samples; thresholds on known validation."""

    enabled: bool = False
    unknown_classes: Optional[List[Any]] = None  # label values held out as unknown (or a protocol)
    protocol: Optional[str] = None  # random / head_unknown / tail_unknown / stratified (by training counts)
    num_unknown: Optional[int] = None  # classes the protocol holds out
    seed: int = 0  # random / stratified draws
    detectors: Optional[List[str]] = None  # null: msp, maxlogit, energy, mahalanobis, knn, openmax (odin on request)
    params: Dict[str, Any] = field(default_factory=dict)  # per detector, e.g. {knn: {k: 10}, energy: {temperature: 2}}
    threshold: Any = "tpr95"  # tprNN (NN% of known validation accepted) or a number


@dataclass
class DistillConfig:
    """Knowledge distillation in stage 1 (imbalance.distill): a finished run's final model teaches this one."""

    teacher: Optional[str] = None  # a finished run folder (or its checkpoints/final.pt); null: no distillation
    method: str = "kd"  # kd (Hinton et al. 2015) / bkd (balanced KD, Zhang et al. 2021)
    temperature: float = 2.0
    alpha: float = 1.0  # loss = stage-1 loss + alpha * T^2 * KL(teacher || student)
    bkd_beta: float = 0.9999  # bkd: effective-number class weights on the teacher's soft targets
    bkd_start: int = 0  # bkd: first epoch (0-based) with the class weights; plain KD before
    cache: bool = False  # teacher logits computed once per training sample (exact only without augmentation)


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
    mode: str = "train"  # train / eval / incremental
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
    incremental: IncrementalConfig = field(default_factory=IncrementalConfig)
    # The run loggers: a multi-select group (conf/logger/, logger=[csv,tensorboard,mlflow]); each key
    # names a backend and holds its options (checked by the backend). logs/metrics.csv is always written.
    logger: Dict[str, Any] = field(default_factory=dict)
    openset: OpenSetConfig = field(default_factory=OpenSetConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
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
