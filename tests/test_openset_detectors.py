"""Open-set detectors (imbalance.openset) against float64 re-computations of their formulas and
on constructed features whose answer is known."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy.spatial import distance as spd
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from imbalance.errors import ConfigError, DataError, UnknownNameError
from imbalance.openset import (
    DEFAULT_DETECTORS,
    DETECTORS,
    KNN,
    MSP,
    ODIN,
    ODIN_EPSILON_GRID,
    Energy,
    Mahalanobis,
    MaxLogit,
    OpenMax,
    WeibullTail,
    build_detectors,
    detector_from_state,
    energy,
    evaluate_detectors,
    fit_detectors,
    score_all,
)
from imbalance.openset_metrics import openset_report, threshold_at_tpr


def _auroc(known, unknown):
    return roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown])


def _clusters(seed=0, counts=(60, 30, 10, 4), d=6, sep=6.0, n_test=40):
    """Gaussian class clusters (long-tailed counts), a linear head, test knowns and a far cluster."""
    rng = np.random.default_rng(seed)
    k = len(counts)
    mu = rng.normal(size=(k, d)) * sep
    y = np.repeat(np.arange(k), counts)
    f = mu[y] + rng.normal(size=(len(y), d))
    w = rng.normal(size=(d, k))
    yt = rng.integers(0, k, n_test)
    ft = mu[yt] + rng.normal(size=(n_test, d))
    fu = rng.normal(size=(n_test, d)) + 10 * sep          # far from every class mean
    return f, y, w, ft, yt, fu


# ----------------------------------------------------------------------------- logit scores
def test_msp_is_max_softmax_and_handles_large_margins_and_bf16():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(50, 7)) * 3
    ref = torch.softmax(torch.tensor(z, dtype=torch.float64), dim=1).max(dim=1).values.numpy()
    np.testing.assert_allclose(MSP().score(z), ref, rtol=1e-13, atol=0)
    big = np.array([[1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]])
    np.testing.assert_allclose(MSP().score(big), [1.0, 1.0 / 3.0], rtol=1e-15)
    zb = torch.tensor(z, dtype=torch.bfloat16)
    ref_b = torch.softmax(zb.double(), dim=1).max(dim=1).values.numpy()
    np.testing.assert_allclose(MSP().score(zb), ref_b, rtol=1e-13)


def test_maxlogit_is_the_largest_logit():
    z = np.array([[1.0, 3.0, -2.0], [-5.0, -4.0, -6.0]])
    assert MaxLogit().score(z).tolist() == [3.0, -4.0]


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0, 1000.0])
def test_energy_is_minus_t_logsumexp(t):
    rng = np.random.default_rng(2)
    z = rng.normal(size=(40, 5)) * 4
    ref = -t * logsumexp(z / t, axis=1)
    np.testing.assert_allclose(energy(z, t), ref, rtol=1e-13)
    np.testing.assert_allclose(Energy(temperature=t).score(z), -ref, rtol=1e-13)
    # large logits stay finite; T * lse(z / T) -> max z as T -> 0
    big = np.array([[1e4, 0.0], [-1e4, -1e4]])
    out = Energy(temperature=t).score(big)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, [1e4 + t * np.log1p(np.exp(-1e4 / t)), -1e4 + t * np.log(2)], rtol=1e-12)


def test_energy_bad_temperature():
    for bad in (0, -1.0, float("inf"), "a", True):
        with pytest.raises(ConfigError, match="temperature"):
            Energy(temperature=bad)


# ----------------------------------------------------------------------------- Mahalanobis
def _maha_reference(f, y, x):
    k = y.max() + 1
    mu = np.stack([f[y == c].mean(0) for c in range(k)])
    xc = f - mu[y]
    cov = xc.T @ xc / len(f)           # EmpiricalCovariance: divisor N
    p = np.linalg.pinv(cov)
    diff = x[:, None, :] - mu[None]
    d2 = np.einsum("nkd,de,nke->nk", diff, p, diff)
    return (-0.5 * d2).max(axis=1), d2


def test_mahalanobis_matches_the_tied_covariance_formula():
    f, y, w, ft, yt, fu = _clusters(3)
    det = Mahalanobis(shrinkage="none").fit(f, y)
    x = np.r_[ft, fu]
    ref, d2 = _maha_reference(f, y, x)
    np.testing.assert_allclose(det.distances(x), d2, rtol=1e-8)
    np.testing.assert_allclose(det.score(None, x), ref, rtol=1e-8)
    assert det.covariance_kind_ == "empirical"
    # 'auto' uses the official empirical covariance when N - K >= D
    np.testing.assert_allclose(Mahalanobis().fit(f, y).score(None, x), ref, rtol=1e-8)


def test_mahalanobis_and_knn_separate_a_far_cluster_perfectly():
    f, y, w, ft, yt, fu = _clusters(4)
    for det in (Mahalanobis(), KNN(k=5)):
        det.fit(f, y)
        assert _auroc(det.score(None, ft), det.score(None, fu)) == 1.0


def test_mahalanobis_shrinkage_when_the_pool_is_rank_deficient():
    """N - K < D: the empirical covariance is singular and its pseudo-inverse ignores the
    directions the training features do not span; 'auto' shrinks (Ledoit-Wolf) and sees them."""
    rng = np.random.default_rng(5)
    d = 12
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    span = basis[:, :4]                      # training features live in 4 of 12 dimensions
    y = np.repeat(np.arange(3), [4, 3, 2])
    f = (rng.normal(size=(9, 4)) * 3) @ span.T
    x0 = f[:1]
    x_off = x0 + 50 * basis[:, 6]            # moved off the training span
    emp = Mahalanobis(shrinkage="none").fit(f, y)
    assert emp.score(None, x_off)[0] == pytest.approx(emp.score(None, x0)[0], abs=1e-6)
    auto = Mahalanobis().fit(f, y)
    assert auto.covariance_kind_ == "ledoit_wolf"
    assert auto.score(None, x_off)[0] < auto.score(None, x0)[0] - 10
    # a fixed shrinkage a: precision of (1 - a) S + a tr(S) / D I
    a = 0.3
    det = Mahalanobis(shrinkage=a).fit(f, y)
    mu = np.stack([f[y == c].mean(0) for c in range(3)])
    xc = f - mu[y]
    s = xc.T @ xc / len(f)
    shrunk = (1 - a) * s + a * np.trace(s) / d * np.eye(d)
    np.testing.assert_allclose(det.precision_, np.linalg.inv(shrunk), rtol=1e-7, atol=1e-10)


def test_mahalanobis_class_without_samples_and_errors():
    f, y, *_ = _clusters(6)
    keep = y != 1
    det = Mahalanobis().fit(f[keep], y[keep])        # class 1 has no training features
    d2 = det.distances(f[:3])
    assert np.isnan(d2[:, 1]).all() and np.isfinite(d2[:, [0, 2, 3]]).all()
    assert np.isfinite(det.score(None, f[:3])).all()
    with pytest.raises(ConfigError, match="not fitted"):
        Mahalanobis().score(None, f)
    with pytest.raises(ConfigError, match="shrinkage"):
        Mahalanobis(shrinkage="big")
    with pytest.raises(ConfigError, match="shrinkage"):
        Mahalanobis(shrinkage=1.5)


# ----------------------------------------------------------------------------- kNN
def test_knn_is_minus_squared_distance_to_the_kth_normalised_neighbour():
    rng = np.random.default_rng(7)
    bank = rng.normal(size=(80, 5))
    q = rng.normal(size=(30, 5))
    det = KNN(k=7, batch_size=8).fit(torch.tensor(bank, dtype=torch.float32), np.zeros(80, int))
    nb = bank / (np.linalg.norm(bank, axis=1, keepdims=True) + 1e-10)
    nq = q / (np.linalg.norm(q, axis=1, keepdims=True) + 1e-10)
    d2 = ((nq[:, None, :] - nb[None]) ** 2).sum(-1)
    ref = -np.sort(d2, axis=1)[:, 6]
    np.testing.assert_allclose(det.score(None, q), ref, atol=2e-6)


def test_knn_direction_not_norm_and_k_clamped(caplog):
    rng = np.random.default_rng(8)
    known = np.abs(rng.normal(size=(50, 4))) * [5, 1, 0.1, 0.1]   # along the first axis
    det = KNN(k=3).fit(known)
    # same direction at 100x the norm is still known (normalised features); another axis is not
    far_same_dir = known[:5] * 100
    other_dir = np.abs(rng.normal(size=(5, 4))) * [0.1, 0.1, 5, 1]
    assert _auroc(det.score(None, far_same_dir), det.score(None, other_dir)) == 1.0
    with caplog.at_level(logging.WARNING):
        small = KNN(k=10).fit(known[:4])
    assert "k=10" in caplog.text and small.k_ == 4
    half = KNN(k=1, sample_ratio=0.5, seed=1).fit(known)
    assert half.bank_.shape == (25, 4)
    for bad in ({"k": 0}, {"k": 2.5}, {"sample_ratio": 0}, {"sample_ratio": 1.5}):
        with pytest.raises(ConfigError):
            KNN(**bad)


# ----------------------------------------------------------------------------- OpenMax
def _weibull_mle_residuals(t, shape, scale):
    """Residuals of the two-parameter Weibull likelihood equations, in a form that does not
    overflow for t ~ 1e4 and shape ~ 1e4: r = t / max t."""
    m = t.max()
    r = t / m
    rc = r ** shape
    eq_shape = 1.0 / shape + np.mean(np.log(r)) - np.sum(rc * np.log(r)) / np.sum(rc)
    eq_scale = scale / (m * np.mean(rc) ** (1.0 / shape)) - 1.0
    return eq_shape * shape, eq_scale


def test_weibull_tail_is_libmr_fit_high():
    rng = np.random.default_rng(9)
    d = rng.gamma(3.0, 0.5, size=200)
    wb = WeibullTail(tail_size=20).fit_high(d)
    tail = np.sort(d)[-20:]
    assert wb.small_score == tail[0]
    t = tail + 10000.0 - tail[0]                       # libMR: translate_amount - small_score
    r_shape, r_scale = _weibull_mle_residuals(t, wb.shape, wb.scale)
    assert abs(r_shape) < 1e-4 and abs(r_scale) < 1e-9  # the maximum-likelihood equations hold
    # w-score = Weibull CDF of the translated value
    x = np.array([0.0, tail[0], np.median(tail), tail[-1], tail[-1] + 5])
    ref = 1 - np.exp(-(((x + 10000.0 - tail[0]) / wb.scale) ** wb.shape))
    np.testing.assert_allclose(wb.w_score(x), ref, rtol=1e-12, atol=1e-300)
    assert np.all(np.diff(wb.w_score(np.linspace(0, 10, 101))) >= 0)
    assert wb.w_score(np.array([-20000.0]))[0] == 0.0        # negative translated value -> 0
    # one value (or no spread): the fit's limit, a step at the value
    one = WeibullTail(tail_size=20).fit_high([0.7])
    assert one.w_score(np.array([0.5, 0.7, 0.71])).tolist() == [0.0, 0.0, 1.0]


def _openmax_reference(det, logits, alpha):
    """compute_openmax.py's per-sample loops (recalibrate_scores + computeOpenMaxProbability),
    with scipy's euclidean/cosine, on the detector's fitted MAVs and Weibull parameters."""
    out = []
    k = logits.shape[1]
    for v in logits:
        ranked = v.argsort()[::-1]
        weights = [((alpha + 1) - i) / float(alpha) for i in range(1, alpha + 1)]
        ranked_alpha = np.zeros(k)
        for i in range(alpha):
            ranked_alpha[ranked[i]] = weights[i]
        revised, unknown = [], []
        for c in range(k):
            dist = spd.euclidean(det.mavs_[c], v) / 200.0 + spd.cosine(det.mavs_[c], v)
            wb = det.weibulls_[c]
            w = 1 - np.exp(-(((dist + 10000.0 - wb.small_score) / wb.scale) ** wb.shape))
            m = v[c] * (1 - w * ranked_alpha[c])
            revised.append(m)
            unknown.append(v[c] - m)
        den = np.sum(np.exp(revised)) + np.exp(np.sum(unknown))
        out.append(list(np.exp(revised) / den) + [np.exp(np.sum(unknown)) / den])
    return np.array(out)


def test_openmax_matches_the_official_recalibration_on_constructed_activations():
    rng = np.random.default_rng(10)
    k = 4
    centres = np.eye(k) * 8 + 1.0                       # class c: a large logit c
    y = np.repeat(np.arange(k), [60, 40, 25, 25])
    av = centres[y] + rng.normal(size=(len(y), k)) * 0.8
    det = OpenMax(tail_size=10, alpha_rank=3).fit(np.zeros((len(y), 2)), y, train_logits=av)
    correct = av.argmax(1) == y
    for c in range(k):
        np.testing.assert_allclose(det.mavs_[c], av[correct & (y == c)].mean(0), rtol=1e-12)
    test_known = centres[rng.integers(0, k, 30)] + rng.normal(size=(30, k)) * 0.8
    test_unknown = rng.normal(size=(30, k)) * 0.8 + 3.0   # between the classes, no clear winner
    z = np.r_[test_known, test_unknown]
    ref = _openmax_reference(det, z, alpha=3)
    np.testing.assert_allclose(det.probabilities(z), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(det.score(z), 1 - ref[:, -1], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(det.predict(z), ref[:, :-1].argmax(1))
    s = det.score(z)
    assert _auroc(s[:30], s[30:]) > 0.95


def test_openmax_alpha_weights_and_fallbacks(caplog):
    # alpha_rank larger than K is limited to K; a class never predicted correctly uses all its samples
    av = np.array([[5.0, 0, 0], [4.0, 1, 0], [6.0, 0, 1], [0, 5.0, 0], [0, 4.0, 1], [3.0, 1.0, 0.5]])
    y = np.array([0, 0, 0, 1, 1, 2])                     # class 2's only sample is predicted as 0
    with caplog.at_level(logging.INFO):
        det = OpenMax(tail_size=20, alpha_rank=10).fit(np.zeros((6, 1)), y, train_logits=av)
    assert "class 2" in caplog.text
    np.testing.assert_allclose(det.mavs_[2], av[5])
    p = det.probabilities(av)
    assert p.shape == (6, 4) and np.allclose(p.sum(1), 1.0)
    # with the head, OpenMax computes the logits itself
    head = torch.nn.Linear(2, 3).double()
    feats = torch.randn(20, 2, dtype=torch.float64)
    with torch.no_grad():
        logits = head(feats)
    yy = logits.argmax(1).numpy()
    a = OpenMax().fit(feats, yy, classifier=head)
    b = OpenMax().fit(feats, yy, train_logits=logits)
    np.testing.assert_allclose(a.score(logits), b.score(logits))
    with pytest.raises(ConfigError, match="train_logits"):
        OpenMax().fit(feats, yy)
    with pytest.raises(ConfigError, match="distance"):
        OpenMax(distance="manhattan")


# ----------------------------------------------------------------------------- ODIN
def _linear_model(c=2, length=16, k=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * length, k)).double()


def _odin_reference(model, x, t, eps):
    """ODIN in closed form for z = W x + b: grad_x CE(z / T, yhat) = W^T (softmax(z / T) - e_yhat) / T."""
    w = model[1].weight.detach().numpy()
    b = model[1].bias.detach().numpy()
    xf = x.reshape(len(x), -1)
    z = xf @ w.T + b
    p = np.exp(z / t - logsumexp(z / t, axis=1, keepdims=True))
    onehot = np.eye(w.shape[0])[z.argmax(1)]
    grad = (p - onehot) @ w / t
    sign = np.where(grad >= 0, 1.0, -1.0)
    zt = (xf - eps * sign) @ w.T + b
    return np.exp(zt / t - logsumexp(zt / t, axis=1, keepdims=True)).max(1)


@pytest.mark.parametrize("t,eps", [(1000.0, 0.01), (1.0, 0.05), (10.0, 0.0)])
def test_odin_score_inputs_matches_the_closed_form(t, eps):
    model = _linear_model()
    x = np.random.default_rng(11).normal(size=(25, 2, 16))
    det = ODIN(temperature=t, epsilon=eps, batch_size=7)
    model.train()
    s = det.score_inputs(model, torch.tensor(x))
    np.testing.assert_allclose(s, _odin_reference(model, x, t, eps), rtol=1e-10)
    assert model.training                                 # mode restored
    assert all(p.grad is None for p in model.parameters())   # no parameter gradients left
    # batches from a loader-like iterable of (x, y) give the same scores
    loader = [(torch.tensor(x[i:i + 10]), torch.zeros(10)) for i in range(0, 25, 10)]
    np.testing.assert_allclose(det.score_inputs(model, loader), s, rtol=1e-12)


def test_odin_perturbation_raises_the_score_and_eps0_is_temperature_msp():
    model = _linear_model(seed=1)
    x = torch.tensor(np.random.default_rng(12).normal(size=(30, 2, 16)))
    base = ODIN(epsilon=0.0).score_inputs(model, x)
    with torch.no_grad():
        z = model(x)
    np.testing.assert_allclose(ODIN(epsilon=0.0).score(z), base, rtol=1e-12)
    assert np.all(ODIN(epsilon=0.02).score_inputs(model, x) > base)
    with pytest.raises(ConfigError, match="score_inputs"):
        ODIN(epsilon=0.01).score(z)


def test_odin_epsilon_auto_maximises_the_mean_known_validation_score():
    model = _linear_model(seed=2)
    xv = np.random.default_rng(13).normal(size=(40, 2, 16))
    det = ODIN(temperature=1000.0, epsilon_grid=(0.0, 0.001, 0.01, 0.1, 1.0, 10.0))
    with pytest.raises(ConfigError, match="fit_inputs"):
        det.score_inputs(model, torch.tensor(xv))
    det.fit_inputs(model, torch.tensor(xv))
    means = {e: _odin_reference(model, xv, 1000.0, e).mean() for e in det.epsilon_grid}
    best = max(means, key=means.get)
    assert det.epsilon == best
    for e in det.epsilon_grid:
        assert det.selection_[e] == pytest.approx(means[e], rel=1e-10)
    assert ODIN().epsilon_grid == ODIN_EPSILON_GRID


def test_msp_is_non_increasing_in_temperature():
    """Why ODIN's T is not chosen by the mean known score: max softmax(z / T) never rises with T."""
    z = np.random.default_rng(14).normal(size=(200, 6)) * 5
    ts = [0.5, 1, 2, 5, 10, 100, 1000]
    s = np.stack([ODIN(temperature=t, epsilon=0.0).score(z) for t in ts])
    assert np.all(np.diff(s, axis=0) <= 1e-15)


