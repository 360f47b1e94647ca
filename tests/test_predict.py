"""python -m imbalance.predict: label the signals of a file (labels optional)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from test_evaluate import L, trained  # noqa: F401  (the session-scoped trained run)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def saved_prob(trained):  # noqa: F811
    return np.load(trained["run"] / "results" / "predictions.npz")["prob"]


def test_predict_a_file_without_labels_matches_the_runs_own_probabilities(trained, tmp_path, capsys):  # noqa: F811
    from imbalance.predict import main

    x, _ = trained["test_xy"]
    unlabeled = tmp_path / "signals.npy"
    np.save(unlabeled, (x[:, 0] + 1j * x[:, 1]).astype(np.complex64))  # a plain complex (N, L) array
    out = tmp_path / "pred.csv"
    rc = main(["--run", str(trained["run"]), "--input", str(unlabeled), "--out", str(out), "--top-k", "3",
               "--precision", "fp32", "--batch-size", "64", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    rows = read_csv(out)
    prob = saved_prob(trained)  # computed by the training pipeline on the same signals
    classes = list(range(10))  # the built-in data's label values, in every format
    assert len(rows) == len(prob) and "label" not in rows[0]
    assert list(rows[0]) == ["index", "predicted", "probability", "top1_class", "top1_prob", "top2_class",
                             "top2_prob", "top3_class", "top3_prob"]
    for i, r in enumerate(rows):
        assert int(r["index"]) == i
        order = np.argsort(-prob[i], kind="stable")
        assert int(r["predicted"]) == classes[order[0]] == int(r["top1_class"])
        assert float(r["probability"]) == pytest.approx(prob[i, order[0]], abs=1e-5)
        for j in range(3):
            assert float(r[f"top{j + 1}_prob"]) == pytest.approx(np.sort(prob[i])[::-1][j], abs=1e-5)


def test_labelled_mat_file_and_checkpoint_path(trained, tmp_path):  # noqa: F811
    from imbalance.predict import predict_file, write_predictions_csv

    preds = predict_file(str(trained["run"] / "checkpoints" / "final.pt"), str(trained["test"]), precision="fp32")
    np.testing.assert_allclose(preds.prob, saved_prob(trained), atol=1e-5)
    write_predictions_csv(str(tmp_path / "p.csv"), preds, top_k=2)
    rows = read_csv(tmp_path / "p.csv")
    _, y = trained["test_xy"]
    assert [int(r["label"]) for r in rows] == y.tolist()


def test_mat_file_with_signals_only(trained, tmp_path):  # noqa: F811
    import scipy.io

    from imbalance.predict import predict_file

    x, _ = trained["test_xy"]
    path = tmp_path / "only_x.mat"
    scipy.io.savemat(path, {"signals": x[:, 0] + 1j * x[:, 1]})
    preds = predict_file(str(trained["run"]), str(path), precision="fp32")
    assert preds.labels is None
    np.testing.assert_allclose(preds.prob, saved_prob(trained), atol=1e-5)


def test_other_length_needs_allow_resize_and_then_crops(trained, tmp_path, capsys):  # noqa: F811
    from imbalance.evaluate import load_trained_model
    from imbalance.predict import main

    x, _ = trained["test_xy"]
    longer = np.concatenate([x, x[:, :, :44]], axis=2)  # 300 samples
    path = tmp_path / "long.npz"
    np.savez(path, X=longer)
    out = tmp_path / "p.csv"
    args = ["--run", str(trained["run"]), "--input", str(path), "--out", str(out), "--precision", "fp32"]
    assert main(args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "300 samples" in err[0] and f"trained on {L}" in err[0] and "--allow-resize" in err[0]
    assert not out.exists()
    assert main(args + ["--allow-resize", "--top-k", "1"]) == 0
    # independent: keep the first L samples, RMS-normalise, run the model
    model, _ = load_trained_model(trained["run"])
    xc = longer[:, :, :L].astype(np.float64)
    xc = (xc / np.sqrt((xc ** 2).mean(axis=(1, 2), keepdims=True))).astype(np.float32)
    with torch.no_grad():
        prob = torch.softmax(model(torch.from_numpy(xc)), 1).numpy()
    got = np.array([float(r["probability"]) for r in read_csv(out)])
    np.testing.assert_allclose(got, prob.max(1), atol=1e-5)

    np.savez(tmp_path / "one.npz", X=x[:, :1])
    assert main(["--run", str(trained["run"]), "--input", str(tmp_path / "one.npz"), "--out", str(out)]) == 2
    assert "1 channels but the model was trained on 2" in capsys.readouterr().err


def test_bf16_autocast_agrees_with_fp32(trained):  # noqa: F811
    from imbalance.data import ADSBSignalDataset
    from imbalance.evaluate import load_trained_model
    from imbalance.predict import predict_proba

    model, info = load_trained_model(trained["run"])
    x = ADSBSignalDataset(str(trained["test"]), classes=info.classes).x
    p32 = predict_proba(model, x, batch_size=50)
    p16 = predict_proba(model, x, batch_size=50, dtype=torch.bfloat16)
    assert p16.dtype == np.float32 and np.allclose(p16.sum(1), 1, atol=1e-5)
    assert np.abs(p16 - p32).max() < 0.05  # bf16 keeps 8 bits of mantissa


def test_bad_run_is_one_error_line(trained, tmp_path, capsys):  # noqa: F811
    from imbalance.predict import main

    bad = tmp_path / "run"
    (bad / "checkpoints").mkdir(parents=True)
    (bad / "checkpoints" / "final.pt").write_bytes(b"")
    rc = main(["--run", str(bad), "--input", str(trained["test"]), "--out", str(tmp_path / "p.csv")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: checkpoint") and "empty" in err[0]
    rc = main(["--run", str(tmp_path / "nope"), "--input", str(trained["test"])])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "not found" in err[0]
