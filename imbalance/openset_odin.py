"""ODIN (Liang et al. 2018): temperature scaling plus input perturbation; needs the model and
a backward pass per input, so it is scored on inputs, not on cached logits."""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError
from .openset_base import DETECTORS, Detector, as_float64, check_positive, logsumexp_rows

logger = logging.getLogger(__name__)

__all__ = ["ODIN", "ODIN_EPSILON_GRID"]

#: ODIN's epsilon candidates: 0 (no perturbation) and the search list of Hsu et al. (2020,
#: Generalized ODIN).  Units: the model's input (the RMS-normalised signal).
ODIN_EPSILON_GRID: Tuple[float, ...] = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)


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
        self.temperature = check_positive("odin", "temperature", temperature)
        if isinstance(epsilon, str):
            if epsilon != "auto":
                raise ConfigError(f"openset odin: epsilon={epsilon!r} is not valid; give a number >= 0 or auto")
            self.epsilon: Union[float, str] = "auto"
        else:
            self.epsilon = check_positive("odin", "epsilon", epsilon, allow_zero=True)
        grid = [check_positive("odin", "epsilon_grid", e, allow_zero=True) for e in epsilon_grid]
        if not grid:
            raise ConfigError("openset odin: epsilon_grid is empty; give at least one epsilon >= 0")
        self.epsilon_grid = tuple(sorted(set(grid)))
        self.batch_size = check_positive("odin", "batch_size", batch_size, integer=True)
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
        z = as_float64(logits, "logits", 2) / self.temperature
        return np.exp(z.max(axis=1) - logsumexp_rows(z))

    def params(self) -> Dict[str, Any]:
        return {"temperature": self.temperature, "epsilon": self.epsilon,
                "epsilon_grid": list(self.epsilon_grid), "batch_size": self.batch_size}

    def __repr__(self) -> str:
        return f"ODIN(temperature={self.temperature}, epsilon={self.epsilon})"