# ----------------------------------------------------------------------------- registry / driver
@pytest.mark.parametrize("name", DETECTORS.names())
def test_every_detector_scores_finite_float64(name):
    f, y, w, ft, yt, fu = _clusters(15)
    det = DETECTORS.build(name, **({"epsilon": 0.0} if name == "odin" else {}))
    det.fit(f, y, train_logits=f @ w)
    x = np.r_[ft, fu]
    s = det.score(torch.tensor(x @ w, dtype=torch.bfloat16), torch.tensor(x, dtype=torch.float16))
    assert s.dtype == np.float64 and s.shape == (len(x),) and np.isfinite(s).all()
    assert det.predict(x @ w, x).shape == (len(x),)


def test_build_fit_score_all():
    dets = build_detectors()
    assert tuple(dets) == DEFAULT_DETECTORS and "odin" not in dets
    f, y, w, ft, yt, fu = _clusters(16)
    fit_detectors(dets, f, y, train_logits=f @ w)
    x = np.r_[ft, fu]
    out = score_all(dets, x @ w, x)
    assert set(out) == set(DEFAULT_DETECTORS)
    for name, det in dets.items():
        np.testing.assert_array_equal(out[name], det.score(x @ w, x))
    with pytest.raises(ConfigError, match="score_inputs"):
        score_all(build_detectors(["msp", "odin"]), x @ w, x)
    with pytest.raises(DataError, match="feature"):
        score_all(dets, x @ w, x[:3])


