"""Tests of the built-in synthetic ADS-B generator (imbalance.synthetic)."""
from __future__ import annotations


import numpy as np
import pytest

from imbalance.data import ADSBSignalDataset
from imbalance.errors import ConfigError
from imbalance.synthetic import (
    BURST_US,
    builtin_dataset,
    emitter_impairments,
    generate_adsb,
    main,
)

FS = 8e6
PREAMBLE_US = (0.0, 1.0, 3.5, 4.5)


def test_shapes_dtypes_and_label_blocks():
    x, y = generate_adsb(num_classes=4, samples_per_class=[3, 0, 2, 5], length=200, seed=1)
    assert x.shape == (10, 2, 200) and x.dtype == np.float32
    assert y.dtype == np.int64
    assert y.tolist() == [0, 0, 0, 2, 2, 3, 3, 3, 3, 3]
    assert np.isfinite(x).all()


def test_deterministic_from_seed():
    a = generate_adsb(num_classes=3, samples_per_class=4, length=128, seed=5)
    b = generate_adsb(num_classes=3, samples_per_class=4, length=128, seed=5)
    c = generate_adsb(num_classes=3, samples_per_class=4, length=128, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[0], c[0])


def test_impairments_pure_function_and_difficulty_scaling():
    a = emitter_impairments(10, emitter_seed=3, difficulty=1.0)
    b = emitter_impairments(10, emitter_seed=3, difficulty=1.0)
    c = emitter_impairments(10, emitter_seed=4, difficulty=1.0)
    h = emitter_impairments(10, emitter_seed=3, difficulty=2.0)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.allclose(a["cfo_hz"], c["cfo_hz"])
    # unclipped impairments: deviation from the centre halves when difficulty doubles
    for k, centre in (("cfo_hz", 0.0), ("iq_phase_deg", 0.0), ("dc_i", 0.0), ("iq_gain", 1.0)):
        np.testing.assert_allclose(h[k] - centre, (a[k] - centre) / 2.0, rtol=1e-12, atol=1e-12)
    # Latin hypercube: one CFO per stratum of width 2 * 12 kHz / K
    strata = np.floor((a["cfo_hz"] / 12e3 + 1.0) / 2.0 * 10).astype(int)
    assert sorted(strata.tolist()) == list(range(10))
    with pytest.raises(ConfigError):
        emitter_impairments(3, difficulty=0.0)


def _estimate_cfo(x: np.ndarray, lag: int = 8) -> np.ndarray:
    """CFO per burst: mean phase advance over ``lag`` samples (1 us) between samples that are
    both at full pulse amplitude (where AM/PM adds no phase)."""
    z = x[:, 0].astype(np.float64) + 1j * x[:, 1]
    amp = np.abs(z)
    on = amp > 0.8 * amp.max(axis=1, keepdims=True)
    w = on[:, lag:] & on[:, :-lag]
    prod = z[:, lag:] * np.conj(z[:, :-lag]) * w
    return np.angle(prod.sum(axis=1)) * FS / (2 * np.pi * lag)


def test_train_and_test_share_emitters_cfo_matches():
    """Bursts drawn with different seeds but one emitter_seed carry the same emitter CFO:
    the per-emitter CFO estimates agree between the seeds and follow the emitters' cfo_hz
    (DC offset and phase noise bias a single estimate by up to a few hundred Hz)."""
    imp = emitter_impairments(5, emitter_seed=7, difficulty=0.5)
    med = []
    for seed in (0, 1):
        x, y = generate_adsb(num_classes=5, samples_per_class=12, length=1000, snr_db=40.0,
                             difficulty=0.5, seed=seed, emitter_seed=7)
        est = _estimate_cfo(x)
        med.append(np.array([np.median(est[y == c]) for c in range(5)]))
    gap = np.min(np.diff(np.sort(imp["cfo_hz"])))   # >= 0 by construction, ~ several kHz
    assert np.max(np.abs(med[0] - med[1])) < max(gap / 3, 500)
    assert np.corrcoef(med[0], imp["cfo_hz"])[0, 1] > 0.95
    assert np.argsort(med[1]).tolist() == np.argsort(imp["cfo_hz"]).tolist()


def _envelope(x):
    return np.hypot(x[:, 0].astype(np.float64), x[:, 1])


def _preamble_offset(env: np.ndarray) -> np.ndarray:
    """Burst start (samples) by correlating with the preamble template, searched in 0..2 us."""
    tmpl = np.zeros(int(8e-6 * FS))
    for t in PREAMBLE_US:
        tmpl[int(t * 8): int(t * 8) + 4] = 1.0
    tmpl -= tmpl.mean()
    scores = np.stack([(env[:, o:o + tmpl.size] * tmpl).sum(axis=1) for o in range(17)], axis=1)
    return scores.argmax(axis=1)


