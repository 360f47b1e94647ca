"""mode=incremental end to end on tiny data: the base session of mode=train with
data.synthetic.sessions, sessions that continue a parent (which is never modified), the methods,
cRT on memory + new data, user files (class order, overlaps, shapes, budget), mode=eval of a
session's model, and summarize.py on a chain."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from conftest import tiny_cfg
from imbalance.errors import ConfigError, DataError, UserError
from imbalance.exemplars import ExemplarMemory

SESSIONS = "data.synthetic.sessions=[6,2,2]"
QUICK = ["stage2.enabled=false", "training.epochs=1"]


def _results(rdir):
    return json.loads((rdir / "results" / "results.json").read_text())


def _snapshot(folder):
    """Every file under ``folder`` with its size, modification time and content hash."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(rdir, *overrides):
    from imbalance.pipeline import run

    return run(tiny_cfg(*overrides), run_dir=rdir)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """base (6 classes) -> s1 (finetune, +2) -> s2 (finetune, +2) on the built-in data, with
    snapshots of each parent taken before its child ran."""
    root = tmp_path_factory.mktemp("chain")
    torch.set_num_threads(1)
    _run(root / "base", SESSIONS, *QUICK)
    snaps = {"base": _snapshot(root / "base")}
    _run(root / "s1", "mode=incremental", f"resume={root / 'base'}", *QUICK)
    snaps["s1"] = _snapshot(root / "s1")
    _run(root / "s2", "mode=incremental", f"resume={root / 's1'}", *QUICK)
    return root, snaps


def test_base_session_learns_the_first_classes_of_the_long_tail_over_all(chain):
    root, _ = chain
    res = _results(root / "base")
    assert res["classes"] == [0, 1, 2, 3, 4, 5]
    # the long tail is drawn over all 10 classes first (48 per class after validation), then cut
    assert res["class_counts"] == [max(1, int(48 * 100.0 ** (-c / 9))) for c in range(10)][:6]
    mem = ExemplarMemory.load(root / "base" / "memory")
    assert mem.classes.tolist() == [0, 1, 2, 3, 4, 5]
    assert list(mem.counts().values()) == [min(20, n) for n in res["class_counts"]]
    assert mem.class_means is not None and mem.selection == "herding"
    inc = res["incremental"]
    assert inc["session"] == 0 and inc["parent_run"] is None and inc["classes_new"] == res["classes"]
    assert inc["old"]["macc"] is None and len(inc["history"]) == 1
    assert inc["all"]["macc"] == pytest.approx(res["metrics"]["final"]["overall"]["macc"])


def test_sessions_follow_their_parent_and_the_parent_is_never_modified(chain):
    root, snaps = chain
    assert _snapshot(root / "base") == snaps["base"]
    assert _snapshot(root / "s1") == snaps["s1"]
    s1, s2 = _results(root / "s1"), _results(root / "s2")
    assert s1["mode"] == "incremental" and s1["classes"] == list(range(8)) and s2["classes"] == list(range(10))
    a, b = s1["incremental"], s2["incremental"]
    assert (a["session"], a["parent_run"], a["classes_new"]) == (1, str(root / "base"), [6, 7])
    assert (b["session"], b["parent_run"], b["classes_old"], b["classes_new"]) == (2, str(root / "s1"), list(range(8)),
                                                                                  [8, 9])
    assert [h["session"] for h in b["history"]] == [0, 1, 2] and b["history"][:2] == a["history"]
    assert b["summary"]["sessions"] == 3 and b["summary"]["forgetting"] is not None
    # test on every learned class: 20 test bursts each; old / new split by the model's order
    assert (b["old"]["n_samples"], b["new"]["n_samples"]) == (160, 40)
    # the memory of the learned classes, the old ones reduced by rank and kept from the parent
    m1, m2 = ExemplarMemory.load(root / "s1" / "memory"), ExemplarMemory.load(root / "s2" / "memory")
    assert m2.classes.tolist() == list(range(10)) and set(m2.sessions.tolist()) == {0, 1, 2}
    old = m2.sessions < 2
    np.testing.assert_array_equal(m2.signals[old], m1.signals)
    assert b["memory"]["total"] == len(m2)
    # the session's config: the parent's seed, model and data; mode and parent recorded
    assert s2["config"]["resume"] == str(root / "s1") and s2["config"]["data"]["synthetic"]["sessions"] == [6, 2, 2]
    # no session left
    with pytest.raises(ConfigError, match="already learned all 3 sessions"):
        _run(root / "s3", "mode=incremental", f"resume={root / 's2'}", *QUICK)
    assert not (root / "s3").exists()


