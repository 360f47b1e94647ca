"""Issue 16 wiring: batch mixing, SAM/ImbSAM, MaxNorm, shift BN, crt_lws, label-aware smoothing,
VS/CDT keys, the bias-free head and NCM/kNN evaluation inside the real training loop and
pipeline; the refusals; checkpoint/resume with SAM, mixing and MaxNorm; presets and summary
labels. The leaves' formulas are tested in test_mixing, test_sam, test_constraints,
test_bn_tools, test_prototypes and test_losses_new."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT, interrupt_after, tiny_cfg
from imbalance.errors import ConfigError, UnknownNameError


def _results(rdir):
    return json.loads((Path(rdir) / "results" / "results.json").read_text())


def _fp32():
    from imbalance.precision import make_precision

    return make_precision(torch.device("cpu"), False)


def _net(seed=0, k=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 8, 6), nn.Tanh(), nn.Linear(6, k))


def _batch(seed=1, b=8, k=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, 8, generator=g), torch.arange(b) % k


# ----------------------------------------------------------------------------- the training loop
def test_train_one_epoch_steps_on_the_mixed_batch_with_the_mixed_loss():
    """The loss, accuracy and gradient step are those of mixed_loss on the mixed input (float64
    reference with the same random draws), not of the clean batch."""
    from imbalance.engine import train_one_epoch
    from imbalance.mixing import Mixup, mixed_correct
    from imbalance.stage_extras import StageExtras

    net, (x, y) = _net(), _batch()
    ref = copy.deepcopy(net).double()
    np.random.seed(3), torch.manual_seed(3)
    xm, t = Mixup(alpha=1.0)(x, y)
    assert 0 < t.lam < 1
    z = ref(xm.double())
    lam = t.label_lam
    want = lam * F.cross_entropy(z, t.y_a) + (1 - lam) * F.cross_entropy(z, t.y_b)
    grads = torch.autograd.grad(want, list(ref.parameters()))
    clean = F.cross_entropy(ref(x.double()), y)
    assert abs(float(want.detach() - clean.detach())) > 1e-3  # mixing changes the loss: the test can fail

    lr = 0.5
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    np.random.seed(3), torch.manual_seed(3)
    out = train_one_epoch(net, [(x, y)], nn.CrossEntropyLoss(), opt, precision=_fp32(),
                          extras=StageExtras(mix=Mixup(alpha=1.0)))
    assert out["train_loss"] == pytest.approx(float(want.detach()), rel=1e-5)
    assert out["train_acc"] * len(y) == pytest.approx(float(mixed_correct(ref(xm.double()).float(), t)), abs=1e-6)
    for p, p0, g in zip(net.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p.double(), p0 - lr * g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("clip", [None, 0.01])
def test_train_one_epoch_with_sam_steps_from_w_with_the_gradient_at_w_plus_e(clip):
    """w_new = w - lr * clip(grad L(w + rho g / ||g||)), computed by hand in float64."""
    from imbalance.engine import train_one_epoch
    from imbalance.sam import SAM

    net, (x, y) = _net(), _batch()
    ref = copy.deepcopy(net).double()
    w = [p.detach().clone() for p in ref.parameters()]
    loss = lambda m: F.cross_entropy(m(x.double()), y)  # noqa: E731
    g = torch.autograd.grad(loss(ref), list(ref.parameters()))
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
    rho, lr = 0.05, 0.3
    at_w = float(loss(ref).detach())
    with torch.no_grad():
        for p, gi in zip(ref.parameters(), g):
            p.add_(rho * gi / (norm + 1e-12))
    g2 = torch.autograd.grad(loss(ref), list(ref.parameters()))
    if clip is not None:
        n2 = torch.sqrt(sum((gi ** 2).sum() for gi in g2))
        assert float(n2) > clip  # the clipping matters
        g2 = [gi * clip / float(n2 + 1e-6) for gi in g2]

    opt = SAM(torch.optim.SGD(net.parameters(), lr=lr), model=net, rho=rho)
    out = train_one_epoch(net, [(x, y)], nn.CrossEntropyLoss(), opt, precision=_fp32(), grad_clip=clip)
    assert out["train_loss"] == pytest.approx(at_w, rel=1e-5)  # the loss at w, before the step
    for p, w0, gi in zip(net.parameters(), w, g2):
        torch.testing.assert_close(p.double(), w0 - lr * gi, rtol=1e-5, atol=1e-6)


def test_train_one_epoch_with_imbsam_uses_per_sample_losses():
    from imbalance.engine import train_one_epoch
    from imbalance.losses import create_loss
    from imbalance.sam import SAM

    net, (x, y) = _net(), _batch()
    before = [p.detach().clone() for p in net.parameters()]
    loss_fn = create_loss("CrossEntropy")
    opt = SAM(torch.optim.SGD(net.parameters(), lr=0.1), model=net, rho=0.05, mode="imbsam", tail_classes=[2])
    out = train_one_epoch(net, [(x, y)], loss_fn, opt, precision=_fp32())
    assert out["train_loss"] == pytest.approx(float(F.cross_entropy(_net()(x), y).detach()), rel=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_balanced_mixup_pairs_instance_batches_with_class_balanced_batches(tiny):
    """The second stream is drawn class-balanced (each class ~1/K of its labels) while the first
    follows the long-tailed counts; an epoch ends with the shorter loader."""
    from imbalance.builders import build_data, build_extras
    from imbalance.losses import create_loss
    from imbalance.mixing import MixedTarget

    cfg = tiny("data.augment.mix.name=balanced_mixup")
    data = build_data(cfg)
    ex = build_extras(cfg, data, torch.device("cpu"), create_loss("CrossEntropy"), stage=1, seed=0, epochs=30)
    loader = __import__("imbalance.builders", fromlist=["make_loader"]).make_loader(
        data.train, 32, torch.device("cpu"), cfg, train=True, seed=0)
    assert ex.num_batches(loader) == min(len(loader), len(ex.mix_loader)) >= 1
    a = np.zeros(10)
    b = np.zeros(10)
    for epoch in range(30):
        loader.set_epoch(epoch), ex.set_epoch(epoch)
        for _, t in ex.batches(loader):
            assert isinstance(t, MixedTarget) and t.label_lam is not None
            a += np.bincount(t.y_a.numpy(), minlength=10)
            b += np.bincount(t.y_b.numpy(), minlength=10)
    counts = data.class_counts / data.class_counts.sum()
    assert np.abs(a / a.sum() - counts).max() < 0.05
    assert np.abs(b / b.sum() - 0.1).max() < 0.03


# ---------------------------------------------------------------------------------- stage plans
def test_vs_and_cdt_keys_reach_the_losses(tiny):
    from imbalance.builders import build_data, build_model, build_stage1

    for ov, want in ((["loss.name=VSLoss", "loss.vs_gamma=0.5", "loss.logit_tau=0.7"], (0.5, 0.7)),
                     (["loss.name=CDTLoss", "loss.cdt_gamma=0.4"], (0.4, 0.0))):
        cfg = tiny(*ov)
        data = build_data(cfg)
        plan = build_stage1(cfg, data, build_model(cfg, data, torch.device("cpu")), torch.device("cpu"))
        n = data.class_counts.astype(np.float64)
        assert (plan.loss_fn.vs_gamma, plan.loss_fn.tau) == want
        np.testing.assert_allclose(plan.loss_fn.divisor.numpy(), (n.max() / n) ** want[0], rtol=1e-6)


def test_label_aware_smoothing_flag_makes_stage2_loss_las_with_inherited_keys(tiny):
    from imbalance.builders import build_data, build_model, build_stage2
    from imbalance.losses import LabelAwareSmoothing, label_aware_epsilons

    for ov, (head, tail) in ((["loss.las_smooth_head=0.4", "loss.las_smooth_tail=0.1"], (0.4, 0.1)),
                             (["loss.las_smooth_head=0.4", "stage2.las_smooth_head=0.2"], (0.2, 0.0))):
        cfg = tiny("stage2.label_aware_smoothing=true", *ov)
        data = build_data(cfg)
        plan = build_stage2(cfg, data, build_model(cfg, data, torch.device("cpu")), torch.device("cpu"))
        assert isinstance(plan.loss_fn, LabelAwareSmoothing)
        np.testing.assert_allclose(plan.loss_fn.smoothing.double().numpy(),
                                   label_aware_epsilons(data.class_counts, head, tail), rtol=1e-6)
        assert "LabelAwareSmoothing" in plan.description


def test_crt_lws_trains_the_kept_classifier_and_lws_scales_in_the_official_group_order():
    from imbalance.classifier_chain import LWSClassifier
    from imbalance.models import create_model
    from imbalance.stage2 import make_stage2_plan

    model = create_model("ConvNetADSB", num_classes=4, in_channels=2, width=8, depth=2)
    w0 = model.classifier.weight.detach().clone()
    plan = make_stage2_plan("crt_lws", model, lr=0.1, clf_lr_mult=0.5, freeze_bn=True, num_classes=4)
    assert isinstance(model.classifier, LWSClassifier) and torch.equal(model.classifier.head.weight, w0)
    assert [g["lr"] for g in plan.param_groups] == [0.05, 0.1]
    assert plan.param_groups[1]["params"] == [model.classifier.scales]
    trainable = {id(p) for g in plan.param_groups for p in g["params"]}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.classifier.parameters()} and plan.frozen_backbone


# ------------------------------------------------------------------------------- pipeline runs
def test_classifier_bias_false_keeps_the_model_init_and_is_recorded(run_tiny, tiny):
    from imbalance.builders import build_data, build_model
    from imbalance.evaluate import load_trained_model

    cfg_b, cfg_n = tiny(), tiny("model.classifier_bias=false")
    data = build_data(cfg_b)
    torch.manual_seed(0)
    with_bias = build_model(cfg_b, data, torch.device("cpu"))
    torch.manual_seed(0)
    no_bias = build_model(cfg_n, data, torch.device("cpu"))
    assert no_bias.classifier.bias is None and with_bias.classifier.bias is not None
    assert torch.equal(no_bias.classifier.weight, with_bias.classifier.weight)

    rdir, _ = run_tiny("model.classifier_bias=false", "stage3.mode=tau_norm")
    ck = torch.load(rdir / "checkpoints" / "final.pt", weights_only=True)
    assert "classifier.bias" not in ck["model"]
    model, _ = load_trained_model(rdir)
    assert getattr(model.classifier, "bias", None) is None


def test_remove_bias_on_heads_with_a_linear_inside():
    from imbalance.heads import HEADS, remove_bias

    for name in ("linear", "logit_adjust", "temperature", "cosine_ldam"):
        head = HEADS.get(name)(in_features=5, num_classes=3, class_counts=[5, 3, 1])
        w = next(head.parameters()).detach().clone()
        new = remove_bias(head)
        assert all("bias" not in n for n, _ in new.named_parameters())
        assert torch.equal(next(new.parameters()), w)


def test_maxnorm_caps_stage2_class_norms_at_the_radius_of_the_starting_weights(run_tiny):
    """Weight balancing's stage 2: the class norms of the final head are at most the radius fixed
    from stage 1's head (min + 0.1 (max - min)), which the checkpoints hold."""
    rdir, _ = run_tiny("stage2.mode=crt", "stage2.reinit_classifier=false", "stage2.freeze_bn=false",
                       "stage2.maxnorm_thresh=0.1", "stage2.lr=0.05")
    s1 = torch.load(rdir / "checkpoints" / "stage1_best.pt", weights_only=True)["model"]["classifier.weight"]
    n1 = s1.double().norm(dim=1)
    radius = float(n1.min() + 0.1 * (n1.max() - n1.min()))
    ck = torch.load(rdir / "checkpoints" / "stage2_last.pt", weights_only=True)
    assert ck["extras"]["maxnorm"]["radius"] == pytest.approx(radius, rel=1e-6)
    final = torch.load(rdir / "checkpoints" / "final.pt", weights_only=True)["model"]["classifier.weight"]
    norms = final.double().norm(dim=1)
    assert float(norms.max()) <= radius * (1 + 1e-5)
    assert float(n1.max()) > radius * 1.2  # the cap was binding


