"""Tests of the data layer (imbalance.data, imbalance.augment)."""
from __future__ import annotations

import math

import h5py
import hdf5storage
import numpy as np
import pytest
import scipy.io
import torch

from imbalance.data import (
    ADSBSignalDataset,
    ArraySignalDataset,
    Compose,
    RandomAmplitude,
    RandomCropOrPad,
    RandomGaussianNoise,
    RandomTimeShift,
    build_augmentation,
    make_long_tailed_indices,
    stratified_split,
)
from imbalance.errors import ConfigError, DataError

N, L = 12, 40
LABELS_1BASED = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 3, 3], dtype=np.float64)


def _complex_signals(n=N, length=L):
    """Sample n, time t: real = 1000 n + t, imag = -(1000 n + t) / 7: orientation is visible."""
    base = 1000.0 * np.arange(n)[:, None] + np.arange(length)[None, :]
    return base - 1j * base / 7.0


def _expected_channels(z):
    return np.stack([z.real, z.imag], axis=1).astype(np.float32)


def _save_v73(path, **arrays):
    hdf5storage.savemat(str(path), arrays, format="7.3", matlab_compatible=True,
                        store_python_metadata=False, truncate_existing=True)


# ---------------------------------------------------------------- MATLAB files
@pytest.mark.parametrize("writer", ["v5", "v73"])
@pytest.mark.parametrize("label_shape", ["col", "row"])
def test_mat_complex_and_1based_labels_sample_by_sample(tmp_path, writer, label_shape):
    z = _complex_signals()
    y = LABELS_1BASED.reshape(-1, 1) if label_shape == "col" else LABELS_1BASED.reshape(1, -1)
    path = tmp_path / "train.mat"
    if writer == "v5":
        scipy.io.savemat(str(path), {"X": z, "Y": y})
    else:
        _save_v73(path, X=z, Y=y)
        with h5py.File(path, "r") as f:   # the v7.3 file really is column-major HDF5
            assert f["X"].shape == (L, N) and f["X"].dtype.names == ("real", "imag")
    ds = ADSBSignalDataset(str(path), normalize=False)
    exp = _expected_channels(z)
    assert ds.x.shape == (N, 2, L) and ds.x.dtype == torch.float32 and ds.x.is_contiguous()
    for i in range(N):
        xi, yi = ds[i]
        np.testing.assert_array_equal(xi.numpy(), exp[i])
        assert yi == int(LABELS_1BASED[i]) - 1
    assert ds.classes.tolist() == [1, 2, 3]
    assert ds.class_counts.tolist() == [4, 3, 5]
    assert ds.num_classes == 3 and ds.num_channels == 2 and ds.length == L


@pytest.mark.parametrize("writer", ["v5", "v73"])
@pytest.mark.parametrize("layout", ["NCL", "NLC"])
def test_mat_real_multichannel_layouts(tmp_path, writer, layout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 3, L))            # (N, C, L)
    stored = x if layout == "NCL" else np.transpose(x, (0, 2, 1))
    path = tmp_path / "d.mat"
    if writer == "v5":
        scipy.io.savemat(str(path), {"data": stored, "labels": LABELS_1BASED.reshape(-1, 1)})
    else:
        _save_v73(path, data=stored, labels=LABELS_1BASED.reshape(-1, 1))
    ds = ADSBSignalDataset(str(path), normalize=False)
    np.testing.assert_allclose(ds.x.numpy(), x.astype(np.float32), rtol=0, atol=0)
    assert ds.num_channels == 3 and ds.length == L


