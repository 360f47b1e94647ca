"""Figures: every file is produced and valid, switches/artifacts/failures are honoured, the
regenerate command works on a finished run folder, and labels never overlap."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from imbalance import plotting_style as ps
from imbalance import visualization as vz
from imbalance.analysis import ClassificationAnalyzer
from imbalance.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
FAST = {"dpi": 80, "tsne_n_iter": 250, "max_samples": 120, "plot_tsne_3d": True}
ALL_NAMES = list(vz.FIGURES)


# --------------------------------------------------------------------------- fixture helper
def make_run(root: Path, *, k: int = 10, n_test: int = 300, stages=(1, 2), viz=None,
             class_names=None, name: str = "demo_20250101-000000-000001", seed: int = 0) -> Path:
    """A finished run folder as the pipeline writes it (artifact contract of DESIGN.md)."""
    rng = np.random.default_rng(seed)
    run = root / name
    (run / "results").mkdir(parents=True)
    (run / "logs").mkdir()
    (run / ".hydra").mkdir()
    counts = np.array([max(1, int(500 * 100 ** (-c / max(k - 1, 1)))) for c in range(k)])
    y = rng.integers(0, k, n_test)
    logits = rng.normal(size=(n_test, k)) + 0.4 * np.log(counts)
    logits[np.arange(n_test), y] += 2.5
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y_pred = prob.argmax(1)
    feats = (rng.normal(size=(k, 32)) * 4)[y] + rng.normal(size=(n_test, 32))
    np.savez(run / "results" / "predictions.npz", y_true=y.astype(np.int64),
             y_pred=y_pred.astype(np.int64), prob=prob.astype(np.float32),
             features=feats.astype(np.float32), feature_labels=y.astype(np.int64),
             class_counts=counts.astype(np.int64), classes=np.arange(k, dtype=np.int64))
    res = ClassificationAnalyzer(counts).analyze_predictions(y, y_pred, prob)
    metrics = {f"stage{s}": {"overall": res["overall"], "group_wise": res["group_wise"]} for s in stages}
    metrics["final"] = {"overall": res["overall"], "group_wise": res["group_wise"]}
    lines = ["stage,epoch,global_epoch,lr,train_loss,train_acc,val_loss,val_acc,val_macc,epoch_time"]
    ge = 0
    for s in stages:
        for e in range(1, 6):
            ge += 1
            lines.append(f"{s},{e},{ge},{0.1 / s / e},{2 / ge},{0.5 + ge / 40},{2.2 / ge},"
                         f"{0.45 + ge / 40},{0.4 + ge / 40},1.5")
    (run / "logs" / "metrics.csv").write_text("\n".join(lines) + "\n")
    (run / "results" / "results.json").write_text(json.dumps({
        "config": {"experiment": {"grouping": "auto", "many_thresh": 100, "few_thresh": 20},
                   "visualization": {**FAST, **(viz or {})}},
        "class_counts": counts.tolist(), "classes": list(range(k)), "class_names": class_names,
        "metrics": metrics, "per_class": res["per_class"],
        "confusion_matrix": res["confusion_matrix"], "status": "completed",
    }))
    return run


def _valid_png(p: Path) -> bool:
    b = p.read_bytes()
    return len(b) > 1000 and b[:8] == b"\x89PNG\r\n\x1a\n"


def _valid_pdf(p: Path) -> bool:
    b = p.read_bytes()
    return len(b) > 1000 and b[:5] == b"%PDF-" and b"%%EOF" in b[-64:]


def only(*names, **extra):
    """viz dict with only the named figures switched on."""
    viz = {**FAST, **{sw: False for sw, _, _ in vz.FIGURES.values()}}
    for n in names:
        viz[vz.FIGURES[n][0]] = True
    return {**viz, **extra}


@pytest.fixture(scope="module")
def regenerated_run(tmp_path_factory):
    """A finished run whose figures are made by the regenerate command, through the
    ``<name>_latest`` link, in a fresh interpreter (no model, no data: only the folder)."""
    root = tmp_path_factory.mktemp("exp")
    run = make_run(root)
    link = root / "demo_latest"
    os.symlink(run.name, link)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "imbalance.visualization", "--exp_dir", str(link),
                           "--quiet"], capture_output=True, text=True, env=env, cwd=root,
                          timeout=300)
    return run, proc


# --------------------------------------------------------------------------- tests
def test_regenerate_command_writes_every_figure_as_valid_png_and_pdf(regenerated_run):
    run, proc = regenerated_run
    assert proc.returncode == 0, proc.stderr
    assert f"{len(ALL_NAMES)} figures" in proc.stdout
    for name in ALL_NAMES:  # FAST enables tsne_3d too
        png, pdf = run / "results" / f"{name}.png", run / "results" / f"{name}.pdf"
        assert _valid_png(png), name
        assert _valid_pdf(pdf), name


def test_png_size_follows_panel_mm_scale_and_dpi(tmp_path):
    run = make_run(tmp_path)
    for panel_mm, scale, dpi in ((85, 1.0, 100), (60, 1.5, 150)):
        viz = only("class_distribution", dpi=dpi, panel_mm=panel_mm, panel_scale=scale)
        vz.visualize_all_results(run, viz=viz)
        w = matplotlib.image.imread(run / "results" / "class_distribution.png").shape[1]
        assert abs(w - panel_mm * scale / 25.4 * dpi) <= 2


def test_switches_are_respected_and_viz_none_reads_results_json(tmp_path):
    viz = only("per_class_recall", "learning_rate")
    run = make_run(tmp_path, viz=viz)
    files = {p.name for p in vz.visualize_all_results(run)}  # viz=None: from results.json
    assert files == {"per_class_recall.png", "per_class_recall.pdf", "learning_rate.png",
                     "learning_rate.pdf"}
    assert vz.visualize_all_results(run, viz={"enabled": False}) == []


def test_missing_artifacts_skip_only_their_figures(tmp_path, caplog):
    run = make_run(tmp_path)
    (run / "logs" / "metrics.csv").unlink()
    z = dict(np.load(run / "results" / "predictions.npz"))
    for key in ("features", "feature_labels", "prob"):
        z.pop(key)
    np.savez(run / "results" / "predictions.npz", **z)
    viz = only("training_curves", "learning_rate", "tsne_2d", "confidence_dist",
               "reliability_diagram", "class_distribution", "per_class_recall")
    with caplog.at_level("WARNING"):
        names = {p.stem for p in vz.visualize_all_results(run, viz=viz)}
    assert names == {"class_distribution", "per_class_recall"}
    assert "logs/metrics.csv" in caplog.text and "prob" in caplog.text


def test_results_json_alone_is_enough_for_per_class_figures(tmp_path):
    run = make_run(tmp_path)
    (run / "results" / "predictions.npz").unlink()
    viz = only("confusion_matrix", "per_class_recall", "sample_vs_f1", "top_confusions",
               "class_distribution", "group_performance", "tsne_2d", "reliability_diagram")
    names = {p.stem for p in vz.visualize_all_results(run, viz=viz)}
    assert names == {"confusion_matrix", "per_class_recall", "sample_vs_recall", "sample_vs_f1",
                     "top_confusions", "class_distribution", "group_performance"}


def test_one_failing_figure_does_not_lose_the_others(tmp_path, monkeypatch, caplog):
    run = make_run(tmp_path)
    before = set(plt.get_fignums())

    def boom(art, cfg):
        raise RuntimeError("synthetic failure")

    sw, needs, _ = vz.FIGURES["confusion_matrix"]
    monkeypatch.setitem(vz.FIGURES, "confusion_matrix", (sw, needs, boom))
    with caplog.at_level("ERROR"):
        names = {p.stem for p in vz.visualize_all_results(
            run, viz=only("confusion_matrix", "per_class_recall", "top_confusions", "reliability_diagram"))}
    assert "confusion_matrix" not in names
    assert {"per_class_recall", "top_confusions", "reliability_diagram"} <= names
    assert "synthetic failure" in caplog.text
    assert set(plt.get_fignums()) == before  # failed figure was closed too


def test_group_colours_are_consistent(tmp_path):
    run = make_run(tmp_path)
    art = vz.load_run_artifacts(run)
    cfg = vz._merge_viz(FAST)
    order = np.argsort(-art.class_counts, kind="stable")
    for name in ("class_distribution", "per_class_recall"):
        fig = vz.make_figure(name, art, cfg)
        bars = [p for p in fig.axes[0].patches if isinstance(p, matplotlib.patches.Rectangle)]
        got = [matplotlib.colors.to_hex(b.get_facecolor()) for b in bars[: len(order)]]
        want = [ps.GROUP_COLORS[art.groups[c]].lower() for c in order]
        assert got == want, name
        plt.close(fig)
    assert ps.GROUP_COLORS == {"many": "#0072B2", "medium": "#009E73", "few": "#E69F00"}


def test_training_curves_mark_the_stage_boundary(tmp_path):
    run = make_run(tmp_path, stages=(1, 2))
    art = vz.load_run_artifacts(run)
    fig = vz.make_figure("training_curves", art, vz._merge_viz(FAST))
    boundary = 5.5  # stage 2 starts at global epoch 6 in the fixture
    for ax in fig.axes[:2]:
        xs = [ln.get_xdata()[0] for ln in ax.get_lines()
              if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]]
        assert boundary in xs
    plt.close(fig)
    run1 = make_run(tmp_path, stages=(1,), name="s1_only")
    fig = vz.make_figure("training_curves", vz.load_run_artifacts(run1), vz._merge_viz(FAST))
    assert not any(len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]
                   for ln in fig.axes[0].get_lines())
    plt.close(fig)


def test_class_names_are_used(tmp_path):
    names = [f"ICAO-{i:02d}" for i in range(10)]
    run = make_run(tmp_path, class_names=names)
    art = vz.load_run_artifacts(run)
    fig = vz.make_figure("confusion_matrix", art, vz._merge_viz(FAST))
    shown = {t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()}
    assert shown and shown <= set(names)
    plt.close(fig)
    with pytest.raises(ConfigError):
        vz.visualize_all_results(run, viz=FAST, class_names=["a", "b"])


def _drawn_texts(fig):
    """Visible texts that are drawn: in-view tick labels, axis labels, titles, texts, legends."""
    out = list(fig.texts)
    for leg in fig.legends:
        out += leg.get_texts()
    for ax in fig.axes:
        out += [t.label1 for t in ps._in_view_ticks(ax.xaxis) + ps._in_view_ticks(ax.yaxis)]
        out += ax.texts
        out += [ax.xaxis.label, ax.yaxis.label, ax.title, ax._left_title, ax._right_title]
        for child in ax.child_axes:  # secondary axes (stage names)
            out += [t.label1 for t in ps._in_view_ticks(child.xaxis)]
        if ax.get_legend() is not None:
            out += ax.get_legend().get_texts() + [ax.get_legend().get_title()]
    return [t for t in out if t.get_visible() and t.get_text()]


@pytest.mark.parametrize("k", [10, 50, 100])
def test_no_overlapping_labels_and_nothing_outside_the_panel(tmp_path, k):
    run = make_run(tmp_path, k=k, n_test=max(300, 6 * k),
                   class_names=[f"Emitter {i}" for i in range(k)])
    art = vz.load_run_artifacts(run)
    cfg = vz._merge_viz(FAST)
    for name in ("class_distribution", "confusion_matrix", "per_class_recall", "top_confusions",
                 "sample_vs_recall", "group_performance", "reliability_diagram", "confidence_dist",
                 "training_curves"):
        fig = vz.make_figure(name, art, cfg)
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                labels = [t.label1 for t in ps._in_view_ticks(axis)]
                assert not ps.labels_overlap(labels, r), (name, k)
        fb = fig.bbox
        for t in _drawn_texts(fig):
            e = t.get_window_extent(r)
            assert e.x0 >= fb.x0 - 1 and e.x1 <= fb.x1 + 1 and e.y0 >= fb.y0 - 1 and e.y1 <= fb.y1 + 1, (
                name, k, t.get_text())
        plt.close(fig)


def test_bad_run_dir_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(DataError):
        vz.visualize_all_results(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert vz.main(["--exp_dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "run folder" in err[0]
    with pytest.raises(ConfigError):
        vz.visualize_all_results(make_run(tmp_path), viz={"dpi": 0})


def test_tsne_embedding_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 64)).astype(np.float32)
    a = vz.tsne_embed(x, n_iter=250, perplexity=30)
    b = vz.tsne_embed(x, n_iter=250, perplexity=30)
    assert a.shape == (80, 2)
    np.testing.assert_allclose(a, b)


def test_stratified_subsample_keeps_every_class():
    from imbalance.data import stratified_subset

    labels = np.array([0] * 1000 + [1] * 50 + [2] * 3)
    idx = stratified_subset(labels, 100)
    assert len(idx) <= 100 and set(labels[idx]) == {0, 1, 2}
    assert len(np.unique(idx)) == len(idx)
