"""Open-set figures (journal style of :mod:`imbalance.plotting_style`, PNG + PDF).

Made from arrays a run saves (no model, no data): the detectors' test scores, the test labels
(known classes 0..K-1, unknown < 0), the closed-set predictions, the TRAINING class counts
(groups many / medium / few, Kang et al. 2020 thresholds) and optionally the test features.

* ``openset_score_hist``  per detector, score histograms of the known test samples by group of
                          their class (many blue, medium green, few orange, as every figure of
                          the framework) against the unknowns (reddish purple), with the chosen
                          threshold as a dashed line;
* ``openset_roc``         ROC curves (unknowns accepted vs knowns accepted), one per detector;
* ``openset_oscr``        OSCR curves (correct classification rate vs unknowns accepted; log
                          FPR axis as Dhamija et al. 2018 draw them), one per detector;
* ``openset_tsne``        t-SNE of the test features (``imbalance.visualization.tsne_embed``),
                          known samples by group, unknowns marked with crosses.

:func:`save_openset_figures` writes them as ``<out_dir>/<name>.png`` and ``.pdf``.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import plotting_style as ps
from .analysis import GROUP_NAMES, assign_groups
from .openset_metrics import oscr_curve, roc_points

import matplotlib.pyplot as plt  # noqa: E402  (plotting_style selected Agg)
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = [
    "OPENSET_FIGURES",
    "UNKNOWN_COLOR",
    "fig_score_histograms",
    "fig_roc_curves",
    "fig_oscr_curves",
    "fig_tsne_unknown",
    "save_openset_figures",
]

#: Colour of the unknown samples (Okabe & Ito reddish purple: apart from the three group colours).
UNKNOWN_COLOR = ps.OKABE_ITO["reddish_purple"]
#: Display names of the detectors.
DETECTOR_LABELS = {"msp": "MSP", "maxlogit": "MaxLogit", "energy": "Energy", "odin": "ODIN",
                   "mahalanobis": "Mahalanobis", "knn": "kNN", "openmax": "OpenMax"}


def _label(name: str) -> str:
    return DETECTOR_LABELS.get(name, name)


def _arr(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a)


def _groups(class_counts: Sequence[int], many_thresh: float, few_thresh: float, grouping: str) -> np.ndarray:
    return np.asarray(assign_groups(class_counts, grouping=grouping, many_thresh=many_thresh,
                                    few_thresh=few_thresh)[0], dtype=object)


def _size(panel_mm: float, panel_scale: float, aspect: float) -> tuple:
    return ps.panel_size(panel_mm, panel_scale, aspect)


def _detector_colors(names: Sequence[str]) -> Dict[str, str]:
    return {n: ps.CATEGORICAL[i % len(ps.CATEGORICAL)] for i, n in enumerate(names)}


def fig_score_histograms(scores: Mapping[str, Any], y_true: Any, class_counts: Sequence[int], *,
                         thresholds: Optional[Mapping[str, float]] = None, many_thresh: float = 100,
                         few_thresh: float = 20, grouping: str = "absolute", panel_mm: float = 85,
                         panel_scale: float = 1.0, bins: int = 40):
    """One panel per detector: density histograms of the known scores by group and of the
    unknown scores; dashed line at the detector's threshold when given."""
    y = _arr(y_true).astype(np.int64).reshape(-1)
    groups = _groups(class_counts, many_thresh, few_thresh, grouping)
    names = list(scores)
    ncols = 2 if len(names) > 1 else 1
    nrows = int(math.ceil(len(names) / ncols))
    w, h = _size(panel_mm, panel_scale, 0.42 * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False)
    unknown = y < 0
    present = []
    for i, name in enumerate(names):
        ax = axes[i // ncols][i % ncols]
        s = _arr(scores[name]).astype(np.float64).reshape(-1)
        lo, hi = np.min(s), np.max(s)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        for g in GROUP_NAMES:
            m = np.isin(y, np.flatnonzero(groups == g)) & ~unknown
            if m.any():
                ax.hist(s[m], bins=edges, density=True, histtype="step", color=ps.GROUP_COLORS[g], lw=0.8)
                present.append(g)
        if unknown.any():
            ax.hist(s[unknown], bins=edges, density=True, histtype="stepfilled", alpha=0.35,
                    color=UNKNOWN_COLOR, lw=0)
            ax.hist(s[unknown], bins=edges, density=True, histtype="step", color=UNKNOWN_COLOR, lw=0.8)
        if thresholds and name in thresholds and thresholds[name] is not None:
            ax.axvline(float(thresholds[name]), color="black", lw=0.6, ls="--")
        ax.set_title(_label(name), fontsize=ps.TICK_SIZE)
        ax.set_yticks([])
        ax.tick_params(axis="x", labelsize=ps.SMALL_SIZE)
    for j in range(len(names), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    for ax in axes[-1]:
        if ax.get_visible():
            ax.set_xlabel("Score (higher = known)", fontsize=ps.SMALL_SIZE)
    handles = [Patch(facecolor="none", edgecolor=ps.GROUP_COLORS[g], label=f"Known, {ps.GROUP_LABELS[g].lower()}")
               for g in GROUP_NAMES if g in present]
    if unknown.any():
        handles.append(Patch(facecolor=UNKNOWN_COLOR, alpha=0.5, edgecolor=UNKNOWN_COLOR, label="Unknown"))
    fig.legend(handles=handles, loc="outside upper center", ncol=min(4, len(handles)), fontsize=ps.SMALL_SIZE,
               handlelength=1.2, columnspacing=0.8)
    return fig


def fig_roc_curves(scores: Mapping[str, Any], y_true: Any, *, panel_mm: float = 85, panel_scale: float = 1.0):
    """ROC curve of each detector: fraction of unknowns accepted (x) against knowns accepted (y)."""
    y = _arr(y_true).astype(np.int64).reshape(-1)
    known = y >= 0
    fig, ax = plt.subplots(figsize=_size(panel_mm, panel_scale, 0.8))
    cols = _detector_colors(list(scores))
    for name, s in scores.items():
        s = _arr(s).astype(np.float64).reshape(-1)
        fpr, tpr, _ = roc_points(s[known], s[~known])
        auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
        ax.plot(fpr, tpr, color=cols[name], lw=0.9, label=f"{_label(name)} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], color=ps.OKABE_ITO["grey"], lw=0.5, ls=":")
    ax.axhline(0.95, color=ps.OKABE_ITO["grey"], lw=0.4, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Unknowns accepted (FPR)")
    ax.set_ylabel("Knowns accepted (TPR)")
    ax.legend(loc="lower right", fontsize=ps.SMALL_SIZE, title="AUROC", title_fontsize=ps.SMALL_SIZE)
    return fig


def fig_oscr_curves(scores: Mapping[str, Any], y_true: Any, y_pred: Union[Any, Mapping[str, Any]], *,
                    panel_mm: float = 85, panel_scale: float = 1.0):
    """OSCR curve of each detector (Dhamija et al. 2018): correct classification rate of the
    knowns against the fraction of unknowns accepted, log x axis."""
    y = _arr(y_true).astype(np.int64).reshape(-1)
    known = y >= 0
    fig, ax = plt.subplots(figsize=_size(panel_mm, panel_scale, 0.8))
    cols = _detector_colors(list(scores))
    n_unknown = int((~known).sum())
    for name, s in scores.items():
        p = _arr(y_pred[name] if isinstance(y_pred, Mapping) else y_pred).astype(np.int64).reshape(-1)
        s = _arr(s).astype(np.float64).reshape(-1)
        fpr, ccr = oscr_curve(s[known], p[known] == y[known], s[~known])
        area = float(np.sum(np.diff(fpr) * (ccr[1:] + ccr[:-1]) / 2.0))
        keep = fpr > 0
        ax.step(fpr[keep], ccr[keep], where="post", color=cols[name], lw=0.9,
                label=f"{_label(name)} ({area:.3f})")
    ax.set_xscale("log")
    ax.set_xlim(1.0 / max(n_unknown, 1), 1.0)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Unknowns accepted (FPR)")
    ax.set_ylabel("Correct classification rate")
    ax.legend(loc="upper left", fontsize=ps.SMALL_SIZE, title="OSCR", title_fontsize=ps.SMALL_SIZE)
    return fig


def fig_tsne_unknown(features: Any, y_true: Any, class_counts: Sequence[int], *, max_samples: int = 3000,
                     perplexity: float = 30.0, n_iter: int = 1000, many_thresh: float = 100,
                     few_thresh: float = 20, grouping: str = "absolute", panel_mm: float = 85,
                     panel_scale: float = 1.0, embedding: Optional[np.ndarray] = None, seed: int = 0):
    """t-SNE of the test features: known samples coloured by group, unknowns as crosses.
    ``embedding`` (N, 2) skips the t-SNE (already computed for these samples)."""
    f = _arr(features).astype(np.float32)
    y = _arr(y_true).astype(np.int64).reshape(-1)
    if len(f) != len(y):
        raise ValueError(f"{len(f)} feature vectors but {len(y)} labels")
    if embedding is None:
        from .visualization import tsne_embed

        idx = np.arange(len(y))
        if len(y) > max_samples:
            idx = np.sort(np.random.default_rng(seed).choice(len(y), size=int(max_samples), replace=False))
        emb = tsne_embed(f[idx], n_components=2, perplexity=perplexity, n_iter=n_iter, seed=seed)
        y = y[idx]
    else:
        emb = np.asarray(embedding, dtype=np.float64)
        if emb.shape != (len(y), 2):
            raise ValueError(f"embedding must have shape ({len(y)}, 2), got {emb.shape}")
    groups = _groups(class_counts, many_thresh, few_thresh, grouping)
    fig, ax = plt.subplots(figsize=_size(panel_mm, panel_scale, 0.85))
    s = max(0.5, min(4.0, 2000.0 / max(len(y), 1)))
    handles = []
    for g in GROUP_NAMES:
        m = np.isin(y, np.flatnonzero(groups == g)) & (y >= 0)
        if m.any():
            ax.scatter(emb[m, 0], emb[m, 1], c=ps.GROUP_COLORS[g], s=s, linewidths=0, rasterized=True)
            handles.append(Line2D([], [], marker="o", ls="none", ms=3, color=ps.GROUP_COLORS[g],
                                  label=f"Known, {ps.GROUP_LABELS[g].lower()}"))
    m = y < 0
    if m.any():
        ax.scatter(emb[m, 0], emb[m, 1], c=UNKNOWN_COLOR, s=3 * s, marker="x", linewidths=0.5, rasterized=True)
        handles.append(Line2D([], [], marker="x", ls="none", ms=3, mew=0.8, color=UNKNOWN_COLOR, label="Unknown"))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    for sp in ax.spines.values():
        sp.set_visible(True)
        sp.set_linewidth(0.4)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=ps.SMALL_SIZE,
              handletextpad=0.1, borderaxespad=0.1)
    return fig


#: name -> builder(kwargs) -> Figure; keys are the file names.
OPENSET_FIGURES: Dict[str, Callable[..., Any]] = {
    "openset_score_hist": fig_score_histograms,
    "openset_roc": fig_roc_curves,
    "openset_oscr": fig_oscr_curves,
    "openset_tsne": fig_tsne_unknown,
}


def save_openset_figures(
    out_dir: Union[str, Path],
    *,
    scores: Mapping[str, Any],
    y_true: Any,
    y_pred: Union[Any, Mapping[str, Any]],
    class_counts: Sequence[int],
    features: Any = None,
    feature_labels: Any = None,
    thresholds: Optional[Mapping[str, float]] = None,
    many_thresh: float = 100,
    few_thresh: float = 20,
    grouping: str = "absolute",
    panel_mm: float = 85,
    panel_scale: float = 1.0,
    dpi: float = 400,
    max_samples: int = 3000,
    tsne_perplexity: float = 30.0,
    tsne_n_iter: int = 1000,
) -> List[Path]:
    """Write every open-set figure to ``out_dir`` (PNG + PDF); the t-SNE only with ``features``
    (of the samples labelled ``feature_labels``, e.g. a stratified subset, default ``y_true``).
    A figure that fails is logged and the others are still written.  Returns the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = dict(panel_mm=panel_mm, panel_scale=panel_scale)
    grp = dict(many_thresh=many_thresh, few_thresh=few_thresh, grouping=grouping)
    jobs: Dict[str, Callable[[], Any]] = {
        "openset_score_hist": lambda: fig_score_histograms(scores, y_true, class_counts, thresholds=thresholds,
                                                           **grp, **size),
        "openset_roc": lambda: fig_roc_curves(scores, y_true, **size),
        "openset_oscr": lambda: fig_oscr_curves(scores, y_true, y_pred, **size),
    }
    if features is not None:
        flab = y_true if feature_labels is None else feature_labels
        jobs["openset_tsne"] = lambda: fig_tsne_unknown(features, flab, class_counts, max_samples=max_samples,
                                                        perplexity=tsne_perplexity, n_iter=tsne_n_iter,
                                                        **grp, **size)
    written: List[Path] = []
    for name, make in jobs.items():
        fig = None
        try:
            with ps.journal_style(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*[Tt]ight.?layout.*")
                fig = make()
                ps.declutter_tick_labels(fig)
            written += ps.save_png_pdf(fig, out / name, dpi)
            logger.info("figure %s written", name)
        except Exception:  # one figure must not lose the others
            logger.exception("figure %s failed; continuing with the others", name)
        finally:
            if fig is not None:
                plt.close(fig)
    return written