@pytest.mark.parametrize("compress", [True, False])
def test_v73_lazy_equals_in_memory(tmp_path, compress):
    z = _complex_signals(n=30)
    y = np.repeat([1.0, 2.0, 3.0], 10).reshape(-1, 1)
    path = tmp_path / "big.mat"
    hdf5storage.savemat(str(path), {"X": z, "Y": y}, format="7.3", matlab_compatible=True,
                        store_python_metadata=False, compress=compress)
    mem = ADSBSignalDataset(str(path), target_length=25)
    lazy = ADSBSignalDataset(str(path), target_length=25, in_memory=False)
    assert lazy.x is None and mem.x is not None
    idx = torch.tensor([29, 3, 3, 0, 17, 4, 5, 6])          # unsorted, duplicates
    xb, yb = lazy.get_batch(idx)
    np.testing.assert_allclose(xb.numpy(), mem.x[idx].numpy(), rtol=1e-6, atol=1e-6)
    assert yb.tolist() == mem.labels[idx.numpy()].tolist()
    np.testing.assert_allclose(lazy[7][0].numpy(), mem[7][0].numpy(), rtol=1e-6)


# ---------------------------------------------------------------- HDF5 / numpy
@pytest.mark.parametrize("transposed", [False, True])
def test_h5_layout_found_by_label_count(tmp_path, transposed):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, L)).astype(np.float32)    # (N, L) real: one channel
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("signal", data=x.T if transposed else x)
        f.create_dataset("label", data=LABELS_1BASED.astype(np.int64))
    ds = ADSBSignalDataset(str(path), normalize=False)
    np.testing.assert_array_equal(ds.x.numpy()[:, 0, :], x)
    assert ds.num_channels == 1
    lazy = ADSBSignalDataset(str(path), normalize=False, in_memory=False)
    idx = torch.tensor([11, 0, 5, 5])
    np.testing.assert_array_equal(lazy.get_batch(idx)[0].numpy(), x[idx.numpy()][:, None, :])


def test_h5_contiguous_lazy_reads_match(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 2, 64)).astype(np.float32)
    y = rng.integers(0, 5, 200)
    path = tmp_path / "d.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=x)
        f.create_dataset("Y", data=y)
    mem = ADSBSignalDataset(str(path))
    lazy = ADSBSignalDataset(str(path), in_memory=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        idx = torch.randint(0, 200, (64,), generator=g)   # many runs, duplicates
        np.testing.assert_allclose(lazy.get_batch(idx)[0].numpy(), mem.get_batch(idx)[0].numpy(), rtol=1e-6)
    idx = torch.arange(10, 20)                                # one contiguous run
    np.testing.assert_allclose(lazy.get_batch(idx)[0].numpy(), mem.x[10:20].numpy(), rtol=1e-6)


def test_npz_and_npy(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, 2, L)).astype(np.float32)
    y = LABELS_1BASED.astype(np.int64)
    np.savez(tmp_path / "a.npz", signals=x, y=y)
    np.save(tmp_path / "b.npy", {"X": x, "Y": y}, allow_pickle=True)
    rec = np.zeros(N, dtype=[("X", np.float32, (2, L)), ("Y", np.int64)])
    rec["X"], rec["Y"] = x, y
    np.save(tmp_path / "c.npy", rec)
    for name in ("a.npz", "b.npy", "c.npy"):
        ds = ADSBSignalDataset(str(tmp_path / name), normalize=False)
        np.testing.assert_array_equal(ds.x.numpy(), x)
        assert ds.labels.tolist() == (y - 1).tolist()
    lazy = ADSBSignalDataset(str(tmp_path / "c.npy"), normalize=False, in_memory=False)
    assert lazy.x is None
    np.testing.assert_array_equal(lazy.get_batch([3, 1])[0].numpy(), x[[3, 1]])
    np.save(tmp_path / "plain.npy", x)
    with pytest.raises(DataError, match="no labels"):
        ADSBSignalDataset(str(tmp_path / "plain.npy"))


def test_key_overrides_and_missing_keys(tmp_path):
    path = tmp_path / "k.mat"
    scipy.io.savemat(str(path), {"a": np.ones((3, 8)), "b": np.array([[1.0], [2.0], [1.0]])})
    with pytest.raises(DataError) as e:
        ADSBSignalDataset(str(path))
    msg = str(e.value)
    assert "no data key among X, data, signal, signals" in msg and "keys found: a, b" in msg
    assert "\n" not in msg
    ds = ADSBSignalDataset(str(path), data_key="a", label_key="b", normalize=False)
    assert ds.labels.tolist() == [0, 1, 0]
    with pytest.raises(DataError, match="label key 'zz' not found; keys found: a, b"):
        ADSBSignalDataset(str(path), data_key="a", label_key="zz")


