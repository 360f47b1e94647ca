"""The classifier chain of a trained model: its head and the wrappers stages 2 and 3 add.

A final model's ``classifier`` is a head (registry :data:`imbalance.heads.HEADS`), or a
prototype classifier fitted on the training features (``evaluation.classifier=ncm|knn``,
registry :data:`imbalance.prototypes.PROTOTYPE_CLASSIFIERS`, recorded as kind ``prototype``),
possibly wrapped, inner to outer, by

=================  ===========================================  ====================================
kind               module                                       added by
=================  ===========================================  ====================================
``tau_norm``       :class:`TauNormalizedLinear` (replaces W x+b)  stage 3 tau-normalisation
``lws``            :class:`LWSClassifier`                        stage 2 ``mode=lws`` / ``crt_lws``
``logit_adjust``   :class:`LogitAdjustedOutput`                  stage 3 / post-hoc adjustment
``temperature``    :class:`TemperatureScaledOutput`              stage 3 temperature scaling
=================  ===========================================  ====================================

:func:`describe_chain` turns a classifier into a list of plain dicts (stored in ``final.pt``);
:func:`build_chain` builds the same structure again (values are placeholders until the
checkpoint's state dict is loaded), so loading a final model replays nothing of the pipeline.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import heads
from .prototypes import KNNClassifier, NCMClassifier, create_prototype_classifier
from .class_priors import log_prior as _counts_log_prior
from .errors import ConfigError

__all__ = ["LWSClassifier", "TauNormalizedLinear", "LogitAdjustedOutput", "TemperatureScaledOutput",
           "tau_normalize", "tau_normalized_weight", "classifier_weight", "describe_chain", "build_chain",
           "head_spec"]


def _log_prior(class_counts: Sequence[int]) -> torch.Tensor:
    counts = list(class_counts)
    return _counts_log_prior(counts, len(counts), "logit adjustment")


# --------------------------------------------------------------------------------- wrappers
class LWSClassifier(nn.Module):
    """Learnable weight scaling (Kang et al. 2020): a per-class scale on a frozen head's logits,
    ``z_c = s_c * head(f)_c``, the scales initialised to 1."""

    def __init__(self, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.head = head
        self.scales = nn.Parameter(torch.ones(num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) * self.scales.to(features.dtype)


def tau_normalized_weight(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """``w_c / ||w_c||^tau`` row by row (rows are classes)."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return weight / norms.pow(tau)


def classifier_weight(classifier: nn.Module) -> torch.Tensor:
    """The (K, D) weight matrix of a classifier head (nn.Linear or a head with ``weight`` /
    ``linear.weight`` / ``fc.weight``)."""
    for path in ("weight", "linear.weight", "fc.weight", "base.weight"):
        obj = classifier
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.Tensor) and obj.dim() == 2:
            return obj
    raise ConfigError(
        f"tau_norm needs a classifier with a (classes x features) weight matrix; "
        f"{type(classifier).__name__} has none"
    )


class TauNormalizedLinear(nn.Module):
    """``f @ W_tau^T`` with ``W_tau = W / ||W_c||^tau`` precomputed and no bias (Kang et al.'s
    tau_norm). ``weight`` is a buffer: stage 3 trains nothing."""

    def __init__(self, weight: torch.Tensor, tau: float) -> None:
        super().__init__()
        self.tau = float(tau)
        self.register_buffer("weight", tau_normalized_weight(weight.detach().float(), self.tau))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight.to(features.dtype))

    def extra_repr(self) -> str:
        return f"tau={self.tau}, classes={self.weight.shape[0]}, features={self.weight.shape[1]}"


def tau_normalize(head: nn.Module, tau: float) -> nn.Module:
    """A new module computing ``f @ (W / ||W_c||^tau)^T`` (no bias) from ``head``'s weight ``W``;
    ``head`` is not modified (DESIGN.md: ``imbalance.calibration.tau_normalize``).

    - ``nn.Linear`` and the ``logit_adjust`` head (its eval-mode logits are ``W f + b``): ``W``.
    - the ``temperature`` head ``(W f + b) / T``: ``W / T`` (the same relative norms; T kept).
    - an LWS wrapper (``s_c * head(f)``): the wrapped head is normalised, the scales are kept.
    - a cosine head: refused (its class vectors are already unit length).
    """
    return _tau_normalize(head, float(tau)).train(head.training)


def _tau_normalize(head: nn.Module, tau: float) -> nn.Module:
    if isinstance(head, heads.CosineMarginClassifier):
        raise ConfigError("tau-norm on a cosine head (model.head=cosine_ldam) is a no-op: its class weights are "
                          "already unit length; use stage3.mode=logit_adjust or a linear head")
    if isinstance(head, LWSClassifier):
        out = LWSClassifier(_tau_normalize(head.head, tau), head.scales.numel())
        with torch.no_grad():
            out.scales.copy_(head.scales)
        out.scales.requires_grad_(False)
        return out.to(head.scales.device)
    if isinstance(head, heads.TemperatureScaledClassifier):
        w = head.linear.weight.detach() / head.temperature.detach()
    else:
        w = classifier_weight(head).detach()
    return TauNormalizedLinear(w, tau).to(w.device)


