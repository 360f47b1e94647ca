"""imbalance.series_data and its wiring: per-series normalisation over the series' own samples,
one length with a mask, the mask channel and its augmentation, the validation split with a
minimum per class, archive sources / .ts files / .mat pairs with a mask through the pipeline."""
from __future__ import annotations

import importlib.util
import json
import logging
import os

import numpy as np
import pytest
import torch

from imbalance import series_data as sd
from imbalance.archives import export_archive, load_archive, series_lengths
from imbalance.augment import Compose, RandomAmplitude, RandomGaussianNoise, RandomTimeShift
from imbalance.data import stratified_split
from imbalance.errors import ConfigError, DataError

needs_aeon = pytest.mark.skipif(importlib.util.find_spec("aeon") is None,
                                reason="aeon (pip install .[archives]) not installed")


# ----------------------------------------------------------------------------- normalisation
def test_normalize_series_over_own_samples_float64_reference():
    rng = np.random.default_rng(0)
    series = [rng.normal(3.0, 2.0, size=(2, n)) for n in (5, 17, 40)]
    z = sd.normalize_series(series, "zscore")
    r = sd.normalize_series(series, "rms")
    for s, zs, rs in zip(series, z, r):
        want_z = (s - s.mean(axis=1, keepdims=True)) / s.std(axis=1, keepdims=True)   # per channel
        np.testing.assert_allclose(zs, want_z, rtol=1e-12)
        np.testing.assert_allclose(rs, s / np.sqrt((s ** 2).mean()), rtol=1e-12)     # over C and T
    # padding does not enter: the normalised series padded equals padding then nothing else
    x, mask = sd.prepare_series(series, length=50, normalize="zscore")
    np.testing.assert_allclose(x[0, :, :5], z[0].astype(np.float32), rtol=1e-6)
    assert not x[0, :, 5:].any() and mask[0].sum() == 5 and mask[2].sum() == 40


def test_zscore_of_a_constant_series_is_zero_and_nan_is_refused():
    const = np.full((1, 1, 10), 7.0)
    np.testing.assert_array_equal(sd.normalize_series(const, "zscore"), np.zeros((1, 1, 10)))
    np.testing.assert_array_equal(sd.normalize_series(np.zeros((1, 1, 4)), "rms"), np.zeros((1, 1, 4)))
    bad = np.ones((2, 1, 6))
    bad[1, 0, 3] = np.nan
    with pytest.raises(DataError, match="series 1 has 1 missing or infinite values"):
        sd.normalize_series(bad, "zscore")
    with pytest.raises(ConfigError, match="valid values: rms, zscore"):
        sd.normalize_series(bad, "minmax")


# ----------------------------------------------------------------------------- validation split
def test_carve_validation_equals_stratified_split_with_min_one():
    labels = np.repeat([0, 1, 2, 3], [50, 9, 3, 2])
    for seed in (0, 5):
        a = sd.carve_validation(labels, 0.2, seed=seed)
        b = stratified_split(labels, 0.2, seed=seed)
        assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_carve_validation_minimum_per_class_and_small_classes(caplog):
    labels = np.repeat([0, 1, 2, 3], [20, 6, 3, 1])
    with caplog.at_level(logging.WARNING, logger="imbalance.series_data"):
        tr, va = sd.carve_validation(labels, 0.1, min_per_class=3, seed=0)
    n_val = np.bincount(labels[va], minlength=4)
    n_tr = np.bincount(labels[tr], minlength=4)
    # class 0: round(2.0) -> at least 3; class 1: 3 (leaves 3); classes 2, 3 have <= 3: all in training
    assert n_val.tolist() == [3, 3, 0, 0] and n_tr.tolist() == [17, 3, 3, 1]
    assert np.intersect1d(tr, va).size == 0 and len(tr) + len(va) == len(labels)
    assert "class 2 (3 samples), class 3 (1 samples) kept entirely for training" in caplog.text
    # a one-sample class no longer stops the run (stratified_split refuses it)
    tr1, va1 = sd.carve_validation(np.array([0, 0, 0, 1]), 0.5, seed=0)
    assert 3 in tr1 and np.bincount(np.array([0, 0, 0, 1])[va1], minlength=2).tolist() == [2, 0]
    with pytest.raises(ConfigError, match="val_min_per_class must be an integer >= 1"):
        sd.carve_validation(labels, 0.2, min_per_class=0)
    with pytest.raises(ConfigError, match=r"val_ratio must be in \(0, 1\)"):
        sd.carve_validation(labels, 1.0)