def test_missing_file_mismatch_and_nan(tmp_path):
    with pytest.raises(DataError, match="^data file not found: .*nope.mat$"):
        ADSBSignalDataset(str(tmp_path / "nope.mat"))
    path = tmp_path / "m.mat"
    scipy.io.savemat(str(path), {"X": np.ones((10, 8)), "Y": np.ones((9, 1))})
    with pytest.raises(DataError, match="9 labels"):
        ADSBSignalDataset(str(path))
    x = np.ones((30, 2, 8))
    x[17, 1, 3] = np.nan
    x[20, 0, 0] = np.inf
    x[25, 0, 5] = -np.inf
    scipy.io.savemat(str(path), {"X": x, "Y": np.arange(30.0).reshape(-1, 1) % 3})
    with pytest.raises(DataError, match=r"m\.mat: 3 NaN/Inf values, first at sample 17$"):
        ADSBSignalDataset(str(path))
    h5 = tmp_path / "nan.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("X", data=x.astype(np.float32))
        f.create_dataset("Y", data=np.arange(30) % 3)
    lazy = ADSBSignalDataset(str(h5), in_memory=False)
    lazy.get_batch([0, 1, 2])
    with pytest.raises(DataError, match="first at sample 20"):
        lazy.get_batch([21, 20, 5])


def test_target_length_and_normalize(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 2, 50)) * np.arange(1, 7)[:, None, None]
    x[2] = 0.0
    y = np.arange(6) % 2
    crop = ArraySignalDataset(x, y, target_length=30, normalize=False)
    np.testing.assert_allclose(crop.x.numpy(), x[:, :, :30].astype(np.float32))
    pad = ArraySignalDataset(x, y, target_length=64, normalize=False)
    np.testing.assert_allclose(pad.x.numpy()[:, :, :50], x.astype(np.float32))
    assert (pad.x.numpy()[:, :, 50:] == 0).all()
    norm = ArraySignalDataset(x, y, normalize=True).x.numpy().astype(np.float64)
    rms = np.sqrt((norm ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(np.delete(rms, 2), 1.0, rtol=1e-5)
    assert (norm[2] == 0).all()
    # a common scale per sample: the I/Q ratio is kept
    ratio = norm[0, 0, :5] / norm[0, 1, :5]
    np.testing.assert_allclose(ratio, x[0, 0, :5] / x[0, 1, :5], rtol=1e-5)


def test_classes_mapping_and_unknown_labels(tmp_path):
    path = tmp_path / "test.mat"
    scipy.io.savemat(str(path), {"X": np.ones((4, 8)), "Y": np.array([[3.0], [5.0], [3.0], [5.0]])})
    ds = ADSBSignalDataset(str(path), classes=[1, 3, 5, 7])
    assert ds.labels.tolist() == [1, 2, 1, 2] and ds.num_classes == 4
    assert ds.class_counts.tolist() == [0, 2, 2, 0]
    with pytest.raises(DataError, match="5 are not among the classes 1, 3"):
        ADSBSignalDataset(str(path), classes=[1, 3])


def test_subset_and_transform():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 2, 16)).astype(np.float32)
    y = np.array([0] * 10 + [1] * 6 + [2] * 4)
    ds = ArraySignalDataset(x, y, normalize=False, transform=lambda t: t * 2)
    sub = ds.subset(np.array([15, 0, 19]))
    assert sub.labels.tolist() == [1, 0, 2]
    assert sub.class_counts.tolist() == [1, 1, 1] and sub.num_classes == 3
    np.testing.assert_array_equal(sub.x.numpy(), x[[15, 0, 19]])
    np.testing.assert_array_equal(sub[1][0].numpy(), 2 * x[0])       # transform on ds[i]
    xb, yb = sub.get_batch(torch.tensor([2, 2]))                      # none on get_batch
    np.testing.assert_array_equal(xb.numpy(), x[[19, 19]])
    assert yb.dtype == torch.int64 and yb.tolist() == [2, 2]


