"""The open-set step of a run: data split, no unknown before testing, results, saved detectors,
predict, config checks (imbalance.openset_data, imbalance.openset_run, builders, pipeline)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_cfg

from imbalance.errors import ConfigError, UnknownNameError, UserError
from imbalance.openset_metrics import METRIC_KEYS, openset_report, threshold_at_tpr

TINY_OPEN = ["openset.enabled=true", "data.synthetic.num_unknown=2", "data.synthetic.unknown_per_class=15"]


def _results(rdir):
    return json.loads((rdir / "results" / "results.json").read_text())


# ----------------------------------------------------------------------------- data split
def test_extra_transmitters_leave_the_closed_set_splits_unchanged(tiny):
    from imbalance.builders import build_data

    closed = build_data(tiny())
    open_ = build_data(tiny(*TINY_OPEN))
    for split in ("train", "val", "test"):
        a, b = getattr(closed, split), getattr(open_, split)
        assert torch.equal(a.x, b.x) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(closed.class_counts, open_.class_counts)
    assert closed.test_unknown is None and len(open_.test_unknown) == 2 * 15
    assert open_.openset["unknown_sources"] == {"builtin_transmitters": 30}
    assert open_.openset["held_out_classes"] == []


def test_head_unknown_holds_the_head_class_out_of_training_and_validation(tiny):
    """The known splits are the closed-set splits without class 0, relabelled c -> c - 1; class
    0's test samples are the unknowns; the protocol ranked the TRAINING counts."""
    from imbalance.builders import build_data

    closed = build_data(tiny())
    o = build_data(tiny("openset.enabled=true", "openset.protocol=head_unknown", "openset.num_unknown=1"))
    assert o.openset["held_out_classes"] == [0] and o.classes == list(range(1, 10))
    assert o.class_counts.tolist() == closed.class_counts[1:].tolist()
    for split in ("train", "val", "test"):
        a, b = getattr(closed, split), getattr(o, split)
        keep = a.labels != 0
        assert torch.equal(a.x[torch.from_numpy(keep)], b.x)
        assert np.array_equal(a.labels[keep] - 1, b.labels)
    xu, yu = o.test_unknown.get_batch(torch.arange(len(o.test_unknown)))
    assert torch.equal(xu, closed.test.x[torch.from_numpy(closed.test.labels == 0)])
    assert (yu == -1).all() and o.train_pool is None


def test_unknown_set_reads_across_its_parts_in_any_order():
    from imbalance.loader import TensorPairDataset
    from imbalance.openset_data import UnknownSet

    a = TensorPairDataset(torch.arange(6.).reshape(3, 1, 2), torch.zeros(3))
    b = TensorPairDataset(torch.arange(100., 104.).reshape(2, 1, 2), torch.zeros(2))
    u = UnknownSet([("a", a, [7, 7, 8]), ("empty", TensorPairDataset(torch.zeros(0, 1, 2), torch.zeros(0)), None),
                    ("b", b, None)])
    x, y = u.get_batch(torch.tensor([4, 0, 3, 2]))
    assert x[:, 0, 0].tolist() == [102., 0., 100., 4.] and y.tolist() == [-1] * 4
    assert u.counts() == {"a": 3, "b": 2} and list(u.source_labels) == [7, 7, 8, None, None]


# ----------------------------------------------------------------------------- no leak
def _marker_files(tmp_path):
    """A user file pair whose class 30 is constant signals (a marker no real signal has), plus
    a file of unknown samples that are markers too."""
    from imbalance.synthetic import builtin_dataset, write_dataset

    s = builtin_dataset(num_classes=4, train_per_class=40, test_per_class=10, length=128, seed=3)
    (xtr, ytr), (xte, yte) = s["train"], s["test"]
    ytr, yte = ytr * 10, yte * 10                              # label values 0, 10, 20, 30
    xtr, xte = xtr.copy(), xte.copy()
    xtr[ytr == 30] = 7.0
    xte[yte == 30] = -3.0
    write_dataset(str(tmp_path / "train.npz"), xtr, ytr, fmt="npz")
    write_dataset(str(tmp_path / "test.npz"), xte, yte, fmt="npz")
    write_dataset(str(tmp_path / "unknown.npz"), np.full((12, 2, 128), 2.5, np.float32), np.zeros(12), fmt="npz")
    return [f"data.path_train={tmp_path / 'train.npz'}", f"data.path_test={tmp_path / 'test.npz'}",
            f"data.path_unknown={tmp_path / 'unknown.npz'}", "data.imbalance_ratio=5"]


