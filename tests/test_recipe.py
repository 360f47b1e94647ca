"""Combinations of methods: head auto, stacked corrections, unused user keys, early stopping
schedules, checkpoint selection, label smoothing and prior wiring (the faithfulness audit)."""
from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imbalance import recipe
from imbalance.engine import EarlyStopping
from imbalance.errors import ConfigError, UserError


# ------------------------------------------------------------------------------ heads (item 6)
def test_head_auto_is_cosine_for_ldam_and_linear_otherwise():
    assert recipe.resolve_head("auto", "LDAMLoss") == "cosine_ldam"
    assert recipe.resolve_head("auto", "CrossEntropy") == "linear"
    assert recipe.resolve_head("logit_adjust", "CrossEntropy") == "logit_adjust"
    with pytest.raises(ConfigError, match="normalised"):
        recipe.resolve_head("linear", "LDAMLoss")


def test_an_explicit_linear_head_with_ldam_is_refused_before_any_data(tiny, tmp_path):
    from imbalance.pipeline import run

    with pytest.raises(UserError, match="model.head=linear with LDAMLoss"):
        run(tiny("model.head=linear", "loss.name=LDAMLoss"), run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_ldam_with_head_auto_trains_the_cosine_head(run_tiny):
    rdir, _ = run_tiny("loss.name=LDAMLoss", "stage2.enabled=false")
    state = torch.load(rdir / "checkpoints" / "stage1_best.pt", weights_only=True)["model"]
    assert "classifier.margins" in state and "classifier.bias" not in state


def test_stage2_ldam_crt_with_head_auto_swaps_in_the_cosine_head_and_rebuilds(run_tiny):
    from imbalance.evaluate import load_trained_model
    from imbalance.heads import CosineMarginClassifier

    rdir, _ = run_tiny("stage2.loss=LDAMLoss")
    state = torch.load(rdir / "checkpoints" / "stage2_best.pt", weights_only=True)["model"]
    assert "classifier.margins" in state
    model, _ = load_trained_model(rdir)
    assert isinstance(model.classifier, CosineMarginClassifier)


def test_stage2_ldam_that_keeps_a_linear_head_is_refused(tiny, tmp_path):
    from imbalance.pipeline import run

    with pytest.raises(UserError, match="normalised"):
        run(tiny("stage2.loss=LDAMLoss", "stage2.mode=finetune"), run_dir=tmp_path / "r")


def test_ldam_through_lws_on_a_cosine_head_scales_once():
    """LWS multiplies the cosine head's s*cos by per-class scales; LDAM then subtracts s*m_y from
    the true logit: CE(scales * s * cos - s * m_y e_y), never s * (s * cos ...)."""
    from imbalance.heads import CosineMarginClassifier, ldam_margins
    from imbalance.builders import build_loss, loss_kwargs
    from imbalance.stage2 import LWSClassifier

    from imbalance.config import compose

    counts = [40, 10, 3]
    head = CosineMarginClassifier(in_features=4, num_classes=3, class_counts=counts, scale=30.0)
    lws = LWSClassifier(head, 3)
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([1.2, 0.8, 1.5]))
    cfg = compose(["loss.name=LDAMLoss"])
    loss = build_loss("LDAMLoss", counts, loss_kwargs(cfg.loss), head=lws)
    torch.manual_seed(0)
    f = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    z = lws(f)
    m = ldam_margins(counts, 3, max_margin=0.5).double()
    ref = F.cross_entropy(z.double() - 30.0 * m[y][:, None] * F.one_hot(y, 3).double(), y)
    torch.testing.assert_close(loss(z, y).double(), ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ stacking (item 5)
def _demo_counts():
    return [int(480 * 100 ** (-c / 9)) for c in range(10)]


def test_the_seeds_improved_recipe_stacks_11x_to_120x():
    """The audit: cRT with CostSensitiveCE (weights 1/n) and progressive_power sampling (alpha
    0.5 -> 0) gives the rarest class 11x to 120x the most frequent class's share of the loss."""
    from imbalance.losses import create_loss
    from imbalance.samplers import make_sampler

    counts = _demo_counts()
    labels = np.repeat(np.arange(10), counts)
    sampler = make_sampler(labels, "progressive_power", alpha_start=0.5, alpha_end=0.0, total_epochs=50)
    loss = create_loss("CostSensitiveCE", class_counts=counts)
    msgs = recipe.stacked_corrections(stage=2, loss=loss, loss_name="CostSensitiveCE", sampler=sampler,
                                      sampler_name="progressive_power", class_counts=counts, epochs=50)
    assert len(msgs) == 1
    r = counts[0] / counts[-1]
    assert f"{r ** 0.5:.3g}x to {r:.3g}x" in msgs[0]  # (480/4)^0.5 = 11, 480/4 = 120


def test_no_warning_for_one_correction():
    from imbalance.losses import create_loss
    from imbalance.samplers import make_sampler

    counts = _demo_counts()
    labels = np.repeat(np.arange(10), counts)
    cb = make_sampler(labels, "class_balanced")
    ce = create_loss("CrossEntropy")
    assert recipe.stacked_corrections(stage=2, loss=ce, loss_name="CrossEntropy", sampler=cb,
                                      sampler_name="class_balanced", class_counts=counts, epochs=5) == []
    cs = create_loss("CostSensitiveCE", class_counts=counts)
    assert recipe.stacked_corrections(stage=1, loss=cs, loss_name="CostSensitiveCE", sampler=None,
                                      sampler_name="none", class_counts=counts, epochs=5) == []


def test_prior_based_loss_with_a_sampler_points_to_prior_sampled(tiny, tmp_path, caplog):
    from imbalance.pipeline import run

    with caplog.at_level(logging.WARNING):
        run(tiny("loss.name=BalancedSoftmaxLoss", "sampling.name=class_balanced", "stage2.enabled=false"),
            run_dir=tmp_path / "a")
    assert sum("prior=sampled" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run(tiny("loss.name=BalancedSoftmaxLoss", "sampling.name=class_balanced", "loss.prior=sampled",
                 "stage2.enabled=false"), run_dir=tmp_path / "b")
    assert not any("prior=sampled" in r.getMessage() for r in caplog.records)


def test_prior_sampled_with_a_class_balanced_sampler_is_plain_ce():
    from imbalance.config import compose
    from imbalance.builders import build_loss, loss_kwargs
    from imbalance.samplers import make_sampler

    counts = _demo_counts()
    sampler = make_sampler(np.repeat(np.arange(10), counts), "class_balanced")
    cfg = compose(["loss.name=BalancedSoftmaxLoss", "loss.prior=sampled"])
    loss = build_loss("BalancedSoftmaxLoss", counts, loss_kwargs(cfg.loss, total_epochs=3), sampler=sampler, epochs=3)
    z, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    torch.testing.assert_close(loss(z, y), F.cross_entropy(z, y))


def test_logit_adjust_head_with_posthoc_adjustment_warns_once(tiny, tmp_path, caplog):
    from imbalance.pipeline import run

    with caplog.at_level(logging.WARNING):
        run(tiny("model.head=logit_adjust", "evaluation.eval_logit_adjust=posthoc", "stage2.enabled=false"),
            run_dir=tmp_path / "r")
    assert sum("model.head=logit_adjust" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------------------ early stopping (item 7)
def test_patience_counts_only_after_min_epochs():
    es = EarlyStopping(patience=1, min_epochs=3, mode="max")
    es.step(0.5, 1)
    for epoch in (2, 3):
        es.step(0.1, epoch)
        assert not es.should_stop
    es.step(0.1, 4)
    assert es.should_stop and es.best_epoch == 1


def test_stage1_never_stops_before_the_drw_switch(run_tiny):
    """min_delta=1 makes every epoch after the first 'no improvement': before the fix stage 1
    stopped at epoch 2, before DRW (epoch 3) could start."""
    rdir, _ = run_tiny("loss.name=LDAMLoss", "loss.ldam_drw_start=3", "training.epochs=6",
                       "early_stopping.patience=1", "early_stopping.min_delta=1.0", "stage2.enabled=false")
    res = json.loads((rdir / "results" / "results.json").read_text())
    assert res["stages"]["stage1"]["epochs_run"] == 4  # patience counts from epoch 4 on


def test_checkpoint_select_last_keeps_the_annealed_weights(run_tiny):
    rdir, _ = run_tiny("training.epochs=3", "early_stopping.min_delta=1.0", "early_stopping.enabled=false",
                       "training.checkpoint_select=last", "stage2.mode=crt", "stage2.feature_cache=false")
    last = torch.load(rdir / "checkpoints" / "stage1_last.pt", weights_only=True)
    best = torch.load(rdir / "checkpoints" / "stage1_best.pt", weights_only=True)
    assert last["epoch"] == 3 and best["epoch"] == 1
    s2 = torch.load(rdir / "checkpoints" / "stage2_best.pt", weights_only=True)["model"]
    backbone = [k for k in s2 if not k.startswith("classifier.")]
    assert all(torch.equal(s2[k], last["model"][k]) for k in backbone)
    assert any(not torch.equal(s2[k], best["model"][k]) for k in backbone if k in best["model"])


def test_val_loss_is_plain_cross_entropy_whatever_the_training_loss(tiny, tmp_path):
    from imbalance.config import with_schema
    from imbalance.builders import build_data, build_model
    from imbalance.pipeline import run

    cfg = tiny("loss.name=FocalLoss", "training.epochs=1", "stage2.enabled=false")
    run(cfg, run_dir=tmp_path / "r")
    with open(tmp_path / "r" / "logs" / "metrics.csv") as fh:
        row = next(csv.DictReader(fh))
    cfg = with_schema(cfg)
    data = build_data(cfg)
    model = build_model(cfg, data, torch.device("cpu"))
    model.load_state_dict(torch.load(tmp_path / "r" / "checkpoints" / "stage1_last.pt", weights_only=True)["model"])
    model.eval()
    x, y = data.val.get_batch(torch.arange(len(data.val)))
    with torch.no_grad():
        ce = float(F.cross_entropy(model(x), y))
    assert float(row["val_loss"]) == pytest.approx(ce, rel=1e-5)


# ------------------------------------------------------------------------------ loss keys (item 8)
def test_label_smoothing_on_a_loss_without_it_is_one_clear_error(tiny, tmp_path):
    from imbalance.pipeline import run

    with pytest.raises(ConfigError, match="training.label_smoothing=0.1.*FocalLoss"):
        run(tiny("loss.name=FocalLoss", "training.label_smoothing=0.1"), run_dir=tmp_path / "r")


def test_label_smoothing_reaches_a_ce_family_loss():
    from imbalance.config import compose
    from imbalance.builders import build_loss, loss_kwargs

    counts = [30, 10, 2]
    cfg = compose(["loss.name=CostSensitiveCE"])
    loss = build_loss("CostSensitiveCE", counts, loss_kwargs(cfg.loss, label_smoothing=0.2))
    z, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    w = torch.tensor([1 / 30, 1 / 10, 1 / 2])
    w = w * 3 / w.sum()
    ref = (w[y] * F.cross_entropy(z, y, reduction="none", label_smoothing=0.2)).mean()
    torch.testing.assert_close(loss(z, y), ref)


def test_combined_loss_parts_receive_the_loss_section_keys():
    from imbalance.config import compose
    from imbalance.builders import build_loss, loss_kwargs

    cfg = compose(["loss.name=CombinedLoss", "loss.focal_gamma=0.5"])
    loss = build_loss("CombinedLoss", [10, 5], loss_kwargs(cfg.loss))
    assert loss.losses["FocalLoss"].gamma == 0.5


def test_a_user_set_key_the_method_does_not_use_is_named(tiny, tmp_path, caplog):
    from imbalance.config import compose

    cfg = compose(["loss.focal_gamma=3.0", "sampling.alpha=0.3", "stage3.tau_norm=0.5"])
    keys = recipe.warn_unused_user_keys(cfg, ["loss.focal_gamma=3.0", "sampling.alpha=0.3", "stage3.tau_norm=0.5"])
    assert keys == ["loss.focal_gamma", "sampling.alpha", "stage3.tau_norm"]
    # defaults are never reported, and a key the method reads is not either
    assert recipe.unused_user_keys(compose([]), recipe.user_set_keys(compose([]))) == []
    used = compose(["loss.name=FocalLoss", "loss.focal_gamma=3.0"])
    assert recipe.unused_user_keys(used, recipe.user_set_keys(used, ["loss.focal_gamma=3.0"])) == []
