"""Stage 2 (cRT, fine-tune, LWS) and stage 3 / post-hoc calibration."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from imbalance import calibration as cal
from imbalance.stage2 import LWSClassifier, make_stage2_plan


def _ck(rdir, name):
    return torch.load(rdir / "checkpoints" / name, weights_only=True)["model"]


def _is_head(key):
    return key.startswith("classifier.")


def test_crt_keeps_the_backbone_and_bn_statistics_bit_identical(run_tiny):
    rdir, _ = run_tiny("stage2.mode=crt", "stage2.freeze_bn=true", "stage2.feature_cache=false")
    s1, s2 = _ck(rdir, "stage1_best.pt"), _ck(rdir, "stage2_best.pt")
    backbone = [k for k in s1 if not _is_head(k)]
    assert any("running_mean" in k for k in backbone)
    for k in backbone:
        assert torch.equal(s1[k], s2[k]), k
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if _is_head(k))


def test_crt_without_freeze_bn_updates_bn_statistics_only(run_tiny):
    rdir, _ = run_tiny("stage2.mode=crt", "stage2.freeze_bn=false")
    s1, s2 = _ck(rdir, "stage1_best.pt"), _ck(rdir, "stage2_best.pt")
    stats = [k for k in s1 if "running_mean" in k]
    weights = [k for k in s1 if not _is_head(k) and k.endswith("weight")]
    assert any(not torch.equal(s1[k], s2[k]) for k in stats)
    assert all(torch.equal(s1[k], s2[k]) for k in weights)


def test_feature_cache_and_plain_path_train_the_same_classifier(run_tiny):
    a, _ = run_tiny("stage2.feature_cache=true", name="cache")
    b, _ = run_tiny("stage2.feature_cache=false", name="plain")
    sa, sb = _ck(a, "stage2_best.pt"), _ck(b, "stage2_best.pt")
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)


def test_finetune_parameter_groups_use_clf_lr_mult():
    model = nn.Sequential()
    model.add_module("body", nn.Linear(4, 4))
    model.add_module("bn", nn.BatchNorm1d(4))
    model.classifier = nn.Linear(4, 3)
    plan = make_stage2_plan("finetune", model, lr=1e-4, clf_lr_mult=10.0, freeze_bn=True)
    lrs = {g["name"]: g["lr"] for g in plan.param_groups}
    assert lrs == {"backbone": pytest.approx(1e-4), "classifier": pytest.approx(1e-3)}
    n_head = sum(p.numel() for p in model.classifier.parameters())
    assert sum(p.numel() for p in plan.param_groups[1]["params"]) == n_head
    plan.set_train_mode(model)
    assert model.training and not model.bn.training


def test_lws_learns_only_per_class_scales(run_tiny):
    rdir, _ = run_tiny("stage2.mode=lws", "stage2.lr=0.05")
    s1, s2 = _ck(rdir, "stage1_best.pt"), _ck(rdir, "stage2_best.pt")
    assert "classifier.scales" in s2 and s2["classifier.scales"].shape == (10,)
    for k, v in s1.items():
        k2 = k.replace("classifier.", "classifier.head.") if _is_head(k) else k
        assert torch.equal(v, s2[k2]), k
    res = json.loads((rdir / "results" / "results.json").read_text())
    assert "stage2" in res["metrics"]


def test_lws_head_scales_logits():
    head = nn.Linear(3, 2)
    lws = LWSClassifier(head, 2)
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([2.0, 0.5]))
    x = torch.randn(5, 3)
    torch.testing.assert_close(lws(x), head(x) * torch.tensor([2.0, 0.5]))


def test_tau_norm_zero_is_identity_and_one_gives_unit_rows():
    w = torch.randn(5, 7)
    assert torch.equal(cal.tau_normalized_weight(w, 0.0), w)
    torch.testing.assert_close(cal.tau_normalized_weight(w, 1.0).norm(dim=1), torch.ones(5))
    expected = w / w.norm(dim=1, keepdim=True) ** 0.5
    torch.testing.assert_close(cal.tau_normalized_weight(w, 0.5), expected)


def test_posthoc_adjustment_equals_argmax_of_adjusted_logits(run_tiny):
    plain, _ = run_tiny("stage2.enabled=false", name="plain")
    adj, _ = run_tiny("stage2.enabled=false", "evaluation.eval_logit_adjust=posthoc",
                      "evaluation.eval_logit_tau=1.5", name="adj")
    p = np.load(plain / "results" / "predictions.npz")
    q = np.load(adj / "results" / "predictions.npz")
    counts = p["class_counts"].astype(np.float64)
    expected = np.argmax(np.log(p["prob"].astype(np.float64)) - 1.5 * np.log(counts / counts.sum()), axis=1)
    assert (q["y_pred"] == expected).mean() > 0.99  # float32 softmax round-off only


def test_stage3_and_posthoc_logit_adjustment_are_applied_once(run_tiny):
    rdir, _ = run_tiny("stage3.mode=logit_adjust", "stage3.logit_tau=1.0",
                       "evaluation.eval_logit_adjust=posthoc", "evaluation.eval_logit_tau=1.0")
    final = _ck(rdir, "final.pt")
    assert sum(k.endswith("offset") for k in final) == 1


def test_tau_auto_never_reads_the_test_split(tiny, tmp_path, monkeypatch):
    import imbalance.pipeline as P

    orig = P.run_stage3

    class Poison:
        def __iter__(self):
            raise AssertionError("stage 3 read the test split")

        def __len__(self):
            return 1

    def guarded(ctx, *rest):
        real, ctx.test_loader = ctx.test_loader, Poison()
        try:
            return orig(ctx, *rest)
        finally:
            ctx.test_loader = real

    monkeypatch.setattr(P, "run_stage3", guarded)
    P.run(tiny("stage3.mode=both", "stage3.tau_norm=auto", "stage3.logit_tau=auto",
               "evaluation.eval_logit_adjust=posthoc", "evaluation.eval_logit_tau=auto"), run_dir=tmp_path / "r")
    res = json.loads((tmp_path / "r" / "results" / "results.json").read_text())
    assert "stage3.tau_norm_curve" in res["calibration"]


def test_search_tau_prefers_the_best_val_macc():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat(25)
    base = torch.randn(100, 4)
    bias = torch.tensor([3.0, 1.0, 0.0, -1.0])

    def logits_for(tau):
        return base + bias * (1 - tau)  # tau = 1 removes the bias

    tau, curve = cal.search_tau(logits_for, labels, cal.LOGIT_TAU_GRID, 4)
    best = max(r["val_macc"] for r in curve)
    assert dict((r["tau"], r["val_macc"]) for r in curve)[tau] == best
    assert len(curve) == len(cal.LOGIT_TAU_GRID)


def test_too_small_validation_falls_back_to_tau_one(run_tiny):
    rdir, _ = run_tiny("data.val_ratio=0.02", "stage3.mode=logit_adjust", "stage3.logit_tau=auto")
    res = json.loads((rdir / "results" / "results.json").read_text())
    assert res["calibration"]["logit_tau"] == 1.0
    assert "stage3.logit_tau_fallback" in res["calibration"]
