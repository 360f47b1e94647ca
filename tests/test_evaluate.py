"""mode=eval: rebuild a run's final model and evaluate it on (another) test file."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imbalance.errors import ConfigError, DataError, UserError

ROOT = Path(__file__).resolve().parents[1]
L = 256
TRAIN_OVERRIDES = [
    "training.epochs=2", "stage2.enabled=true", "stage2.epochs=2", "data.batch_size=32", "model.width=8",
    "model.depth=2", "visualization.enabled=false", "scheduler.warmup_epochs=1", "num_threads=1",
]


def compose(*overrides: str):
    from imbalance.config import compose as _compose

    return _compose(list(overrides))


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Train/test files of the built-in data and one run trained on them (stage 2 cRT, stage 3
    tau-norm + logit adjustment + temperature, so the final model has every wrapper but LWS)."""
    from imbalance.pipeline import run
    from imbalance.synthetic import builtin_dataset, write_dataset

    d = tmp_path_factory.mktemp("evaldata")
    sets = builtin_dataset(num_classes=10, train_per_class=60, test_per_class=20, length=L)
    write_dataset(str(d / "train.mat"), *sets["train"], fmt="mat")
    write_dataset(str(d / "test.mat"), *sets["test"], fmt="mat")
    rdir = d / "run"
    run(compose(*TRAIN_OVERRIDES, f"data.path_train={d / 'train.mat'}", f"data.path_test={d / 'test.mat'}",
                "stage3.mode=both", "stage3.temperature=auto"), run_dir=rdir)
    return {"dir": d, "run": rdir, "test": d / "test.mat", "test_xy": sets["test"]}


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results" / "results.json").read_text())


def evaluate(tmp_path: Path, resume, test, *extra: str, name: str = "ev") -> Path:
    from imbalance.pipeline import run

    out = tmp_path / name
    run(compose("mode=eval", f"resume={resume}", f"data.path_test={test}", "visualization.enabled=false",
                "num_threads=1", *extra), run_dir=out)
    return out


