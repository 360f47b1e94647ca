"""Publication-grade figures of one finished run, made from its saved artifacts only.

``visualize_all_results(run_dir)`` reads the run folder (never the model or the data):

* ``logs/metrics.csv``          -> training_curves, learning_rate
* ``results/results.json``      -> class counts, class names, grouping settings, per-stage metrics
                                   (group_performance), per_class / confusion_matrix (fallback)
* ``results/predictions.npz``   -> y_true, y_pred (confusion_matrix, per_class_recall,
                                   sample_vs_recall, sample_vs_f1, top_confusions), prob
                                   (confidence_dist, reliability_diagram), features +
                                   feature_labels (tsne_2d, tsne_3d)

and writes ``results/<name>.png`` and ``results/<name>.pdf`` for every figure whose
``plot_*`` switch is on. A missing artifact skips only the figures that need it (logged
warning); a figure that fails is logged and the others are still written.

Command line (regenerates every figure of a run; DIR may be the ``<name>_latest`` link)::

    python -m imbalance.visualization --exp_dir experiments/<run>

The journal look (sizes, fonts, Okabe-Ito colours, group colours many=blue, medium=green,
few=orange) lives in :mod:`imbalance.plotting_style`.

t-SNE: van der Maaten & Hinton (2008), scikit-learn's Barnes-Hut implementation, after PCA to
50 dimensions (the usual preprocessing, e.g. van der Maaten's reference code), on at most
``max_samples`` features (class-stratified subsample), fixed ``random_state`` so reruns match.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import plotting_style as ps
from .analysis import GROUP_NAMES, ClassificationAnalyzer, reliability_bins
from .data import stratified_subset
from .errors import ConfigError, DataError, UserError

import matplotlib  # noqa: E402  (plotting_style already selected Agg)
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_VIZ",
    "FIGURES",
    "RunArtifacts",
    "load_run_artifacts",
    "resolve_run_dir",
    "visualize_all_results",
    "make_figure",
    "main",
]

#: The seed's ``visualization:`` section (plus ``plot_reliability_diagram``, ours).
DEFAULT_VIZ: dict[str, Any] = {
    "enabled": True,
    "dpi": 400,
    "panel_mm": 85,
    "panel_scale": 1.0,
    "max_samples": 5000,
    "plot_training_curves": True,
    "plot_learning_rate": True,
    "plot_class_distribution": True,
    "plot_tsne_2d": True,
    "plot_tsne_3d": False,
    "tsne_perplexity": 30,
    "tsne_n_iter": 1000,
    "plot_confusion_matrix": True,
    "cm_normalize": True,
    "plot_per_class_acc": True,
    "plot_group_performance": True,
    "plot_sample_vs_performance": True,
    "plot_confidence_dist": True,
    "plot_top_confusions": True,
    "top_confusions_k": 10,
    "plot_reliability_diagram": True,
    "class_names": None,
}

STAGE_KEYS = ("stage1", "stage2", "stage3")
STAGE_HATCH = {"stage1": "", "stage2": "////", "stage3": "....", "final": "xxxx"}
STAGE_LABEL = {"stage1": "Stage 1", "stage2": "Stage 2", "stage3": "Stage 3", "final": "Final"}
TSNE_SEED = 0


# ============================================================================ artifacts
@dataclass
class RunArtifacts:
    """Everything the figures need, as read from one run folder (None = not available)."""

    run_dir: Path
    results_dir: Path
    results: dict | None = None
    metrics: Any = None  # pandas.DataFrame
    y_true: np.ndarray | None = None
    y_pred: np.ndarray | None = None
    prob: np.ndarray | None = None
    features: np.ndarray | None = None
    feature_labels: np.ndarray | None = None
    class_counts: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    analysis: dict | None = None
    groups: list[str] | None = None
    grouping: dict = field(default_factory=dict)
    stage_metrics: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        return None if self.class_counts is None else int(len(self.class_counts))


def resolve_run_dir(path: str | Path) -> Path:
    """The run folder for ``path`` (a run folder, its ``_latest`` link, or its results/)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"run folder {str(path)!r} does not exist; give an experiments/<run> folder")
    p = p.resolve()
    if not p.is_dir():
        raise DataError(f"{str(path)!r} is not a folder; give an experiments/<run> folder")

    def looks_like_run(d: Path) -> bool:
        return (d / "results").is_dir() or (d / "logs" / "metrics.csv").is_file()

    if looks_like_run(p):
        return p
    if p.name == "results" and looks_like_run(p.parent):
        return p.parent
    raise DataError(
        f"{str(path)!r} is not a run folder: it has neither results/ nor logs/metrics.csv "
        "(give experiments/<exp_name>_<timestamp> or experiments/<exp_name>_latest)"
    )


def _read_results_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        logger.warning("cannot read %s (%s); figures that need it are skipped", path, exc)
        return None


def _read_metrics_csv(path: Path):
    if not path.is_file():
        return None
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as exc:  # pandas raises several kinds for malformed files
        logger.warning("cannot read %s (%s); training figures are skipped", path, exc)
        return None
    if df.empty:
        logger.warning("%s has no rows; training figures are skipped", path)
        return None
    if "stage" not in df.columns:
        df["stage"] = 1
    if "global_epoch" not in df.columns:
        df["global_epoch"] = np.arange(1, len(df) + 1)
    # a resumed run may repeat epochs: keep the last row of each (stage, epoch)
    if "epoch" in df.columns:
        df = df.drop_duplicates(subset=["stage", "epoch"], keep="last")
    return df.sort_values(["global_epoch"]).reset_index(drop=True)


