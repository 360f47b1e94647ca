"""OpenMax (Bendale & Boult 2016) and the libMR Weibull tail fit it uses."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from .errors import ConfigError, DataError
from .openset_base import DETECTORS, Detector, as_float64, as_labels, check_positive, logsumexp_rows

logger = logging.getLogger(__name__)

__all__ = ["OpenMax", "WeibullTail"]


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
        self.tail_size = check_positive("openmax", "tail_size", tail_size, integer=True)
        self.alpha_rank = check_positive("openmax", "alpha_rank", alpha_rank, integer=True)
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
        av = as_float64(train_logits, "training logits", 2)
        y = as_labels(train_labels, len(av))
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
        self.check_fitted("mavs_")
        v = as_float64(logits, "logits", 2)
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
        return np.exp(z - logsumexp_rows(z)[:, None])

    def score(self, logits: Any, features: Any = None) -> np.ndarray:
        return 1.0 - self.probabilities(logits)[:, -1]

    def predict(self, logits: Any, features: Any = None) -> np.ndarray:
        return self._revise(logits)[0].argmax(axis=1)

    def params(self) -> Dict[str, Any]:
        return {"tail_size": self.tail_size, "alpha_rank": self.alpha_rank, "distance": self.distance}

    def fitted_state(self) -> Dict[str, Any]:
        if self.mavs_ is None:
            return {}
        nan = float("nan")
        wb = self.weibulls_
        col = lambda attr: torch.tensor([nan if (w is None or getattr(w, attr) is None) else getattr(w, attr)
                                         for w in wb], dtype=torch.float64)
        return {"mavs": torch.from_numpy(self.mavs_.copy()), "shape": col("shape"), "scale": col("scale"),
                "small_score": col("small_score"),
                "translate_amount": col("translate_amount")}

    def load_fitted_state(self, state: Mapping[str, Any]) -> None:
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
