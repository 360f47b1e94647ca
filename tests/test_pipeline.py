"""End-to-end runs of the pipeline in-process on tiny built-in data."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from imbalance.errors import ConfigError, UserError


def _results(rdir):
    return json.loads((rdir / "results" / "results.json").read_text())


def test_run_writes_a_complete_run_folder(run_tiny):
    rdir, val_macc = run_tiny("stage3.mode=both", "stage3.tau_norm=auto", "stage3.logit_tau=auto")
    for rel in ("logs/training.log", "logs/metrics.csv", "checkpoints/stage1_best.pt",
                "checkpoints/stage1_last.pt", "checkpoints/stage2_best.pt", "checkpoints/stage2_last.pt",
                "checkpoints/final.pt", "results/results.json", "results/summary.txt",
                "results/per_class.csv", "results/confusion_matrix.csv", "results/predictions.npz"):
        assert (rdir / rel).is_file() and (rdir / rel).stat().st_size > 0, rel
    res = _results(rdir)
    for key in ("config", "class_counts", "classes", "metrics", "timings", "versions", "git_commit",
                "data_files", "model_info", "per_class", "confusion_matrix"):
        assert key in res, key
    assert set(res["metrics"]) == {"stage1", "stage2", "stage3", "final"}
    for stage in res["metrics"].values():
        assert {"overall", "group_wise"} <= set(stage)
        assert 0.0 <= stage["overall"]["macc"] <= 1.0
    assert res["metrics"]["final"] == res["metrics"]["stage3"]
    assert res["config"]["training"]["epochs"] == 2
    assert res["model_info"]["params"] > 0 and res["model_info"]["flops_per_sample"] > 0
    assert 0.0 <= val_macc <= 1.0 and res["val_metrics"]["macc"] == pytest.approx(val_macc)
    # tau chosen on validation, with the curve recorded
    assert 0.0 <= res["calibration"]["tau_norm"] <= 2.0
    assert len(res["calibration"]["stage3.logit_tau_curve"]) == 31
    # one metrics row per epoch and stage, with the stage column
    rows = list(csv.DictReader(open(rdir / "logs" / "metrics.csv")))
    assert [(r["stage"], r["epoch"]) for r in rows] == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    assert [int(r["global_epoch"]) for r in rows] == [1, 2, 3, 4]
    # predictions saved are those of the final model
    pred = np.load(rdir / "results" / "predictions.npz")
    assert pred["prob"].shape == (200, 10)
    cm = np.array(res["confusion_matrix"])
    assert cm.sum() == 200 and np.trace(cm) == (pred["y_true"] == pred["y_pred"]).sum()
    assert res["metrics"]["final"]["overall"]["oa"] == pytest.approx(np.trace(cm) / 200)
    # the latest link points at the run
    link = rdir.parent / "demo_latest"
    assert link.is_symlink() and link.resolve() == rdir.resolve()
    # checkpoints hold plain tensors and values only
    ck = torch.load(rdir / "checkpoints" / "stage1_last.pt", weights_only=True)
    assert ck["stage"] == 1 and ck["epoch"] == 2


def test_cpu_run_is_bit_for_bit_repeatable(run_tiny):
    a, _ = run_tiny("stage2.enabled=false", name="a")
    b, _ = run_tiny("stage2.enabled=false", name="b")
    ra, rb = _results(a), _results(b)
    assert ra["metrics"] == rb["metrics"]
    sa = torch.load(a / "checkpoints" / "final.pt", weights_only=True)["model"]
    sb = torch.load(b / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_validation_is_disjoint_from_the_long_tailed_training_subset(tiny):
    from imbalance.builders import build_data

    data = build_data(tiny())
    train = data.train.x.reshape(len(data.train), -1)
    val = data.val.x.reshape(len(data.val), -1)
    # no validation signal appears in the training subset
    eq = (train[:, None, :32] == val[None, :, :32]).all(-1)
    assert not eq.any()
    counts = data.class_counts
    n_max = 48  # 60 per class, 20% to validation first
    assert counts.tolist() == [max(1, int(n_max * 100.0 ** (-c / 9))) for c in range(10)]
    # validation and test are balanced
    assert len(set(np.bincount(data.val.labels))) == 1
    assert len(set(np.bincount(data.test.labels))) == 1


def test_stage1_uses_the_configured_sampler_and_advances_it(tiny, tmp_path, monkeypatch):
    import imbalance.engine as engine
    from imbalance.pipeline import run

    seen = []
    orig = engine.train_one_epoch

    def spy(model, loader, loss_fn, *a, **k):
        seen.append((loader.sampler.alpha, loader.epoch, type(loss_fn).__name__, loss_fn.epoch))
        return orig(model, loader, loss_fn, *a, **k)

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    run(tiny("training.epochs=3", "stage2.enabled=false", "sampling.name=progressive_power",
             "sampling.alpha_start=1.0", "sampling.alpha_end=0.0", "loss.name=LDAMLoss",
             "loss.ldam_drw_start=1"), run_dir=tmp_path / "r")
    assert [s[0] for s in seen] == pytest.approx([1.0, 0.5, 0.0])
    assert [s[1] for s in seen] == [0, 1, 2]
    assert [s[3] for s in seen] == [0, 1, 2] and seen[0][2] == "LDAMLoss"


def test_user_files_train_and_evaluate(tmp_path, run_tiny):
    from imbalance.synthetic import builtin_dataset, write_dataset

    sets = builtin_dataset(num_classes=4, train_per_class=40, test_per_class=10, length=128)
    write_dataset(str(tmp_path / "train.mat"), *sets["train"], fmt="mat")
    write_dataset(str(tmp_path / "test.mat"), *sets["test"], fmt="mat")
    rdir, _ = run_tiny(f"data.path_train={tmp_path / 'train.mat'}", f"data.path_test={tmp_path / 'test.mat'}",
                       "data.imbalance_ratio=10")
    res = _results(rdir)
    assert len(res["classes"]) == 4 and res["classes"] == sorted(res["classes"])
    assert set(res["data_files"]) == {str(tmp_path / "train.mat"), str(tmp_path / "test.mat")}
    assert all(len(h) == 64 for h in res["data_files"].values())


@pytest.mark.parametrize("override, message", [
    ("model.name=NoSuchNet", "valid model names"),
    ("loss.name=NoSuchLoss", "valid loss names"),
    ("sampling.name=nope", "valid sampler names"),
    ("data.val_ratio=1.5", "data.val_ratio"),
    ("data.imbalance_ratio=0.5", "imbalance_ratio"),
    ("stage3.tau_norm=5", "stage3.tau_norm"),
    ("data.path_train=/nonexistent/train.mat", "/nonexistent/train.mat"),
    ("early_stopping.monitor=val_f1", "early_stopping.monitor"),
])
def test_bad_input_is_one_clear_user_error(tiny, tmp_path, override, message):
    from imbalance.pipeline import run

    extra = ["data.path_test=/nonexistent/test.mat"] if "path_train" in override else []
    with pytest.raises(UserError) as err:
        run(tiny(override, *extra), run_dir=tmp_path / "r")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_misspelt_key_is_an_error():
    from omegaconf import OmegaConf

    from imbalance.config import with_schema

    with pytest.raises(ConfigError, match="trainig"):
        with_schema(OmegaConf.create({"trainig": {"epochs": 3}}))


def test_seed_minimal_config_without_defaults_list_runs_with_schema_defaults(tmp_path):
    from imbalance.config import compose, with_schema

    (tmp_path / "config.yaml").write_text(
        'exp_name: "quick_start"\nseed: 42\ngpus: "0"\ndata:\n  batch_size: 256\nmodel:\n  name: "ConvNetADSB"\n'
        'loss:\n  name: "CrossEntropy"\ntraining:\n  epochs: 100\n  lr: 1e-3\n')
    cfg = with_schema(compose(["training.epochs=5"], config_dir=str(tmp_path)))
    assert cfg.training.epochs == 5 and cfg.data.batch_size == 256
    assert cfg.stage2.mode == "crt" and cfg.early_stopping.monitor == "val_macc"


def test_ldam_on_the_cosine_head_scales_once():
    """Cao et al.: CE(s * (cos - m_y)); the cosine head already multiplies by s."""
    import torch.nn.functional as F

    from imbalance.heads import CosineMarginClassifier
    from imbalance.losses import ldam_margins
    from imbalance.builders import build_loss

    counts = [100, 30, 10, 3]
    head = CosineMarginClassifier(in_features=8, num_classes=4, class_counts=counts, scale=16.0)
    loss = build_loss("LDAMLoss", counts, {"max_margin": 0.5, "scale": 30.0}, head=head)
    torch.manual_seed(0)
    x, y = torch.randn(20, 8), torch.randint(0, 4, (20,))
    cos = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    m = torch.as_tensor(ldam_margins(np.array(counts), 0.5), dtype=torch.float32)
    expected = F.cross_entropy(16.0 * (cos - F.one_hot(y, 4) * m[y][:, None]), y)
    torch.testing.assert_close(loss(head(x), y), expected, rtol=1e-5, atol=1e-5)


def test_public_api_accepts_designs_positional_order(tmp_path):
    """DESIGN.md's signatures, called positionally as users and tests do."""
    from imbalance.analysis import ClassificationAnalyzer
    from imbalance.data import ADSBSignalDataset
    from imbalance.synthetic import builtin_dataset, write_dataset

    sets = builtin_dataset(num_classes=3, train_per_class=4, test_per_class=1, length=64)
    write_dataset(str(tmp_path / "t.npz"), *sets["train"], fmt="npz")
    ds = ADSBSignalDataset(str(tmp_path / "t.npz"), 32, True, True, None, None, None)
    assert ds[0][0].shape == (2, 32) and ds.num_classes == 3
    res = ClassificationAnalyzer([50, 10, 2], "absolute", 40, 5).analyze_predictions([0, 1, 2], [0, 1, 1])
    assert res["group_wise"]["few"]["acc"] == 0.0 and res["overall"]["many_acc"] == 1.0


