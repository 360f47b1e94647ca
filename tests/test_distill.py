"""Knowledge distillation (imbalance.distill, imbalance.teacher): the KD and BKD losses against
hand-computed values, BKD's class weights against their formula, the frozen teacher (never
trained, never a gradient, same input and precision as the student), the teacher cache, the
wiring through a real run and the summary's teacher/student pair."""
from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ScheduledCE
from imbalance.distill import (DistillationLoss, bkd_class_weights, distill_record, distillation, kd_divergence,
                               teacher_summary)
from imbalance.errors import ConfigError, UserError
from imbalance.teacher import BoundTeacherLoss, FrozenTeacher, TeacherCache, TeacherHook

LN3 = math.log(3.0)


# ----------------------------------------------------------------------------- losses by hand
def test_kd_loss_by_hand_with_the_t_squared_scaling():
    # T = 2: teacher t = (2 ln 3, 0) -> softmax(t/T) = (3/4, 1/4); student s = (0, 2 ln 3) ->
    # softmax(s/T) = (1/4, 3/4). KL = 3/4 ln 3 + 1/4 ln(1/3) = ln(3)/2; times T^2 = 2 ln 3.
    # CE(s, y=0) = -log(1 / (1 + 9)) = ln 10. alpha = 0.5: ln 10 + 0.5 * 2 ln 3 = ln 30.
    s = torch.tensor([[0.0, 2 * LN3]], dtype=torch.float64)
    t = torch.tensor([[2 * LN3, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    assert kd_divergence(s, t, 2.0).item() == pytest.approx(LN3 / 2, abs=1e-12)
    loss = DistillationLoss(base_loss=nn.CrossEntropyLoss(), method="kd", temperature=2.0, alpha=0.5)
    assert loss(s, y, t).item() == pytest.approx(math.log(30.0), abs=1e-12)
    assert loss.last_terms["kd"].item() == pytest.approx(2 * LN3, abs=1e-12)  # T^2 * KL, not KL
    # T = 1: softmax(t) = (9/10, 1/10), softmax(s) = (1/10, 9/10): KL = 0.8 ln 9, no scaling
    one = DistillationLoss(base_loss=nn.CrossEntropyLoss(), method="kd", temperature=1.0, alpha=1.0)
    assert one(s, y, t).item() == pytest.approx(math.log(10) + 0.8 * math.log(9), abs=1e-12)
    # a batch: the KL is the batch mean (a second sample with equal logits adds 0)
    s2, t2 = torch.cat([s, torch.zeros(1, 2, dtype=torch.float64)]), torch.cat([t, torch.zeros(1, 2, dtype=torch.float64)])
    assert kd_divergence(s2, t2, 2.0).item() == pytest.approx(LN3 / 4, abs=1e-12)


def test_kd_gradient_does_not_reach_the_teacher_logits_and_bf16_is_computed_in_float32():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    kd_divergence(s, t, 3.0).backward()
    assert t.grad is None and s.grad is not None
    ref = kd_divergence(s.detach().bfloat16().float(), t.detach().bfloat16().float(), 3.0)
    got = kd_divergence(s.detach().bfloat16(), t.detach().bfloat16(), 3.0)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), abs=1e-6)


def test_kd_with_large_logit_margins_is_finite():
    s = torch.tensor([[500.0, -500.0, 0.0]])
    t = torch.tensor([[-500.0, 500.0, 0.0]])
    v = kd_divergence(s, t, 1.0)
    assert torch.isfinite(v) and v.item() == pytest.approx(1000.0, rel=1e-4)  # KL -> s_1... = 1000


def test_bkd_class_weights_are_the_effective_number_formula():
    counts = [500, 40, 3, 1]
    beta = 0.999
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    want = np.array(raw) / sum(raw) * len(counts)
    np.testing.assert_allclose(bkd_class_weights(counts, beta), want, rtol=1e-12)
    np.testing.assert_allclose(bkd_class_weights(counts, 0.0), np.ones(4))  # beta 0: uniform
    with pytest.raises(ConfigError, match="every class needs > 0 training samples"):
        bkd_class_weights([5, 0, 2], 0.9999)  # an empty class has no effective number
    with pytest.raises(ConfigError, match=r"outside the valid range \[0, 1\)"):
        bkd_class_weights([5, 2], 1.0)


def test_bkd_loss_reweights_and_renormalises_the_teacher_targets_as_the_official_code():
    # Official BKDLoss: q = softmax(t/T) * w / sum(...); loss = CE(s, y) + alpha * T^2 * KL(q || softmax(s/T)).
    counts = [90, 9, 1]
    beta, T, alpha = 0.99, 2.0, 0.7
    w = np.array([(1 - beta) / (1 - beta ** n) for n in counts])
    w = w / w.sum() * 3
    s = np.array([[1.0, -0.5, 0.2], [0.3, 0.0, 2.0]])
    t = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]])
    y = np.array([0, 2])

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    q = softmax(t / T) * w
    q = q / q.sum(1, keepdims=True)
    p = softmax(s / T)
    kl = (q * np.log(q / p)).sum(1).mean()
    ce = -np.log(softmax(s)[np.arange(2), y]).mean()
    want = ce + alpha * T * T * kl
    loss = DistillationLoss(base_loss=nn.CrossEntropyLoss(), method="bkd", temperature=T, alpha=alpha,
                            class_counts=counts, bkd_beta=beta)
    got = loss(torch.tensor(s), torch.tensor(y), torch.tensor(t)).item()
    assert got == pytest.approx(want, abs=1e-6)  # float32 class weights
    # the paper's form (weights on the per-class KL terms, no renormalisation) is a different number
    paper = ce + alpha * T * T * (w * softmax(t / T) * np.log(softmax(t / T) / p)).sum(1).mean()
    assert abs(paper - want) > 1e-3