def test_eval_on_the_runs_own_test_file_reproduces_its_final_metrics_exactly(trained, tmp_path):
    out = evaluate(tmp_path, trained["run"], trained["test"])
    src, ev = results(trained["run"]), results(out)
    assert ev["metrics"]["final"] == src["metrics"]["final"]
    assert ev["per_class"] == src["per_class"]
    assert ev["confusion_matrix"] == src["confusion_matrix"]
    assert ev["class_counts"] == src["class_counts"] and ev["classes"] == src["classes"]
    a = np.load(trained["run"] / "results" / "predictions.npz")
    b = np.load(out / "results" / "predictions.npz")
    for key in ("y_true", "y_pred", "prob", "features", "feature_labels", "class_counts", "classes"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # tagged with its source; the same files as a training run
    assert ev["mode"] == "eval" and ev["source_run"] == str(trained["run"].resolve())
    assert ev["config"]["mode"] == "eval" and ev["config"]["loss"] == src["config"]["loss"]
    for name in ("summary.txt", "per_class.csv", "confusion_matrix.csv"):
        assert (out / "results" / name).is_file()
    assert ev["label_mapping"]["unknown_classes"] == {} and ev["label_mapping"]["skipped_samples"] == 0


def test_checkpoint_path_and_another_file_format(trained, tmp_path):
    """A checkpoint file in place of the folder; the test data as HDF5 with int labels."""
    from imbalance.synthetic import write_dataset

    h5 = tmp_path / "test.h5"
    write_dataset(str(h5), *trained["test_xy"], fmt="h5")
    out = evaluate(tmp_path, trained["run"] / "checkpoints" / "final.pt", h5)
    assert results(out)["metrics"]["final"] == results(trained["run"])["metrics"]["final"]
    assert results(out)["source_checkpoint"] == str((trained["run"] / "checkpoints" / "final.pt").resolve())


def test_final_model_is_rebuilt_with_its_calibration(trained):
    """Stage 3 'both' + temperature: temperature(logit adjustment(tau-norm(head))); the rebuilt
    model's probabilities equal the ones the training run saved."""
    from imbalance.calibration import LogitAdjustedOutput, TauNormalizedLinear, TemperatureScaledOutput, log_prior
    from imbalance.data import ADSBSignalDataset
    from imbalance.evaluate import load_trained_model

    model, info = load_trained_model(trained["run"])
    assert isinstance(model.classifier, TemperatureScaledOutput)
    assert float(model.classifier.temperature) == pytest.approx(info.calibration["temperature"])
    la = model.classifier.head
    assert isinstance(la, LogitAdjustedOutput) and isinstance(la.head, TauNormalizedLinear)
    tau = info.calibration["logit_tau"]
    torch.testing.assert_close(la.offset, -tau * log_prior(info.class_counts))
    ds = ADSBSignalDataset(str(trained["test"]), classes=info.classes)
    with torch.no_grad():
        prob = torch.softmax(model(ds.x), 1).numpy()
    saved = np.load(trained["run"] / "results" / "predictions.npz")["prob"]
    np.testing.assert_allclose(prob, saved, atol=1e-5)


def test_lws_model_with_posthoc_adjustment_is_rebuilt(trained, tmp_path):
    from imbalance.calibration import LogitAdjustedOutput
    from imbalance.evaluate import load_trained_model
    from imbalance.pipeline import run
    from imbalance.stage2 import LWSClassifier

    d = trained["dir"]
    rdir = tmp_path / "lws"
    run(compose(*TRAIN_OVERRIDES, "training.epochs=1", "stage2.epochs=1", "stage2.mode=lws",
                "stage3.mode=tau_norm", "evaluation.eval_logit_adjust=posthoc", f"data.path_train={d / 'train.mat'}",
                f"data.path_test={trained['test']}"), run_dir=rdir)
    model, _ = load_trained_model(rdir)
    assert isinstance(model.classifier, LogitAdjustedOutput)
    assert isinstance(model.classifier.head, LWSClassifier)  # tau-norm inside LWS, the scales kept
    out = evaluate(tmp_path, rdir, trained["test"])
    assert results(out)["metrics"]["final"] == results(rdir)["metrics"]["final"]


def test_label_the_model_never_saw_is_reported_not_remapped(trained, tmp_path):
    from imbalance.synthetic import write_dataset

    x, y = trained["test_xy"]
    y2 = y.copy()
    y2[y == 9] = 99  # file label 99 replaces class 9
    bad = tmp_path / "unknown.mat"
    write_dataset(str(bad), x, y2, fmt="mat")
    with pytest.raises(DataError) as err:
        evaluate(tmp_path, trained["run"], bad)
    msg = str(err.value)
    assert "99 (20 samples)" in msg and "skip_unknown_classes" in msg and "\n" not in msg


def test_skip_unknown_classes_keeps_the_known_samples_with_their_own_classes(trained):
    from imbalance.data import ADSBSignalDataset
    from imbalance.evaluate import map_to_model_classes
    from imbalance.synthetic import write_dataset

    x, y = trained["test_xy"]
    path = trained["dir"] / "unknown_skip.mat"
    y2 = y.copy()
    y2[y == 0] = 99  # file label 99 replaces class 0: every other label would shift down if remapped
    write_dataset(str(path), x, y2, fmt="mat")
    ds = ADSBSignalDataset(str(path))
    classes = list(range(10))
    with pytest.raises(DataError, match=r"99 \(20 samples\)"):
        map_to_model_classes(ds, classes, skip_unknown=False, where="f")
    got, report = map_to_model_classes(ds, classes, skip_unknown=True, where="f")
    keep = y != 0
    assert report.unknown == {"99": 20} and report.skipped == 20 and report.absent == [0]
    np.testing.assert_array_equal(got.labels, y[keep])  # the index of the label value 0..9
    np.testing.assert_array_equal(np.asarray(got.classes), classes)
    np.testing.assert_array_equal(got.x.numpy(), ADSBSignalDataset(str(path)).x.numpy()[keep])


def test_missing_or_truncated_checkpoint_is_one_clear_line(trained, tmp_path):
    from imbalance.evaluate import load_trained_model

    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained["run"], unfinished)
    (unfinished / "checkpoints" / "final.pt").unlink()
    with pytest.raises(UserError) as err:
        load_trained_model(unfinished)
    assert "final.pt" in str(err.value) and "stage1_best.pt" in str(err.value) and "\n" not in str(err.value)

    data = (trained["run"] / "checkpoints" / "final.pt").read_bytes()
    (unfinished / "checkpoints" / "final.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as err:
        load_trained_model(unfinished)
    assert "truncated" in str(err.value) and "\n" not in str(err.value)

    with pytest.raises(UserError, match="not found"):
        load_trained_model(tmp_path / "no_such_run")
    with pytest.raises(UserError, match="not a run folder"):
        load_trained_model(tmp_path)


def test_incompatible_checkpoint_names_the_keys_that_differ(trained, tmp_path):
    from imbalance.evaluate import load_trained_model

    ckpt = torch.load(trained["run"] / "checkpoints" / "final.pt", weights_only=True)
    wider = dict(ckpt, config={**ckpt["config"], "model": {**ckpt["config"]["model"], "width": 16}})
    torch.save(wider, tmp_path / "wider.pt")
    with pytest.raises(UserError) as err:
        load_trained_model(tmp_path / "wider.pt")
    msg = str(err.value)
    assert "shape" in msg and "trunk.features.0.weight" in msg and "\n" not in msg

    foreign = dict(ckpt, config={**ckpt["config"], "not_a_key": 1})
    torch.save(foreign, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not_a_key"):
        load_trained_model(tmp_path / "foreign.pt")

    stage = {"model": ckpt["model"], "optimizer": {}}
    torch.save(stage, tmp_path / "stage.pt")
    with pytest.raises(UserError, match="not a final model checkpoint"):
        load_trained_model(tmp_path / "stage.pt")


def test_other_length_or_channels_is_an_error_unless_resizing_is_allowed(trained, tmp_path):
    x, y = trained["test_xy"]
    short = tmp_path / "short.npz"
    np.savez(short, X=x[:, :, :200], Y=y)
    with pytest.raises(DataError) as err:
        evaluate(tmp_path, trained["run"], short)
    assert "2 channels x 200 samples" in str(err.value) and "2 channels x 256 samples" in str(err.value)
    assert "data.target_length=256" in str(err.value)
    with pytest.raises(ConfigError, match="trained on 256"):
        evaluate(tmp_path, trained["run"], short, "data.target_length=200")
    out = evaluate(tmp_path, trained["run"], short, f"data.target_length={L}", name="padded")
    # zero-padded at the end, as the loader does; probabilities = the model on the padded signals
    from imbalance.evaluate import load_trained_model

    model, _ = load_trained_model(trained["run"])
    xp = np.zeros((len(y), 2, L), np.float32)
    xp[:, :, :200] = x[:, :, :200]
    xp /= np.sqrt((xp.astype(np.float64) ** 2).mean(axis=(1, 2), keepdims=True)).astype(np.float32)
    with torch.no_grad():
        prob = torch.softmax(model(torch.from_numpy(xp)), 1).numpy()
    np.testing.assert_allclose(np.load(out / "results" / "predictions.npz")["prob"], prob, atol=1e-5)

    three = tmp_path / "three.npz"
    np.savez(three, X=np.concatenate([x, x[:, :1]], axis=1), Y=y)
    with pytest.raises(DataError, match="3 channels x 256 samples but the model was trained on 2 channels"):
        evaluate(tmp_path, trained["run"], three)


@pytest.mark.slow
def test_main_py_mode_eval_writes_a_tagged_results_folder_with_figures(trained, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "main.py", "mode=eval", f"resume={trained['run']}", f"data.path_test={trained['test']}",
           "exp_name=evalcli", f"hydra.run.dir={out}", "visualization.plot_tsne_2d=false", "visualization.dpi=40",
           "num_threads=1"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    ev = results(out)
    assert ev["metrics"]["final"] == results(trained["run"])["metrics"]["final"]
    assert ev["source_run"] == str(trained["run"].resolve()) and ev["exp_name"] == "evalcli"
    for fig in ("confusion_matrix", "per_class_recall", "group_performance", "class_distribution"):
        assert (out / "results" / f"{fig}.png").is_file(), fig
    assert not (out / "results" / "training_curves.png").exists()  # no metrics.csv in an eval folder

    bad = subprocess.run([sys.executable, "main.py", "mode=eval", f"resume={tmp_path / 'nope'}",
                          f"hydra.run.dir={tmp_path / 'cli2'}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: run folder or checkpoint not found"), bad.stderr
