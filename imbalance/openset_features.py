"""Open-set scores from distances in feature space: Mahalanobis (Lee et al. 2018) and deep
k nearest neighbours (Sun et al. 2022), both fitted on the training features of the known classes."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Mapping, Optional, Union

import numpy as np
import torch

from .errors import ConfigError, DataError
from .openset_base import DETECTORS, Detector, as_float64, as_labels, check_positive

logger = logging.getLogger(__name__)

__all__ = ["Mahalanobis", "KNN"]


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
        self.batch_size = check_positive("mahalanobis", "batch_size", batch_size, integer=True)
        self.means_: Optional[np.ndarray] = None
        self.precision_: Optional[np.ndarray] = None
        self.covariance_kind_: Optional[str] = None

    def fit(self, train_features: Any, train_labels: Any, *, train_logits: Any = None,
            classifier: Optional[Callable] = None) -> "Mahalanobis":
        import sklearn.covariance as skcov

        f = as_float64(train_features, "training features", 2)
        y = as_labels(train_labels, len(f))
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

    def fitted_state(self) -> Dict[str, Any]:
        if self.means_ is None:
            return {}
        return {"means": torch.from_numpy(self.means_.copy()), "classes": torch.from_numpy(self.classes_.copy()),
                "precision": torch.from_numpy(self.precision_.copy()), "covariance_kind": self.covariance_kind_}

    def load_fitted_state(self, state: Mapping[str, Any]) -> None:
        if state:
            self._set(state["means"].double().numpy(), state["classes"].long().numpy(),
                      state["precision"].double().numpy(), str(state["covariance_kind"]))

    def distances(self, features: Any) -> np.ndarray:
        """Squared Mahalanobis distances (N, K) to every class mean (NaN for a class without
        training features)."""
        self.check_fitted("precision_")
        f = as_float64(features, "features", 2)
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
        self.k = check_positive("knn", "k", k, integer=True)
        ratio = check_positive("knn", "sample_ratio", sample_ratio)
        if ratio > 1:
            raise ConfigError(f"openset knn: sample_ratio={sample_ratio!r} is not valid; give a number in (0, 1]")
        self.sample_ratio = ratio
        self.seed = int(seed)
        self.batch_size = check_positive("knn", "batch_size", batch_size, integer=True)
        self.bank_: Optional[torch.Tensor] = None

    @staticmethod
    def normalize(features: np.ndarray) -> np.ndarray:
        """``f / (||f||_2 + 1e-10)`` per row (the official normaliser)."""
        return features / (np.linalg.norm(features, ord=2, axis=-1, keepdims=True) + 1e-10)

    def fit(self, train_features: Any, train_labels: Any = None, *, train_logits: Any = None,
            classifier: Optional[Callable] = None) -> "KNN":
        f = as_float64(train_features, "training features", 2)
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
        self.check_fitted("bank_")
        q = torch.from_numpy(np.ascontiguousarray(self.normalize(as_float64(features, "features", 2)).astype(np.float32)))
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

    def fitted_state(self) -> Dict[str, Any]:
        return {} if self.bank_ is None else {"bank": self.bank_.clone(), "k_used": int(self.k_)}

    def load_fitted_state(self, state: Mapping[str, Any]) -> None:
        if state:
            self.bank_ = state["bank"].float().contiguous()
            self._bank_sq = (self.bank_ * self.bank_).sum(dim=1)
            self.k_ = int(state["k_used"])

    def __repr__(self) -> str:
        return f"KNN(k={self.k}, sample_ratio={self.sample_ratio})"
