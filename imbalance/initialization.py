"""Initialisation of a model for long-tailed training (registry ``INITS``) and
:func:`init_model_for_imbalanced`."""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from torch import nn

from .class_priors import log_prior
from .errors import ConfigError
from .heads import CosineMarginClassifier, head_linear
from .registry import Registry

logger = logging.getLogger(__name__)

INITS = Registry("init")

# ----------------------------------------------------------------------------- initialisation


def _weight_layers(model: nn.Module):
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            yield m


def _reset_norms(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)):
            m.reset_parameters()


def _cosine_heads(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, CosineMarginClassifier)]


@INITS.register("xavier")
def _init_xavier(model: nn.Module) -> None:
    """Xavier/Glorot uniform weights (Glorot & Bengio 2010), zero biases, norms to (1, 0)."""
    for m in _weight_layers(model):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    for h in _cosine_heads(model):
        nn.init.xavier_uniform_(h.weight)
    _reset_norms(model)


@INITS.register("balanced_xavier")
def _init_balanced_xavier(model: nn.Module) -> None:
    """Xavier everywhere, then every class's weight vector in the classifier rescaled to the
    same norm (the mean norm), so that no class starts with a larger logit scale (the
    weight-norm imbalance Kang et al. 2020 observe in long-tailed training)."""
    _init_xavier(model)
    lin = head_linear(model.classifier) if hasattr(model, "classifier") else None
    if lin is not None:
        with torch.no_grad():
            norms = lin.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
            lin.weight.mul_(norms.mean() / norms)


@INITS.register("kaiming")
def _init_kaiming(model: nn.Module) -> None:
    """He normal weights (He et al. 2015): fan_out for convolutions, fan_in for linear layers;
    zero biases; norms to (1, 0)."""
    for m in _weight_layers(model):
        mode = "fan_out" if isinstance(m, nn.Conv1d) else "fan_in"
        nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    for h in _cosine_heads(model):
        nn.init.kaiming_normal_(h.weight, mode="fan_in", nonlinearity="relu")
    _reset_norms(model)


@INITS.register("default")
def _init_default(model: nn.Module) -> None:
    """The model's own initialisation: PyTorch's (``reset_parameters`` of every layer that has
    one; a temperature head's temperature is kept), then the model's ``init_weights()`` if it
    has one (the origin's Kaiming / N(0, 0.01) initialisation of ResNet1D, DilatedTCN and the
    gates and heads of the mixtures of experts)."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
    own = getattr(model, "init_weights", None)
    if callable(own):
        own()


def init_model_for_imbalanced(model: nn.Module, class_counts: Optional[Sequence[float]],
                              init_type: str = "balanced_xavier", use_log_prior_bias: bool = True,
                              temperature: float = 1.0) -> nn.Module:
    """Re-initialise ``model`` in place for long-tailed training and return it.

    ``init_type`` in :data:`INITS` (balanced_xavier, xavier, kaiming, default). With
    ``use_log_prior_bias`` the classifier bias becomes ``b_c = log(pi_c) / temperature``,
    ``pi_c = n_c / sum n`` (the prior-matching bias init; cf. Menon et al. 2021, Lin et al.
    2017's prior bias): the untrained model then predicts the training prior, so early training
    is not spent learning the class frequencies. A head without bias (cosine) keeps none (logged).
    """
    init_fn = INITS.get(init_type)
    if not temperature > 0:
        raise ConfigError(f"init temperature must be > 0, got {temperature}")
    init_fn(model)
    if use_log_prior_bias:
        if class_counts is None:
            raise ConfigError("use_log_prior_bias needs class_counts (training samples per class)")
        lin = head_linear(model.classifier)
        if lin is None or lin.bias is None:
            logger.warning("head %s has no bias; log-prior bias not applied",
                           type(model.classifier).__name__)
        else:
            bias = log_prior(class_counts, model.num_classes, "init_model_for_imbalanced") / temperature
            with torch.no_grad():
                lin.bias.copy_(bias.to(lin.bias))
            if not isinstance(model.classifier, nn.Linear) and getattr(model.classifier, "tau", 0):
                logger.warning("log-prior bias with a logit_adjust head: the prior enters twice in "
                               "training (bias and adjustment)")
    return model
