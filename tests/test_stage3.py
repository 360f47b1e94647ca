"""Stage 3 faithful to the official code: eval mode, tau-norm without bias, temperature scaling."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imbalance import calibration as cal
from imbalance.errors import ConfigError
from imbalance.heads import HEADS, CosineMarginClassifier, LogitAdjustedLinear, TemperatureScaledClassifier
from imbalance.stage2 import LWSClassifier


# ------------------------------------------------------------------------------ tau-norm
def test_tau_normalize_is_f_times_normalised_w_without_bias():
    torch.manual_seed(0)
    head = nn.Linear(6, 4)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([3.0, -1.0, 0.5, 2.0]))
    before = {k: v.clone() for k, v in head.state_dict().items()}
    f = torch.randn(9, 6)
    W = head.weight.detach().double()
    for tau in (0.0, 0.5, 1.0, 1.7):
        tn = cal.tau_normalize(head, tau)
        ref = f.double() @ (W / W.norm(dim=1, keepdim=True) ** tau).T  # Kang et al.: no bias
        torch.testing.assert_close(tn(f).double(), ref, rtol=1e-5, atol=1e-5)
    # tau = 0 is the bias-free classifier, not the untouched one
    assert not torch.allclose(cal.tau_normalize(head, 0.0)(f), head(f))
    for k, v in head.state_dict().items():  # the head itself is left as it is
        assert torch.equal(v, before[k])


def test_tau_norm_with_the_bias_kept_loses_the_tail_on_a_long_tailed_probe():
    """The audit's demonstration: shrinking W while keeping the head-biased bias lets the bias
    decide; the official form (bias dropped) recovers the tail."""
    torch.manual_seed(0)
    K, D = 10, 32
    counts = [int(500 * 100 ** (-c / (K - 1))) for c in range(K)]
    means = torch.randn(K, D) * 0.35

    def sample(n_per):
        xs = [means[c] + torch.randn(n, D) for c, n in enumerate(n_per)]
        return torch.cat(xs), torch.cat([torch.full((n,), c) for c, n in enumerate(n_per)])

    x, y = sample(counts)
    xt, yt = sample([200] * K)
    head = nn.Linear(D, K)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(500):
        opt.zero_grad()
        F.cross_entropy(head(x), y).backward()
        opt.step()

    def macc(z):
        _, m = cal.accuracy_and_macc(z.argmax(1), yt, K)
        return m

    with torch.no_grad():
        official = macc(cal.tau_normalize(head, 1.0)(xt))
        bias_kept = macc(cal.tau_normalize(head, 1.0)(xt) + head.bias)
    assert official > bias_kept + 0.1, (official, bias_kept)


def test_tau_norm_refuses_a_cosine_head():
    head = CosineMarginClassifier(in_features=5, num_classes=3, class_counts=[5, 3, 1])
    with pytest.raises(ConfigError, match="no-op"):
        cal.tau_normalize(head, 1.0)


def test_tau_norm_after_lws_normalises_the_wrapped_weights_and_keeps_the_scales():
    torch.manual_seed(1)
    lws = LWSClassifier(nn.Linear(5, 3), 3)
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([1.5, 0.7, 2.0]))
    out = cal.tau_normalize(lws, 0.8)
    assert isinstance(out, LWSClassifier)
    f = torch.randn(4, 5)
    W = lws.head.weight.detach()
    ref = (f @ (W / W.norm(dim=1, keepdim=True) ** 0.8).T) * torch.tensor([1.5, 0.7, 2.0])
    torch.testing.assert_close(out(f), ref)


def test_tau_norm_of_the_logit_adjust_and_temperature_heads():
    torch.manual_seed(2)
    f = torch.randn(4, 5)
    la = LogitAdjustedLinear(in_features=5, num_classes=3, class_counts=[10, 5, 1], tau=1.0)
    W = la.linear.weight.detach()
    torch.testing.assert_close(cal.tau_normalize(la, 1.0)(f), f @ (W / W.norm(dim=1, keepdim=True)).T)
    th = TemperatureScaledClassifier(in_features=5, num_classes=3, temperature=2.0)
    W = th.linear.weight.detach() / 2.0
    torch.testing.assert_close(cal.tau_normalize(th, 0.5)(f), f @ (W / W.norm(dim=1, keepdim=True) ** 0.5).T)


# ------------------------------------------------------------------------------ temperature
def test_fit_temperature_minimises_the_validation_nll():
    torch.manual_seed(3)
    y = torch.randint(0, 5, (400,))
    z = torch.randn(400, 5) * 4 + 3 * F.one_hot(y, 5)  # over-confident logits
    T = cal.fit_temperature(z, y)
    # float64 reference: d/dT NLL(z / T) = 0 at the optimum, and no grid point does better
    t = torch.tensor(T, dtype=torch.float64, requires_grad=True)
    F.cross_entropy(z.double() / t, y).backward()
    assert abs(float(t.grad)) < 1e-5
    grid = np.linspace(0.2, 10, 200)
    assert cal.nll(z, y, T) <= min(cal.nll(z, y, g) for g in grid) + 1e-9
    assert T > 1.0  # over-confident logits are softened


def test_temperature_output_keeps_the_argmax():
    head = nn.Linear(4, 3)
    f = torch.randn(20, 4)
    out = cal.TemperatureScaledOutput(head, 2.5)
    torch.testing.assert_close(out(f), head(f) / 2.5)
    assert torch.equal(out(f).argmax(1), head(f).argmax(1))
    with pytest.raises(ConfigError):
        cal.TemperatureScaledOutput(head, 0.0)


# ------------------------------------------------------------------------------ the real pipeline
def _hook_recording_heads(records):
    kinds = (nn.Linear, CosineMarginClassifier, LogitAdjustedLinear, TemperatureScaledClassifier,
             cal.TauNormalizedLinear)

    def hook(module, args, output):
        if isinstance(module, kinds):
            records.append((type(module).__name__, module.training))

    return torch.nn.modules.module.register_module_forward_hook(hook)


@pytest.mark.parametrize("head", HEADS.names())
def test_every_inference_after_training_runs_in_eval_mode(head, tiny, tmp_path, monkeypatch):
    import imbalance.pipeline as P

    records = []
    handles = []
    orig = P.run_stage3

    def recording(ctx, *rest):
        handles.append(_hook_recording_heads(records))
        return orig(ctx, *rest)

    monkeypatch.setattr(P, "run_stage3", recording)
    mode = "logit_adjust" if head == "cosine_ldam" else "both"
    try:
        P.run(tiny(f"model.head={head}", f"stage3.mode={mode}", "stage3.tau_norm=auto", "stage3.logit_tau=auto",
                   "stage3.temperature=auto"), run_dir=tmp_path / "r")
    finally:
        for h in handles:
            h.remove()
    assert records, "no classifier call was recorded after training"
    assert not [r for r in records if r[1]], f"called in train mode: {sorted(set(r for r in records if r[1]))}"


def test_stage3_logit_tau_is_chosen_on_eval_mode_logits_of_a_logit_adjust_head(tiny, tmp_path):
    """With model.head=logit_adjust (tau log pi added in TRAINING mode only), a search on
    train-mode logits would pick a tau shifted by the head's own tau; the chosen tau must be the
    best of the eval-mode curve."""
    import imbalance.pipeline as P
    from imbalance.builders import build_data
    from imbalance.config import with_schema
    from imbalance.evaluate import load_trained_model

    cfg = tiny("model.head=logit_adjust", "stage2.enabled=false", "stage3.mode=logit_adjust",
               "stage3.logit_tau=auto", "training.epochs=4", "data.imbalance_ratio=20")
    P.run(cfg, run_dir=tmp_path / "r")
    res = json.loads((tmp_path / "r" / "results" / "results.json").read_text())
    chosen = res["calibration"]["logit_tau"]
    model, info = load_trained_model(tmp_path / "r")
    data = build_data(with_schema(cfg))  # the same validation split (seeded)
    x, y = data.val.get_batch(torch.arange(len(data.val)))
    with torch.no_grad():
        f = model.forward_features(x)
        head = model.classifier.head  # inside the stage-3 LogitAdjustedOutput
        assert isinstance(head, LogitAdjustedLinear) and not head.training
        z_eval = head(f)
        head.train()
        z_train = head(f)
        head.eval()
    prior = cal.log_prior(info.class_counts)
    best_eval, curve = cal.search_tau(lambda t: z_eval - t * prior, y, cal.LOGIT_TAU_GRID, info.num_classes)
    assert chosen == best_eval
    assert [r["val_macc"] for r in curve] == pytest.approx([r["val_macc"] for r in res["calibration"]["stage3.logit_tau_curve"]])
    # the train-mode curve is the eval-mode curve shifted by the head's tau (= 1)
    _, train_curve = cal.search_tau(lambda t: z_train - t * prior, y, cal.LOGIT_TAU_GRID, info.num_classes)
    shifted = {r["tau"]: r["val_macc"] for r in train_curve}
    for r in curve:
        if r["tau"] + 1.0 <= 3.0 + 1e-9:
            assert shifted[round(r["tau"] + 1.0, 2)] == pytest.approx(r["val_macc"])


def test_tau_norm_search_reports_the_untouched_classifier_as_baseline(run_tiny):
    rdir, _ = run_tiny("stage3.mode=tau_norm", "stage3.tau_norm=auto")
    res = json.loads((rdir / "results" / "results.json").read_text())
    cal_info = res["calibration"]
    assert "tau_norm_baseline_val_macc" in cal_info
    assert [r["tau"] for r in cal_info["stage3.tau_norm_curve"]] == cal.TAU_NORM_GRID
    final = torch.load(rdir / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert "classifier.weight" in final and "classifier.bias" not in final  # bias dropped


def test_temperature_auto_lowers_validation_nll_and_keeps_predictions(run_tiny):
    plain, _ = run_tiny(name="plain")
    scaled, _ = run_tiny("stage3.temperature=auto", name="scaled")
    res = json.loads((scaled / "results" / "results.json").read_text())
    t = res["calibration"]["temperature_val"]
    assert t["after"]["nll"] <= t["before"]["nll"] + 1e-12
    assert "stage3" in res["metrics"]
    p = np.load(plain / "results" / "predictions.npz")
    q = np.load(scaled / "results" / "predictions.npz")
    assert np.array_equal(p["y_pred"], q["y_pred"])
    T = res["calibration"]["temperature"]
    np.testing.assert_allclose(q["prob"], torch.softmax(torch.log(torch.as_tensor(p["prob"]).double()) / T, 1).numpy(),
                               atol=2e-4)


class _NoNumpy(torch.Tensor):
    """A tensor that, like one on an accelerator, has no numpy view: ``.numpy()`` fails until
    ``.cpu()`` makes a host copy."""

    def numpy(self, *a, **k):  # noqa: D401
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first")

    def __array__(self, *a, **k):
        return self.numpy()

    def cpu(self, *a, **k):
        return self.as_subclass(torch.Tensor).clone()


class _HostTensor(torch.Tensor):
    """A host tensor whose ``.to(device)`` gives a :class:`_NoNumpy` (as a copy to CUDA would)."""

    def to(self, *a, **k):
        return self.as_subclass(torch.Tensor).to(*a, **k).as_subclass(_NoNumpy)


def test_the_feature_cache_path_works_with_tensors_that_refuse_numpy(tiny, tmp_path, monkeypatch):
    """The audit found cRT crashing on a GPU: cached features moved to the device were turned
    into numpy arrays. Every tensor that ``predict`` returns and the pipeline moves to the device
    refuses ``.numpy()`` here, as a CUDA tensor does."""
    import imbalance.pipeline as P
    import imbalance.stages as S

    orig = S.predict

    def on_device(*a, **k):
        return {key: v.as_subclass(_HostTensor) for key, v in orig(*a, **k).items()}

    monkeypatch.setattr(S, "predict", on_device)
    P.run(tiny("stage2.mode=crt", "stage2.feature_cache=true", "stage3.mode=both", "stage3.temperature=auto"),
          run_dir=tmp_path / "r")
    assert (tmp_path / "r" / "results" / "results.json").exists()