@pytest.mark.parametrize("shift", [False, True])
def test_shift_bn_moves_only_the_frozen_backbones_bn_statistics(run_tiny, shift):
    rdir, _ = run_tiny("stage2.mode=crt_lws", "stage2.reinit_classifier=false", f"stage2.shift_bn={shift}",
                       name=f"s{shift}")
    s1 = torch.load(rdir / "checkpoints" / "stage1_best.pt", weights_only=True)["model"]
    fin = torch.load(rdir / "checkpoints" / "final.pt", weights_only=True)
    s2 = fin["model"]
    back = [k for k in s1 if not k.startswith("classifier.")]
    stats = [k for k in back if k.endswith("running_mean") or k.endswith("running_var")]
    params = [k for k in back if k not in stats and not k.endswith("num_batches_tracked")]
    assert stats and params
    assert all(torch.equal(s1[k], s2[k]) for k in params)  # frozen, BN affine included
    moved = [k for k in stats if not torch.equal(s1[k], s2[k])]
    assert (len(moved) == len(stats)) if shift else (moved == [])
    assert [c["kind"] for c in fin["classifier_chain"]] == ["head", "lws"]
    assert not torch.equal(s2["classifier.scales"], torch.ones_like(s2["classifier.scales"]))


@pytest.mark.parametrize("name", ["ncm", "knn"])
def test_prototype_classifier_is_the_final_classifier_and_reloads(run_tiny, tiny, name):
    """The final metrics are those of NCM/kNN fitted on the stage-1 model's training features;
    final.pt rebuilds the same classifier (predictions reproduced)."""
    from imbalance.builders import build_data, build_model, make_eval_loader
    from imbalance.engine import predict
    from imbalance.evaluate import load_trained_model
    from imbalance.prototypes import create_prototype_classifier

    rdir, _ = run_tiny("stage2.enabled=false", f"evaluation.classifier={name}")
    res = _results(rdir)
    cfg = tiny("stage2.enabled=false")
    data = build_data(cfg)
    model = build_model(cfg, data, torch.device("cpu"))
    model.load_state_dict(torch.load(rdir / "checkpoints" / "stage1_best.pt", weights_only=True)["model"])
    tr = predict(model, make_eval_loader(data.train, 64, torch.device("cpu")), features=True)
    te = predict(model, make_eval_loader(data.test, 64, torch.device("cpu")), features=True)
    clf = create_prototype_classifier(name).fit(tr["features"], tr["labels"], 10)
    pred = clf(te["features"]).argmax(1)
    recall = [float((pred[te["labels"] == c] == c).double().mean()) for c in range(10)]
    assert res["metrics"]["final"]["overall"]["macc"] == pytest.approx(np.mean(recall), abs=1e-6)
    assert res["config"]["evaluation"]["classifier"] == name

    loaded, _ = load_trained_model(rdir)
    again = predict(loaded, make_eval_loader(data.test, 64, torch.device("cpu")))["logits"].argmax(1)
    saved = np.load(rdir / "results" / "predictions.npz")["y_pred"]
    assert np.array_equal(again.numpy(), saved) and np.array_equal(pred.numpy(), saved)


