"""Open-set detectors: post-hoc scores on a trained classifier (no retraining).

Every detector gives each test sample a score that is HIGHER when the sample is more likely of
a KNOWN class; a sample is rejected as unknown when its score is below a threshold chosen on
known validation data (:mod:`imbalance.openset_metrics`).  The detectors are registered in
:data:`DETECTORS` under their config names (``openset.detectors``):

===========  =======================================================================================
name         score (z: logits of the K known classes, f: penultimate features, both of one sample)
===========  =======================================================================================
msp          max_k softmax(z)_k (Hendrycks & Gimpel 2017)
maxlogit     max_k z_k (Hendrycks et al. 2022, "Scaling out-of-distribution detection")
energy       T * logsumexp(z / T) = -E(x; T), the negative free energy (Liu et al. 2020)
mahalanobis  max_c -1/2 (f - mu_c)^T Sigma^-1 (f - mu_c), class means + one tied covariance of the
             training features (Lee et al. 2018)
knn          -||f' - f'_(k)||^2, f' = f / ||f||, f'_(k) the k-th nearest normalised training
             feature (Sun et al. 2022)
openmax      1 - P(unknown) of OpenMax (Bendale & Boult 2016): per-class Weibull models of the
             distances of the training activation vectors to their class mean
odin         max_k softmax(model(x~) / T)_k, x~ = x - eps * sign(-grad_x log S_yhat(x; T))
             (Liang et al. 2018); needs the inputs and a backward pass: :meth:`ODIN.score_inputs`
===========  =======================================================================================

:data:`DEFAULT_DETECTORS` are those that need no input gradients (ODIN on request).  Usage::

    dets = build_detectors(["msp", "energy", "knn"], params={"knn": {"k": 50}})
    fit_detectors(dets, train_features, train_labels, train_logits=train_logits)
    scores = score_all(dets, test_logits, test_features)     # {name: (N,) float64}

Arrays may be numpy arrays or torch tensors (any float dtype, bf16 included); scores are float64.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "DETECTORS",
    "DEFAULT_DETECTORS",
    "ODIN_EPSILON_GRID",
    "Detector",
    "MSP",
    "MaxLogit",
    "Energy",
    "ODIN",
    "Mahalanobis",
    "KNN",
    "OpenMax",
    "WeibullTail",
    "energy",
    "build_detectors",
    "fit_detectors",
    "score_all",
    "evaluate_detectors",
    "detector_from_state",
]

DETECTORS = Registry("open-set detector")

#: Detectors scored when ``openset.detectors`` is not given: all that need no input gradients.
DEFAULT_DETECTORS: Tuple[str, ...] = ("msp", "maxlogit", "energy", "mahalanobis", "knn", "openmax")

#: ODIN's epsilon candidates: 0 (no perturbation) and the search list of Hsu et al. (2020,
#: Generalized ODIN).  Units: the model's input (the RMS-normalised signal).
ODIN_EPSILON_GRID: Tuple[float, ...] = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)


# ----------------------------------------------------------------------------- helpers
def _np64(a: Any, name: str, ndim: Optional[int] = None) -> np.ndarray:
    """float64 numpy copy of an array or tensor (bf16 / fp16 tensors included)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to(device="cpu", dtype=torch.float64).numpy()
    x = np.asarray(a, dtype=np.float64)
    if ndim is not None and x.ndim != ndim:
        raise DataError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{name} holds {int((~np.isfinite(x)).sum())} non-finite value(s)")
    return x


def _labels(a: Any, n: int) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    y = np.asarray(a).reshape(-1)
    if y.size != n:
        raise DataError(f"{y.size} training labels for {n} training features")
    if y.size and (y.min() < 0 or not np.issubdtype(y.dtype, np.integer)):
        raise DataError("training labels must be integers 0..K-1 (known classes only)")
    return y.astype(np.int64)


def _logsumexp(z: np.ndarray, axis: int = 1) -> np.ndarray:
    m = z.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _pos(name: str, key: str, v: Any, *, integer: bool = False, allow_zero: bool = False) -> Any:
    ok = not isinstance(v, bool) and isinstance(v, (int, float, np.number)) and math.isfinite(float(v))
    if ok and integer:
        ok = float(v) == int(v)
    if ok:
        ok = float(v) >= 0 if allow_zero else float(v) > 0
    if not ok:
        kind = "integer" if integer else "number"
        rng = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"openset {name}: {key}={v!r} is not valid; give a {kind} {rng}")
    return int(v) if integer else float(v)