@pytest.mark.slow
def test_a_sessions_final_model_evaluates_like_any_run(chain, tmp_path):
    from imbalance.pipeline import run

    root, _ = chain
    run(tiny_cfg("mode=eval", f"resume={root / 's1'}"), run_dir=tmp_path / "ev")
    ev, s1 = _results(tmp_path / "ev"), _results(root / "s1")
    assert ev["classes"] == s1["classes"]
    assert ev["metrics"]["final"]["overall"] == pytest.approx(s1["metrics"]["final"]["overall"])


def test_student_keeps_old_rows_bit_exact_and_the_teacher_is_the_parent(chain):
    from imbalance.evaluate import load_trained_model
    from imbalance.incremental import new_row_init
    from imbalance.incremental_run import prepare_student

    root, _ = chain
    state = torch.load(root / "base" / "checkpoints" / "final.pt", weights_only=True)["model"]
    model, _ = load_trained_model(root / "base")
    parent, _ = load_trained_model(root / "base")
    student, teacher, notes = prepare_student(model, 2, class_counts=[5] * 8, teacher=True,
                                              init=new_row_init("xavier", num_classes=8))
    assert notes == []
    w, b = student.classifier.weight, student.classifier.bias
    assert w.shape[0] == 8 and torch.equal(w[:6], state["classifier.weight"]) and torch.equal(b[:6], state["classifier.bias"])
    bound = (6.0 / (w.shape[1] + 8)) ** 0.5
    assert w[6:].abs().max() <= bound and torch.equal(b[6:], torch.zeros(2))
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    x = torch.randn(4, 2, 256)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), parent(x), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["finetune", "lwf", "icarl", "wa"])
def test_every_method_runs_a_session(chain, tmp_path, method):
    root, _ = chain
    _run(tmp_path / "s", "mode=incremental", f"resume={root / 'base'}", f"incremental.method={method}", *QUICK)
    inc = _results(tmp_path / "s")["incremental"]
    assert inc["method"] == method and inc["session"] == 1
    assert inc["plan"]["replay"] == (method != "lwf") and inc["plan"]["teacher"] == (method != "finetune")
    assert inc["eval_classifier"] == ("nme" if method == "icarl" else "head")
    if method == "icarl":
        assert set(inc["head"]) == {"old", "new", "all"}
    if method == "wa":
        assert inc["wa_gamma"] > 0
        w = torch.load(tmp_path / "s" / "checkpoints" / "final.pt", weights_only=True)["model"]["classifier.weight"]
        assert (w >= 0).all()  # clipped after every step; aligning scales by gamma > 0


@pytest.mark.slow
def test_crt_follow_up_trains_on_memory_plus_new_even_without_replay(chain, tmp_path):
    root, _ = chain
    _run(tmp_path / "s", "mode=incremental", f"resume={root / 'base'}", "incremental.method=lwf", "training.epochs=1",
         "stage2.epochs=1")
    res = _results(tmp_path / "s")
    mem = ExemplarMemory.load(root / "base" / "memory")
    counts = res["stages"]["stage2"]["class_counts"]
    assert counts[:6] == list(mem.counts().values()) and min(counts[6:]) >= 1
    assert res["incremental"]["stage2"] is True and "stage2" in res["metrics"]