def test_lazy_subset(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((40, 2, 16)).astype(np.float32)
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=x)
        f.create_dataset("Y", data=np.arange(40) % 4)
    lazy = ADSBSignalDataset(str(path), normalize=False, in_memory=False)
    sub = lazy.subset([39, 1, 2, 3]).subset([0, 2])
    assert sub.x is None and sub.labels.tolist() == [3, 2] and sub.num_classes == 4
    np.testing.assert_array_equal(sub.get_batch([1, 0])[0].numpy(), x[[2, 39]])


# ---------------------------------------------------------------- splits
def test_make_long_tailed_indices_profile():
    labels = np.repeat(np.arange(10), 480)
    idx = make_long_tailed_indices(labels, 10, 100.0, seed=1)
    counts = np.bincount(labels[idx], minlength=10)
    expected = [max(1, int(480 * 100.0 ** (-c / 9))) for c in range(10)]
    assert counts.tolist() == expected and expected[0] == 480 and expected[-1] == 4
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, make_long_tailed_indices(labels, 10, 100.0, seed=1))
    assert not np.array_equal(idx, make_long_tailed_indices(labels, 10, 100.0, seed=2))
    # a class with fewer than its quota keeps all it has; at least one sample
    labels2 = np.concatenate([np.zeros(100, int), np.ones(3, int), np.full(50, 2)])
    c2 = np.bincount(labels2[make_long_tailed_indices(labels2, 3, 1000.0)], minlength=3)
    assert c2.tolist() == [100, 3, 1]
    with pytest.raises(ConfigError, match="imbalance_ratio"):
        make_long_tailed_indices(labels, 10, 0.5)


def test_stratified_split_counts_and_errors():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3] * 3)
    tr, va = stratified_split(labels, 0.25, seed=0)
    assert np.intersect1d(tr, va).size == 0
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(labels)))
    # round half up: 2.5 -> 3, 1.25 -> 1, 0.5 -> 1 (and >= 1), 0.75 -> 1
    assert np.bincount(labels[va], minlength=4).tolist() == [3, 1, 1, 1]
    tr9, va9 = stratified_split(labels, 0.9, seed=0)
    assert np.bincount(labels[tr9], minlength=4).min() >= 1
    with pytest.raises(DataError, match="class 7 has 1"):
        stratified_split(np.array([0, 0, 7]), 0.5)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="val_ratio"):
            stratified_split(labels, bad)


def test_validation_split_then_long_tail_disjoint():
    labels = np.repeat(np.arange(10), 600)
    tr, va = stratified_split(labels, 0.2, seed=0)
    lt = tr[make_long_tailed_indices(labels[tr], 10, 100.0, seed=0)]
    assert np.intersect1d(lt, va).size == 0
    assert np.bincount(labels[va]).tolist() == [120] * 10
    counts = np.bincount(labels[lt], minlength=10)
    assert counts[0] == 480 and counts[-1] == 4


# ---------------------------------------------------------------- augmentations
def _batch(b=64, c=2, length=100, seed=0):
    return torch.randn(b, c, length, generator=torch.Generator().manual_seed(seed))


def test_time_shift_is_a_roll_within_range():
    x = _batch()
    out = RandomTimeShift(max_shift=5, p=1.0)(x, generator=torch.Generator().manual_seed(1))
    shifts = []
    for i in range(len(x)):
        match = [s for s in range(-5, 6) if torch.equal(out[i], torch.roll(x[i], s, dims=-1))]
        assert match, f"sample {i} is not a roll of at most 5"
        shifts.append(match[0])
    assert len(set(shifts)) > 5
    zero = RandomTimeShift(max_shift=5, p=1.0, mode="zero")(x, generator=torch.Generator().manual_seed(1))
    for i, s in enumerate(shifts):
        exp = torch.zeros_like(x[i])
        if s >= 0:
            exp[:, s:] = x[i, :, :100 - s]
        else:
            exp[:, :s] = x[i, :, -s:]
        assert torch.equal(zero[i], exp)
    assert torch.equal(RandomTimeShift(max_shift=5, p=0.0)(x), x)


