"""Unknown transmitters in the built-in synthetic ADS-B data (imbalance.synthetic, open set)."""
from __future__ import annotations

import numpy as np
import pytest

from imbalance.errors import ConfigError
from imbalance.synthetic import (
    builtin_dataset,
    emitter_impairments,
    generate_adsb,
    generate_unknown_adsb,
    main,
    unknown_emitter_impairments,
)

FS = 8e6


def test_unknowns_never_change_the_closed_set_data():
    kw = dict(num_classes=4, train_per_class=[12, 6, 3, 1], val_per_class=2, test_per_class=5,
              length=200, seed=4)
    closed = builtin_dataset(**kw)
    open_ = builtin_dataset(**kw, num_unknown=3)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(open_[split][0], closed[split][0])
        np.testing.assert_array_equal(open_[split][1], closed[split][1])
    assert closed["test_unknown"] is None
    # the known emitters are the same, the unknown ones are new
    known = emitter_impairments(4, emitter_seed=4)
    unk = unknown_emitter_impairments(3, emitter_seed=4)
    for name in known:
        assert unk[name].shape == (3,)
        assert not np.isin(unk[name], known[name]).any()


def test_unknown_bursts_only_in_the_test_unknown_split_with_new_labels():
    d = builtin_dataset(num_classes=5, train_per_class=4, test_per_class=6, length=128, seed=1, num_unknown=2)
    xu, yu = d["test_unknown"]
    assert xu.shape == (12, 2, 128) and xu.dtype == np.float32 and np.isfinite(xu).all()
    assert yu.tolist() == [5] * 6 + [6] * 6                  # labels K..K+U-1: no collision
    for split in ("train", "test"):
        assert d[split][1].max() == 4
    d2 = builtin_dataset(num_classes=5, train_per_class=4, test_per_class=6, length=128, seed=1,
                         num_unknown=2, unknown_per_class=3)
    assert np.bincount(d2["test_unknown"][1]).tolist() == [0] * 5 + [3, 3]
    # reproducible from the seed; another seed gives other bursts
    again = builtin_dataset(num_classes=5, train_per_class=4, test_per_class=6, length=128, seed=1, num_unknown=2)
    np.testing.assert_array_equal(again["test_unknown"][0], xu)
    other = builtin_dataset(num_classes=5, train_per_class=4, test_per_class=6, length=128, seed=2, num_unknown=2)
    assert not np.allclose(other["test_unknown"][0], xu)


def _estimate_cfo(x, lag=8):
    """Mean phase advance over 1 us between samples both at full pulse amplitude."""
    z = x[:, 0].astype(np.float64) + 1j * x[:, 1]
    amp = np.abs(z)
    on = amp > 0.8 * amp.max(axis=1, keepdims=True)
    w = on[:, lag:] & on[:, :-lag]
    return np.angle((z[:, lag:] * np.conj(z[:, :-lag]) * w).sum(axis=1)) * FS / (2 * np.pi * lag)


def test_unknown_bursts_carry_the_unknown_emitters_impairments():
    """The per-emitter CFO of the unknown bursts follows unknown_emitter_impairments (not the
    known emitters'), as the known bursts follow emitter_impairments."""
    x, y = generate_unknown_adsb(5, 12, num_known=3, length=1000, snr_db=40.0, difficulty=0.5,
                                 seed=0, emitter_seed=7)
    est = _estimate_cfo(x)
    med = np.array([np.median(est[y == c]) for c in range(3, 8)])
    cfo = unknown_emitter_impairments(5, emitter_seed=7, difficulty=0.5)["cfo_hz"]
    assert np.corrcoef(med, cfo)[0, 1] > 0.95
    assert np.argsort(med).tolist() == np.argsort(cfo).tolist()


def test_generate_unknown_errors():
    with pytest.raises(ConfigError, match="num_unknown"):
        generate_unknown_adsb(0, 3, num_known=2)
    with pytest.raises(ConfigError, match="num_unknown"):
        builtin_dataset(num_classes=2, train_per_class=1, test_per_class=1, length=32, num_unknown=-1)
    with pytest.raises(ConfigError, match="num_unknown"):
        unknown_emitter_impairments(-2)
    # the known generator is untouched: same bursts as before the unknown streams existed
    a = generate_adsb(num_classes=2, samples_per_class=3, length=64, seed=[1, 3], emitter_seed=1)
    b = builtin_dataset(num_classes=2, train_per_class=1, test_per_class=3, length=64, seed=1, num_unknown=1)
    np.testing.assert_array_equal(a[0], b["test"][0])


def test_cli_writes_a_separate_unknown_file(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--format", "npz", "--num-classes", "3", "--length", "64",
            "--train-per-class", "4", "--test-per-class", "2", "--seed", "2"]
    assert main(args + ["--num-unknown", "2", "--unknown-per-class", "3"]) == 0
    out = capsys.readouterr().out
    assert "test_unknown.npz" in out and "labels 3..4" in out
    unk = np.load(tmp_path / "test_unknown.npz")
    assert unk["Y"].tolist() == [3, 3, 3, 4, 4, 4]          # the built-in label values: after the known 0..2
    ref = builtin_dataset(num_classes=3, train_per_class=4, test_per_class=2, length=64, seed=2,
                          num_unknown=2, unknown_per_class=3)["test_unknown"][0]
    np.testing.assert_allclose(unk["X"], ref[:, 0] + 1j * ref[:, 1], rtol=0, atol=1e-6)
    train = np.load(tmp_path / "train.npz")
    assert set(train["Y"].tolist()) == {0, 1, 2}
    assert main(args[:2] + ["--out", str(tmp_path / "b")] + args[2:]) == 0
    assert not (tmp_path / "b" / "test_unknown.npz").exists()
