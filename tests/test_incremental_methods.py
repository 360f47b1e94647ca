"""Class-incremental methods (imbalance.incremental, imbalance.incremental_methods): growing the head, the LwF / iCaRL / WA
losses against hand-computed values, the teacher's target, weight aligning and clipping, and
the method registry."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ScheduledCE
from imbalance.errors import ConfigError, UnknownNameError
from imbalance.heads import CosineMarginClassifier, LogitAdjustedLinear, TemperatureScaledClassifier, ldam_margins
from imbalance.incremental import (
    frozen_copy,
    grow_classifier,
    grow_model_classifier,
)
from imbalance.incremental_methods import (
    INCREMENTAL_METHODS,
    BoundTeacherLoss,
    FinetuneLoss,
    ICaRLLoss,
    LwFLoss,
    TeacherHook,
    WALoss,
    attach_weight_clipping,
    build_incremental,
    clip_weights_,
    kd_cross_entropy,
    method_options,
    weight_align,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


# ----------------------------------------------------------------------------- growing the head
def test_grow_linear_keeps_old_rows_bit_exact_and_inits_new_rows_as_nn_linear():
    torch.manual_seed(0)
    head = nn.Linear(16, 6)
    grown = grow_classifier(head, 3)
    assert isinstance(grown, nn.Linear) and grown.weight.shape == (9, 16) and grown.bias.shape == (9,)
    assert torch.equal(grown.weight[:6], head.weight) and torch.equal(grown.bias[:6], head.bias)
    bound = 1 / math.sqrt(16)  # nn.Linear default: kaiming_uniform(a=sqrt 5) and bias, both U(-1/sqrt(fan_in), .)
    assert grown.weight[6:].abs().max() <= bound and grown.bias[6:].abs().max() <= bound
    assert grown.weight[6:].abs().max() > 0 and grown.weight.requires_grad
    # old logits unchanged for any input (up to the matmul's summation order); the head itself is untouched
    x = torch.randn(5, 16)
    torch.testing.assert_close(grown(x)[:, :6], head(x), rtol=1e-6, atol=1e-6)
    assert head.weight.shape == (6, 16)


def test_grow_with_custom_init_and_no_bias_and_bf16():
    head = nn.Linear(4, 2, bias=False).to(torch.bfloat16)

    def init(w, b):
        assert b is None
        w.fill_(0.5)

    grown = grow_classifier(head, 2, init=init)
    assert grown.weight.dtype == torch.bfloat16 and grown.bias is None
    assert torch.equal(grown.weight[:2], head.weight)
    assert (grown.weight[2:] == 0.5).all()
    assert torch.equal(grow_classifier(head, 0).weight, head.weight)


def test_grow_cosine_head_recomputes_margins():
    torch.manual_seed(1)
    old_counts = [100, 50, 20]
    head = CosineMarginClassifier(in_features=8, num_classes=3, class_counts=old_counts, scale=16.0, ldam_max_m=0.4)
    counts = old_counts + [5, 2]
    grown = grow_classifier(head, 2, class_counts=counts)
    assert isinstance(grown, CosineMarginClassifier) and grown.num_classes == 5
    assert (grown.scale, grown.ldam_max_m, grown.ldam_power) == (16.0, 0.4, 0.25)
    assert torch.equal(grown.weight[:3], head.weight)
    expected = ldam_margins(counts, 5, power=0.25, max_margin=0.4).float()
    assert torch.equal(grown.margins, expected)
    assert grown.margins[-1].item() == pytest.approx(0.4)  # the rarest (new) class has the largest margin
    with pytest.raises(ConfigError, match="class_counts for all 5"):
        grow_classifier(head, 2)
    plain = CosineMarginClassifier(in_features=8, num_classes=3)  # no margins: counts optional
    assert (grow_classifier(plain, 1).margins == 0).all()


def test_grow_logit_adjust_and_temperature_heads():
    la = LogitAdjustedLinear(in_features=4, num_classes=2, class_counts=[30, 10], tau=1.0)
    g = grow_classifier(la, 1, class_counts=[30, 10, 5])
    assert torch.equal(g.linear.weight[:2], la.linear.weight) and torch.equal(g.linear.bias[:2], la.linear.bias)
    torch.testing.assert_close(g.log_prior, torch.log(torch.tensor([30.0, 10.0, 5.0]) / 45.0))
    with pytest.raises(ConfigError, match="log prior"):
        grow_classifier(la, 1)
    ts = TemperatureScaledClassifier(in_features=4, num_classes=2, temperature=2.5)
    g2 = grow_classifier(ts, 3)
    assert torch.equal(g2.log_t, ts.log_t) and g2.linear.weight.shape == (5, 4)
    assert torch.equal(g2.linear.weight[:2], ts.linear.weight)
    with pytest.raises(ConfigError, match="supported"):
        grow_classifier(nn.Sequential(nn.Linear(4, 2)), 1)
    with pytest.raises(ConfigError):
        grow_classifier(nn.Linear(4, 2), -1)


def test_grow_model_classifier_on_a_real_model():
    from imbalance.models import create_model

    torch.manual_seed(0)
    model = create_model("ConvNetADSB", num_classes=4, width=8, depth=2).eval()
    x = torch.randn(3, 2, 64)
    before = model(x)
    grow_model_classifier(model, 2)
    assert model.num_classes == 6
    after = model(x)
    assert after.shape == (3, 6)
    torch.testing.assert_close(after[:, :4], before, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- distillation
def test_kd_value_by_hand_no_t_squared():
    # teacher t = (0, 2 ln 3): softmax(t/2) = (1/4, 3/4); student s = (0, 2 ln 2): log softmax(s/2) = (ln 1/3, ln 2/3)
    t = torch.tensor([[0.0, 2 * LN3]], dtype=torch.float64)
    s = torch.tensor([[0.0, 2 * LN2]], dtype=torch.float64)
    expected = 0.25 * LN3 + 0.75 * math.log(1.5)
    assert kd_cross_entropy(s, t, 2.0).item() == pytest.approx(expected, abs=1e-14)
    # batch mean, not sum; not multiplied by T^2 (LwF's official vl_nnsoftmaxdiff, PyCIL _KD_loss)
    assert kd_cross_entropy(s.repeat(3, 1), t.repeat(3, 1), 2.0).item() == pytest.approx(expected, abs=1e-14)
    # bf16 inputs: computed in float32 on the bf16 values
    out = kd_cross_entropy(s.to(torch.bfloat16), t.to(torch.bfloat16), 2.0)
    ref = kd_cross_entropy(s.to(torch.bfloat16).double(), t.to(torch.bfloat16).double(), 2.0)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), abs=1e-6)


def test_lwf_loss_by_hand():
    # 2 old classes, 2 new; logits (0, 2 ln 2 | 0, ln 3), label = class 3 (new index 1)
    z = torch.tensor([[0.0, 2 * LN2, 0.0, LN3]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, 2 * LN3]], dtype=torch.float64)
    y = torch.tensor([3])
    kd = 0.25 * LN3 + 0.75 * math.log(1.5)
    ce_new = -math.log(3 / 4)  # softmax over the new logits (0, ln 3)
    assert LwFLoss(num_old=2)(z, y, teacher).item() == pytest.approx(ce_new + kd, abs=1e-14)
    assert LwFLoss(num_old=2, lambda_kd=0.5)(z, y, teacher).item() == pytest.approx(ce_new + 0.5 * kd, abs=1e-14)
    ce_all = -math.log(3 / (1 + 4 + 1 + 3))
    assert LwFLoss(num_old=2, ce_over="all")(z, y, teacher).item() == pytest.approx(ce_all + kd, abs=1e-14)
    with pytest.raises(ConfigError, match="lwf_ce=all"):
        LwFLoss(num_old=2)(z, torch.tensor([0]), teacher)
    with pytest.raises(RuntimeError, match="TeacherHook"):
        LwFLoss(num_old=2)(z, y, None)
    # no old class yet: plain CE
    assert LwFLoss(num_old=0)(z, y).item() == pytest.approx(F.cross_entropy(z, y).item(), abs=1e-14)
    for bad in ({"temperature": 0}, {"lambda_kd": -1}, {"ce_over": "old"}):
        with pytest.raises(ConfigError):
            LwFLoss(num_old=2, **bad)


class _Tiny(nn.Module):
    def __init__(self, k: int, p: float = 0.0):
        super().__init__()
        self.body = nn.Linear(5, 6)
        self.drop = nn.Dropout(p)
        self.classifier = nn.Linear(6, k)

    def forward_features(self, x):
        return self.drop(torch.relu(self.body(x)))

    def forward(self, x):
        return self.classifier(self.forward_features(x))


def test_teacher_target_is_the_previous_models_output_on_the_same_input():
    torch.manual_seed(0)
    parent = _Tiny(3, p=0.5)
    teacher = frozen_copy(parent)
    student = grow_model_classifier(parent, 2).train()
    teacher.train()  # even if someone sets it to train, the hook evaluates it in eval mode
    hook = TeacherHook(student, teacher)
    x = torch.randn(8, 5)
    logits = student(x)
    expected = teacher.eval()(x)
    assert torch.equal(hook.logits, expected) and not hook.logits.requires_grad
    y = torch.tensor([3, 4, 3, 4, 3, 4, 4, 3])
    loss = BoundTeacherLoss(LwFLoss(num_old=3), hook)(logits, y)
    assert loss.item() == pytest.approx(LwFLoss(num_old=3)(logits, y, expected).item(), abs=0)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.classifier.weight.grad is not None
    # a second batch replaces the target; eval-mode forwards do not call the teacher
    x2 = torch.randn(4, 5)
    student(x2)
    assert torch.equal(hook.logits, teacher(x2))
    student.eval()
    student(torch.randn(6, 5))
    assert hook.logits.shape[0] == 4
    with pytest.raises(RuntimeError, match="batch"):
        BoundTeacherLoss(LwFLoss(num_old=3), hook)(torch.randn(6, 5), torch.full((6,), 3))
    hook.remove()
    student.train()(x)
    assert hook.logits is None


def test_icarl_loss_by_hand():
    # K = 3, 2 old; student logits (ln 3, 0, ln 3): sigmoid (3/4, 1/2, 3/4); teacher (0, ln 3): sigmoid (1/2, 3/4)
    z = torch.tensor([[LN3, 0.0, LN3]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, LN3]], dtype=torch.float64)

    def bce(target, p):
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    # label 2 (new): targets (1/2, 3/4, 1)
    want = (bce(0.5, 0.75) + bce(0.75, 0.5) + bce(1.0, 0.75)) / 3
    assert ICaRLLoss(num_old=2)(z, torch.tensor([2]), teacher).item() == pytest.approx(want, abs=1e-14)
    # label 0 (an exemplar of an old class): the old columns are STILL the teacher's outputs (official code)
    want0 = (bce(0.5, 0.75) + bce(0.75, 0.5) + bce(0.0, 0.75)) / 3
    assert ICaRLLoss(num_old=2)(z, torch.tensor([0]), teacher).item() == pytest.approx(want0, abs=1e-14)
    # base session: one-hot sigmoid BCE
    want_b = (bce(1.0, 0.75) + bce(0.0, 0.5) + bce(0.0, 0.75)) / 3
    assert ICaRLLoss(num_old=0)(z, torch.tensor([0])).item() == pytest.approx(want_b, abs=1e-14)


def test_wa_loss_by_hand():
    z = torch.tensor([[0.0, 2 * LN2, 0.0, LN3]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, 2 * LN3]], dtype=torch.float64)
    y = torch.tensor([3])
    kd = 0.25 * LN3 + 0.75 * math.log(1.5)
    ce = -math.log(3 / 9)
    lam = 2 / 4
    assert WALoss(num_old=2, num_classes=4)(z, y, teacher).item() == pytest.approx((1 - lam) * ce + lam * kd, abs=1e-14)
    assert WALoss(num_old=0, num_classes=4)(z, y).item() == pytest.approx(ce, abs=1e-14)


# ----------------------------------------------------------------------------- weight aligning
def _head_with_norms(norms, bias=True):
    head = nn.Linear(2, len(norms), bias=bias, dtype=torch.float64)
    with torch.no_grad():
        for i, n in enumerate(norms):
            ang = 0.3 + i
            head.weight[i] = torch.tensor([math.cos(ang), math.sin(ang)], dtype=torch.float64) * n
        if bias:
            head.bias.copy_(torch.arange(len(norms), dtype=torch.float64) - 1.5)
    return head


@pytest.mark.parametrize("old,new,gamma", [([1.0, 3.0], [4.0, 8.0], 1 / 3), ([4.0, 8.0], [1.0, 3.0], 3.0)])
def test_weight_align_norms(old, new, gamma):
    head = _head_with_norms(old + new)
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    g = weight_align(head, 2)
    assert g == pytest.approx(gamma, rel=1e-12)
    norms = head.weight.detach().norm(dim=1)
    assert torch.equal(head.weight[:2], w0[:2]) and torch.equal(head.bias, b0)  # old rows, bias untouched
    torch.testing.assert_close(norms[2:], torch.tensor(new, dtype=torch.float64) * gamma, rtol=1e-12, atol=0)
    assert norms[2:].mean().item() == pytest.approx(norms[:2].mean().item(), rel=1e-12)
    torch.testing.assert_close(head.weight[2:], w0[2:] * gamma, rtol=1e-12, atol=0)  # directions kept


def test_weight_align_bias_option_and_errors():
    head = _head_with_norms([1.0, 3.0, 4.0, 8.0])
    b0 = head.bias.detach().clone()
    weight_align(head, 2, scale_bias=True)
    torch.testing.assert_close(head.bias[2:], b0[2:] / 3, rtol=1e-12, atol=0)
    assert torch.equal(head.bias[:2], b0[:2])
    with pytest.raises(ConfigError, match="cosine"):
        weight_align(CosineMarginClassifier(in_features=2, num_classes=4), 2)
    for bad in (0, 4):
        with pytest.raises(ConfigError):
            weight_align(head, bad)


def test_weight_clipping_after_each_step():
    torch.manual_seed(0)
    model = _Tiny(3)
    ref = _Tiny(3)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    handle = attach_weight_clipping(opt, model)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    for m, o in ((model, opt), (ref, opt_ref)):
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()
    assert (ref.classifier.weight < 0).any()
    assert torch.equal(model.classifier.weight, ref.classifier.weight.clamp(min=0))
    assert torch.equal(model.classifier.bias, ref.classifier.bias)  # bias not clipped
    assert torch.equal(model.body.weight, ref.body.weight)  # only the classifier
    handle.remove()
    cos = CosineMarginClassifier(in_features=3, num_classes=2)
    with torch.no_grad():
        cos.weight.fill_(-1.0)
    clip_weights_(cos)
    assert (cos.weight == 0).all()


# ----------------------------------------------------------------------------- registry
@pytest.mark.parametrize("method", INCREMENTAL_METHODS.names())
def test_every_method_builds_and_trains_one_step(method):
    torch.manual_seed(0)
    parent = _Tiny(2)
    teacher = frozen_copy(parent)
    student = grow_model_classifier(parent, 2).train()
    opts = {"lwf_ce": "all", "replay": True} if method == "lwf" else {}
    plan = build_incremental(method, num_old=2, num_classes=4, **opts)
    assert plan.method == method and plan.num_old == 2
    hook = TeacherHook(student, teacher) if plan.needs_teacher else None
    criterion = BoundTeacherLoss(plan.loss, hook)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    handles = plan.attach(opt, student)
    x, y = torch.randn(8, 5), torch.tensor([0, 1, 2, 3, 2, 3, 2, 3])
    loss = criterion(student(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    info = plan.after_training(student)
    if method == "wa":
        norms = student.classifier.weight.detach().double().norm(dim=1)
        assert "wa_gamma" in info and norms[2:].mean().item() == pytest.approx(norms[:2].mean().item(), rel=1e-6)
        assert (student.classifier.weight >= 0).all() and len(handles) == 1
    else:
        assert info == {} and handles == []
    assert plan.eval_classifier == ("nme" if method == "icarl" else "head")
    assert set(method_options(method)) <= {"replay", "eval_classifier", "temperature", "lwf_lambda", "lwf_ce",
                                           "wa_clip", "wa_scale_bias"}
    assert plan.describe()["method"] == method


def test_build_incremental_defaults_and_errors():
    assert build_incremental("lwf", num_old=2, num_classes=4).replay is False
    assert build_incremental("finetune", num_old=2, num_classes=4).replay is True
    assert build_incremental("wa", num_old=2, num_classes=4, wa_clip=False).clip_weights is False
    assert build_incremental("icarl", num_old=2, num_classes=4, eval_classifier="head").eval_classifier == "head"
    with pytest.raises(UnknownNameError, match="finetune, lwf, icarl, wa"):
        build_incremental("ewc", num_old=2, num_classes=4)
    with pytest.raises(ConfigError, match="unknown incremental option"):
        build_incremental("wa", num_old=2, num_classes=4, wa_gamma=1.0)
    with pytest.raises(ConfigError, match="lwf_ce=all"):
        build_incremental("lwf", num_old=2, num_classes=4, replay=True)
    with pytest.raises(ConfigError, match="icarl"):
        build_incremental("icarl", num_old=2, num_classes=4, replay=False)
    with pytest.raises(ConfigError, match="eval_classifier"):
        build_incremental("wa", num_old=2, num_classes=4, eval_classifier="knn")
    with pytest.raises(ConfigError):
        build_incremental("wa", num_old=5, num_classes=4)


@pytest.mark.parametrize("make", [
    lambda base: FinetuneLoss(base_loss=base),
    lambda base: LwFLoss(num_old=2, base_loss=base),
    lambda base: WALoss(num_old=2, num_classes=4, base_loss=base),
])
def test_set_epoch_reaches_a_scheduled_base_loss_once_through_the_bound_loss(make):
    base = ScheduledCE()
    BoundTeacherLoss(make(base), hook=None).set_epoch(3)
    assert base.epochs == [3]
