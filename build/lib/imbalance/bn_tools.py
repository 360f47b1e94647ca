"""BatchNorm helpers: MiSLAS's shifted batch normalisation for stage 2, and a context that keeps
BatchNorm running statistics unchanged (SAM's second forward pass).

Shift BN (Zhong et al., CVPR 2021, "Improving Calibration for Long-Tailed Recognition";
official dvlab-research/MiSLAS, ``train_stage2.py``): in stage 2 the backbone is frozen -- its
parameters, BatchNorm's affine weight and bias included, are not in the optimizer and the
features are computed under ``torch.no_grad()`` -- but with ``shift_bn: True`` the backbone is
put in TRAIN mode (``model.train()``) every epoch. So each stage-2 batch (drawn by the
class-balanced sampler) is normalised with its own batch statistics, and the running mean and
variance move towards the statistics of the re-balanced data with BatchNorm's default momentum
(0.1); evaluation (``model.eval()``) then uses these shifted running statistics. Nothing is
re-estimated in a separate pass and no affine parameter is learned. ``shift_bn: False`` keeps
the backbone in eval mode (cRT's frozen statistics).

The official backbones (ResNets) have no dropout, so ``model.train()`` only affects
BatchNorm; our models have dropout, so :func:`shift_bn_train_mode` by default puts only the
BatchNorm layers in train mode (``bn_only=True``) and keeps dropout off; ``bn_only=False`` is
the literal ``model.train()`` of the official code. A model without BatchNorm (``norm_kind`` gn
or ln) has nothing to shift (a warning says so).

Wiring: in stage 2 with ``stage2.shift_bn: true``, each epoch call
``shift_bn_train_mode(model)`` after the plan's ``set_train_mode`` (or use
``with_shift_bn(plan.set_train_mode)``), and do NOT cache backbone features (the batch
statistics change with every batch).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Dict, Iterator, List

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

logger = logging.getLogger(__name__)

__all__ = ["bn_modules", "shift_bn_train_mode", "with_shift_bn", "frozen_bn_stats"]


def _inner(model: nn.Module) -> nn.Module:
    """The wrapped module of DataParallel/DistributedDataParallel (else the model)."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def bn_modules(module: nn.Module) -> List[_BatchNorm]:
    """Every BatchNorm layer (1d/2d/3d, SyncBatchNorm) under ``module``."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def shift_bn_train_mode(model: nn.Module, *, bn_only: bool = True, classifier_attr: str = "classifier") -> int:
    """Put ``model`` in MiSLAS's stage-2 shift-BN mode and return the number of BatchNorm layers.

    The backbone's BatchNorm layers train (batch statistics in the forward pass, running
    statistics updated with their momentum); with ``bn_only`` every other backbone module is
    in eval mode (dropout off), without it the whole backbone is in train mode (the official
    ``model.train()``). The classifier (``model.<classifier_attr>``, if any) is in train mode, as
    the official ``classifier.train()``. Parameters are not touched: the backbone (BatchNorm's
    affine weight and bias included) stays frozen as the stage-2 plan left it.
    """
    net = _inner(model)
    head = getattr(net, classifier_attr, None)
    head_mods = set(head.modules()) if isinstance(head, nn.Module) else set()
    net.train(not bn_only)
    bns = [m for m in bn_modules(net) if m not in head_mods]
    for m in bns:
        m.train()
    if isinstance(head, nn.Module):
        head.train()
    if not bns:
        logger.warning("shift_bn: the model has no BatchNorm layer (GroupNorm/LayerNorm models have no running "
                       "statistics); shift_bn has no effect")
    return len(bns)


def with_shift_bn(set_train_mode: Callable[[nn.Module], None], *, bn_only: bool = True
                  ) -> Callable[[nn.Module], None]:
    """A stage plan's ``set_train_mode`` followed by :func:`shift_bn_train_mode`."""

    def wrapped(model: nn.Module) -> None:
        set_train_mode(model)
        shift_bn_train_mode(model, bn_only=bn_only)

    return wrapped


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm layers still normalise with batch statistics in train mode,
    but their running mean/var and ``num_batches_tracked`` are restored on exit (for a second
    forward pass on the same batch, e.g. SAM's, that must not count twice)."""
    saved: Dict[_BatchNorm, Dict[str, torch.Tensor]] = {}
    for m in bn_modules(model):
        saved[m] = {k: getattr(m, k).detach().clone() for k in ("running_mean", "running_var", "num_batches_tracked")
                    if getattr(m, k, None) is not None}
    try:
        yield
    finally:
        with torch.no_grad():
            for m, state in saved.items():
                for k, v in state.items():
                    getattr(m, k).copy_(v)