def _read_predictions(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except Exception as exc:  # zipfile / ValueError on a broken file
        logger.warning("cannot read %s (%s); figures that need it are skipped", path, exc)
        return {}


def load_run_artifacts(
    run_dir: str | Path, *, class_names: Sequence[str] | None = None, viz: dict | None = None
) -> RunArtifacts:
    """Read a run folder's artifacts (see module docstring); missing pieces stay None."""
    run = resolve_run_dir(run_dir)
    res_dir = run / "results"
    art = RunArtifacts(run_dir=run, results_dir=res_dir)
    art.results = _read_results_json(res_dir / "results.json")
    art.metrics = _read_metrics_csv(run / "logs" / "metrics.csv")
    pred = _read_predictions(res_dir / "predictions.npz")
    r = art.results or {}

    counts = pred.get("class_counts")
    if counts is None and r.get("class_counts") is not None:
        counts = np.asarray(r["class_counts"])
    if counts is not None:
        art.class_counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    k = art.num_classes

    if k is not None:
        for key in ("y_true", "y_pred"):
            if key in pred:
                setattr(art, key, np.asarray(pred[key], dtype=np.int64).reshape(-1))
        if "prob" in pred and pred["prob"].ndim == 2 and pred["prob"].shape[1] == k:
            art.prob = np.asarray(pred["prob"], dtype=np.float64)
        elif "prob" in pred:
            logger.warning("predictions.npz prob has shape %s, expected (N, %d); ignored",
                           pred["prob"].shape, k)
        if "features" in pred and "feature_labels" in pred:
            art.features = np.asarray(pred["features"], dtype=np.float32)
            art.feature_labels = np.asarray(pred["feature_labels"], dtype=np.int64).reshape(-1)
            if art.features.ndim != 2 or len(art.features) != len(art.feature_labels):
                logger.warning("predictions.npz features/feature_labels disagree in shape; ignored")
                art.features = art.feature_labels = None
        if art.y_true is not None and art.y_pred is not None and len(art.y_true) != len(art.y_pred):
            logger.warning("predictions.npz y_true and y_pred differ in length; ignored")
            art.y_true = art.y_pred = art.prob = None
        if art.prob is not None and (art.y_true is None or len(art.prob) != len(art.y_true)):
            art.prob = None

    # names: argument > viz.class_names > results.json class_names > original labels > index
    cfg = r.get("config") or {}
    viz = viz if viz is not None else (cfg.get("visualization") or {})
    names = class_names if class_names is not None else viz.get("class_names")
    if names is None:
        names = r.get("class_names")
    if k is not None:
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != k:
                raise ConfigError(
                    f"class_names has {len(names)} names but the run has {k} classes; "
                    f"give exactly {k} names or null"
                )
        else:
            classes = pred.get("classes")
            if classes is None and r.get("classes") is not None:
                classes = np.asarray(r["classes"])
            if classes is not None and len(classes) == k:
                names = [_fmt_label(c) for c in np.asarray(classes).tolist()]
            else:
                names = [str(c) for c in range(k)]
        art.names = names

    exp = cfg.get("experiment") or {}
    art.grouping = {
        "grouping": exp.get("grouping", "auto"),
        "many_thresh": exp.get("many_thresh", 100),
        "few_thresh": exp.get("few_thresh", 20),
    }
    if k is not None:
        analyzer = ClassificationAnalyzer(art.class_counts, **art.grouping)
        art.groups = list(analyzer.groups)
        art.grouping["used"] = analyzer.grouping
        if art.y_true is not None and art.y_pred is not None and len(art.y_true):
            art.analysis = analyzer.analyze_predictions(art.y_true, art.y_pred, art.prob)
        elif r.get("per_class") and r.get("confusion_matrix"):
            art.analysis = {
                "per_class": r["per_class"],
                "confusion_matrix": r["confusion_matrix"],
                "overall": ((r.get("metrics") or {}).get("final") or {}).get("overall", {}),
                "group_wise": ((r.get("metrics") or {}).get("final") or {}).get("group_wise", {}),
            }
            art.groups = [row.get("group", g) for row, g in zip(r["per_class"], art.groups)]
    metrics = r.get("metrics") or {}
    art.stage_metrics = {s: metrics[s] for s in (*STAGE_KEYS, "final") if isinstance(metrics.get(s), dict)}
    if "final" not in art.stage_metrics and art.analysis is not None and art.analysis.get("group_wise"):
        art.stage_metrics["final"] = {
            "overall": art.analysis["overall"], "group_wise": art.analysis["group_wise"]
        }
    return art


def _fmt_label(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


# ============================================================================ helpers
def _order(counts: np.ndarray) -> np.ndarray:
    """Class indices sorted by training count, head first (stable for ties)."""
    return np.argsort(-np.asarray(counts), kind="stable")


def _group_handles(groups: Sequence[str], counts_by: bool = True) -> list[Patch]:
    handles = []
    for g in GROUP_NAMES:
        n = sum(1 for x in groups if x == g)
        if n == 0:
            continue
        lab = f"{ps.GROUP_LABELS[g]} ({n})" if counts_by else ps.GROUP_LABELS[g]
        handles.append(Patch(facecolor=ps.GROUP_COLORS[g], edgecolor="none", label=lab))
    return handles


def _class_axis(ax, order: np.ndarray, names: Sequence[str], axis: str = "x") -> None:
    """Categorical class ticks at 0..K-1 in ``order``; rotated when many or long."""
    k = len(order)
    labels = [names[c] for c in order]
    longest = max((len(s) for s in labels), default=1)
    if axis == "x":
        ax.set_xticks(np.arange(k))
        rot = 0 if (longest <= 2 and k <= 20) or (longest <= 4 and k <= 8) else 90
        ax.set_xticklabels(labels, rotation=rot, ha="center", fontsize=ps.SMALL_SIZE if k > 20 else ps.TICK_SIZE)
        ax.set_xlim(-0.6, k - 0.4)
        ax.tick_params(axis="x", length=1.5 if k > 20 else 2.5)
    else:
        ax.set_yticks(np.arange(k))
        ax.set_yticklabels(labels, fontsize=ps.SMALL_SIZE if k > 20 else ps.TICK_SIZE)


def _stages(df) -> list[int]:
    return sorted(int(s) for s in df["stage"].dropna().unique())


def _stage_lines(ax, df, label: bool = True) -> None:
    """Dashed vertical line at each stage boundary; stage names on a top axis (no overlap
    with the data)."""
    stages = _stages(df)
    if len(stages) < 2:
        return
    mids = []
    for s in stages:
        ge = df.loc[df["stage"] == s, "global_epoch"]
        mids.append((float(ge.min()) + float(ge.max())) / 2)
        if s != stages[0]:
            ax.axvline(float(ge.min()) - 0.5, color=ps.OKABE_ITO["grey"], lw=0.6, ls="--", zorder=0)
    if label:
        top = ax.secondary_xaxis("top")
        top.set_xticks(mids)
        top.set_xticklabels([f"Stage {s}" for s in stages], fontsize=ps.SMALL_SIZE,
                            color=ps.OKABE_ITO["grey"])
        top.tick_params(axis="x", length=0, pad=1.0)
        top.spines["top"].set_visible(False)


def _plot_by_stage(ax, df, col: str, scale: float = 1.0, **kw) -> None:
    """Plot ``col`` against global_epoch, one line per stage (no line across a boundary)."""
    label = kw.pop("label", None)
    if len(df) <= 30 and kw.get("marker") is None:  # short runs: a 1-epoch stage is a point
        kw["marker"] = "o"
        kw.setdefault("ms", 2.0)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for i, s in enumerate(_stages(df)):
        d = df[df["stage"] == s]
        ax.plot(d["global_epoch"], scale * d[col], label=label if i == 0 else None, **kw)


def _has(df, col: str) -> bool:
    return df is not None and col in df.columns and df[col].notna().any()


def _per_class_arrays(art: RunArtifacts) -> dict[str, np.ndarray]:
    rows = art.analysis["per_class"]

    def col(key):
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])

    return {k: col(k) for k in ("precision", "recall", "f1", "support")}