def test_build_detectors_errors():
    with pytest.raises(UnknownNameError, match="mahalanobis"):
        build_detectors(["msp", "nope"])
    with pytest.raises(ConfigError, match="twice"):
        build_detectors(["msp", "msp"])
    with pytest.raises(ConfigError, match="knn"):
        build_detectors(["msp"], params={"knn": {"k": 3}})
    with pytest.raises(ConfigError, match="openset.params.energy"):
        build_detectors(["energy"], params={"energy": {"tau": 3}})
    dets = build_detectors(["energy", "knn"], params={"energy": {"temperature": 2.0}, "knn": {"k": 3}})
    assert dets["energy"].temperature == 2.0 and dets["knn"].k == 3
    with pytest.raises(ConfigError):
        build_detectors([])


def test_evaluate_detectors_thresholds_come_from_known_validation_only():
    f, y, w, ft, yt, fu = _clusters(17)
    rng = np.random.default_rng(17)
    fv = f[rng.choice(len(f), 40, replace=False)] + rng.normal(size=(40, f.shape[1])) * 0.1
    dets = fit_detectors(build_detectors(["msp", "knn", "openmax"]), f, y, train_logits=f @ w)
    x = np.r_[ft, fu]
    y_test = np.r_[yt, -np.ones(len(fu), int)]
    odin_val, odin_test = rng.normal(size=40), rng.normal(size=len(x))
    out = evaluate_detectors(dets, val_logits=fv @ w, val_features=fv, test_logits=x @ w, test_features=x,
                             y_test=y_test, class_counts=[60, 30, 10, 4], extra_scores={"odin": (odin_val, odin_test)})
    assert set(out["metrics"]) == {"msp", "knn", "openmax", "odin"}
    for name, det in dets.items():
        val_scores = det.score(fv @ w, fv)
        assert out["thresholds"][name] == threshold_at_tpr(val_scores, 0.95)
        rep = openset_report(det.score(x @ w, x), y_test, det.predict(x @ w, x), threshold=out["thresholds"][name],
                             class_counts=[60, 30, 10, 4])
        assert out["metrics"][name] == rep
    assert out["thresholds"]["odin"] == threshold_at_tpr(odin_val, 0.95)
    np.testing.assert_array_equal(out["predictions"]["odin"], (x @ w).argmax(1))
    # the test labels (and the unknowns among them) do not move any threshold
    again = evaluate_detectors(dets, val_logits=fv @ w, val_features=fv, test_logits=x[::-1] @ w,
                               test_features=x[::-1], y_test=y_test[::-1], class_counts=[60, 30, 10, 4])
    for name in dets:
        assert again["thresholds"][name] == out["thresholds"][name]