def test_a_carve_too_small_to_rank_anything_points_to_no_carve(caplog):
    # ArrowHead's 36 training series: 20% gives 2 per class, accuracy steps of 1/6 -> warned
    with caplog.at_level(logging.WARNING, logger="imbalance.series_data"):
        sd.carve_validation(np.repeat([0, 1, 2], 12), 0.2, seed=0)
    assert "class 0 gives 2 series, class 1 gives 2 series, class 2 gives 2 series" in caplog.text
    assert "data.val_ratio=0" in caplog.text and "experiment=tsc_tiny_data" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imbalance.series_data"):  # 3 per class and more: quiet
        sd.carve_validation(np.repeat([0, 1, 2], [15, 30, 60]), 0.2, seed=0)
    assert caplog.text == ""


# ----------------------------------------------------------------------------- mask channel
def test_mask_channel_wanted_rules():
    assert sd.mask_channel_wanted("auto", padded=True, model_name="FCN", mask_aware=True)
    assert not sd.mask_channel_wanted("auto", padded=False, model_name="FCN", mask_aware=True)
    assert not sd.mask_channel_wanted("auto", padded=True, model_name="ConvNetADSB", mask_aware=False)
    assert sd.mask_channel_wanted(True, padded=False, model_name="FCN", mask_aware=True)
    assert not sd.mask_channel_wanted(False, padded=True, model_name="FCN", mask_aware=True)
    with pytest.raises(ConfigError, match="data.mask=true but ConvNetADSB has no mask-aware pooling"):
        sd.mask_channel_wanted("true", padded=True, model_name="ConvNetADSB", mask_aware=False)
    with pytest.raises(ConfigError, match="valid values: auto, true, false"):
        sd.mask_channel_wanted("yes", padded=True, model_name="FCN", mask_aware=True)


def test_mask_channel_augment_moves_the_mask_with_shifts_only():
    x = torch.zeros(3, 2, 12)
    x[:, 0, :7] = torch.arange(1.0, 8.0)
    x[:, 1, :7] = 1.0                                    # mask: the first 7 samples
    aug = sd.MaskChannelAugment(Compose([RandomTimeShift(max_shift=3, p=1.0, mode="roll"),
                                         RandomAmplitude(scale=(2.0, 2.0), bias=0.5, p=1.0),
                                         RandomGaussianNoise(std=0.1, p=1.0)]))
    out = aug(x, generator=torch.Generator().manual_seed(0))
    mask = out[:, 1]
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and (mask.sum(1) == 7).all()   # never scaled or noised
    ref = RandomTimeShift(max_shift=3, p=1.0, mode="roll")(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, ref[:, 1])                  # moved exactly as the signal was
    sig = out[:, 0][mask > 0.5].reshape(3, 7)
    assert torch.allclose(sig.sort(1).values, (2 * torch.arange(1.0, 8.0) + 0.0).expand(3, 7), atol=1.2)


# ----------------------------------------------------------------------------- files with a mask
@needs_aeon
def test_mat_pair_with_mask_reads_back_the_archive_series(tmp_path):
    paths = export_archive("ucr:PickupGestureWiimoteZ", str(tmp_path), fmt="mat")
    assert sd.uses_series_loader(source=None, path_train=paths["train"], normalize_mode="rms")
    got = sd.read_series(path=paths["train"])
    X, y, _ = load_archive("ucr:PickupGestureWiimoteZ", split="train")
    assert isinstance(got.X, list) and np.array_equal(series_lengths(got.X), series_lengths(X))
    for a, b in zip(got.X, X):
        np.testing.assert_allclose(a, b, rtol=1e-6)      # float32 in the file
    np.testing.assert_array_equal(got.y.astype(float), np.asarray(y, dtype=float))