def _plain():
    """Tick formatter writing 10, 100 instead of 10^1, 10^2 (one instance per axis)."""
    return matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")


def _size(cfg: dict, aspect: float, width_factor: float = 1.0) -> tuple[float, float]:
    w, h = ps.panel_size(float(cfg["panel_mm"]), float(cfg["panel_scale"]), aspect)
    return w * width_factor, h * width_factor


# ============================================================================ figures
def fig_training_curves(art: RunArtifacts, cfg: dict):
    df = art.metrics
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=_size(cfg, 1.05), sharex=True)
    x = df["global_epoch"].to_numpy()
    c_train, c_val, c_macc = ps.OKABE_ITO["black"], ps.OKABE_ITO["vermillion"], ps.OKABE_ITO["reddish_purple"]
    # data.val_ratio=0: the monitored split is the training split (eval mode), nothing is chosen on it
    no_carve = ((art.results or {}).get("val_metrics") or {}).get("split") == "train"
    v = "Train split, eval mode" if no_carve else "Val."
    if _has(df, "train_loss"):
        _plot_by_stage(ax1, df, "train_loss", color=c_train, label="Train")
    if _has(df, "val_loss"):
        _plot_by_stage(ax1, df, "val_loss", color=c_val, label=v if no_carve else "Validation")
    ax1.set_ylabel("Loss")
    if _has(df, "train_acc"):
        _plot_by_stage(ax2, df, "train_acc", 100, color=c_train, label="Train acc.")
    if _has(df, "val_acc"):
        _plot_by_stage(ax2, df, "val_acc", 100, color=c_val, label=f"{v} acc. (OA)")
    if _has(df, "val_macc"):
        _plot_by_stage(ax2, df, "val_macc", 100, color=c_macc, ls="--", label=f"{v} mAcc")
        if not no_carve:
            best = int(np.nanargmax(df["val_macc"].to_numpy()))
            ax2.plot(x[best], 100 * df["val_macc"].iloc[best], marker="*", ms=5, color=c_macc,
                     ls="none", label="Best val. mAcc")
    ax2.set_ylabel("Accuracy (%)")
    ax2.set_xlabel("Epoch")
    for ax in (ax1, ax2):
        _stage_lines(ax, df, label=ax is ax1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=ps.SMALL_SIZE)
    ps.panel_label(ax1, "a")
    ps.panel_label(ax2, "b")
    return fig


def fig_learning_rate(art: RunArtifacts, cfg: dict):
    df = art.metrics
    if not _has(df, "lr"):
        raise _Skip("logs/metrics.csv has no lr column")
    fig, ax = plt.subplots(figsize=_size(cfg, 0.6))
    lr = df["lr"].to_numpy(dtype=float)
    _plot_by_stage(ax, df, "lr", color=ps.OKABE_ITO["blue"], marker="o" if len(df) <= 30 else None, ms=2)
    pos = lr[np.isfinite(lr) & (lr > 0)]
    if pos.size and pos.max() / pos.min() > 20:
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Learning rate")
    _stage_lines(ax, df)
    return fig