def test_no_unknown_sample_reaches_training_validation_or_a_threshold(run_tiny, tmp_path, monkeypatch):
    """Poisoned loaders: the held-out class and the unknown file are constant signals. Every
    batch any loader yields during the run (training, validation, early stopping, stage-2 feature
    cache, detector fitting, ODIN's epsilon choice, evaluation) is checked; only the unknown test
    set may hold markers. Thresholds see exactly the known validation samples."""
    from imbalance import loader as L
    from imbalance import openset_metrics as M
    from imbalance.openset_data import UnknownSet

    seen = []
    iterate = L.BatchLoader.__iter__

    def spy(self):
        for x, y in iterate(self):
            flat = x.reshape(len(x), -1).double()
            seen.append((self.dataset, int((flat.std(dim=1) < 1e-6).sum()), len(x)))
            yield x, y

    thresholds = []
    choose = M.threshold_at_tpr

    def spy_threshold(scores, tpr=0.95):
        thresholds.append(len(scores))
        return choose(scores, tpr)

    overrides = [*_marker_files(tmp_path), "openset.enabled=true", "openset.unknown_classes=[30]",
                 "openset.detectors=[msp,mahalanobis,knn,openmax,odin]",
                 "+openset.params={odin: {epsilon_grid: [0.0, 0.01]}, knn: {k: 5}}"]
    monkeypatch.setattr(L.BatchLoader, "__iter__", spy)
    monkeypatch.setattr(M, "threshold_at_tpr", spy_threshold)
    rdir, _ = run_tiny(*overrides)
    res = _results(rdir)
    markers = [type(ds).__name__ for ds, m, _ in seen if m]
    assert markers and set(markers) == {UnknownSet.__name__}
    assert all(m == n for ds, m, n in seen if isinstance(ds, UnknownSet))  # every unknown sample is a marker
    assert {type(ds).__name__ for ds, _, _ in seen} > {UnknownSet.__name__}  # the known sets were read too
    assert res["classes"] == [0, 10, 20]
    assert res["openset"]["held_out_classes"] == [30]
    assert res["openset"]["unknown_sources"] == {"held_out_classes": 10, "path_unknown": 12}
    from imbalance.builders import build_data

    monkeypatch.undo()
    n_val = len(build_data(tiny_cfg(*overrides)).val)
    assert thresholds == [n_val] * 5                           # one per detector, known validation only
    assert sum(r["support"] for r in res["per_class"]) == 30    # closed-set metrics: known test only


# ----------------------------------------------------------------------------- run outputs
@pytest.fixture(scope="module")
def open_run(tmp_path_factory):
    from imbalance.pipeline import run

    torch.set_num_threads(1)
    rdir = tmp_path_factory.mktemp("open") / "r"
    run(tiny_cfg(*TINY_OPEN, "openset.detectors=[msp,energy,mahalanobis,knn,openmax,odin]",
                 "+openset.params={odin: {epsilon_grid: [0.0, 0.002]}, knn: {k: 5}}"), run_dir=rdir)
    return rdir


