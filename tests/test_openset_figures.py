"""Open-set figures (imbalance.openset_figures): drawn from the metrics' own curves, in the
framework's journal style and colours, written as PNG + PDF."""
from __future__ import annotations

import logging

import matplotlib.colors as mcolors
import numpy as np
import pytest

from imbalance import plotting_style as ps
from imbalance.openset_figures import (
    UNKNOWN_COLOR,
    fig_oscr_curves,
    fig_roc_curves,
    fig_score_histograms,
    fig_tsne_unknown,
    save_openset_figures,
)
from imbalance.openset_metrics import oscr_curve, roc_points

COUNTS = [300, 150, 60, 30, 10, 5]     # many 0-1, medium 2-3, few 4-5


@pytest.fixture(autouse=True)
def _close_figures():
    """The figure builders return open figures; close them so no later test sees them."""
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def _data(seed=0, n=300, nu=100):
    rng = np.random.default_rng(seed)
    y = np.r_[rng.integers(0, 6, n), -np.ones(nu, int)]
    scores = {"msp": rng.normal(size=y.size) + (y >= 0), "knn": rng.normal(size=y.size) + 2 * (y >= 0)}
    pred = np.where(rng.random(y.size) < 0.8, np.maximum(y, 0), 0)
    feats = rng.normal(size=(y.size, 8)) + 3 * (y < 0)[:, None]
    return y, scores, pred, feats


def _same(c1, c2):
    return np.allclose(mcolors.to_rgba(c1)[:3], mcolors.to_rgba(c2)[:3])


def test_roc_figure_draws_the_metric_curves():
    y, scores, pred, _ = _data()
    with ps.journal_style():
        fig = fig_roc_curves(scores, y)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith(("MSP", "kNN"))]
    assert [ln.get_label().split()[0] for ln in lines] == ["MSP", "kNN"]
    fpr, tpr, _ = roc_points(scores["knn"][y >= 0], scores["knn"][y < 0])
    np.testing.assert_allclose(lines[1].get_xdata(), fpr)
    np.testing.assert_allclose(lines[1].get_ydata(), tpr)


def test_oscr_figure_uses_per_detector_predictions():
    y, scores, pred, _ = _data(1)
    other = np.zeros_like(pred)
    with ps.journal_style():
        fig = fig_oscr_curves(scores, y, {"msp": pred, "knn": other})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    fpr, ccr = oscr_curve(scores["knn"][y >= 0], other[y >= 0] == y[y >= 0], scores["knn"][y < 0])
    line = [ln for ln in ax.get_lines() if ln.get_label().startswith("kNN")][0]
    np.testing.assert_allclose(line.get_ydata(), ccr[fpr > 0])


def test_histograms_use_group_colours_and_unknown_colour():
    y, scores, pred, _ = _data(2)
    with ps.journal_style():
        fig = fig_score_histograms(scores, y, COUNTS, thresholds={"msp": 0.1})
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["Known, many-shot", "Known, medium-shot", "Known, few-shot", "Unknown"]
    edge = [h.get_edgecolor() for h in legend.legend_handles]
    for h, g in zip(edge[:3], ("many", "medium", "few")):
        assert _same(h, ps.GROUP_COLORS[g])
    assert _same(edge[3], UNKNOWN_COLOR)
    assert [a.get_title() for a in fig.axes[:2]] == ["MSP", "kNN"]
    assert any(ln.get_xdata()[0] == 0.1 for ln in fig.axes[0].get_lines())  # threshold line


def test_tsne_marks_unknowns_with_crosses():
    y, _, _, feats = _data(3, n=60, nu=20)
    emb = np.random.default_rng(0).normal(size=(y.size, 2))
    with ps.journal_style():
        fig = fig_tsne_unknown(feats, y, COUNTS, embedding=emb)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[-1] == "Unknown"
    offsets = fig.axes[0].collections[-1].get_offsets()
    np.testing.assert_allclose(offsets, emb[y < 0])
    with pytest.raises(ValueError, match="embedding"):
        fig_tsne_unknown(feats, y, COUNTS, embedding=emb[:5])


def test_save_writes_png_and_pdf_and_survives_a_failing_figure(tmp_path, caplog, monkeypatch):
    y, scores, pred, feats = _data(4, n=50, nu=20)
    # the t-SNE (drawn when features are given) reuses imbalance.visualization.tsne_embed
    import imbalance.visualization as viz

    calls = []
    monkeypatch.setattr(viz, "tsne_embed", lambda f, **kw: calls.append((len(f), kw)) or np.zeros((len(f), 2)))
    # predictions of the wrong length make the OSCR figure fail: logged, the others written
    with caplog.at_level(logging.ERROR):
        files = save_openset_figures(tmp_path, scores=scores, y_true=y, y_pred=pred[:3], class_counts=COUNTS,
                                     features=feats, dpi=80, max_samples=40)
    assert "openset_oscr failed" in caplog.text
    names = sorted(p.name for p in files)
    assert names == sorted(f"{n}.{e}" for n in ("openset_score_hist", "openset_roc", "openset_tsne")
                           for e in ("png", "pdf"))
    assert all(p.stat().st_size > 1000 for p in files)
    assert (tmp_path / "openset_roc.pdf").read_bytes()[:4] == b"%PDF"
    assert calls == [(40, dict(n_components=2, perplexity=30.0, n_iter=1000, seed=0))]