class LogitAdjustedOutput(nn.Module):
    """Wraps a head and subtracts ``tau * log(pi)`` from its logits (stage-3 logit adjustment,
    baked into the final model so that evaluation and prediction reuse it)."""

    def __init__(self, head: nn.Module, class_counts: Sequence[int], tau: float) -> None:
        super().__init__()
        self.head = head
        self.tau = float(tau)
        self.register_buffer("offset", -self.tau * _log_prior(class_counts))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) + self.offset.to(features.dtype)


class TemperatureScaledOutput(nn.Module):
    """Wraps a head and divides its logits by a fitted scalar ``T`` (Guo et al. 2017's post-hoc
    temperature scaling; the argmax is unchanged)."""

    def __init__(self, head: nn.Module, temperature: float) -> None:
        super().__init__()
        if not (math.isfinite(float(temperature)) and float(temperature) > 0):
            raise ConfigError(f"temperature must be a finite number > 0, got {temperature}")
        self.head = head
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.head(features)
        return z / self.temperature.to(z.dtype)


# --------------------------------------------------------------------------------- the record
def head_spec(head: nn.Module) -> Dict[str, Any]:
    """The registry name and constructor options of a head (its tensors come from a state dict)."""
    if isinstance(head, heads.CosineMarginClassifier):
        return {"kind": "head", "name": "cosine_ldam", "options": {
            "scale": head.scale, "ldam_power": head.ldam_power, "ldam_max_m": head.ldam_max_m}}
    if isinstance(head, heads.LogitAdjustedLinear):
        return {"kind": "head", "name": "logit_adjust",
                "options": {"tau": head.tau, "bias": head.linear.bias is not None}}
    if isinstance(head, heads.TemperatureScaledClassifier):
        return {"kind": "head", "name": "temperature",
                "options": {"learnable": bool(head.log_t.requires_grad), "bias": head.linear.bias is not None}}
    if isinstance(head, nn.Linear):
        return {"kind": "head", "name": "linear", "options": {"bias": head.bias is not None}}
    if isinstance(head, (NCMClassifier, KNNClassifier)):
        return {"kind": "prototype", "name": "ncm" if isinstance(head, NCMClassifier) else "knn",
                "options": head.options(), "shapes": head.buffer_shapes()}
    raise ConfigError(f"cannot record a classifier head of type {type(head).__name__}")


def describe_chain(classifier: nn.Module) -> List[Dict[str, Any]]:
    """The chain of ``classifier``, inner to outer, as plain dicts (for ``final.pt``)."""
    outer: List[Dict[str, Any]] = []
    node = classifier
    while True:
        if isinstance(node, TemperatureScaledOutput):
            outer.append({"kind": "temperature", "temperature": float(node.temperature)})
        elif isinstance(node, LogitAdjustedOutput):
            outer.append({"kind": "logit_adjust", "tau": node.tau})
        elif isinstance(node, LWSClassifier):
            outer.append({"kind": "lws"})
        elif isinstance(node, TauNormalizedLinear):
            return [{"kind": "tau_norm", "tau": node.tau}] + outer[::-1]
        else:
            return [head_spec(node)] + outer[::-1]
        node = node.head


def build_chain(chain: Sequence[Dict[str, Any]], *, in_features: int, num_classes: int,
                class_counts: Optional[Sequence[int]] = None) -> nn.Module:
    """The module structure :func:`describe_chain` recorded; load the state dict afterwards."""
    if not chain:
        raise ConfigError("an empty classifier chain")
    first, rest = chain[0], chain[1:]
    counts = list(class_counts) if class_counts is not None else None
    if first["kind"] == "tau_norm":
        module: nn.Module = TauNormalizedLinear(torch.ones(num_classes, in_features), float(first["tau"]))
    elif first["kind"] == "prototype":  # its fitted tensors come with the state dict
        module = create_prototype_classifier(first["name"], **dict(first.get("options") or {}))
        module.allocate(dict(first.get("shapes") or {}))
    elif first["kind"] == "head":
        builder = heads.HEADS.get(first["name"])
        module = builder(in_features=in_features, num_classes=num_classes, class_counts=counts,
                         **dict(first.get("options") or {}))
    else:
        raise ConfigError(f"a classifier chain must start with a head, a prototype classifier or tau_norm, not "
                          f"{first['kind']!r}")
    for link in rest:
        kind = link["kind"]
        if kind == "lws":
            module = LWSClassifier(module, num_classes)
        elif kind == "logit_adjust":
            if counts is None:
                raise ConfigError("a logit-adjusted classifier needs the training class counts")
            module = LogitAdjustedOutput(module, counts, float(link["tau"]))
        elif kind == "temperature":
            module = TemperatureScaledOutput(module, float(link["temperature"]))
        else:
            raise ConfigError(f"unknown classifier chain link {kind!r}")
    return module