def test_prototype_scores_ignore_autocast():
    from imbalance.prototypes import create_prototype_classifier

    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(40, 16, generator=g) * 30 + 100, torch.arange(40) % 4
    q = torch.randn(9, 16, generator=g) * 30 + 100
    for name in ("ncm", "knn"):
        clf = create_prototype_classifier(name).fit(f, y, 4)
        ref = clf(q)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = clf(q)
        assert low.dtype == torch.float32 and torch.equal(low, ref)


def test_mix_in_stage2_disables_the_feature_cache_and_mixes_its_inputs(tiny):
    from imbalance.builders import build_data, build_model, build_stage2

    for ov, cache in (([], True), (["data.augment.mix.name=mixup"], True),
                      (["data.augment.mix.name=mixup", "data.augment.mix.stage2=true"], False),
                      (["stage2.shift_bn=true"], False)):
        cfg = tiny(*ov)
        data = build_data(cfg)
        plan = build_stage2(cfg, data, build_model(cfg, data, torch.device("cpu")), torch.device("cpu"))
        assert plan.feature_cache is cache, ov
        assert (plan.extras is not None and plan.extras.mix is not None) == ("data.augment.mix.stage2=true" in ov)


# ------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("overrides, words", [
    (["training.sam.enabled=true", "training.accumulation_steps=2"], "accumulation_steps=2"),
    (["training.sam.enabled=true", "training.sam.mode=imbsam", "data.augment.mix.name=mixup"], "two labels"),
    (["stage2.shift_bn=true", "stage2.mode=finetune"], "FROZEN backbone"),
    (["stage2.maxnorm_thresh=0.1", "stage2.mode=lws"], "per-class scales only"),
    (["stage2.maxnorm_thresh=0.1", "model.head=cosine_ldam"], "normalises its class vectors"),
    (["evaluation.classifier=ncm", "stage3.mode=tau_norm"], "stage3.mode=tau_norm"),
    (["evaluation.classifier=knn", "evaluation.eval_logit_adjust=posthoc"], "eval_logit_adjust=posthoc"),
    (["stage2.label_aware_smoothing=true", "stage2.loss=FocalLoss"], "stage2.loss=FocalLoss"),
    (["data.augment.mix.prob=1.5"], "data.augment.mix.prob"),
    (["data.augment.mix.kappa=0.5"], "data.augment.mix.kappa"),
    (["training.sam.rho=-0.1"], "training.sam.rho"),
    (["stage2.maxnorm_thresh=-1"], "stage2.maxnorm_thresh"),
    (["training.sam.mode=asam"], "training.sam.mode"),
])
def test_combinations_that_cannot_run_are_refused_in_one_line_before_data(tiny, overrides, words):
    from imbalance.builders import check_names
    from imbalance.config import validate, with_schema

    cfg = with_schema(tiny(*overrides))
    with pytest.raises(ConfigError) as err:
        validate(cfg)
        check_names(cfg)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_unknown_mix_and_classifier_names_list_the_valid_ones(tiny):
    from imbalance.builders import check_names
    from imbalance.config import with_schema

    with pytest.raises(UnknownNameError, match="balanced_mixup"):
        check_names(with_schema(tiny("data.augment.mix.name=manifold_mixup")))
    with pytest.raises(ConfigError, match="evaluation.classifier"):
        from imbalance.config import validate

        validate(with_schema(tiny("evaluation.classifier=svm")))