def test_plain_mat_without_mask_is_not_a_series_file(tmp_path):
    import scipy.io
    p = tmp_path / "a.mat"
    scipy.io.savemat(p, {"X": np.zeros((4, 1, 20), np.float32), "Y": np.arange(4.0)})
    assert not sd.uses_series_loader(source=None, path_train=str(p), normalize_mode="rms")
    assert sd.uses_series_loader(source=None, path_train=str(p), normalize_mode="zscore")
    assert sd.file_mask(str(p), 4, 20) is None
    q = tmp_path / "b.npz"
    np.savez(q, X=np.zeros((3, 10)), Y=np.arange(3), lengths=np.array([10, 4, 7]))
    m = sd.file_mask(str(q), 3, 10)
    assert m.sum(1).tolist() == [10, 4, 7] and m[1, :4].all() and not m[1, 4:].any()


@needs_aeon
def test_load_series_data_lengths_crop_and_mask_channel():
    b = sd.load_series_data(source="uea:JapaneseVowels", archive_dir=None, path_train=None, path_val=None,
                            path_test=None, target_length=None, normalize=True, normalize_mode="zscore", mask="auto",
                            model_name="FCN", mask_aware=True)
    assert b.length == 26 and b.mask_channel and b.num_signal_channels == 12      # the longest TRAINING series
    assert b.x["train"].shape == (270, 13, 26) and b.x["test"].shape == (370, 13, 26)
    assert b.info["cropped"]["test"] == int((series_lengths(load_archive("uea:JapaneseVowels", split="test")[0]) > 26)
                                            .sum()) > 0
    mask = b.x["train"][:, -1]
    assert set(np.unique(mask).tolist()) == {0.0, 1.0}
    lengths = series_lengths(load_archive("uea:JapaneseVowels", split="train")[0])
    np.testing.assert_array_equal(mask.sum(1), lengths)
    plain = sd.load_series_data(source="uea:JapaneseVowels", archive_dir=None, path_train=None, path_val=None,
                                path_test=None, target_length=20, normalize=False, normalize_mode="rms",
                                mask="auto", model_name="ConvNetADSB", mask_aware=False)
    assert not plain.mask_channel and plain.x["train"].shape == (270, 12, 20)
    with pytest.raises(ConfigError, match="data.source and data.path_train"):
        sd.load_series_data(source="ucr:ArrowHead", archive_dir=None, path_train="x.ts", path_val=None,
                            path_test=None, target_length=None, normalize=True, normalize_mode="rms", mask="auto",
                            model_name="FCN", mask_aware=True)


# ----------------------------------------------------------------------------- through the pipeline
TINY_TSC = ["model=fcn", "model.width=8", "model.depth=2", "training.epochs=1", "stage2.epochs=1",
            "data.batch_size=16", "visualization.enabled=false", "num_threads=1", "create_imbalance=false"]


@needs_aeon
def test_archive_source_runs_with_mask_and_records_files(tmp_path):
    from imbalance.config import compose
    from imbalance.pipeline import run

    cfg = compose(TINY_TSC + ["data.source=ucr:PickupGestureWiimoteZ", "data.normalize_mode=zscore"])
    run(cfg, run_dir=tmp_path / "r")
    res = json.loads((tmp_path / "r" / "results" / "results.json").read_text())
    assert len(res["classes"]) == 10 and sum(res["class_counts"]) == 40          # 50 - 10 for validation
    assert res["model_info"]["name"] == "FCN"
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "final.pt", weights_only=True)
    assert ckpt["num_channels"] == 2 and ckpt["length"] == 361                   # signal + mask, longest train
    assert any("PickupGestureWiimoteZ_TRAIN.ts" in p for p in json.dumps(res).split('"'))


@needs_aeon
def test_ts_file_paths_and_mat_pair_run(tmp_path):
    from imbalance.archives import bundled_dirs
    from imbalance.config import compose
    from imbalance.pipeline import run

    folder = os.path.join(dict(bundled_dirs())["aeon"], "ArrowHead")
    cfg = compose(TINY_TSC + [f"data.path_train={folder}/ArrowHead_TRAIN.ts",
                              f"data.path_test={folder}/ArrowHead_TEST.ts", "stage2.enabled=false"])
    run(cfg, run_dir=tmp_path / "ts")
    res = json.loads((tmp_path / "ts" / "results" / "results.json").read_text())
    assert res["class_counts"] == [10, 10, 10] and res["metrics"]["final"]["overall"]["oa"] >= 0
    paths = export_archive("ucr:ArrowHead", str(tmp_path / "mat"), fmt="mat")
    cfg = compose(TINY_TSC + [f"data.path_train={paths['train']}", f"data.path_test={paths['test']}",
                              "stage2.enabled=false", "data.val_min_per_class=2"])
    run(cfg, run_dir=tmp_path / "mat_run")
    res2 = json.loads((tmp_path / "mat_run" / "results" / "results.json").read_text())
    assert res2["class_counts"] == [10, 10, 10]                                   # 2 per class to validation