def fig_class_distribution(art: RunArtifacts, cfg: dict):
    counts = art.class_counts
    order = _order(counts)
    k = len(counts)
    fig, ax = plt.subplots(figsize=_size(cfg, 0.62))
    colors = [ps.GROUP_COLORS[art.groups[c]] for c in order]
    ax.bar(np.arange(k), counts[order], color=colors, width=0.8, linewidth=0)
    pos = counts[counts > 0]
    if pos.size and pos.max() / pos.min() > 20:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain())
    _class_axis(ax, order, art.names)
    ax.set_xlabel("Class (sorted by training count)")
    ax.set_ylabel("Training samples")
    if art.grouping.get("used") == "absolute":
        for t, g in ((art.grouping["many_thresh"], "many"), (art.grouping["few_thresh"], "few")):
            ax.axhline(t, color=ps.GROUP_COLORS[g], lw=0.6, ls=":", zorder=0)
    if pos.size:
        rho = pos.max() / pos.min()
        ax.text(0.98, 0.97, (f"Imbalance ratio {rho:.0f}" if rho >= 10 else f"Imbalance ratio {rho:.1f}")
                + f"\nGrouping: {art.grouping.get('used', '?')}",
                transform=ax.transAxes, ha="right", va="top", fontsize=ps.SMALL_SIZE)
    ax.legend(handles=_group_handles(art.groups), loc="lower left", bbox_to_anchor=(0.0, 1.0),
              ncol=3, fontsize=ps.SMALL_SIZE, handlelength=1.0, columnspacing=0.8, borderaxespad=0.2)
    return fig