@pytest.mark.parametrize("overrides, words", [
    (["data.augment.mix.name=remix", "loss.name=LDAMLoss", "loss.ldam_drw_start=1"], "mean of per-sample"),
    (["training.sam.enabled=true", "training.sam.mode=imbsam", "loss.name=LDAMLoss", "loss.ldam_drw_start=1"],
     "per-sample"),
])
def test_losses_without_per_sample_form_are_refused_when_the_stage_is_built(run_tiny, overrides, words):
    with pytest.raises(ConfigError, match=words):
        run_tiny(*overrides)


def test_runtime_sam_refusals():
    from imbalance.precision import Precision
    from imbalance.sam import SAM
    from imbalance.stage_extras import check_sam_precision, make_sam

    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="DistributedDataParallel"):
        make_sam(opt, model=net, mode="imbsam", class_counts=[5, 1, 1], distributed=True)
    sam = make_sam(opt, model=net, mode="sam")
    assert isinstance(sam, SAM)
    with pytest.raises(ConfigError, match="GradScaler"):
        check_sam_precision(sam, Precision("cuda", torch.float16, object()))
    check_sam_precision(sam, Precision("cpu", torch.bfloat16, None))  # bf16: fine


# ------------------------------------------------------------------- warnings of the recipe
@pytest.mark.parametrize("overrides, key, warned", [
    (["data.augment.mix.name=mixup", "data.augment.mix.kappa=5"], "data.augment.mix.kappa", True),
    (["data.augment.mix.name=remix", "data.augment.mix.kappa=5"], "data.augment.mix.kappa", False),
    (["data.augment.mix.name=mixup", "data.augment.mix.alpha=0.4"], "data.augment.mix.alpha", False),
    (["data.augment.mix.alpha=0.4"], "data.augment.mix.alpha", True),
    (["training.sam.rho=0.1"], "training.sam.rho", True),
    (["training.sam.enabled=true", "training.sam.tail_thresh=5"], "training.sam.tail_thresh", True),
    (["training.sam.enabled=true", "training.sam.mode=imbsam", "training.sam.tail_thresh=5"],
     "training.sam.tail_thresh", False),
    (["stage2.maxnorm_every=step"], "stage2.maxnorm_every", True),
    (["+evaluation.classifier_params.k=5"], "evaluation.classifier_params.k", True),
    (["loss.vs_gamma=0.5"], "loss.vs_gamma", True),
    (["loss.name=VSLoss", "loss.vs_gamma=0.5"], "loss.vs_gamma", False),
    (["loss.las_smooth_head=0.4"], "loss.las_smooth_head", True),
    (["stage2.label_aware_smoothing=true", "loss.las_smooth_head=0.4"], "loss.las_smooth_head", False),
    (["stage2.clf_lr_mult=0.5", "stage2.mode=crt_lws"], "stage2.clf_lr_mult", False),
])
def test_user_set_keys_the_methods_do_not_read_are_named(tiny, overrides, key, warned):
    from imbalance.config import with_schema
    from imbalance.recipe import unused_user_keys, user_set_keys

    cfg = with_schema(tiny(*overrides))
    keys = [k for k, _ in unused_user_keys(cfg, user_set_keys(cfg, overrides))]
    assert (key in keys) is warned