def test_results_hold_every_detector_and_agree_with_the_saved_scores(open_run):
    res = _results(open_run)
    os_ = res["metrics"]["final"]["openset"]
    assert list(os_) == ["msp", "energy", "mahalanobis", "knn", "openmax", "odin"]
    for det, rep in os_.items():
        assert set(rep["overall"]) == set(METRIC_KEYS)
        assert set(rep["group_wise"]) == {"many", "medium", "few"}
        assert 0.0 <= rep["overall"]["auroc"] <= 1.0
    assert "openset" not in res["metrics"]["stage1"]
    info = res["openset"]
    assert info["n_test_known"] == 200 and info["n_test_unknown"] == 30
    assert info["chosen"]["odin"]["epsilon"] in (0.0, 0.002)
    z = np.load(open_run / "results" / "openset_scores.npz")
    assert z["scores"].shape == (230, 6) and (z["y_true"][200:] == -1).all()
    assert z["source_label"][200:].tolist() == ["10"] * 15 + ["11"] * 15       # the extra transmitters
    assert set(z["source"][200:]) == {"builtin_transmitters"} and set(z["source"][:200]) == {"known"}
    for i, det in enumerate(z["detectors"]):
        again = openset_report(z["scores"][:, i], z["y_true"], z["y_pred"][:, i], threshold=float(z["thresholds"][i]),
                               class_counts=res["class_counts"], grouping=str(z["grouping"]))
        assert again["overall"] == pytest.approx(os_[str(det)]["overall"], rel=1e-12)
        for g in ("many", "medium", "few"):
            assert again["group_wise"][g] == pytest.approx(os_[str(det)]["group_wise"][g], rel=1e-12)
        assert info["thresholds"][str(det)] == float(z["thresholds"][i])
    # closed-set metrics: the known test samples only (10 classes x 20)
    assert sum(r["support"] for r in res["per_class"]) == 200
    from imbalance.openset_run import write_openset_figures

    written = write_openset_figures(open_run, {"dpi": 40, "tsne": False})  # t-SNE: test_openset_figures
    for name in ("openset_score_hist", "openset_roc", "openset_oscr"):
        assert open_run / "results" / f"{name}.png" in written
    assert "Open set (200 known + 30 unknown" in (open_run / "results" / "summary.txt").read_text()


def test_thresholds_are_the_tpr95_point_of_the_known_validation_scores(open_run):
    """Recompute the MSP and kNN validation scores from the saved model and detectors."""
    from imbalance.builders import build_data
    from imbalance.evaluate import load_trained_model
    from imbalance.openset_run import load_openset_state, score_signals

    model, _ = load_trained_model(open_run)
    data = build_data(tiny_cfg(*TINY_OPEN))
    state = load_openset_state(open_run)
    for det in ("msp", "knn", "openmax"):
        s, _ = score_signals(model, data.val.x, state, det, batch_size=64)
        assert state["thresholds"][det] == pytest.approx(threshold_at_tpr(s, 0.95), rel=1e-5, abs=1e-6)


def test_predict_writes_unknown_with_the_runs_scores(open_run, tmp_path):
    import pandas as pd

    from imbalance.predict import main
    from imbalance.synthetic import builtin_dataset, write_dataset

    s = builtin_dataset(num_classes=10, train_per_class=2, test_per_class=20, length=256, num_unknown=2,
                        unknown_per_class=15)
    write_dataset(str(tmp_path / "u.npz"), *s["test_unknown"], fmt="npz")
    z = np.load(open_run / "results" / "openset_scores.npz")
    for det in ("mahalanobis", "odin"):
        out = tmp_path / f"{det}.csv"
        assert main(["--run", str(open_run), "--input", str(tmp_path / "u.npz"), "--out", str(out),
                     "--detector", det, "--precision", "fp32", "--quiet"]) == 0
        df = pd.read_csv(out)
        i = list(z["detectors"]).index(det)
        np.testing.assert_allclose(df["openset_score"], z["scores"][200:, i], rtol=1e-4, atol=1e-6)
        thr = float(z["thresholds"][i])
        assert ((df["predicted"].astype(str) == "unknown") == (df["openset_score"] < thr)).all()
    assert main(["--run", str(open_run), "--input", str(tmp_path / "u.npz"), "--out", str(tmp_path / "x.csv"),
                 "--detector", "energy", "--threshold", "1e9", "--quiet"]) == 0
    assert (pd.read_csv(tmp_path / "x.csv")["predicted"].astype(str) == "unknown").all()
    assert main(["--run", str(open_run), "--input", str(tmp_path / "u.npz"), "--detector", "nope", "--quiet"]) == 2


