"""Journal look for the framework's figures (Nature-style single-column panels).

* Width: ``panel_mm * panel_scale`` millimetres (Nature: 89 mm single column, 183 mm double;
  the seed's default 85 mm fits a single column with margin). Fonts are fixed in points
  (7 pt text, 6 pt ticks, >= 5 pt everywhere, Nature's 5-7 pt rule), so a figure printed at
  its own width is readable; a larger ``panel_scale`` gives more room, not bigger letters.
* Colours: the Okabe & Ito (2008) colour-blind-safe palette. Groups are ALWAYS
  many = blue, medium = bluish green, few = orange (the seed's text), in every figure.
* PDF keeps text as TrueType (fonttype 42) so journals' editors can edit it.
* :func:`declutter_tick_labels` hides tick labels until none overlap (10, 50, 100 classes).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (headless; must precede pyplot)
import matplotlib.font_manager as font_manager  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

MM_PER_INCH = 25.4

OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "grey": "#7F7F7F",
}
GROUP_COLORS: dict[str, str] = {
    "many": OKABE_ITO["blue"],
    "medium": OKABE_ITO["bluish_green"],
    "few": OKABE_ITO["orange"],
}
GROUP_LABELS: dict[str, str] = {"many": "Many-shot", "medium": "Medium-shot", "few": "Few-shot"}
# Categorical cycle for at most 8 series (classes when K <= 8, stages, curves).
CATEGORICAL: list[str] = [
    OKABE_ITO[k]
    for k in ("blue", "orange", "bluish_green", "vermillion", "reddish_purple", "sky_blue",
              "yellow", "black")
]
SEQUENTIAL_CMAP = "Blues"  # single-hue: colour-blind safe, prints in grey scale
RANK_CMAP = "viridis"      # perceptually uniform, colour-blind safe

FONT_SIZE = 7.0
TICK_SIZE = 6.0
SMALL_SIZE = 5.5

_SANS = ["Arial", "Helvetica", "Liberation Sans", "Nimbus Sans", "DejaVu Sans"]


def _available_sans() -> list[str]:
    names = {f.name for f in font_manager.fontManager.ttflist}
    found = [n for n in _SANS if n in names]
    return found or ["DejaVu Sans"]


def journal_rc() -> dict:
    """rcParams of the journal look (used through :func:`journal_style`)."""
    return {
        "font.family": "sans-serif",
        "font.sans-serif": _available_sans(),
        "font.size": FONT_SIZE,
        "axes.titlesize": FONT_SIZE,
        "axes.labelsize": FONT_SIZE,
        "xtick.labelsize": TICK_SIZE,
        "ytick.labelsize": TICK_SIZE,
        "legend.fontsize": TICK_SIZE,
        "legend.title_fontsize": TICK_SIZE,
        "legend.frameon": False,
        "legend.handlelength": 1.5,
        "legend.borderaxespad": 0.3,
        "axes.linewidth": 0.6,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlepad": 3.0,
        "axes.labelpad": 2.0,
        "axes.prop_cycle": matplotlib.cycler(color=CATEGORICAL),
        "xtick.major.width": 0.6,
        "ytick.major.width": 0.6,
        "xtick.minor.width": 0.4,
        "ytick.minor.width": 0.4,
        "xtick.major.size": 2.5,
        "ytick.major.size": 2.5,
        "xtick.minor.size": 1.5,
        "ytick.minor.size": 1.5,
        "xtick.major.pad": 1.5,
        "ytick.major.pad": 1.5,
        "lines.linewidth": 1.0,
        "lines.markersize": 3.0,
        "patch.linewidth": 0.5,
        "grid.linewidth": 0.4,
        "grid.alpha": 0.4,
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "savefig.bbox": None,  # keep the exact panel size; constrained layout fits the content
        "figure.constrained_layout.use": True,
        "figure.constrained_layout.h_pad": 0.02,
        "figure.constrained_layout.w_pad": 0.02,
        "axes.unicode_minus": False,
    }


@contextlib.contextmanager
def journal_style() -> Iterator[None]:
    """Context manager applying :func:`journal_rc` without touching the global rcParams."""
    with matplotlib.rc_context(journal_rc()):
        yield


def panel_size(panel_mm: float, panel_scale: float = 1.0, aspect: float = 0.75) -> tuple[float, float]:
    """(width, height) in inches of a panel ``panel_mm * panel_scale`` mm wide."""
    w = panel_mm * panel_scale / MM_PER_INCH
    return w, w * aspect


def _overlap(a, b, pad: float = 1.0) -> bool:
    return not (a.x1 + pad <= b.x0 or b.x1 + pad <= a.x0 or a.y1 + pad <= b.y0 or b.y1 + pad <= a.y0)


def _visible_labels(labels):
    return [t for t in labels if t.get_visible() and t.get_text()]


def labels_overlap(labels, renderer) -> bool:
    """True if any two visible, non-empty text artists in ``labels`` overlap on the canvas."""
    vis = _visible_labels(labels)
    boxes = [t.get_window_extent(renderer) for t in vis]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if _overlap(boxes[i], boxes[j]):
                return True
    return False


def _in_view_ticks(axis):
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(abs(hi - lo), 1e-300)
    return [t for t in axis.get_major_ticks() if lo - eps <= t.get_loc() <= hi + eps]


def declutter_tick_labels(fig, max_rounds: int = 8) -> None:
    """Keep every n-th major tick (and label) of each 2-D axis until no two labels overlap.

    The figure is drawn to measure the labels; the stride n is estimated from the widest label
    and the tick spacing, then grown until the labels are clear (a regular subsample keeps a
    categorical class axis readable with 10, 50 or 100 classes).
    """
    for _ in range(max_rounds):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        changed = False
        for ax in fig.axes:
            if getattr(ax, "name", "") == "3d":
                continue
            for axis in (ax.xaxis, ax.yaxis):
                ticks = _in_view_ticks(axis)
                labels = [t.label1 for t in ticks]
                if not labels_overlap(labels, renderer):
                    continue
                if not hasattr(axis, "_imb_texts"):
                    axis._imb_locs = [t.get_loc() for t in ticks]  # type: ignore[attr-defined]
                    axis._imb_texts = [t.label1.get_text() for t in ticks]  # type: ignore[attr-defined]
                stride = getattr(axis, "_imb_stride", 1)
                vis = _visible_labels(labels)
                boxes = [t.get_window_extent(renderer) for t in vis]
                horiz = axis is ax.xaxis
                sizes = [(b.width if horiz else b.height) for b in boxes]
                centers = sorted((b.x0 + b.x1) / 2 if horiz else (b.y0 + b.y1) / 2 for b in boxes)
                if len(centers) > 1:
                    gap = (centers[-1] - centers[0]) / (len(centers) - 1) / max(stride, 1)
                    need = max(sizes) + 1.5
                    new = max(stride + 1, int(math.ceil(need / max(gap, 1e-6))))
                else:
                    new = stride + 1
                axis._imb_stride = new  # type: ignore[attr-defined]
                locs = axis._imb_locs  # type: ignore[attr-defined]
                texts = axis._imb_texts  # type: ignore[attr-defined]
                axis.set_ticks(locs[::new])
                axis.set_ticklabels(texts[::new])
                changed = True
        if not changed:
            return


def new_figure(panel_mm: float, panel_scale: float, aspect: float, nrows: int = 1, ncols: int = 1,
               **kw):
    """Figure + axes sized for the journal (call inside :func:`journal_style`)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=panel_size(panel_mm, panel_scale, aspect), **kw)
    return fig, axes


def save_png_pdf(fig, path_stem, dpi: float) -> list:
    """Write ``fig`` as ``<path_stem>.png`` and ``.pdf`` in the journal style; returns the paths.
    (fontTools, which subsets the PDF fonts, is kept to warnings: it logs every glyph at INFO.)"""
    import logging
    from pathlib import Path

    ft = logging.getLogger("fontTools")
    if ft.level == logging.NOTSET:
        ft.setLevel(logging.WARNING)
    out = []
    with journal_style():
        for ext in ("png", "pdf"):
            p = Path(path_stem).with_suffix("." + ext)
            fig.savefig(p, dpi=dpi)
            out.append(p)
    return out


def panel_label(ax, letter: str) -> None:
    """Bold lower-case panel letter (Nature style) at the top-left, as the axes' left title
    (so the layout engine reserves room for it)."""
    ax.set_title(letter, loc="left", fontsize=8, fontweight="bold", pad=2.0)
