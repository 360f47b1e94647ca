"""Open-set detectors: post-hoc scores on a trained classifier (no retraining).  The entry point.

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
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ConfigError, DataError
from .openset_base import DETECTORS, Detector, as_float64, energy
from .openset_features import KNN, Mahalanobis
from .openset_logits import MSP, Energy, MaxLogit
from .openset_odin import ODIN, ODIN_EPSILON_GRID
from .openset_openmax import OpenMax, WeibullTail

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

#: Detectors scored when ``openset.detectors`` is not given: all that need no input gradients.
DEFAULT_DETECTORS: Tuple[str, ...] = ("msp", "maxlogit", "energy", "mahalanobis", "knn", "openmax")


# ----------------------------------------------------------------------------- driver
def detector_from_state(state: Mapping[str, Any]) -> Detector:
    """Rebuild a (fitted) detector from its :meth:`Detector.state_dict`."""
    det = DETECTORS.build(str(state["name"]), **dict(state.get("params") or {}))
    det.load_fitted_state(state.get("state") or {})
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
    z = as_float64(logits, "logits", 2)
    f = None if features is None else as_float64(features, "features", 2)
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
    z = as_float64(test_logits, "test logits", 2)
    f = None if test_features is None else as_float64(test_features, "test features", 2)
    preds = {name: det.predict(z, f) for name, det in detectors.items()}
    for name, (v, t) in (extra_scores or {}).items():
        if name in test:
            raise ConfigError(f"open-set detector {name} is scored twice (extra_scores and detectors)")
        val[name], test[name] = as_float64(v, f"{name} validation scores", 1), as_float64(t, f"{name} test scores", 1)
        preds[name] = z.argmax(axis=1)
    out: Dict[str, Dict[str, Any]] = {"metrics": {}, "thresholds": {}, "scores": test, "predictions": preds}
    for name in test:
        thr = choose_threshold(threshold, val[name])
        out["thresholds"][name] = thr
        out["metrics"][name] = openset_report(test[name], y_test, preds[name], threshold=thr,
                                              class_counts=class_counts, many_thresh=many_thresh,
                                              few_thresh=few_thresh, grouping=grouping)
    return out

