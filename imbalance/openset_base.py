"""The base of the open-set detectors: the :class:`Detector` interface, the registry
:data:`DETECTORS` and the array helpers every detector shares.

The detectors register themselves in their own modules, one per concern:
:mod:`imbalance.openset_logits` (MSP, MaxLogit, energy: scores of the logits),
:mod:`imbalance.openset_odin` (ODIN: input perturbation, needs a backward pass),
:mod:`imbalance.openset_features` (Mahalanobis and kNN: distances in feature space) and
:mod:`imbalance.openset_openmax` (OpenMax: Weibull models of activation-vector distances).
:mod:`imbalance.openset` imports them all and is the entry point (build, fit, score, evaluate).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np
import torch

from .errors import ConfigError, DataError
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["DETECTORS", "Detector", "energy", "as_float64", "as_labels", "logsumexp_rows", "check_positive"]

#: Open-set detectors by config name (``openset.detectors``); filled by the detector modules,
#: which :mod:`imbalance.openset` imports.
DETECTORS = Registry("open-set detector")


# ----------------------------------------------------------------------------- helpers
def as_float64(a: Any, name: str, ndim: Optional[int] = None) -> np.ndarray:
    """float64 numpy copy of an array or tensor (bf16 / fp16 tensors included)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to(device="cpu", dtype=torch.float64).numpy()
    x = np.asarray(a, dtype=np.float64)
    if ndim is not None and x.ndim != ndim:
        raise DataError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{name} holds {int((~np.isfinite(x)).sum())} non-finite value(s)")
    return x


def as_labels(a: Any, n: int) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    y = np.asarray(a).reshape(-1)
    if y.size != n:
        raise DataError(f"{y.size} training labels for {n} training features")
    if y.size and (y.min() < 0 or not np.issubdtype(y.dtype, np.integer)):
        raise DataError("training labels must be integers 0..K-1 (known classes only)")
    return y.astype(np.int64)


def logsumexp_rows(z: np.ndarray, axis: int = 1) -> np.ndarray:
    m = z.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def check_positive(name: str, key: str, v: Any, *, integer: bool = False, allow_zero: bool = False) -> Any:
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
    z = as_float64(logits, "logits", 2)
    return -float(temperature) * logsumexp_rows(z / float(temperature))


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
        return as_float64(logits, "logits", 2).argmax(axis=1)

    def params(self) -> Dict[str, Any]:
        """The constructor's keyword arguments (plain values)."""
        return {}

    def fitted_state(self) -> Dict[str, Any]:
        return {}

    def load_fitted_state(self, state: Mapping[str, Any]) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "params": self.params(), "state": self.fitted_state()}

    def check_fitted(self, attr: str) -> None:
        if getattr(self, attr, None) is None:
            raise ConfigError(f"open-set detector {self.name} is not fitted; call fit() on the training "
                              f"features first")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