def test_preamble_and_pulse_position_modulation():
    """Each burst starts with the 4-pulse preamble within 2 us, and each of the 112 bits has
    its pulse in exactly one half (PPM): the two halves differ strongly in energy."""
    x, _ = generate_adsb(num_classes=3, samples_per_class=5, length=1000, snr_db=30.0, seed=2)
    env = _envelope(x)
    off = _preamble_offset(env)
    for i in range(len(x)):
        e = env[i] / env[i].max()
        o = off[i]
        # preamble pulses high, gaps low (centre samples of each half-microsecond chip)
        for t in PREAMBLE_US:
            assert e[o + int(t * 8) + 2] > 0.5
        for t in (0.5, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0):
            assert e[o + int(t * 8) + 2] < 0.3
        first = np.array([e[o + 64 + 8 * b + 1: o + 64 + 8 * b + 3].mean() for b in range(112)])
        second = np.array([e[o + 64 + 8 * b + 5: o + 64 + 8 * b + 7].mean() for b in range(112)])
        assert (np.abs(first - second) > 0.4).all()
        assert 20 < (first > second).sum() < 92   # random bits, not all one value


def test_snr_matches_and_record_longer_than_burst_is_noise_padded():
    """Record of 150 us: after the burst only noise; burst-window power / noise power = SNR."""
    x, _ = generate_adsb(num_classes=2, samples_per_class=100, length=1200, snr_db=10.0, seed=3)
    p = x[:, 0].astype(np.float64) ** 2 + x[:, 1] ** 2
    burst = p[:, int(2.5 * 8): int(BURST_US * 8)].mean(axis=1)   # inside every burst
    noise = p[:, int((BURST_US + 2.6) * 8):].mean(axis=1)         # after every burst
    snr_est = 10 * np.log10(np.mean((burst - noise) / noise))
    assert abs(snr_est - 10.0) < 0.7


def test_short_record_cuts_the_burst():
    x, _ = generate_adsb(num_classes=2, samples_per_class=3, length=100, snr_db=30.0, seed=4)
    assert x.shape == (6, 2, 100)
    env = _envelope(x)
    off = _preamble_offset(env)   # the preamble is still there
    assert (off <= 16).all()
    assert (env.max(axis=1) > 3 * np.median(env, axis=1)).all()


def test_bad_arguments():
    with pytest.raises(ConfigError, match="samples_per_class"):
        generate_adsb(num_classes=3, samples_per_class=[1, 2])
    with pytest.raises(ConfigError, match="snr_db"):
        generate_adsb(num_classes=2, samples_per_class=1, snr_db=(20, 5))
    with pytest.raises(ConfigError, match="num_classes"):
        generate_adsb(num_classes=0)


def test_builtin_dataset_splits():
    d = builtin_dataset(num_classes=4, train_per_class=10, test_per_class=3, length=256, seed=1)
    assert d["val"] is None
    (xtr, ytr), (xte, yte) = d["train"], d["test"]
    assert xtr.shape == (40, 2, 256) and xte.shape == (12, 2, 256)
    assert np.bincount(ytr).tolist() == [10] * 4 and np.bincount(yte).tolist() == [3] * 4
    assert not np.allclose(xtr[:3], xte[:3])
    d2 = builtin_dataset(num_classes=4, train_per_class=10, val_per_class=2, test_per_class=3, length=256, seed=1)
    assert np.bincount(d2["val"][1]).tolist() == [2] * 4
    np.testing.assert_array_equal(d2["train"][0], xtr)


@pytest.mark.parametrize("fmt,real", [("mat", False), ("mat73", False), ("h5", False), ("npz", False),
                                      ("mat", True)])
def test_cli_writes_files_that_load_back(tmp_path, fmt, real, capsys):
    args = ["--out", str(tmp_path), "--format", fmt, "--num-classes", "3", "--length", "64",
            "--train-per-class", "5", "--test-per-class", "2", "--seed", "2"]
    assert main(args + (["--real-channels"] if real else [])) == 0
    assert "wrote" in capsys.readouterr().out
    ref = builtin_dataset(num_classes=3, train_per_class=5, test_per_class=2, length=64, seed=2)
    ext = ".h5" if fmt == "h5" else ".npz" if fmt == "npz" else ".mat"
    for split in ("train", "test"):
        ds = ADSBSignalDataset(str(tmp_path / (split + ext)), normalize=False)
        x, y = ref[split]
        np.testing.assert_allclose(ds.x.numpy(), x, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(ds.labels, y)
        assert ds.classes.tolist() == [0, 1, 2]  # the built-in data's label values in every format