def test_vs_loss_with_a_rebalancing_sampler_is_a_stacked_prior_correction():
    from imbalance.losses import create_loss
    from imbalance.recipe import stacked_corrections, stacked_logit_adjustment
    from imbalance.samplers import make_sampler

    counts = [50, 10, 2]
    labels = np.repeat(np.arange(3), counts)
    sampler = make_sampler(labels, "class_balanced", num_classes=3)
    vs = create_loss("VSLoss", class_counts=counts)
    assert "logit_tau" in stacked_corrections(stage=1, loss=vs, loss_name="VSLoss", sampler=sampler,
                                              sampler_name="class_balanced", class_counts=counts, epochs=2)[0]
    cdt = create_loss("CDTLoss", class_counts=counts)
    assert "class-dependent" in stacked_corrections(stage=2, loss=cdt, loss_name="CDTLoss", sampler=sampler,
                                                    sampler_name="class_balanced", class_counts=counts, epochs=2)[0]
    las = create_loss("LabelAwareSmoothing", class_counts=counts)
    assert stacked_corrections(stage=2, loss=las, loss_name="LabelAwareSmoothing", sampler=sampler,
                               sampler_name="class_balanced", class_counts=counts, epochs=2) == []
    assert stacked_logit_adjustment(head="linear", loss_names=["VSLoss"], posthoc=True, logit_taus=[0.0]) == []
    assert len(stacked_logit_adjustment(head="linear", loss_names=["VSLoss"], posthoc=True, logit_taus=[1.0])) == 1