def test_predict_detector_on_a_closed_set_run_is_one_clear_error(tmp_path, run_tiny):
    from imbalance.predict import predict_file
    from imbalance.synthetic import builtin_dataset, write_dataset

    rdir, _ = run_tiny("training.epochs=1", "stage2.enabled=false")
    s = builtin_dataset(num_classes=10, train_per_class=1, test_per_class=2, length=256)
    write_dataset(str(tmp_path / "t.npz"), *s["test"], fmt="npz")
    with pytest.raises(UserError, match="openset.enabled=true"):
        predict_file(str(rdir), str(tmp_path / "t.npz"), detector="msp")


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, error, message", [
    (["openset.enabled=true"], ConfigError, "needs unknowns"),
    (["openset.enabled=true", "openset.num_unknown=2"], ConfigError, "needs openset.protocol"),
    (["openset.enabled=true", "openset.protocol=sideways"], ConfigError, "openset.protocol"),
    (["openset.enabled=true", "data.synthetic.num_unknown=1", "openset.detectors=[msp,nope]"], UnknownNameError,
     "nope"),
    (["openset.enabled=true", "data.synthetic.num_unknown=1", "openset.threshold=tpr150"], ConfigError,
     "openset.threshold"),
    (["openset.enabled=true", "data.synthetic.num_unknown=1", "+openset.params={energy: {T: 2}}"], ConfigError,
     "openset.params.energy"),
    (["openset.enabled=true", "openset.protocol=random", "openset.num_unknown=9"], ConfigError, "1..8"),
    (["openset.enabled=true", "openset.unknown_classes=[42]"], ConfigError, "not a class label"),
    (["data.synthetic.num_unknown=-1"], ConfigError, "data.synthetic.num_unknown"),
])
def test_bad_open_set_settings_are_one_clear_line(tiny, tmp_path, overrides, error, message):
    from imbalance.pipeline import run

    with pytest.raises(error) as err:
        run(tiny(*overrides), run_dir=tmp_path / "r")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_open_set_keys_without_the_open_set_are_warned(tiny):
    from imbalance.recipe import unused_user_keys, user_set_keys

    ov = ["data.synthetic.num_unknown=2", "openset.detectors=[msp]"]
    cfg = tiny(*ov)
    keys = dict(unused_user_keys(cfg, user_set_keys(cfg, ov)))
    assert keys == {"data.synthetic.num_unknown": "openset.enabled is false",
                    "openset.detectors": "openset.enabled is false"}
    ov = ["openset.enabled=true", "openset.protocol=tail_unknown", "openset.num_unknown=2", "openset.seed=4"]
    cfg = tiny(*ov)
    assert [k for k, _ in unused_user_keys(cfg, user_set_keys(cfg, ov))] == ["openset.seed"]


@pytest.mark.slow
def test_the_demo_runs_without_files_and_its_best_detector_reaches_auroc_06(tmp_path):
    """``python main.py openset.enabled=true data.synthetic.num_unknown=2`` (figures off)."""
    from imbalance.config import compose
    from imbalance.pipeline import run

    rdir = tmp_path / "demo"
    run(compose(["openset.enabled=true", "data.synthetic.num_unknown=2", "visualization.enabled=false",
                 "num_threads=1"]), run_dir=rdir)
    aurocs = {d: r["overall"]["auroc"] for d, r in _results(rdir)["metrics"]["final"]["openset"].items()}
    assert set(aurocs) == {"msp", "maxlogit", "energy", "mahalanobis", "knn", "openmax"}
    assert max(aurocs.values()) >= 0.6, aurocs
