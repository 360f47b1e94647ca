"""Open-set scores of the logits alone: MSP, MaxLogit and energy (no fit, no features)."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from .openset_base import DETECTORS, Detector, as_float64, check_positive, energy, logsumexp_rows

__all__ = ["MSP", "MaxLogit", "Energy"]


@DETECTORS.register("msp")
class MSP(Detector):
    """Maximum softmax probability, max_k softmax(z)_k (Hendrycks & Gimpel 2017)."""

    name = "msp"

    def score(self, logits: Any, features: Any = None) -> np.ndarray:
        z = as_float64(logits, "logits", 2)
        return np.exp(z.max(axis=1) - logsumexp_rows(z))


@DETECTORS.register("maxlogit")
class MaxLogit(Detector):
    """Maximum logit, max_k z_k (Hendrycks et al. 2022, whose anomaly score is -max_k z_k)."""

    name = "maxlogit"

    def score(self, logits: Any, features: Any = None) -> np.ndarray:
        return as_float64(logits, "logits", 2).max(axis=1)


@DETECTORS.register("energy")
class Energy(Detector):
    """Negative free energy, ``T * logsumexp(z / T)`` (Liu et al. 2020; official code
    ``wetliu/energy_ood``, ``CIFAR/test.py``, appends ``-(T * torch.logsumexp(output / T, dim=1))``
    as an anomaly score; T = 1 by default)."""

    name = "energy"

    def __init__(self, *, temperature: float = 1.0) -> None:
        self.temperature = check_positive("energy", "temperature", temperature)

    def score(self, logits: Any, features: Any = None) -> np.ndarray:
        return -energy(logits, self.temperature)

    def params(self) -> Dict[str, Any]:
        return {"temperature": self.temperature}

    def __repr__(self) -> str:
        return f"Energy(temperature={self.temperature})"