def test_state_dict_round_trip_through_a_weights_only_checkpoint(tmp_path):
    f, y, w, ft, yt, fu = _clusters(18)
    y[y == 3] = 2                                        # class 3 without training samples
    dets = {n: DETECTORS.build(n, **({"epsilon": 0.0} if n == "odin" else {})) for n in DETECTORS.names()}
    dets["energy"] = Energy(temperature=2.5)
    dets["knn"] = KNN(k=4)
    dets["openmax"] = OpenMax(tail_size=5, alpha_rank=2)
    z_tr = f @ w
    z_tr[:2] = z_tr[0]                                   # harmless duplicates
    fit_detectors(dets, f, y, train_logits=z_tr)
    one = OpenMax().fit(f[:1], np.array([0]), train_logits=z_tr[:1])   # degenerate one-sample tail
    path = tmp_path / "det.pt"
    torch.save({n: d.state_dict() for n, d in {**dets, "one": one}.items()}, path)
    loaded = torch.load(path, weights_only=True)
    x = np.r_[ft, fu]
    for name, det in {**dets, "one": one}.items():
        back = detector_from_state(loaded[name])
        assert type(back) is type(det) and back.params() == det.params()
        np.testing.assert_array_equal(back.score(x @ w, x), det.score(x @ w, x))
        np.testing.assert_array_equal(back.predict(x @ w, x), det.predict(x @ w, x))
    assert detector_from_state(Mahalanobis().state_dict()).means_ is None   # unfitted stays unfitted