# -------------------------------------------------------------------------- checkpoint / resume
RES = ["training.epochs=3", "stage2.epochs=3", "data.batch_size=16", "model.width=8", "training.lr=1e-2",
       "data.synthetic.difficulty=0.2", "data.imbalance_ratio=10", "scheduler.warmup_epochs=1",
       "training.sam.enabled=true", "data.augment.mix.name=balanced_mixup", "stage2.mode=crt",
       "stage2.reinit_classifier=false", "stage2.freeze_bn=false", "stage2.maxnorm_thresh=0.1",
       "stage2.maxnorm_every=step", "stage2.lr=0.05"]


@pytest.mark.parametrize("kill_after", [1, 4])  # stage 1 epoch 2 (SAM + mixing); stage 2 epoch 2 (MaxNorm)
def test_ctrl_c_then_resume_with_sam_mixing_and_maxnorm_is_bit_for_bit(tmp_path, monkeypatch, kill_after):
    from imbalance.pipeline import run

    ref = tmp_path / "demo_20240101-000000-000001"
    run(tiny_cfg(*RES), run_dir=ref)
    rdir = tmp_path / "demo_20240101-000000-000002"
    interrupt_after(monkeypatch, kill_after)
    with pytest.raises(SystemExit):
        run(tiny_cfg(*RES), run_dir=rdir)
    monkeypatch.undo()
    run(tiny_cfg(f"resume={rdir}"), run_dir=rdir)
    ra, rb = _results(ref), _results(rdir)
    assert ra["metrics"] == rb["metrics"] and ra["val_metrics"] == rb["val_metrics"]
    wa = torch.load(ref / "checkpoints" / "final.pt", weights_only=True)["model"]
    wb = torch.load(rdir / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    s2 = torch.load(rdir / "checkpoints" / "stage2_last.pt", weights_only=True)
    assert s2["extras"]["maxnorm"]["radius"] > 0


# ------------------------------------------------------------------------ presets and labels
def test_method_files_compose_and_mislas_wb_equal_their_experiment_presets():
    from imbalance.builders import check_names
    from imbalance.config import compose, validate, with_schema

    names = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
    assert {"ce", "mixup", "remix", "balanced_mixup", "cutmix1d", "vs", "cdt", "mislas", "weight_balancing",
            "ncm", "knn", "sam", "imbsam"} <= set(names)
    for name in names:
        cfg = with_schema(compose([f"method={name}"]))
        validate(cfg)
        check_names(cfg)
    for name in ("mislas", "weight_balancing"):
        a = with_schema(compose([f"method={name}"]))
        b = with_schema(compose([f"experiment={name}"]))
        assert a == b
    m = with_schema(compose(["experiment=mislas"]))
    assert (m.data.augment.mix.name, m.stage2.mode, m.stage2.label_aware_smoothing, m.stage2.shift_bn,
            m.stage2.reinit_classifier, m.stage2.sampler) == ("mixup", "crt_lws", True, True, False, "class_balanced")
    w = with_schema(compose(["experiment=weight_balancing"]))
    assert (w.stage2.loss, w.stage2.cb_base, w.stage2.maxnorm_thresh, w.stage2.reinit_classifier) == (
        "ClassBalancedLoss", "softmax_bce", 0.1, False)


def test_summary_labels_name_the_additions():
    from imbalance.summary import _label, describe_config

    flat = {"loss.name": "CrossEntropy", "sampling.name": "none", "stage2.enabled": True, "stage2.mode": "crt_lws",
            "stage2.loss": "CrossEntropy", "stage2.sampler": "class_balanced", "stage2.label_aware_smoothing": True,
            "stage2.shift_bn": True, "data.augment.mix.name": "mixup", "training.sam.enabled": False,
            "evaluation.classifier": "linear", "stage3.mode": "none", "model.name": "ConvNetADSB"}
    label = _label(describe_config(flat), False)
    assert label == "CrossEntropy+none -> crt_lws:LabelAwareSmoothing+class_balanced + mix:mixup + shift_bn"
    flat.update({"stage2.enabled": False, "data.augment.mix.name": "none", "training.sam.enabled": True,
                 "training.sam.mode": "imbsam", "evaluation.classifier": "ncm"})
    assert _label(describe_config(flat), False) == "CrossEntropy+none + imbsam + eval:ncm"


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")))
def test_every_method_of_the_comparison_runs_end_to_end(run_tiny, method, caplog):
    with caplog.at_level(logging.WARNING):
        rdir, value = run_tiny(f"method={method}", name=method)
    res = _results(rdir)
    assert 0.0 <= res["metrics"]["final"]["overall"]["macc"] <= 1.0 and 0.0 <= value <= 1.0
    ours = ("data.augment.mix", "training.sam", "evaluation.classifier", "las_", "vs_gamma", "cdt_gamma", "maxnorm",
            "shift_bn", "label_aware", "cb_", "clf_lr_mult", "reinit_classifier")
    unused = [r.getMessage() for r in caplog.records if "is set but not used" in r.getMessage()]
    assert not [m for m in unused if any(k in m for k in ours)], unused  # the method files set only what they use


def test_mode_eval_reuses_the_recorded_prototype_classifier_and_names_an_ignored_one(run_tiny, tmp_path, caplog):
    """A run evaluated with NCM is re-evaluated (mode=eval, its own built-in test data) with the
    NCM final.pt recorded: the same metrics; asking for kNN there is named as not used."""
    from imbalance.pipeline import run

    rdir, _ = run_tiny("stage2.enabled=false", "evaluation.classifier=ncm")
    with caplog.at_level(logging.WARNING):
        run(tiny_cfg("mode=eval", f"resume={rdir}", "evaluation.classifier=knn"), run_dir=tmp_path / "ev")
    assert _results(tmp_path / "ev")["metrics"]["final"]["overall"] == _results(rdir)["metrics"]["final"]["overall"]
    assert any("evaluation.classifier=knn is not used by mode=eval" in r.getMessage() for r in caplog.records)