def energy(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """The free energy E(x; T) = -T * logsumexp(z / T) of Liu et al. (2020), float64."""
    z = _np64(logits, "logits", 2)
    return -float(temperature) * _logsumexp(z / float(temperature))


# ----------------------------------------------------------------------------- base
class Detector:
    """An open-set scorer on a trained classifier.

    ``fit`` sees TRAINING data of the known classes only (features (N, D), labels 0..K-1, and
    the training logits or the classifier head that makes them); ``score(logits, features)``
    returns one float64 score per sample, higher = more likely known.  ``predict`` gives the
    closed-set prediction the detector pairs with its score (argmax of the logits; OpenMax's
    own).  Detectors that need the inputs (``needs_inputs``) are scored with ``score_inputs``.
    ``state_dict()`` holds the constructor arguments and the fitted state as plain Python
    values and tensors (``torch.load(weights_only=True)`` reads it); :func:`detector_from_state`
    rebuilds the fitted detector (``predict`` on new data).
    """

    name: str = "?"
    needs_fit: bool = False
    needs_inputs: bool = False

    def fit(self, train_features: Any, train_labels: Any, *, train_logits: Any = None,
            classifier: Optional[Callable] = None) -> "Detector":
        return self

    def score(self, logits: Any, features: Any = None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, logits: Any, features: Any = None) -> np.ndarray:
        return _np64(logits, "logits", 2).argmax(axis=1)

    def params(self) -> Dict[str, Any]:
        """The constructor's keyword arguments (plain values)."""
        return {}

    def _fitted_state(self) -> Dict[str, Any]:
        return {}

    def _load_fitted_state(self, state: Mapping[str, Any]) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "params": self.params(), "state": self._fitted_state()}

    def _check_fitted(self, attr: str) -> None:
        if getattr(self, attr, None) is None:
            raise ConfigError(f"open-set detector {self.name} is not fitted; call fit() on the training "
                              f"features first")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@DETECTORS.register("msp")
class MSP(Detector):
    """Maximum softmax probability, max_k softmax(z)_k (Hendrycks & Gimpel 2017)."""

    name = "msp"

    def score(self, logits: Any, features: Any = None) -> np.ndarray:
        z = _np64(logits, "logits", 2)
        return np.exp(z.max(axis=1) - _logsumexp(z))


@DETECTORS.register("maxlogit")
class MaxLogit(Detector):
    """Maximum logit, max_k z_k (Hendrycks et al. 2022, whose anomaly score is -max_k z_k)."""

    name = "maxlogit"

    def score(self, logits: Any, features: Any = None) -> np.ndarray:
        return _np64(logits, "logits", 2).max(axis=1)


@DETECTORS.register("energy")
class Energy(Detector):
    """Negative free energy, ``T * logsumexp(z / T)`` (Liu et al. 2020; official code
    ``wetliu/energy_ood``, ``CIFAR/test.py``, appends ``-(T * torch.logsumexp(output / T, dim=1))``
    as an anomaly score; T = 1 by default)."""

    name = "energy"

    def __init__(self, *, temperature: float = 1.0) -> None:
        self.temperature = _pos("energy", "temperature", temperature)

    def score(self, logits: Any, features: Any = None) -> np.ndarray:
        return -energy(logits, self.temperature)

    def params(self) -> Dict[str, Any]:
        return {"temperature": self.temperature}

    def __repr__(self) -> str:
        return f"Energy(temperature={self.temperature})"