def test_bkd_before_its_start_epoch_and_with_beta_zero_is_kd():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    kd = DistillationLoss(base_loss=nn.CrossEntropyLoss(), method="kd", temperature=3.0)(s, y, t)
    late = DistillationLoss(base_loss=nn.CrossEntropyLoss(), method="bkd", temperature=3.0,
                            class_counts=[100, 20, 5, 1], bkd_start=2)
    late.set_epoch(1)
    assert torch.equal(late(s, y, t), kd)
    late.set_epoch(2)
    assert not torch.allclose(late(s, y, t), kd)
    flat = DistillationLoss(base_loss=nn.CrossEntropyLoss(), method="bkd", temperature=3.0,
                            class_counts=[100, 20, 5, 1], bkd_beta=0.0)
    assert torch.allclose(flat(s, y, t), kd, atol=1e-6)


def test_set_epoch_reaches_the_base_loss_and_bad_values_are_config_errors():
    from imbalance.losses import create_loss

    base = create_loss("LDAMLoss", class_counts=[50, 5], drw_start=3)
    loss = BoundTeacherLoss(DistillationLoss(base_loss=base, method="kd"), None)
    loss.set_epoch(4)
    assert base.epoch == 4 and loss.epoch == 4
    with pytest.raises(RuntimeError, match="teacher's logits"):
        loss(torch.randn(2, 2), torch.tensor([0, 1]))
    for kw, pat in ((dict(method="fitnet"), "distill.method='fitnet' is not valid"),
                    (dict(temperature=0), "distill.temperature must be a number > 0"),
                    (dict(alpha=-1), "distill.alpha must be a number >= 0"),
                    (dict(method="bkd"), "needs the training class counts"),
                    (dict(bkd_start=-1), "distill.bkd_start must be an epoch >= 0")):
        with pytest.raises(ConfigError, match=pat):
            DistillationLoss(base_loss=nn.CrossEntropyLoss(), **kw)


# ----------------------------------------------------------------------------- the frozen teacher
class _Net(nn.Module):
    """A small network with dropout and BatchNorm (what train mode would change)."""

    def __init__(self, k=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                                  nn.Flatten(), nn.Dropout(0.5))
        self.classifier = nn.Linear(4, k)

    def forward(self, x):
        return self.classifier(self.body(x))