def test_source_and_path_together_is_one_config_error(tmp_path):
    from imbalance.config import compose
    from imbalance.pipeline import run

    cfg = compose(TINY_TSC + ["data.source=ucr:ArrowHead", "data.path_train=a.mat", "data.path_test=b.mat"])
    with pytest.raises(ConfigError, match="data.source and data.path_train/path_val/path_test name two data sources"):
        run(cfg, run_dir=tmp_path / "r")


def test_unused_archive_dir_and_normalize_mode_are_named():
    from imbalance.config import compose, with_schema
    from imbalance.recipe import unused_user_keys

    cfg = with_schema(compose(["data.archive_dir=/tmp", "data.normalize=false", "data.normalize_mode=zscore"]))
    found = dict(unused_user_keys(cfg, {"data.archive_dir", "data.normalize_mode"}))
    assert "data.source is null" in found["data.archive_dir"]
    assert found["data.normalize_mode"] == "data.normalize is false"


@pytest.mark.slow
@needs_aeon
def test_fresh_install_with_the_archives_extra_runs_the_readme_command(tmp_path):
    """``pip install .[archives]`` into a new virtual environment (aeon and torch come from the
    system site packages, so nothing is downloaded), then the README's command from a folder
    outside the repository, shortened to 2 + 2 epochs."""
    import subprocess
    import venv

    from conftest import ROOT

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    pip = subprocess.run([py, "-m", "pip", "install", "-q", f"{ROOT}[archives]"], capture_output=True, text=True,
                         timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    p = subprocess.run([str(env_dir / "bin" / "imbalance-train"), "data.source=ucr:ArrowHead",
                        "experiment=tsc_small_data", "training.epochs=2", "stage2.epochs=2", "num_threads=1",
                        "visualization.enabled=false"], cwd=work, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(((work / "experiments" / "tsc_small_data_latest").resolve() / "results" / "results.json")
                     .read_text())
    assert res["model_info"]["name"] == "FCN" and res["class_counts"] == [10, 10, 10]
    assert "stage3" in res["metrics"] and str(env_dir) in subprocess.run(
        [py, "-c", "import imbalance; print(imbalance.__file__)"], cwd=work, capture_output=True, text=True).stdout


@needs_aeon
def test_predict_a_series_file_with_a_mask_model(tmp_path):
    """imbalance-predict on a .ts file and on the exported .mat pair of a run trained with the mask
    channel: the same per-series processing as in training, the same predictions as the run's."""
    from imbalance.archives import bundled_dirs
    from imbalance.config import compose
    from imbalance.pipeline import run
    from imbalance.predict import predict_file

    cfg = compose(TINY_TSC + ["data.source=ucr:PickupGestureWiimoteZ", "stage2.enabled=false"])
    run(cfg, run_dir=tmp_path / "r")
    ts = os.path.join(dict(bundled_dirs())["aeon"], "PickupGestureWiimoteZ", "PickupGestureWiimoteZ_TEST.ts")
    p_ts = predict_file(str(tmp_path / "r"), ts)
    saved = np.load(tmp_path / "r" / "results" / "predictions.npz")
    assert p_ts.prob.shape == (50, 10)
    np.testing.assert_array_equal(p_ts.pred_index, saved["y_pred"])        # the run's own test predictions
    paths = export_archive("ucr:PickupGestureWiimoteZ", str(tmp_path / "mat"), fmt="mat")
    p_mat = predict_file(str(tmp_path / "r"), paths["test"])
    np.testing.assert_allclose(p_mat.prob, p_ts.prob, atol=1e-5)