def test_session_keys_and_bad_input_are_one_clear_line(chain, tmp_path):
    root, _ = chain
    with pytest.raises(ConfigError, match="needs resume"):
        _run(tmp_path / "a", "mode=incremental")
    with pytest.raises(ConfigError, match="differs from the parent's") as err:
        _run(tmp_path / "b", "mode=incremental", f"resume={root / 'base'}", "data.synthetic.sessions=[5,3,2]")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not found"):
        _run(tmp_path / "c", "mode=incremental", f"resume={tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match="memory_total=7 gives 0 exemplars per class for 8 classes"):
        _run(tmp_path / "d", "mode=incremental", f"resume={root / 'base'}", "incremental.memory_total=7", *QUICK)
    with pytest.raises(ConfigError, match="memory_total=5 gives 0 exemplars per class for 6 classes"):
        _run(tmp_path / "e", SESSIONS, "incremental.memory_total=5", *QUICK)
    assert not any((tmp_path / n).exists() for n in "abcd")
    assert not (tmp_path / "e" / "checkpoints").exists()  # refused before training


# ----------------------------------------------------------------------------- user files
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Base trained on classes 5..8 of a file (labels 1..9, not sorted by session), memory kept."""
    from imbalance.synthetic import builtin_dataset, write_dataset

    d = tmp_path_factory.mktemp("files")
    sets = builtin_dataset(num_classes=9, train_per_class=30, test_per_class=10, length=128, seed=3)
    (x, y), (xt, yt) = sets["train"], sets["test"]
    y, yt = y + 1, yt + 1

    def write(name, keep, xx=x, yy=y):
        sel = np.isin(yy, keep)
        write_dataset(str(d / name), xx[sel], yy[sel], fmt="npz")
        return str(d / name)

    paths = {"base_train": write("base_train.npz", [5, 6, 7, 8]), "base_test": write("base_test.npz", [5, 6, 7, 8], xt, yt),
             "new_train": write("new_train.npz", [1, 2]), "test_all": write("test_all.npz", [1, 2, 5, 6, 7, 8], xt, yt),
             "overlap": write("overlap.npz", [2, 8]), "future_test": write("future_test.npz", list(range(1, 10)), xt, yt)}
    write_dataset(str(d / "short.npz"), x[y <= 2][:, :, :96], y[y <= 2], fmt="npz")
    paths["short"] = str(d / "short.npz")
    torch.set_num_threads(1)
    _run(d / "base", f"data.path_train={paths['base_train']}", f"data.path_test={paths['base_test']}",
         "incremental.save_memory=true", "data.imbalance_ratio=5", *QUICK)
    return d, paths


@pytest.mark.slow
def test_user_files_new_classes_follow_the_old_ones_and_evaluate(files, tmp_path):
    from imbalance.pipeline import run

    d, p = files
    _run(tmp_path / "s", "mode=incremental", f"resume={d / 'base'}", f"data.path_train={p['new_train']}",
         f"data.path_test={p['test_all']}", "incremental.method=wa", *QUICK)
    res = _results(tmp_path / "s")
    assert res["classes"] == [5, 6, 7, 8, 1, 2]  # the model's order: old classes, then the new ones
    inc = res["incremental"]
    assert (inc["session"], inc["classes_new"], inc["old"]["n_samples"], inc["new"]["n_samples"]) == (1, [1, 2], 40, 20)
    assert ExemplarMemory.load(tmp_path / "s" / "memory").classes.tolist() == [5, 6, 7, 8, 1, 2]
    # mode=eval maps the file's labels onto the model's (unsorted) order and reproduces the metrics
    run(tiny_cfg("mode=eval", f"resume={tmp_path / 's'}", f"data.path_test={p['test_all']}"), run_dir=tmp_path / "ev")
    assert _results(tmp_path / "ev")["metrics"]["final"]["overall"] == pytest.approx(res["metrics"]["final"]["overall"])


@pytest.mark.slow
def test_user_file_errors_are_one_line(files, tmp_path):
    d, p = files
    base = [f"resume={d / 'base'}", f"data.path_test={p['test_all']}", *QUICK]
    with pytest.raises(ConfigError, match=r"class\(es\) 8 that the parent run already learned.*allow_seen_classes") as e:
        _run(tmp_path / "a", "mode=incremental", f"data.path_train={p['overlap']}", *base)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="signal length 96 .* length 128") as e:
        _run(tmp_path / "b", "mode=incremental", f"data.path_train={p['short']}", *base)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="3, 4, 9 are not among the classes learned"):
        _run(tmp_path / "c", "mode=incremental", f"data.path_train={p['new_train']}", f"resume={d / 'base'}",
             f"data.path_test={p['future_test']}", *QUICK)
    _run(tmp_path / "d", "mode=incremental", f"data.path_train={p['overlap']}", "incremental.allow_seen_classes=true",
         "evaluation.skip_unknown_classes=true", *base)  # class 1 of the test file is not learned in this chain
    inc = _results(tmp_path / "d")["incremental"]
    assert inc["seen"] == [8] and inc["classes_new"] == [2]


# ----------------------------------------------------------------------------- summarize
def test_summarize_reads_incremental_runs(chain, tmp_path):
    from imbalance.summary import summarize

    root, _ = chain
    out, st, skipped = summarize(root, out=tmp_path / "sum", make_figure=False)
    table = st.tables["incremental_sessions"]
    assert list(table["session"]) == [0, 1, 2]
    assert {"old_macc_mean", "new_macc_mean", "all_macc_mean", "forgetting_mean", "aia_macc_mean"} <= set(table.columns)
    s2 = _results(root / "s2")["incremental"]
    row = table[table["session"] == 2].iloc[0]
    assert row["all_macc_mean"] == pytest.approx(s2["all"]["macc"])
    assert row["forgetting_mean"] == pytest.approx(s2["summary"]["forgetting"])
    assert "Class-incremental sessions" in (out / "REPORT.md").read_text()


def test_unused_incremental_keys_are_named(tiny):
    from imbalance.recipe import unused_user_keys, user_set_keys

    def unused(*o):
        cfg = tiny(*o)
        return dict(unused_user_keys(cfg, user_set_keys(cfg, [x.split("=")[0] for x in o])))

    assert "only mode=incremental" in unused("incremental.method=wa")["incremental.method"]
    assert "incremental.memory_per_class" not in unused(SESSIONS, "incremental.memory_per_class=5")
    got = unused("mode=incremental", "resume=x", "incremental.method=icarl", "incremental.temperature=3")
    assert got["incremental.temperature"] == "incremental.method=icarl does not use it"
    assert "incremental.lwf_lambda" not in unused("mode=incremental", "resume=x", "incremental.method=lwf",
                                                  "incremental.lwf_lambda=2")


@pytest.mark.slow
def test_session_figure_of_accuracy_per_session(chain, tmp_path):
    root, _ = chain
    _run(tmp_path / "s", "mode=incremental", f"resume={root / 's1'}", "visualization.enabled=true",
         "visualization.plot_tsne_2d=false", *QUICK)
    for ext in ("png", "pdf"):
        assert (tmp_path / "s" / "results" / f"incremental_accuracy.{ext}").stat().st_size > 0
    assert (tmp_path / "s" / "results" / "training_curves.png").is_file()  # the run's other figures too


def test_a_session_resolves_batch_size_auto_from_its_own_training_data(chain, tmp_path):
    root, _ = chain
    _run(tmp_path / "s", "mode=incremental", f"resume={root / 'base'}", "data.batch_size=auto", *QUICK)
    res = _results(tmp_path / "s")
    n_session = sum(res["class_counts"])  # memory of the old classes + the new classes' data
    assert res["config"]["data"]["batch_size"] == min(n_session // 10, 16)