def test_frozen_teacher_stays_in_eval_mode_and_has_no_gradients():
    teacher = FrozenTeacher(_Net())
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(5, 2, 20, requires_grad=True)
    out = teacher(x)
    assert not out.requires_grad
    assert torch.equal(out, teacher(x))  # dropout off


def test_teacher_is_never_trained_and_sees_the_students_augmented_input():
    from imbalance.engine import EarlyStopping, fit
    from imbalance.loader import BatchLoader, TensorPairDataset
    from imbalance.optim import EpochSchedule
    from imbalance.precision import Precision

    torch.manual_seed(0)
    teacher = FrozenTeacher(_Net())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes, seen = [], {}
    for m in teacher.modules():
        m.register_forward_pre_hook(lambda mod, a: modes.append(mod.training))
    teacher.model.register_forward_pre_hook(lambda mod, a: seen.setdefault("teacher", []).append(a[0].clone()))
    student = _Net()
    student.register_forward_pre_hook(
        lambda mod, a: seen.setdefault("student", []).append(a[0].clone()) if mod.training else None)
    hook = TeacherHook(student, teacher)
    loss = BoundTeacherLoss(DistillationLoss(base_loss=nn.CrossEntropyLoss(), temperature=2.0), hook)
    ds = TensorPairDataset(torch.randn(24, 2, 20), torch.arange(24) % 3)

    def noise(x, generator=None):
        return x + 0.3 * torch.randn(x.shape, generator=generator)

    loader = BatchLoader(ds, 8, shuffle=True, augment=noise, seed=1)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    fit(student, stage=1, train_loader=loader, val_loader=BatchLoader(ds, 8), loss_fn=loss, optimizer=opt,
        schedule=EpochSchedule(opt, "none", epochs=2), epochs=2, num_classes=3,
        early_stopping=EarlyStopping(patience=0, enabled=False), precision=Precision("cpu", None, None),
        val_loss_fn=nn.CrossEntropyLoss())
    assert modes and not any(modes)                            # never in train mode
    assert all(p.grad is None for p in teacher.parameters())   # never a gradient
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics too
    assert len(seen["teacher"]) == len(seen["student"]) == 6   # 2 epochs x 3 batches, evaluation excluded
    assert all(torch.equal(a, b) for a, b in zip(seen["teacher"], seen["student"]))  # the same augmented batch
    hook.remove()