def test_amplitude_scale_per_sample():
    x = _batch()
    out = RandomAmplitude(scale=(0.8, 1.2), p=1.0)(x, generator=torch.Generator().manual_seed(2))
    ratio = out / x
    per = ratio.reshape(len(x), -1)
    assert torch.allclose(per, per[:, :1].expand_as(per), rtol=1e-5)
    assert (per[:, 0] >= 0.8 - 1e-6).all() and (per[:, 0] <= 1.2 + 1e-6).all()
    out_b = RandomAmplitude(scale=(1.0, 1.0), bias=0.1, p=1.0)(x)
    d = (out_b - x)
    assert torch.allclose(d, d[:, :, :1].expand_as(d), atol=1e-6) and d.abs().max() <= 0.1 + 1e-6


def test_gaussian_noise_std_and_snr():
    x = torch.zeros(8, 2, 20000)
    n = RandomGaussianNoise(std=0.05, p=1.0)(x, generator=torch.Generator().manual_seed(3))
    assert abs(n.std().item() - 0.05) < 0.002
    s = torch.ones(8, 2, 20000) * 2.0
    out = RandomGaussianNoise(snr_db=10.0, p=1.0)(s, generator=torch.Generator().manual_seed(4))
    noise_power = (out - s).pow(2).mean().item()
    assert abs(10 * math.log10(4.0 / noise_power) - 10.0) < 0.1
    with pytest.raises(ConfigError):
        RandomGaussianNoise()


def test_probability_and_single_sample_and_generator():
    x = _batch(b=2000, length=8)
    out = RandomAmplitude(scale=(2.0, 3.0), p=0.3)(x, generator=torch.Generator().manual_seed(5))
    changed = (out != x).reshape(2000, -1).any(dim=1).float().mean().item()
    assert abs(changed - 0.3) < 0.05
    single = x[0]
    aug = Compose([RandomTimeShift(max_shift=3, p=1.0), RandomGaussianNoise(std=0.1, p=1.0)])
    a = aug(single, generator=torch.Generator().manual_seed(6))
    b = aug(single, generator=torch.Generator().manual_seed(6))
    assert a.shape == single.shape and torch.equal(a, b)


def test_crop_or_pad_windows():
    x = _batch(b=16, length=50)
    crop = RandomCropOrPad(target_length=20)(x, generator=torch.Generator().manual_seed(7))
    assert crop.shape == (16, 2, 20)
    for i in range(16):
        assert any(torch.equal(crop[i], x[i, :, s:s + 20]) for s in range(31))
    pad = RandomCropOrPad(target_length=70)(x)
    for i in range(16):
        nz = torch.nonzero(pad[i, 0]).flatten()
        s = int(nz[0])
        assert torch.equal(pad[i, :, s:s + 50], x[i])
        assert (pad[i, :, :s] == 0).all() and (pad[i, :, s + 50:] == 0).all()


def test_build_augmentation():
    assert build_augmentation(None) is None
    assert build_augmentation({"enabled": False, "time_shift": 3}) is None
    aug = build_augmentation({"enabled": True, "time_shift": 32, "amplitude": [0.8, 1.2],
                              "noise_std": 0.05, "p": 0.5})
    assert [type(t) for t in aug.transforms] == [RandomTimeShift, RandomAmplitude, RandomGaussianNoise]
    assert aug.transforms[0].max_shift == 32 and aug.transforms[1].scale == (0.8, 1.2)
    assert aug.transforms[2].std == 0.05 and all(t.p == 0.5 for t in aug.transforms)
    with pytest.raises(ConfigError, match="unknown data.augment key.*valid: enabled"):
        build_augmentation({"enabled": True, "shift": 3})
    with pytest.raises(ConfigError, match="p must be in"):
        build_augmentation({"enabled": True, "time_shift": 3, "p": 2})