def test_summary_shows_fractions_as_percent_and_nll_in_nats():
    from imbalance.results import summary_text

    overall = {"oa": 0.5, "macc": 0.25, "nll": 1.5, "ece": 0.125}
    text = summary_text({"metrics": {"final": {"overall": overall, "group_wise": {}}}, "config": {}})
    lines = {ln.split("  ")[0]: ln for ln in text.splitlines()}
    assert lines["mAcc"].split()[-1] == "25.00" and lines["ECE"].split()[-1] == "12.50"
    assert lines["NLL (nats)"].split()[-1] == "1.500"


def test_augmentation_keys_are_typed_config_and_reach_the_training_loader(tiny, tmp_path, monkeypatch):
    import imbalance.engine as engine
    from imbalance.pipeline import run

    seen = []
    orig = engine.train_one_epoch

    def spy(model, loader, *a, **k):
        seen.append(type(loader.augment).__name__ if loader.augment is not None else None)
        return orig(model, loader, *a, **k)

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    cfg = tiny("data.augment.enabled=true", "data.augment.time_shift=8", "data.augment.noise_std=0.05",
               "training.epochs=1", "stage2.epochs=1")
    run(cfg, run_dir=tmp_path / "r")
    assert seen == ["Compose", "Compose"]  # stage 1 and stage 2 (no feature cache with augmentation)
    with pytest.raises(Exception, match="time_shif"):
        tiny("data.augment.time_shif=8")