# ----------------------------------------------------------------------------- ODIN
def _batches(x: Any, batch_size: int) -> Iterable[torch.Tensor]:
    """Input batches from a tensor / array (N, C, L) or an iterable of batches (tensors, or
    tuples whose first element is the input, as a DataLoader yields)."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(x)
        for i in range(0, len(t), batch_size):
            yield t[i:i + batch_size]
        return
    for b in x:
        yield b[0] if isinstance(b, (tuple, list)) else b


@DETECTORS.register("odin")
class ODIN(Detector):
    """ODIN (Liang et al. 2018): temperature scaling plus input perturbation.

    As the official code (``facebookresearch/odin``, ``code/calData.py``): the model's logits
    ``z`` of the input, the predicted class ``yhat = argmax z``, the cross-entropy of
    ``z / T`` against ``yhat``; its input gradient binarised as ``2 * (grad >= 0) - 1``; the
    perturbed input ``x~ = x - eps * sign``; the score ``max softmax(model(x~) / T)``.  The
    official code divides the sign by the per-channel std of its image normalisation (it
    perturbs in raw pixel units); here the perturbation is in the model's input units (the
    RMS-normalised signal), so ``eps`` is in those units.  Defaults T = 1000 (the paper and the
    code's default).

    Choosing eps without unknowns: ODIN tuned (T, eps) on out-of-distribution validation data,
    which an open-set run must not see.  ``epsilon="auto"`` follows Generalized ODIN (Hsu et al.
    2020): eps* = argmax over the grid of the MEAN score of the KNOWN validation samples
    (:meth:`fit_inputs`).  T is not searched that way: the max-softmax score is non-increasing
    in T for every input (p_max = 1 / sum_j exp((z_j - z_max) / T) and every exponent rises
    towards 0 as T grows), so the criterion would always pick the smallest T; T stays fixed.
    ``score(logits)`` (no inputs) is only defined for eps = 0 (temperature-scaled MSP).
    """

    name = "odin"
    needs_inputs = True

    def __init__(self, *, temperature: float = 1000.0, epsilon: Union[float, str] = "auto",
                 epsilon_grid: Sequence[float] = ODIN_EPSILON_GRID, batch_size: int = 128) -> None:
        self.temperature = _pos("odin", "temperature", temperature)
        if isinstance(epsilon, str):
            if epsilon != "auto":
                raise ConfigError(f"openset odin: epsilon={epsilon!r} is not valid; give a number >= 0 or auto")
            self.epsilon: Union[float, str] = "auto"
        else:
            self.epsilon = _pos("odin", "epsilon", epsilon, allow_zero=True)
        grid = [_pos("odin", "epsilon_grid", e, allow_zero=True) for e in epsilon_grid]
        if not grid:
            raise ConfigError("openset odin: epsilon_grid is empty; give at least one epsilon >= 0")
        self.epsilon_grid = tuple(sorted(set(grid)))
        self.batch_size = _pos("odin", "batch_size", batch_size, integer=True)
        self.selection_: Optional[Dict[float, float]] = None

    def _eps(self) -> float:
        if self.epsilon == "auto":
            raise ConfigError("openset odin: epsilon=auto is not chosen yet; call fit_inputs(model, "
                              "known validation inputs) first")
        return float(self.epsilon)

    def _batch_scores(self, model: torch.nn.Module, xb: torch.Tensor, eps: Sequence[float]) -> np.ndarray:
        dev = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        x = xb.to(device=dev, dtype=dtype).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(x)
            yhat = out.detach().argmax(dim=1)
            loss = F.cross_entropy(out / self.temperature, yhat, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        sign = torch.ge(grad, 0).to(dtype) * 2.0 - 1.0
        cols = []
        with torch.no_grad():
            for e in eps:
                z = model(x.detach() - float(e) * sign) if e else model(x.detach())
                zt = z.detach().to(torch.float64) / self.temperature
                cols.append(torch.softmax(zt, dim=1).max(dim=1).values.cpu().numpy())
        return np.stack(cols, axis=1)

    def _run(self, model: torch.nn.Module, x: Any, eps: Sequence[float]) -> np.ndarray:
        was_training = model.training
        model.eval()
        try:
            parts = [self._batch_scores(model, torch.as_tensor(xb), eps) for xb in _batches(x, self.batch_size)]
        finally:
            model.train(was_training)
        if not parts:
            return np.zeros((0, len(eps)))
        return np.concatenate(parts, axis=0)

    def fit_inputs(self, model: torch.nn.Module, known_val_inputs: Any) -> "ODIN":
        """Choose eps (``epsilon="auto"``) on KNOWN validation inputs: the grid value with the
        highest mean score (Hsu et al. 2020).  A fixed eps is kept as it is."""
        if self.epsilon != "auto":
            return self
        s = self._run(model, known_val_inputs, self.epsilon_grid)
        if len(s) == 0:
            raise DataError("ODIN epsilon=auto needs known validation inputs; got none")
        means = s.mean(axis=0)
        self.selection_ = {float(e): float(m) for e, m in zip(self.epsilon_grid, means)}
        self.epsilon = float(self.epsilon_grid[int(np.argmax(means))])
        logger.info("ODIN: epsilon %.4g chosen on %d known validation samples (mean score per epsilon: %s)",
                    self.epsilon, len(s), ", ".join(f"{e:g}: {m:.6f}" for e, m in self.selection_.items()))
        return self

    def score_inputs(self, model: torch.nn.Module, x: Any) -> np.ndarray:
        """ODIN scores of the inputs ``x`` (tensor/array (N, C, L) or an iterable of batches)."""
        return self._run(model, x, [self._eps()])[:, 0]

    def score(self, logits: Any, features: Any = None) -> np.ndarray:
        if self._eps() != 0.0:
            raise ConfigError("openset odin with epsilon > 0 needs the inputs: use score_inputs(model, x)")
        z = _np64(logits, "logits", 2) / self.temperature
        return np.exp(z.max(axis=1) - _logsumexp(z))

    def params(self) -> Dict[str, Any]:
        return {"temperature": self.temperature, "epsilon": self.epsilon,
                "epsilon_grid": list(self.epsilon_grid), "batch_size": self.batch_size}

    def __repr__(self) -> str:
        return f"ODIN(temperature={self.temperature}, epsilon={self.epsilon})"


# ----------------------------------------------------------------------------- Mahalanobis
_SHRINKAGE = ("auto", "none", "ledoit_wolf", "oas")


@DETECTORS.register("mahalanobis")
class Mahalanobis(Detector):
    """Mahalanobis score of Lee et al. (2018), penultimate features, no input preprocessing.

    As the official code (``pokaxpoka/deep_Mahalanobis_detector``, ``lib_generation.py``:
    ``sample_estimator`` and ``get_Mahalanobis_score``): class means mu_c of the training
    features; ONE covariance tied over the classes, the covariance of the class-centred
    training features (``sklearn.covariance.EmpiricalCovariance(assume_centered=False)``,
    divisor N) and its pseudo-inverse; score ``max_c -1/2 (f - mu_c)^T Sigma^-1 (f - mu_c)``.
    The official input preprocessing and the logistic-regression ensemble over layers are tuned
    on out-of-distribution (or adversarial) validation data and are not used (magnitude 0,
    one layer), as an open-set run has no unknowns to tune on.

    Long tail: a tail class with fewer samples than feature dimensions has no usable covariance
    of its own; the tied covariance pools the within-class scatter of all N training samples,
    so the class only contributes its mean.  When the pool itself is rank-deficient
    (N - K < D) the empirical covariance is singular and the pseudo-inverse ignores every
    direction the training data do not span, so ``shrinkage="auto"`` (default) then uses the
    Ledoit-Wolf shrunk covariance (sklearn ``LedoitWolf``) and otherwise the official empirical
    one.  ``shrinkage``: auto | none (empirical, official) | ledoit_wolf | oas | a number a in
    [0, 1] (``ShrunkCovariance``: (1 - a) Sigma + a * tr(Sigma) / D * I).
    """

    name = "mahalanobis"
    needs_fit = True

    def __init__(self, *, shrinkage: Union[str, float] = "auto", batch_size: int = 8192) -> None:
        if isinstance(shrinkage, str):
            if shrinkage not in _SHRINKAGE:
                raise ConfigError(f"openset mahalanobis: shrinkage={shrinkage!r} is not valid; give one of "
                                  f"{', '.join(_SHRINKAGE)} or a number in [0, 1]")
        elif isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0 <= shrinkage <= 1:
            raise ConfigError(f"openset mahalanobis: shrinkage={shrinkage!r} is not valid; give one of "
                              f"{', '.join(_SHRINKAGE)} or a number in [0, 1]")
        self.shrinkage = shrinkage
        self.batch_size = _pos("mahalanobis", "batch_size", batch_size, integer=True)
        self.means_: Optional[np.ndarray] = None
        self.precision_: Optional[np.ndarray] = None
        self.covariance_kind_: Optional[str] = None

    def fit(self, train_features: Any, train_labels: Any, *, train_logits: Any = None,
            classifier: Optional[Callable] = None) -> "Mahalanobis":
        import sklearn.covariance as skcov

        f = _np64(train_features, "training features", 2)
        y = _labels(train_labels, len(f))
        classes = np.unique(y)
        if len(classes) == 0:
            raise DataError("Mahalanobis needs training features")
        k = int(y.max()) + 1
        missing = sorted(set(range(k)) - set(classes.tolist()))
        if missing:
            logger.warning("Mahalanobis: classes %s have no training features; they get no mean and "
                           "never win the max", missing)
        means = np.full((k, f.shape[1]), np.nan)
        for c in classes:
            means[c] = f[y == c].mean(axis=0)
        centred = f - means[y]
        n, d = f.shape
        kind = self.shrinkage
        if kind == "auto":
            kind = "ledoit_wolf" if n - len(classes) < d else "none"
        if kind == "none":
            est = skcov.EmpiricalCovariance(assume_centered=False)
        elif kind == "ledoit_wolf":
            est = skcov.LedoitWolf(assume_centered=False)
        elif kind == "oas":
            est = skcov.OAS(assume_centered=False)
        else:
            est = skcov.ShrunkCovariance(assume_centered=False, shrinkage=float(kind))
        est.fit(centred)
        self._set(means, classes, np.asarray(est.precision_, dtype=np.float64),
                  "empirical" if kind == "none" else str(kind))
        logger.info("Mahalanobis: %d classes, %d training features of dimension %d, %s covariance",
                    len(classes), n, d, self.covariance_kind_)
        return self

    def _set(self, means: np.ndarray, classes: np.ndarray, precision: np.ndarray, kind: str) -> None:
        self.means_ = means
        self.classes_ = classes
        self.precision_ = precision
        self.covariance_kind_ = kind
        # Sigma^-1 = W W^T (W from the symmetric eigen-decomposition; pinv gives w >= 0), so
        # (f - mu)^T Sigma^-1 (f - mu) = ||(f - mu) W||^2.
        w, v = np.linalg.eigh((precision + precision.T) / 2.0)
        self._whiten = v * np.sqrt(np.clip(w, 0.0, None))
        self._means_w = means[classes] @ self._whiten

    def params(self) -> Dict[str, Any]:
        return {"shrinkage": self.shrinkage, "batch_size": self.batch_size}

    def _fitted_state(self) -> Dict[str, Any]:
        if self.means_ is None:
            return {}
        return {"means": torch.from_numpy(self.means_.copy()), "classes": torch.from_numpy(self.classes_.copy()),
                "precision": torch.from_numpy(self.precision_.copy()), "covariance_kind": self.covariance_kind_}

    def _load_fitted_state(self, state: Mapping[str, Any]) -> None:
        if state:
            self._set(state["means"].double().numpy(), state["classes"].long().numpy(),
                      state["precision"].double().numpy(), str(state["covariance_kind"]))

    def distances(self, features: Any) -> np.ndarray:
        """Squared Mahalanobis distances (N, K) to every class mean (NaN for a class without
        training features)."""
        self._check_fitted("precision_")
        f = _np64(features, "features", 2)
        out = np.full((len(f), len(self.means_)), np.nan)
        mm = (self._means_w ** 2).sum(axis=1)
        for i in range(0, len(f), self.batch_size):
            g = f[i:i + self.batch_size] @ self._whiten
            # ||g - m||^2 = ||g||^2 - 2 g.m + ||m||^2 (float64; clipped at 0 against rounding)
            d2 = (g * g).sum(axis=1)[:, None] - 2.0 * (g @ self._means_w.T) + mm[None, :]
            out[i:i + self.batch_size][:, self.classes_] = np.maximum(d2, 0.0)
        return out

    def score(self, logits: Any, features: Any = None) -> np.ndarray:
        if features is None:
            raise DataError("the mahalanobis detector needs the features")
        return np.nanmax(-0.5 * self.distances(features), axis=1)

    def __repr__(self) -> str:
        return f"Mahalanobis(shrinkage={self.shrinkage!r})"


# ----------------------------------------------------------------------------- kNN
@DETECTORS.register("knn")
class KNN(Detector):
    """Deep nearest neighbours (Sun et al. 2022).

    As the official code (``deeplearning-wisc/knn-ood``, ``run_cifar.py``): features
    L2-normalised as ``f / (||f|| + 1e-10)``; a flat L2 index of the normalised training
    features (faiss ``IndexFlatL2``, which returns SQUARED distances); score ``-D[:, -1]``, the
    negative squared distance to the k-th nearest training feature (the paper writes the
    distance; squaring keeps the order, so every metric is the same).  k = 50 (their CIFAR
    setting).  ``sample_ratio`` < 1 keeps a random fraction of the training features (the
    paper's alpha for ImageNet).  Exact search with torch matrix products (float32), in chunks.
    """

    name = "knn"
    needs_fit = True

    def __init__(self, *, k: int = 50, sample_ratio: float = 1.0, seed: int = 0,
                 batch_size: int = 2048) -> None:
        self.k = _pos("knn", "k", k, integer=True)
        ratio = _pos("knn", "sample_ratio", sample_ratio)
        if ratio > 1:
            raise ConfigError(f"openset knn: sample_ratio={sample_ratio!r} is not valid; give a number in (0, 1]")
        self.sample_ratio = ratio
        self.seed = int(seed)
        self.batch_size = _pos("knn", "batch_size", batch_size, integer=True)
        self.bank_: Optional[torch.Tensor] = None

    @staticmethod
    def normalize(features: np.ndarray) -> np.ndarray:
        """``f / (||f||_2 + 1e-10)`` per row (the official normaliser)."""
        return features / (np.linalg.norm(features, ord=2, axis=-1, keepdims=True) + 1e-10)

    def fit(self, train_features: Any, train_labels: Any = None, *, train_logits: Any = None,
            classifier: Optional[Callable] = None) -> "KNN":
        f = _np64(train_features, "training features", 2)
        if self.sample_ratio < 1.0:
            rng = np.random.default_rng(self.seed)
            m = max(1, int(round(self.sample_ratio * len(f))))
            f = f[np.sort(rng.choice(len(f), size=m, replace=False))]
        if len(f) == 0:
            raise DataError("kNN needs training features")
        self.k_ = self.k
        if self.k > len(f):
            logger.warning("kNN: k=%d is more than the %d training features; using k=%d", self.k, len(f), len(f))
            self.k_ = len(f)
        bank = self.normalize(f).astype(np.float32)
        self.bank_ = torch.from_numpy(np.ascontiguousarray(bank))
        self._bank_sq = (self.bank_ * self.bank_).sum(dim=1)
        return self

    def kth_distance(self, features: Any) -> np.ndarray:
        """Squared distance of each normalised feature to its k-th nearest training feature."""
        self._check_fitted("bank_")
        q = torch.from_numpy(np.ascontiguousarray(self.normalize(_np64(features, "features", 2)).astype(np.float32)))
        out = np.empty(len(q), dtype=np.float64)
        with torch.no_grad():
            for i in range(0, len(q), self.batch_size):
                qb = q[i:i + self.batch_size]
                base = (qb * qb).sum(dim=1, keepdim=True) + self._bank_sq[None, :]
                d2 = torch.addmm(base, qb, self.bank_.T, beta=1.0, alpha=-2.0)   # |q|^2 + |t|^2 - 2 q.t
                kth = torch.topk(d2, self.k_, dim=1, largest=False, sorted=True).values[:, -1]
                out[i:i + len(qb)] = kth.clamp_min(0.0).double().numpy()
        return out

    def score(self, logits: Any, features: Any = None) -> np.ndarray:
        if features is None:
            raise DataError("the knn detector needs the features")
        return -self.kth_distance(features)

    def params(self) -> Dict[str, Any]:
        return {"k": self.k, "sample_ratio": self.sample_ratio, "seed": self.seed, "batch_size": self.batch_size}

    def _fitted_state(self) -> Dict[str, Any]:
        return {} if self.bank_ is None else {"bank": self.bank_.clone(), "k_used": int(self.k_)}

    def _load_fitted_state(self, state: Mapping[str, Any]) -> None:
        if state:
            self.bank_ = state["bank"].float().contiguous()
            self._bank_sq = (self.bank_ * self.bank_).sum(dim=1)
            self.k_ = int(state["k_used"])

    def __repr__(self) -> str:
        return f"KNN(k={self.k}, sample_ratio={self.sample_ratio})"


# ----------------------------------------------------------------------------- OpenMax
class WeibullTail:
    """libMR's ``MR.fit_high`` / ``w_score`` (Scheirer et al. 2011; ``libMR/MetaRecognition.cpp``
    as shipped with ``abhijitbendale/OSDN``), with scipy's Weibull MLE.

    Fit (``FitHigh`` -> ``EvtGeneric``): sort the data descending, keep the ``tail_size``
    largest, ``small_score`` = the smallest kept value, translate the kept values to
    ``x + translate_amount - small_score`` (translate_amount 10000, libMR's default) and fit a
    two-parameter Weibull by maximum likelihood (libMR's ``weibull_fit``; here
    ``scipy.stats.weibull_min.fit(..., floc=0)``, the same estimator).  ``w_score(x)`` (``CDF``
    for ``complement_reject``) = ``1 - exp(-((x + translate_amount - small_score) / scale) **
    shape)``, 0 for a negative translated value.  With fewer than two distinct tail values
    libMR's fit fails (it reports an error and its CDF returns -9999); here the w-score is then
    the limit of the fit as the tail's range shrinks to zero: 0 up to the tail value, 1 above.
    """

    def __init__(self, *, tail_size: int = 20, translate_amount: float = 10000.0) -> None:
        self.tail_size = int(tail_size)
        self.translate_amount = float(translate_amount)
        self.shape: Optional[float] = None
        self.scale: Optional[float] = None
        self.small_score: Optional[float] = None

    def fit_high(self, data: Any) -> "WeibullTail":
        from scipy.stats import weibull_min

        x = np.sort(np.asarray(data, dtype=np.float64).reshape(-1))[::-1][: self.tail_size]
        if x.size == 0:
            raise DataError("Weibull tail fit needs at least one value")
        self.small_score = float(x[-1])
        t = x + self.translate_amount - self.small_score
        if x.size < 2 or np.ptp(x) <= 0:
            self.shape = self.scale = None
            return self
        c, _, s = weibull_min.fit(t, floc=0)
        self.shape, self.scale = float(c), float(s)
        return self

    def w_score(self, x: Any) -> np.ndarray:
        if self.small_score is None:
            raise ConfigError("WeibullTail is not fitted; call fit_high first")
        x = np.asarray(x, dtype=np.float64)
        if self.shape is None:
            return (x > self.small_score).astype(np.float64)
        t = x + self.translate_amount - self.small_score
        with np.errstate(over="ignore", divide="ignore"):
            w = -np.expm1(-np.power(np.clip(t, 0.0, None) / self.scale, self.shape))
        return np.where(t < 0, 0.0, w)


_DISTANCES = ("eucos", "euclidean", "cosine")


def _mav_distance(av: np.ndarray, mav: np.ndarray, kind: str) -> np.ndarray:
    """OSDN's ``compute_distance`` between activation vectors (N, K) and one MAV (K,):
    eucos = euclidean / 200 + cosine distance; euclidean = euclidean / 200; cosine."""
    eu = np.sqrt(((av - mav) ** 2).sum(axis=1))
    if kind == "euclidean":
        return eu / 200.0
    den = np.linalg.norm(av, axis=1) * np.linalg.norm(mav)
    cos = 1.0 - (av @ mav) / np.where(den > 0, den, np.inf)
    return cos if kind == "cosine" else eu / 200.0 + cos


@DETECTORS.register("openmax")
class OpenMax(Detector):
    """OpenMax (Bendale & Boult 2016), as the official code (``abhijitbendale/OSDN``).

    Activation vectors (AV) are the logits.  Fit (``MAV_Compute.py``, ``compute_distances.py``,
    ``evt_fitting.py``): per class, the mean AV (MAV) of the CORRECTLY classified training
    samples of that class, their distances to it (``distance``: eucos = euclidean / 200 +
    cosine, the default; euclidean / 200; cosine), and a :class:`WeibullTail` fitted to the
    ``tail_size`` largest distances (default 20).  Score (``compute_openmax.py``:
    ``recalibrate_scores`` and ``computeOpenMaxProbability``): rank the classes by the logits;
    the i-th ranked class (i = 1..alpha) gets weight (alpha + 1 - i) / alpha, the others 0;
    each logit is revised to ``v_j * (1 - w_j * weight_j)`` with ``w_j`` the class's w-score of
    the sample's distance to its MAV; the unknown activation is ``sum_j (v_j - revised_j)``;
    the probabilities are the softmax over the K revised logits and the unknown activation.
    Score = 1 - P(unknown); :meth:`predict` = argmax of the revised known probabilities.

    Defaults: tail_size 20 (official WEIBULL_TAIL_SIZE), alpha_rank 10 (official ALPHA_RANK,
    for 1000 classes; limited to K here).  One AV per sample (the official code averages 10
    crops).  Long tail: a class without correctly classified training samples uses all of its
    training samples for the MAV (logged); a class with one sample has a degenerate Weibull
    (see :class:`WeibullTail`); a class without training samples is never revised.
    """

    name = "openmax"
    needs_fit = True

    def __init__(self, *, tail_size: int = 20, alpha_rank: int = 10, distance: str = "eucos") -> None:
        self.tail_size = _pos("openmax", "tail_size", tail_size, integer=True)
        self.alpha_rank = _pos("openmax", "alpha_rank", alpha_rank, integer=True)
        if distance not in _DISTANCES:
            raise ConfigError(f"openset openmax: distance={distance!r} is not valid; valid: {', '.join(_DISTANCES)}")
        self.distance = distance
        self.mavs_: Optional[np.ndarray] = None
        self.weibulls_: list = []

    def fit(self, train_features: Any, train_labels: Any, *, train_logits: Any = None,
            classifier: Optional[Callable] = None) -> "OpenMax":
        if train_logits is None:
            if classifier is None:
                raise ConfigError("openset openmax needs the training logits (train_logits) or the "
                                  "classifier head that maps features to logits")
            with torch.no_grad():
                f = train_features if isinstance(train_features, torch.Tensor) else torch.as_tensor(
                    np.asarray(train_features, dtype=np.float32))
                train_logits = classifier(f)
        av = _np64(train_logits, "training logits", 2)
        y = _labels(train_labels, len(av))
        k = av.shape[1]
        if y.size and y.max() >= k:
            raise DataError(f"training labels reach {int(y.max())} but the logits have {k} classes")
        pred = av.argmax(axis=1)
        mavs = np.full((k, k), np.nan)
        weibulls: list = [None] * k
        for c in range(k):
            members = y == c
            correct = members & (pred == c)
            if not correct.any():
                if not members.any():
                    logger.warning("OpenMax: class %d has no training samples; it is never revised", c)
                    continue
                logger.info("OpenMax: class %d has no correctly classified training sample; its MAV uses "
                            "all %d of its samples", c, int(members.sum()))
                correct = members
            mavs[c] = av[correct].mean(axis=0)
            d = _mav_distance(av[correct], mavs[c], self.distance)
            weibulls[c] = WeibullTail(tail_size=self.tail_size).fit_high(d)
        self.mavs_ = mavs
        self.weibulls_ = weibulls
        return self

    def _revise(self, logits: Any) -> Tuple[np.ndarray, np.ndarray]:
        self._check_fitted("mavs_")
        v = _np64(logits, "logits", 2)
        n, k = v.shape
        if k != len(self.mavs_):
            raise DataError(f"OpenMax was fitted on {len(self.mavs_)} classes but the logits have {k}")
        alpha = min(self.alpha_rank, k)
        ranked = np.argsort(-v, axis=1, kind="stable")[:, :alpha]
        weights = np.zeros_like(v)
        rows = np.arange(n)[:, None]
        weights[rows, ranked] = (alpha + 1 - np.arange(1, alpha + 1)) / float(alpha)
        w = np.zeros_like(v)
        for c, wb in enumerate(self.weibulls_):
            if wb is not None:
                w[:, c] = wb.w_score(_mav_distance(v, self.mavs_[c], self.distance))
        revised = v * (1.0 - w * weights)
        unknown = (v - revised).sum(axis=1)
        return revised, unknown

    def probabilities(self, logits: Any) -> np.ndarray:
        """OpenMax probabilities (N, K + 1); the last column is P(unknown)."""
        revised, unknown = self._revise(logits)
        z = np.concatenate([revised, unknown[:, None]], axis=1)
        return np.exp(z - _logsumexp(z)[:, None])

    def score(self, logits: Any, features: Any = None) -> np.ndarray:
        return 1.0 - self.probabilities(logits)[:, -1]

    def predict(self, logits: Any, features: Any = None) -> np.ndarray:
        return self._revise(logits)[0].argmax(axis=1)

    def params(self) -> Dict[str, Any]:
        return {"tail_size": self.tail_size, "alpha_rank": self.alpha_rank, "distance": self.distance}

    def _fitted_state(self) -> Dict[str, Any]:
        if self.mavs_ is None:
            return {}
        nan = float("nan")
        wb = self.weibulls_
        col = lambda attr: torch.tensor([nan if (w is None or getattr(w, attr) is None) else getattr(w, attr)
                                         for w in wb], dtype=torch.float64)
        return {"mavs": torch.from_numpy(self.mavs_.copy()), "shape": col("shape"), "scale": col("scale"),
                "small_score": col("small_score"),
                "translate_amount": col("translate_amount")}

    def _load_fitted_state(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.mavs_ = state["mavs"].double().numpy()
        self.weibulls_ = []
        for c in range(len(self.mavs_)):
            small = float(state["small_score"][c])
            if math.isnan(small):
                self.weibulls_.append(None)
                continue
            wb = WeibullTail(tail_size=self.tail_size, translate_amount=float(state["translate_amount"][c]))
            wb.small_score = small
            shape, scale = float(state["shape"][c]), float(state["scale"][c])
            wb.shape, wb.scale = (None, None) if math.isnan(shape) else (shape, scale)
            self.weibulls_.append(wb)

    def __repr__(self) -> str:
        return f"OpenMax(tail_size={self.tail_size}, alpha_rank={self.alpha_rank}, distance={self.distance!r})"


# ----------------------------------------------------------------------------- driver
def detector_from_state(state: Mapping[str, Any]) -> Detector:
    """Rebuild a (fitted) detector from its :meth:`Detector.state_dict`."""
    det = DETECTORS.build(str(state["name"]), **dict(state.get("params") or {}))
    det._load_fitted_state(state.get("state") or {})
    return det


def build_detectors(names: Optional[Sequence[str]] = None,
                    params: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, Detector]:
    """Detectors by config name (default :data:`DEFAULT_DETECTORS`), each built with
    ``params[name]`` as keyword arguments (``openset.params``).  A wrong name lists the valid
    ones; parameters for a detector that is not requested are an error (they would be ignored)."""
    names = list(DEFAULT_DETECTORS if names is None else names)
    if not names:
        raise ConfigError(f"openset.detectors is empty; valid detectors: {', '.join(DETECTORS.names())}")
    params = dict(params or {})
    out: Dict[str, Detector] = {}
    for raw in names:
        name = DETECTORS.canonical(str(raw))
        if name in out:
            raise ConfigError(f"openset.detectors names {name!r} twice")
        kw = dict(params.pop(name, None) or {})
        try:
            out[name] = DETECTORS.build(name, **kw)
        except TypeError as exc:
            raise ConfigError(f"openset.params.{name}: {exc}") from None
    if params:
        raise ConfigError(f"openset.params has settings for {', '.join(sorted(params))}, which "
                          f"openset.detectors does not use ({', '.join(out)})")
    return out


def fit_detectors(detectors: Mapping[str, Detector], train_features: Any, train_labels: Any, *,
                  train_logits: Any = None, classifier: Optional[Callable] = None) -> Dict[str, Detector]:
    """Fit every detector on the TRAINING features / labels / logits of the known classes."""
    for det in detectors.values():
        det.fit(train_features, train_labels, train_logits=train_logits, classifier=classifier)
    return dict(detectors)


def score_all(detectors: Mapping[str, Detector], logits: Any, features: Any = None) -> Dict[str, np.ndarray]:
    """``{name: scores}`` of every detector on one set of test logits and features (computed
    once).  Detectors that need the inputs (ODIN) are scored separately with ``score_inputs``."""
    need_inputs = [n for n, d in detectors.items() if d.needs_inputs]
    if need_inputs:
        raise ConfigError(f"{', '.join(need_inputs)} need the inputs (a backward pass): score them with "
                          f"score_inputs(model, x), not score_all")
    z = _np64(logits, "logits", 2)
    f = None if features is None else _np64(features, "features", 2)
    if f is not None and len(f) != len(z):
        raise DataError(f"{len(z)} logits but {len(f)} feature vectors")
    return {name: det.score(z, f) for name, det in detectors.items()}


def evaluate_detectors(
    detectors: Mapping[str, Detector],
    *,
    val_logits: Any,
    val_features: Any,
    test_logits: Any,
    test_features: Any,
    y_test: Any,
    class_counts: Sequence[int],
    threshold: Union[str, float] = "tpr95",
    extra_scores: Optional[Mapping[str, Tuple[Any, Any]]] = None,
    many_thresh: float = 100,
    few_thresh: float = 20,
    grouping: str = "absolute",
) -> Dict[str, Dict[str, Any]]:
    """Score fitted detectors and report them, the run's open-set step in one call.

    ``val_*``: the KNOWN validation split (the unknown classes were removed from it), used only
    to choose each detector's threshold (``openset.threshold``); ``test_*`` and ``y_test``
    (known 0..K-1, unknown -1): the test split; ``class_counts``: TRAINING counts of the K
    known classes.  ``extra_scores``: ``{name: (val_scores, test_scores)}`` of detectors scored
    elsewhere (ODIN's ``score_inputs``; closed-set prediction = argmax of the logits).
    Returns ``{"metrics": {name: openset_report(...)}, "thresholds": {name: t},
    "scores": {name: test scores}, "predictions": {name: closed-set predictions}}``; the
    ``metrics`` dict is results.json's ``metrics.final.openset``.
    """
    from .openset_metrics import choose_threshold, openset_report

    val = score_all(detectors, val_logits, val_features)
    test = score_all(detectors, test_logits, test_features)
    z = _np64(test_logits, "test logits", 2)
    f = None if test_features is None else _np64(test_features, "test features", 2)
    preds = {name: det.predict(z, f) for name, det in detectors.items()}
    for name, (v, t) in (extra_scores or {}).items():
        if name in test:
            raise ConfigError(f"open-set detector {name} is scored twice (extra_scores and detectors)")
        val[name], test[name] = _np64(v, f"{name} validation scores", 1), _np64(t, f"{name} test scores", 1)
        preds[name] = z.argmax(axis=1)
    out: Dict[str, Dict[str, Any]] = {"metrics": {}, "thresholds": {}, "scores": test, "predictions": preds}
    for name in test:
        thr = choose_threshold(threshold, val[name])
        out["thresholds"][name] = thr
        out["metrics"][name] = openset_report(test[name], y_test, preds[name], threshold=thr,
                                              class_counts=class_counts, many_thresh=many_thresh,
                                              few_thresh=few_thresh, grouping=grouping)
    return out