def tsne_embed(features: np.ndarray, *, n_components: int = 2, perplexity: float = 30.0,
               n_iter: int = 1000, seed: int = TSNE_SEED) -> np.ndarray:
    """PCA to 50 dims (if wider) then Barnes-Hut t-SNE; deterministic for a given seed."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    x = x.reshape(len(x), -1)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    n = len(x)
    perp = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    kw: dict[str, Any] = dict(n_components=n_components, perplexity=perp, init="pca",
                              learning_rate="auto", random_state=seed)
    params = inspect.signature(TSNE).parameters
    iters = max(250, int(n_iter))
    kw["max_iter" if "max_iter" in params else "n_iter"] = iters
    from threadpoolctl import threadpool_limits

    # One OpenMP thread: on a shared CPU the Barnes-Hut gradient's threads spin-wait; measured
    # on 2 busy cores (2000 points, 1000 iterations): 1 thread 12.6 s, 2 threads 52 s.
    with threadpool_limits(limits=1):
        return TSNE(**kw).fit_transform(x)


def _tsne_data(art: RunArtifacts, cfg: dict, dims: int):
    labels = art.feature_labels
    keep = (labels >= 0) & (labels < art.num_classes)
    idx = stratified_subset(labels[keep], int(cfg["max_samples"]), TSNE_SEED)
    feats = art.features[keep][idx]
    labs = labels[keep][idx]
    if len(labs) < 10:
        raise _Skip(f"only {len(labs)} feature vectors; t-SNE needs at least 10")
    emb = tsne_embed(feats, n_components=dims, perplexity=float(cfg["tsne_perplexity"]),
                     n_iter=int(cfg["tsne_n_iter"]))
    return emb, labs


def _class_colors(art: RunArtifacts):
    """Colour per class: Okabe-Ito categorical for K <= 8, else viridis by count rank."""
    k = art.num_classes
    if k <= len(ps.CATEGORICAL):
        return [ps.CATEGORICAL[c] for c in range(k)], None
    rank = np.empty(k, dtype=int)
    rank[_order(art.class_counts)] = np.arange(k)
    cmap = plt.get_cmap(ps.RANK_CMAP)
    norm = mcolors.Normalize(vmin=0, vmax=k - 1)
    return [cmap(norm(rank[c])) for c in range(k)], (cmap, norm)


def fig_tsne_2d(art: RunArtifacts, cfg: dict):
    emb, labs = _tsne_data(art, cfg, 2)
    cols, scale = _class_colors(art)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=_size(cfg, 0.56))
    s = max(0.5, min(4.0, 2000.0 / len(labs)))
    ax1.scatter(emb[:, 0], emb[:, 1], c=[cols[c] for c in labs], s=s, linewidths=0, rasterized=True)
    ax1.set_title("By class")
    if scale is None:
        handles = [Line2D([], [], marker="o", ls="none", ms=3, color=cols[c], label=art.names[c])
                   for c in np.unique(labs)]
        ax1.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=ps.SMALL_SIZE,
                   handletextpad=0.1, borderaxespad=0.1)
    else:
        sm = plt.cm.ScalarMappable(norm=scale[1], cmap=scale[0])
        cb = fig.colorbar(sm, ax=ax1, fraction=0.05, pad=0.02)
        cb.set_label("Class rank (head \u2192 tail)", fontsize=ps.SMALL_SIZE)
        cb.ax.tick_params(labelsize=ps.SMALL_SIZE)
    groups = np.array(art.groups)[labs]
    for g in GROUP_NAMES:  # draw many first so the tail stays visible on top
        m = groups == g
        if m.any():
            ax2.scatter(emb[m, 0], emb[m, 1], c=ps.GROUP_COLORS[g], s=s, linewidths=0,
                        rasterized=True, label=ps.GROUP_LABELS[g])
    ax2.set_title("By group")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=ps.SMALL_SIZE, markerscale=2.0,
               handletextpad=0.1, borderaxespad=0.1)
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
        for sp in ax.spines.values():
            sp.set_visible(True)
            sp.set_linewidth(0.4)
    ax1.set_xlabel("t-SNE 1")
    ax1.set_ylabel("t-SNE 2")
    ps.panel_label(ax1, "a")
    ps.panel_label(ax2, "b")
    return fig


def fig_tsne_3d(art: RunArtifacts, cfg: dict):
    emb, labs = _tsne_data(art, cfg, 3)
    fig = plt.figure(figsize=_size(cfg, 0.8))
    ax = fig.add_subplot(111, projection="3d")
    groups = np.array(art.groups)[labs]
    s = max(0.5, min(4.0, 2000.0 / len(labs)))
    for g in GROUP_NAMES:
        m = groups == g
        if m.any():
            ax.scatter(emb[m, 0], emb[m, 1], emb[m, 2], c=ps.GROUP_COLORS[g], s=s, linewidths=0,
                       depthshade=False, label=ps.GROUP_LABELS[g], rasterized=True)
    ax.set_xlabel("t-SNE 1", labelpad=-12)
    ax.set_ylabel("t-SNE 2", labelpad=-12)
    ax.set_zlabel("t-SNE 3", labelpad=-12)
    ax.set_xticklabels([])
    ax.set_yticklabels([])
    ax.set_zticklabels([])
    ax.legend(loc="upper left", fontsize=ps.SMALL_SIZE, markerscale=2.0)
    return fig


def fig_confusion_matrix(art: RunArtifacts, cfg: dict):
    cm = np.asarray(art.analysis["confusion_matrix"], dtype=np.float64)
    k = len(cm)
    normalize = bool(cfg["cm_normalize"])
    fig, ax = plt.subplots(figsize=_size(cfg, 0.86))
    if normalize:
        rs = cm.sum(axis=1, keepdims=True)
        data = np.divide(cm, rs, out=np.zeros_like(cm), where=rs > 0)
        im = ax.imshow(data, cmap=ps.SEQUENTIAL_CMAP, vmin=0, vmax=1, interpolation="nearest")
        label = "Fraction of true class"
    else:
        data = np.ma.masked_equal(cm, 0)
        vmax = max(1.0, float(cm.max()))
        norm = mcolors.LogNorm(vmin=1, vmax=vmax) if vmax > 100 else mcolors.Normalize(0, vmax)
        cmap = plt.get_cmap(ps.SEQUENTIAL_CMAP).copy()
        cmap.set_bad("white")
        im = ax.imshow(data, cmap=cmap, norm=norm, interpolation="nearest")
        label = "Test samples"
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label(label)
    cb.outline.set_linewidth(0.4)
    order = np.arange(k)
    _class_axis(ax, order, art.names, "x")
    _class_axis(ax, order, art.names, "y")
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_ylim(k - 0.5, -0.5)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    for sp in ax.spines.values():
        sp.set_visible(True)
        sp.set_linewidth(0.4)
    if k <= 10:
        vals = data.filled(0) if np.ma.isMaskedArray(data) else data
        thr = (vals.max() if vals.max() > 0 else 1) * 0.55
        for i in range(k):
            for j in range(k):
                v = vals[i, j]
                if v == 0 or (normalize and v < 0.005):
                    continue
                txt = f"{v:.2f}".lstrip("0") if normalize else f"{int(v)}"
                if normalize and v >= 0.995:
                    txt = "1"
                ax.text(j, i, txt, ha="center", va="center", fontsize=ps.SMALL_SIZE - 0.5,
                        color="white" if v > thr else "black")
    return fig


def fig_per_class_recall(art: RunArtifacts, cfg: dict):
    pc = _per_class_arrays(art)
    order = _order(art.class_counts)
    k = len(order)
    rec = pc["recall"][order]
    fig, ax = plt.subplots(figsize=_size(cfg, 0.62))
    colors = [ps.GROUP_COLORS[art.groups[c]] for c in order]
    ax.bar(np.arange(k), np.nan_to_num(100 * rec), color=colors, width=0.8, linewidth=0)
    missing = np.flatnonzero(np.isnan(rec))
    if missing.size:
        ax.plot(missing, np.zeros(missing.size), ls="none", marker="x", ms=2.5,
                color=ps.OKABE_ITO["grey"], label="not in test set")
    macc = np.nanmean(pc["recall"]) if np.isfinite(pc["recall"]).any() else None
    if macc is not None:
        ax.axhline(100 * macc, color=ps.OKABE_ITO["black"], lw=0.6, ls="--", zorder=3)
    _class_axis(ax, order, art.names)
    ax.set_ylim(0, 105)
    ax.set_xlabel("Class (sorted by training count)")
    ax.set_ylabel("Recall (%)")
    handles = _group_handles(art.groups, counts_by=False)
    if macc is not None:
        handles.append(Line2D([], [], color=ps.OKABE_ITO["black"], lw=0.6, ls="--",
                              label=f"mAcc {100 * macc:.1f}%"))
    if missing.size:
        handles.append(Line2D([], [], ls="none", marker="x", ms=2.5, color=ps.OKABE_ITO["grey"],
                              label="not in test set"))
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(handles),
              fontsize=ps.SMALL_SIZE, handlelength=1.0, columnspacing=0.8, borderaxespad=0.2)
    return fig


def _stages_to_show(art: RunArtifacts) -> list[str]:
    sm = art.stage_metrics
    stages = [s for s in STAGE_KEYS if s in sm]
    if "final" in sm:
        if not stages:
            stages = ["final"]
        else:
            last = sm[stages[-1]].get("overall", {})
            fin = sm["final"].get("overall", {})
            if any(_neq(last.get(m), fin.get(m)) for m in ("oa", "macc", "many_acc", "few_acc")):
                stages.append("final")
    return stages


def _neq(a, b) -> bool:
    if a is None or b is None:
        return a is not b
    return abs(float(a) - float(b)) > 1e-12


def fig_group_performance(art: RunArtifacts, cfg: dict):
    stages = _stages_to_show(art)
    if not stages:
        raise _Skip("no per-stage or final metrics in results.json and no predictions")
    cats = [*GROUP_NAMES, "all"]
    ns = len(stages)
    width = 0.8 / ns
    fig, ax = plt.subplots(figsize=_size(cfg, 0.62))
    ymax = 0.0
    for j, st in enumerate(stages):
        m = art.stage_metrics[st]
        gw, ov = m.get("group_wise", {}), m.get("overall", {})
        for i, cat in enumerate(cats):
            x = i - 0.4 + width * (j + 0.5)
            if cat == "all":
                v, color = ov.get("macc"), ps.OKABE_ITO["grey"]
            else:
                v = (gw.get(cat) or {}).get("acc", ov.get(f"{cat}_acc"))
                color = ps.GROUP_COLORS[cat]
            if v is None:
                ax.text(x, 1.0, "n/a", ha="center", va="bottom", fontsize=ps.SMALL_SIZE - 0.5,
                        color=ps.OKABE_ITO["grey"], rotation=90 if ns > 2 else 0)
                continue
            alpha = 0.45 + 0.55 * (j + 1) / ns
            ax.bar(x, 100 * v, width=width * 0.92, color=color, alpha=alpha, hatch=STAGE_HATCH[st],
                   edgecolor="white", linewidth=0.0)
            ax.text(x, 100 * v + 1.0, f"{100 * v:.0f}" if ns > 2 else f"{100 * v:.1f}",
                    ha="center", va="bottom", fontsize=ps.SMALL_SIZE - (0.5 if ns > 2 else 0))
            ymax = max(ymax, 100 * v)
    gw_any = art.stage_metrics[stages[-1]].get("group_wise", {})
    labels = []
    for cat in cats:
        if cat == "all":
            labels.append("All\n(mAcc)")
        else:
            n = (gw_any.get(cat) or {}).get("n_classes")
            if n is None and art.groups is not None:
                n = sum(1 for g in art.groups if g == cat)
            labels.append(f"{ps.GROUP_LABELS[cat]}\n({n} cl.)")
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(labels)
    ax.set_ylabel("Mean recall (%)")
    ax.set_ylim(0, max(105.0, ymax + 12))
    hm = art.stage_metrics[stages[-1]].get("overall", {}).get("hm")
    handles = []
    if ns > 1:
        handles = [Patch(facecolor="#BBBBBB", hatch=STAGE_HATCH[s], edgecolor="white", label=STAGE_LABEL[s])
                   for s in stages]
    if hm is not None:
        handles.append(Line2D([], [], ls="none", label=f"HM(many, few) {100 * hm:.1f}%"))
    if handles:
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=min(len(handles), 3),
                  fontsize=ps.SMALL_SIZE, borderaxespad=0.2, columnspacing=1.0, handlelength=1.5)
    return fig


def _fig_sample_vs(art: RunArtifacts, cfg: dict, key: str, ylabel: str):
    from scipy.stats import spearmanr

    pc = _per_class_arrays(art)
    y = pc[key]
    counts = art.class_counts.astype(float)
    fig, ax = plt.subplots(figsize=_size(cfg, 0.75))
    for g in GROUP_NAMES:
        m = np.array([x == g for x in art.groups]) & np.isfinite(y)
        if m.any():
            ax.scatter(counts[m], 100 * y[m], s=10 if len(y) <= 50 else 5, color=ps.GROUP_COLORS[g],
                       edgecolors="white", linewidths=0.3, label=ps.GROUP_LABELS[g], zorder=3)
    pos = counts[counts > 0]
    if pos.size and pos.max() / pos.min() > 5:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_plain())
    if art.grouping.get("used") == "absolute":
        for t, g in ((art.grouping["many_thresh"], "many"), (art.grouping["few_thresh"], "few")):
            ax.axvline(t, color=ps.GROUP_COLORS[g], lw=0.6, ls=":", zorder=1)
    ok = np.isfinite(y)
    if ok.sum() >= 3 and np.ptp(counts[ok]) > 0 and np.ptp(y[ok]) > 0:
        rho, pval = spearmanr(counts[ok], y[ok])
        ax.text(0.02, 0.98, f"Spearman \u03c1 = {rho:.2f}", transform=ax.transAxes, ha="left",
                va="top", fontsize=ps.SMALL_SIZE)
    ax.set_ylim(-3, 105)
    ax.set_xlabel("Training samples per class")
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=ps.SMALL_SIZE, handletextpad=0.1)
    return fig


def fig_sample_vs_recall(art, cfg):
    return _fig_sample_vs(art, cfg, "recall", "Recall (%)")


def fig_sample_vs_f1(art, cfg):
    return _fig_sample_vs(art, cfg, "f1", "F1 score (%)")


def fig_confidence_dist(art: RunArtifacts, cfg: dict):
    p = art.prob
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == art.y_true
    bins = np.linspace(0, 1, 26)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=_size(cfg, 0.55), layout="constrained")
    for m, lab, col in ((correct, "Correct", ps.OKABE_ITO["sky_blue"]),
                        (~correct, "Wrong", ps.OKABE_ITO["vermillion"])):
        if m.any():
            ax1.hist(conf[m], bins=bins, density=True, histtype="stepfilled", alpha=0.45, color=col,
                     linewidth=0)
            ax1.hist(conf[m], bins=bins, density=True, histtype="step", color=col, linewidth=0.8,
                     label=f"{lab} (n={int(m.sum())})")
            ax1.axvline(conf[m].mean(), color=col, lw=0.6, ls="--")
    ax1.set_xlabel("Confidence (max. probability)")
    ax1.set_ylabel("Density")
    ax1.set_xlim(0, 1)
    fig.legend(loc="outside upper center", ncol=2, fontsize=ps.SMALL_SIZE, handlelength=1.2)
    # confidence by group of the true class: box plots of correct / wrong
    groups = np.array(art.groups)[art.y_true]
    data, pos, cols, ticks, ticklabels = [], [], [], [], []
    for i, g in enumerate(GROUP_NAMES):
        gm = groups == g
        if not gm.any():
            continue
        ticks.append(i)
        ticklabels.append(ps.GROUP_LABELS[g].split("-")[0])
        for dx, m, col in ((-0.18, correct, ps.OKABE_ITO["sky_blue"]), (0.18, ~correct, ps.OKABE_ITO["vermillion"])):
            sel = conf[gm & m]
            if sel.size:
                data.append(sel)
                pos.append(i + dx)
                cols.append(col)
    if data:
        bp = ax2.boxplot(data, positions=pos, widths=0.3, patch_artist=True, showfliers=False,
                         medianprops=dict(color="black", lw=0.8), whiskerprops=dict(lw=0.6),
                         capprops=dict(lw=0.6), boxprops=dict(lw=0.5))
        for patch, col in zip(bp["boxes"], cols):
            patch.set_facecolor(col)
            patch.set_alpha(0.7)
    ax2.set_xticks(ticks)
    ax2.set_xticklabels(ticklabels)
    for t, g in zip(ax2.get_xticklabels(), [g for g in GROUP_NAMES if (groups == g).any()]):
        t.set_color(ps.GROUP_COLORS[g])
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("Confidence")
    ax2.set_xlabel("True-class group")
    ps.panel_label(ax1, "a")
    ps.panel_label(ax2, "b")
    return fig


def fig_top_confusions(art: RunArtifacts, cfg: dict):
    cm = np.asarray(art.analysis["confusion_matrix"], dtype=np.int64)
    k = int(cfg["top_confusions_k"])
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    nz = np.flatnonzero(flat > 0)
    if nz.size == 0:
        raise _Skip("no misclassifications: no confusions to show")
    rs = cm.sum(axis=1)
    rate = flat / np.maximum(np.repeat(rs, len(cm)), 1)
    # rank by count, ties by rate (lexsort: last key is primary)
    top = nz[np.lexsort((-rate[nz], -flat[nz]))][:k]
    n = len(top)
    w = float(cfg["panel_mm"]) * float(cfg["panel_scale"]) / ps.MM_PER_INCH
    h = max(0.45 * w, (n * 3.6 + 14) / ps.MM_PER_INCH)
    fig, ax = plt.subplots(figsize=(w, h))
    ti, pj = np.divmod(top, len(cm))
    ypos = np.arange(n)[::-1]
    colors = [ps.GROUP_COLORS[art.groups[t]] for t in ti]
    ax.barh(ypos, flat[top], color=colors, height=0.7, linewidth=0)
    for y, v, r in zip(ypos, flat[top], rate[top]):
        ax.text(v, y, f" {v} ({100 * r:.0f}%)", va="center", ha="left", fontsize=ps.SMALL_SIZE)
    ax.set_yticks(ypos)
    ax.set_yticklabels([f"{art.names[t]} \u2192 {art.names[p]}" for t, p in zip(ti, pj)])
    ax.set_xlabel("Misclassified test samples (true \u2192 predicted)")
    ax.set_xlim(0, flat[top].max() * 1.3)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylim(-0.6, n - 0.4)
    ax.legend(handles=_group_handles([art.groups[t] for t in ti], counts_by=False),
              title="True-class group", loc="lower right", fontsize=ps.SMALL_SIZE)
    return fig


def fig_reliability_diagram(art: RunArtifacts, cfg: dict):
    """Reliability diagram (Guo et al. 2017; 15 equal-width bins): (a) all test samples with the
    gap to perfect calibration hatched; (b) one curve per true-class group, with its ECE."""
    from .analysis import expected_calibration_error

    n_bins = 15
    p, y = art.prob, art.y_true
    rb = reliability_bins(p, y, n_bins=n_bins)
    edges = rb["edges"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=_size(cfg, 0.6), layout="constrained")
    acc = np.nan_to_num(rb["accuracy"])
    has = rb["count"] > 0
    ax1.bar(centers[has], acc[has], width=width, color=ps.OKABE_ITO["sky_blue"],
            edgecolor=ps.OKABE_ITO["blue"], linewidth=0.4, label="Accuracy")
    gap_lo = np.minimum(acc, rb["confidence"])[has]
    gap_hi = np.maximum(acc, rb["confidence"])[has]
    ax1.bar(centers[has], gap_hi - gap_lo, bottom=gap_lo, width=width, facecolor="none",
            edgecolor=ps.OKABE_ITO["vermillion"], hatch="////", linewidth=0.4, label="Gap")
    ax1.plot([0, 1], [0, 1], ls="--", color=ps.OKABE_ITO["grey"], lw=0.6, label="Perfect")
    ece = expected_calibration_error(p, y, n_bins=n_bins)
    ax1.set_title(f"All classes, ECE {100 * ece:.1f}%", fontsize=ps.SMALL_SIZE + 0.5)
    ax1.set_xlabel("Confidence")
    ax1.set_ylabel("Accuracy")
    groups = np.array(art.groups)[y]
    for g in GROUP_NAMES:
        m = groups == g
        if not m.any():
            continue
        gb = reliability_bins(p[m], y[m], n_bins=n_bins)
        ok = gb["count"] > 0
        ge = expected_calibration_error(p[m], y[m], n_bins=n_bins)
        ax2.plot(gb["confidence"][ok], gb["accuracy"][ok], marker="o", ms=2, lw=0.8,
                 color=ps.GROUP_COLORS[g], label=f"{ps.GROUP_LABELS[g].split('-')[0]}, ECE {100 * ge:.1f}%")
    ax2.plot([0, 1], [0, 1], ls="--", color=ps.OKABE_ITO["grey"], lw=0.6)
    ax2.set_title("By true-class group", fontsize=ps.SMALL_SIZE + 0.5)
    ax2.set_xlabel("Confidence")
    for ax in (ax1, ax2):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    ps.panel_label(ax1, "a")
    ps.panel_label(ax2, "b")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="outside upper center", ncol=3, fontsize=ps.SMALL_SIZE,
               handlelength=1.2, columnspacing=0.8)
    return fig


class _Skip(Exception):
    """A figure cannot be drawn from the artifacts present (logged, not an error)."""


# name -> (switch, needs, function). needs: attributes of RunArtifacts that must be present.
FIGURES: dict[str, tuple[str, tuple[str, ...], Callable]] = {
    "training_curves": ("plot_training_curves", ("metrics",), fig_training_curves),
    "learning_rate": ("plot_learning_rate", ("metrics",), fig_learning_rate),
    "class_distribution": ("plot_class_distribution", ("class_counts",), fig_class_distribution),
    "tsne_2d": ("plot_tsne_2d", ("class_counts", "features"), fig_tsne_2d),
    "tsne_3d": ("plot_tsne_3d", ("class_counts", "features"), fig_tsne_3d),
    "confusion_matrix": ("plot_confusion_matrix", ("analysis",), fig_confusion_matrix),
    "per_class_recall": ("plot_per_class_acc", ("analysis",), fig_per_class_recall),
    "group_performance": ("plot_group_performance", ("stage_metrics",), fig_group_performance),
    "sample_vs_recall": ("plot_sample_vs_performance", ("analysis",), fig_sample_vs_recall),
    "sample_vs_f1": ("plot_sample_vs_performance", ("analysis",), fig_sample_vs_f1),
    "confidence_dist": ("plot_confidence_dist", ("prob", "y_true"), fig_confidence_dist),
    "top_confusions": ("plot_top_confusions", ("analysis",), fig_top_confusions),
    "reliability_diagram": ("plot_reliability_diagram", ("prob", "y_true"), fig_reliability_diagram),
}

_ARTIFACT_SOURCE = {
    "metrics": "logs/metrics.csv",
    "class_counts": "results/predictions.npz or results.json class_counts",
    "features": "results/predictions.npz features/feature_labels",
    "analysis": "results/predictions.npz y_true/y_pred (or results.json per_class)",
    "stage_metrics": "results.json metrics (or predictions.npz)",
    "prob": "results/predictions.npz prob",
    "y_true": "results/predictions.npz y_true",
}


# ============================================================================ driver
def _merge_viz(viz: dict | None) -> dict:
    cfg = dict(DEFAULT_VIZ)
    if viz:
        unknown = sorted(set(viz) - set(DEFAULT_VIZ))
        if unknown:
            logger.warning("unknown visualization keys ignored: %s", ", ".join(unknown))
        cfg.update({k: v for k, v in viz.items() if k in DEFAULT_VIZ})
    for key in ("dpi", "panel_mm", "panel_scale"):
        try:
            ok = float(cfg[key]) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"visualization.{key}={cfg[key]!r} is not valid; give a positive number")
    for key in ("max_samples", "top_confusions_k", "tsne_n_iter"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1:
            raise ConfigError(f"visualization.{key}={v!r} is not valid; give a positive integer")
    try:
        if float(cfg["tsne_perplexity"]) <= 0:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(
            f"visualization.tsne_perplexity={cfg['tsne_perplexity']!r} is not valid; give a positive number"
        ) from None
    return cfg


def make_figure(name: str, art: RunArtifacts, cfg: dict):
    """Build one figure (journal style, decluttered labels); the caller saves and closes it."""
    _, _, fn = FIGURES[name]
    with ps.journal_style(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Tt]ight.?layout.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        fig = fn(art, cfg)
        ps.declutter_tick_labels(fig)
    return fig


def visualize_all_results(
    run_dir: str | Path,
    viz: dict | None = None,
    class_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write every enabled figure of the run in ``run_dir`` to ``results/<name>.png`` and ``.pdf``.

    ``viz`` is the ``visualization:`` config section as a plain dict (None: read it from
    ``results/results.json`` ``config.visualization``, defaults for missing keys). Returns the
    files written. Missing artifacts skip only the figures that need them; a failing figure is
    logged and the others are still made.
    """
    run = resolve_run_dir(run_dir)
    if viz is None:
        res = _read_results_json(run / "results" / "results.json") or {}
        viz = (res.get("config") or {}).get("visualization") or {}
    cfg = _merge_viz(viz)
    if not cfg["enabled"]:
        logger.info("visualization.enabled is false: no figures")
        return []
    art = load_run_artifacts(run, class_names=class_names, viz=cfg)
    art.results_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, (switch, needs, _) in FIGURES.items():
        if not cfg.get(switch, False):
            continue
        missing = [n for n in needs if getattr(art, n) is None or (n == "stage_metrics" and not art.stage_metrics)]
        if missing:
            logger.warning("figure %s skipped: missing %s", name,
                           "; ".join(_ARTIFACT_SOURCE.get(m, m) for m in missing))
            continue
        t0 = time.perf_counter()
        fig = None
        try:
            fig = make_figure(name, art, cfg)
            written += ps.save_png_pdf(fig, art.results_dir / name, float(cfg["dpi"]))
            logger.info("figure %s written (%.1f s)", name, time.perf_counter() - t0)
        except _Skip as exc:
            logger.warning("figure %s skipped: %s", name, exc)
        except Exception:  # one figure must not lose the others
            logger.exception("figure %s failed; continuing with the others", name)
        finally:
            if fig is not None:
                plt.close(fig)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m imbalance.visualization --exp_dir DIR``: regenerate every figure of a run."""
    parser = argparse.ArgumentParser(
        prog="python -m imbalance.visualization",
        description="Regenerate every figure of a finished run from its saved artifacts.",
    )
    parser.add_argument("--exp_dir", "--exp-dir", required=True,
                        help="run folder experiments/<name>_<timestamp> (or the <name>_latest link)")
    parser.add_argument("--dpi", type=float, default=None, help="override visualization.dpi")
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), default=None,
                        help="make only these figures")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        run = resolve_run_dir(args.exp_dir)
        res = _read_results_json(run / "results" / "results.json") or {}
        viz = dict((res.get("config") or {}).get("visualization") or {})
        viz["enabled"] = True  # asked for explicitly
        if args.dpi is not None:
            viz["dpi"] = args.dpi
        if args.only:
            for name, (switch, _, _) in FIGURES.items():
                viz[switch] = False
            for name in args.only:
                viz[FIGURES[name][0]] = True
        files = visualize_all_results(run, viz=viz)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pngs = [p for p in files if p.suffix == ".png"]
    print(f"{len(pngs)} figures (PNG + PDF) written to {run / 'results'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