def test_teacher_runs_in_the_students_autocast_precision():
    teacher = FrozenTeacher(_Net())
    student = _Net().train()
    hook = TeacherHook(student, teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student(torch.randn(4, 2, 20))
    assert hook.logits.dtype == torch.bfloat16
    student(torch.randn(4, 2, 20))
    assert hook.logits.dtype == torch.float32


def test_cached_teacher_logits_equal_the_per_batch_forward_without_augmentation():
    from imbalance.loader import BatchLoader, TensorPairDataset

    torch.manual_seed(0)
    teacher = FrozenTeacher(_Net())
    ds = TensorPairDataset(torch.randn(20, 2, 16), torch.arange(20) % 3)
    cache = TeacherCache.compute(teacher, ds, batch_size=7, device=torch.device("cpu"))
    student = _Net().train()
    hook = TeacherHook(student, teacher, cache=cache)
    loader = BatchLoader(cache.wrap(ds), 6, shuffle=True, seed=3)
    loader.set_epoch(1)
    for x, _ in loader:
        student(x)
        assert torch.allclose(hook.logits, teacher(x), atol=1e-6)
    assert hook.calls == 0  # the teacher never ran during training
    with pytest.raises(RuntimeError, match="TeacherCache.wrap"):
        TeacherHook(student, teacher, cache=TeacherCache(cache.logits))
        student(torch.randn(6, 2, 16))


# ----------------------------------------------------------------------------- through a run
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from conftest import tiny_cfg
    from imbalance.pipeline import run

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rdir = tmp_path_factory.mktemp("teacher") / "t"
        run(tiny_cfg("model.width=12", "stage3.mode=tau_norm", "exp_name=teacher"), run_dir=rdir)
    finally:
        torch.set_num_threads(n)
    return rdir


def test_a_run_with_a_teacher_distils_in_stage1_then_runs_stage2_and_3(run_tiny, teacher_run, caplog):
    caplog.set_level(logging.INFO, logger="imbalance")
    rdir, _ = run_tiny(f"distill.teacher={teacher_run}", "distill.method=bkd", "distill.temperature=3",
                       "model.name=SignalTransformer", "stage3.mode=tau_norm", name="student")
    res = json.loads((rdir / "results" / "results.json").read_text())
    t_res = json.loads((teacher_run / "results" / "results.json").read_text())
    d = res["distill"]
    assert d["method"] == "bkd" and d["temperature"] == 3.0 and d["alpha"] == 1.0
    assert d["teacher"]["run"] == str(teacher_run) and d["teacher"]["model"] == "ConvNetADSB"
    assert d["teacher"]["metrics"]["macc"] == t_res["metrics"]["final"]["overall"]["macc"]
    np.testing.assert_allclose(d["class_weights"], bkd_class_weights(res["class_counts"], 0.9999))
    assert {"stage1", "stage2", "stage3", "final"} <= set(res["metrics"])
    assert "distillation (bkd, T=3" in caplog.text
    assert "Distillation: bkd" in (rdir / "results" / "summary.txt").read_text()
    # the student's final model loads alone (the teacher is not part of it)
    from imbalance.evaluate import load_trained_model

    model, _ = load_trained_model(rdir)
    assert not any("teacher" in k for k in model.state_dict())


def test_distillation_wiring_restores_the_plan_and_cache_needs_plain_batches(tiny, teacher_run):
    from imbalance import builders as B
    from imbalance.precision import Precision

    cfg = tiny("model.width=8")
    data = B.build_data(cfg)
    model = B.build_model(cfg, data, torch.device("cpu"))
    ctx = SimpleNamespace(model=model, device=torch.device("cpu"), precision=Precision("cpu", None, None), data=data)
    plan = B.build_stage1(cfg, data, model, torch.device("cpu"))
    base, ds = plan.loss_fn, plan.train_loader.dataset
    with distillation(ctx, plan, teacher=str(teacher_run), cache=True) as kd:
        assert isinstance(plan.loss_fn, BoundTeacherLoss) and plan.loss_fn.loss.base_loss is base
        assert kd.hook.cache is not None and len(kd.hook.cache.logits) == len(ds)
        model.train()
        for x, y in plan.train_loader:
            plan.loss_fn(model(x), y)
        assert kd.hook.calls == 0
    assert plan.loss_fn is base and plan.train_loader.dataset is ds
    model.train()(next(iter(plan.train_loader))[0])
    assert kd.hook.logits is None  # removed: stage 2 trains without the teacher
    plan.train_loader.augment = lambda x, generator=None: x
    with pytest.raises(ConfigError, match="distill.cache=true needs un-augmented batches"):
        with distillation(ctx, plan, teacher=str(teacher_run), cache=True):
            pass
    with distillation(ctx, plan, teacher=None) as nothing:
        assert nothing is None and plan.loss_fn is base


def test_teacher_of_other_classes_or_missing_is_refused(tiny, teacher_run, tmp_path):
    from imbalance.pipeline import run

    with pytest.raises(UserError, match="distill.teacher=.*not found"):
        run(tiny(f"distill.teacher={tmp_path / 'nope'}"), run_dir=tmp_path / "a")
    assert not (tmp_path / "a").exists()  # refused before anything was written
    with pytest.raises(UserError, match="the teacher must predict the same classes"):
        run(tiny(f"distill.teacher={teacher_run}", "data.synthetic.num_classes=6"), run_dir=tmp_path / "b")


@pytest.mark.parametrize("override,pattern", [
    ("distill.method=fitnet", "distill.method='fitnet' is not valid; valid values: kd, bkd"),
    ("distill.temperature=0", "distill.temperature=0.0 must be a number > 0"),
    ("distill.alpha=-0.5", "distill.alpha=-0.5 must be a number >= 0"),
    ("distill.bkd_beta=1.0", r"distill.bkd_beta=1.0 is out of range; it must be in \[0, 1\)"),
])
def test_bad_distill_values_are_one_line_errors(tiny, override, pattern):
    from imbalance.config import validate, with_schema

    with pytest.raises(ConfigError, match=pattern):
        validate(with_schema(tiny(override)))


def test_unused_distill_keys_are_named(tiny):
    from imbalance.recipe import unused_user_keys

    cfg = tiny("distill.alpha=0.5", "distill.bkd_beta=0.99")
    found = dict(unused_user_keys(cfg, {"distill.alpha", "distill.bkd_beta"}))
    assert found == {"distill.alpha": "distill.teacher is null (no distillation)",
                     "distill.bkd_beta": "distill.teacher is null (no distillation)"}
    cfg = tiny("distill.teacher=/x", "distill.bkd_beta=0.99", "model.name=ConvTransformer", "model.use_attention=false")
    found = dict(unused_user_keys(cfg, {"distill.bkd_beta", "model.use_attention"}))
    assert found == {"distill.bkd_beta": "only distill.method=bkd uses it (method is kd)",
                     "model.use_attention": "ConvTransformer does not use it"}


def test_record_and_summary_show_the_teacher_student_pair(teacher_run, tmp_path):
    from imbalance.summary import summarize

    rec = distill_record(teacher=str(teacher_run), method="kd", temperature=4.0, alpha=0.5)
    assert rec["teacher"] == teacher_summary(str(teacher_run)) and "class_weights" not in rec
    t_res = json.loads((teacher_run / "results" / "results.json").read_text())
    root = tmp_path / "runs"

    def write(name, seed, macc, distilled):
        cfg = json.loads(json.dumps(t_res["config"]))
        cfg.update(seed=seed, exp_name=name)
        cfg["model"]["name"] = "ResNet1D"
        if distilled:
            cfg["distill"]["teacher"] = str(teacher_run)
        out = {"status": "completed", "exp_name": name, "config": cfg, "val_metrics": {"macc": macc, "acc": macc},
               "metrics": {"final": {"overall": {"macc": macc, "few_acc": macc / 2, "oa": macc, "hm": macc}}}}
        if distilled:
            out["distill"] = rec
        (root / f"{name}_{seed}" / "results").mkdir(parents=True)
        (root / f"{name}_{seed}" / "results" / "results.json").write_text(json.dumps(out))

    for seed, (a, b) in enumerate([(0.5, 0.6), (0.52, 0.64)]):
        write("alone", seed, a, False)
        write("kd", seed, b, True)
    out, st, _ = summarize(root, out=tmp_path / "summary", make_figure=False)
    table = st.tables["distillation"]
    assert len(table) == 1
    row = table.iloc[0]
    assert row["method"] == "kd" and row["teacher_model"] == "ConvNetADSB" and row["n"] == 2 and row["alone_n"] == 2
    assert row["teacher_macc"] == pytest.approx(t_res["metrics"]["final"]["overall"]["macc"])
    assert row["student_macc_mean"] == pytest.approx(0.62) and row["alone_macc_mean"] == pytest.approx(0.51)
    assert row["student_macc_std"] == pytest.approx(np.std([0.6, 0.64], ddof=1))
    report = (out / "REPORT.md").read_text()
    assert "## Distillation" in report and "62.00 ± 2.83" in report and "51.00 ± 1.41" in report
    assert (out / "distillation.csv").is_file()
    assert set(st.groups["distill"]) == {"-", "kd"}
    assert "+KD" in " ".join(st.groups["config"]) and "distillation" in " ".join(st.groups["type"])


def test_set_epoch_reaches_the_base_loss_once():
    base = ScheduledCE()
    BoundTeacherLoss(DistillationLoss(base_loss=base, method="kd"), None).set_epoch(2)
    assert base.epochs == [2]
