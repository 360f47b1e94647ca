"""Sharpness-aware training: SAM and ImbSAM as a wrapper around a base optimizer
(registry ``SAM_MODES``: ``sam``, ``imbsam``; config ``training.sam.enabled``,
``training.sam.mode``, ``training.sam.rho``).

* ``sam`` -- Foret et al., ICLR 2021 (official google-research/sam,
  ``sam_jax/training_utils/flax_training.py``; the PyTorch port davda54/sam, ``sam.py``):
  gradient ``g`` of the batch loss at ``w``; ``e = rho * g / (||g|| + eps)`` with the global L2
  norm over all trained parameters; a second forward/backward at ``w + e``; the weights are
  restored to ``w`` and the base optimizer steps with the gradient taken at ``w + e``.
* ``imbsam`` -- Zhou et al., ICCV 2023 (official cool-xuan/Imbalanced_SAM, ``imbsam.py`` and
  ``utils/trainval.py: forbackward``): SAM on the tail classes' loss only. With per-sample
  losses ``l_i`` at ``w`` and the tail mask ``T`` (classes with fewer than ``eta = 20`` training
  samples in the official script): ``L_head = sum_{i not in T} l_i / B`` and
  ``L_tail = tail_weight * sum_{i in T} l_i / B``; ``g_h = grad L_head(w)`` is kept;
  ``e = rho * grad L_tail(w) / (||grad L_tail(w)|| + eps)``; the gradient used is
  ``g_h + grad L_tail(w + e)``. The official code multiplies the tail loss by 2 (hard-coded in
  both its PyTorch and MindSpore versions, although its script has an unused ``--reweight``
  flag; the paper's objective has no factor): ``tail_weight = 2.0`` by default, following the
  code.

How the training loop calls it (no gradient accumulation, no fp16 GradScaler; bf16 autocast
is fine inside the closure)::

    sam = SAM(base_optimizer, model=model, rho=0.05, mode="sam")    # or mode="imbsam",
                                                                     # tail_classes=imbsam_tail_classes(counts)
    for x, y in loader:
        def closure():                      # forward only: no zero_grad, no backward
            logits = model(x)
            return loss_fn.per_sample(logits.float(), y)   # imbsam: per-sample (B,) losses
            # sam: any scalar loss, e.g. mixed_loss(loss_fn, logits.float(), target)
        loss = sam.step(closure, targets=y,                     # targets: imbsam only
                        before_step=lambda: clip_grad_norm_(params, grad_clip))

``step`` zeroes the gradients itself, runs the closure twice (at ``w`` and at ``w + e``),
restores ``w`` exactly before ``before_step`` (e.g. gradient clipping, as google-research
clips the SAM gradient) and the base optimizer's step, and returns the batch-mean loss at
``w`` (detached) for logging. When that loss is not finite nothing is changed (no
perturbation, no step) and it is returned as it is, for the loop to skip the batch or stop. The LR scheduler and checkpoints use the base optimizer
(``sam.param_groups`` is its list, ``state_dict`` is its state).

BatchNorm: the second forward pass normalises with its own batch statistics; whether it also
updates the running statistics follows each official code: ``sam`` keeps only the first pass's
update (google-research keeps the state of the first pass; davda54's example sets the
momentum to 0 for the second), ``imbsam`` lets both passes update them (no bypass in its
code). ``freeze_bn_second_pass`` overrides this. Weight decay is applied by the base
optimizer at the final step, so the perturbation uses the loss gradient only (as davda54;
google-research puts the L2 term in the loss).
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .bn_tools import frozen_bn_stats
from .errors import ConfigError
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["SAM", "SAM_MODES", "imbsam_tail_classes"]

SAM_MODES = Registry("SAM mode")

Closure = Callable[[], torch.Tensor]


def imbsam_tail_classes(class_counts: Sequence[int], thresh: int = 20) -> List[int]:
    """The classes ImbSAM treats as tail: ``n_c < thresh`` (the official ``--eta``, 20)."""
    n = np.asarray(class_counts).reshape(-1)
    return [int(c) for c in np.flatnonzero(n < thresh)]


class SAM:
    """SAM / ImbSAM wrapper around ``base_optimizer`` (see the module docstring).

    ``model``: the trained model (for the BatchNorm handling of the second pass).
    ``rho`` >= 0 (official default 0.05 for both); ``mode``: ``sam`` | ``imbsam``;
    ``tail_classes``: ImbSAM's tail classes (e.g. :func:`imbsam_tail_classes`);
    ``tail_weight``: ImbSAM's factor on the tail loss (official code: 2);
    ``eps``: added to the gradient norm (davda54: 1e-12; ImbSAM's code: 1e-16).
    """

    def __init__(self, base_optimizer: torch.optim.Optimizer, *, model: nn.Module, rho: float = 0.05,
                 mode: str = "sam", tail_classes: Optional[Sequence[int]] = None, tail_weight: float = 2.0,
                 freeze_bn_second_pass: Optional[bool] = None, eps: float = 1e-12) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(f"SAM wraps a torch.optim.Optimizer, got {type(base_optimizer).__name__}")
        r = float(rho)
        if not (math.isfinite(r) and r >= 0):
            raise ConfigError(f"training.sam.rho={rho!r} must be a finite number >= 0")
        self.mode = SAM_MODES.canonical(str(mode))
        self.base_optimizer = base_optimizer
        self.model = model
        self.rho = r
        self.eps = float(eps)
        self.tail_weight = float(tail_weight)
        if not (math.isfinite(self.tail_weight) and self.tail_weight > 0):
            raise ConfigError(f"ImbSAM tail_weight={tail_weight!r} must be a finite number > 0")
        self.freeze_bn_second_pass = (self.mode == "sam") if freeze_bn_second_pass is None \
            else bool(freeze_bn_second_pass)
        self.tail_classes: Optional[torch.Tensor] = None
        if self.mode == "imbsam":
            if tail_classes is None:
                raise ConfigError("training.sam.mode=imbsam needs tail_classes (e.g. imbsam_tail_classes("
                                  "class_counts, thresh=20): the classes with fewer training samples than thresh)")
            self.tail_classes = torch.as_tensor(list(tail_classes), dtype=torch.long)
            if self.tail_classes.numel() == 0:
                logger.warning("ImbSAM: no tail class (every class has at least the threshold's samples): "
                               "it is plain training on the head loss")
        elif tail_classes is not None:
            raise ConfigError("tail_classes is used only with training.sam.mode=imbsam")
        logger.info("%s: rho=%g%s, BatchNorm running stats %s in the second pass", self.mode, self.rho,
                    f", {self.tail_classes.numel()} tail classes, tail weight {self.tail_weight:g}"
                    if self.tail_classes is not None else "",
                    "frozen" if self.freeze_bn_second_pass else "updated")

    # ------------------------------------------------------------------ optimizer interface
    @property
    def param_groups(self) -> List[Dict]:
        return self.base_optimizer.param_groups

    @property
    def defaults(self) -> Dict:
        return self.base_optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        self.base_optimizer.load_state_dict(state)

    def _params(self) -> List[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    # ------------------------------------------------------------------------- internals
    def _second_pass(self) -> contextlib.AbstractContextManager:
        return frozen_bn_stats(self.model) if self.freeze_bn_second_pass else contextlib.nullcontext()

    @torch.no_grad()
    def _perturb(self) -> Dict[torch.Tensor, torch.Tensor]:
        """``w <- w + rho * g / (||g|| + eps)`` from the current gradients; returns the saved ``w``."""
        params = [p for p in self._params() if p.grad is not None]
        if not params:
            return {}
        dev = params[0].device
        norm = torch.norm(torch.stack([p.grad.detach().norm(p=2).to(dev) for p in params]), p=2)
        scale = self.rho / (norm + self.eps)
        old = {}
        for p in params:
            old[p] = p.detach().clone()
            p.add_(p.grad * scale.to(p))
        return old

    @torch.no_grad()
    def _restore(self, old: Dict[torch.Tensor, torch.Tensor]) -> None:
        for p, w in old.items():
            p.copy_(w)

    def _finish(self, before_step: Optional[Callable[[], None]]) -> None:
        if before_step is not None:
            before_step()
        self.base_optimizer.step()

    # ------------------------------------------------------------------------------ step
    def step(self, closure: Closure, *, targets: Optional[torch.Tensor] = None,
             before_step: Optional[Callable[[], None]] = None) -> torch.Tensor:
        """One SAM/ImbSAM update; ``closure()`` runs a forward pass and returns the loss
        (ImbSAM: per-sample losses of shape (B,)); returns the batch-mean loss at ``w``."""
        if closure is None:
            raise ValueError("SAM needs a closure that recomputes the loss (forward only)")
        return SAM_MODES.get(self.mode)(self, closure, targets, before_step)


def _scalar(loss: torch.Tensor) -> torch.Tensor:
    return loss if loss.dim() == 0 else loss.mean()


@SAM_MODES.register("sam")
def _sam_step(opt: SAM, closure: Closure, targets: Optional[torch.Tensor],
              before_step: Optional[Callable[[], None]]) -> torch.Tensor:
    opt.zero_grad()
    with torch.enable_grad():
        loss = _scalar(closure())
        if not bool(torch.isfinite(loss)):
            return loss.detach()               # nothing stepped: the loop decides (skip or stop)
        loss.backward()
    old = opt._perturb()                       # w + e(w)
    opt.zero_grad()
    with torch.enable_grad(), opt._second_pass():
        _scalar(closure()).backward()          # gradient at w + e(w)
    opt._restore(old)                          # back to w before the base step
    opt._finish(before_step)
    return loss.detach()


@SAM_MODES.register("imbsam")
def _imbsam_step(opt: SAM, closure: Closure, targets: Optional[torch.Tensor],
                 before_step: Optional[Callable[[], None]]) -> torch.Tensor:
    if targets is None:
        raise ValueError("ImbSAM needs targets= (the batch's labels) to split head and tail samples")
    opt.zero_grad()
    with torch.enable_grad():
        per = closure()
        if per.dim() != 1 or per.shape[0] != targets.shape[0]:
            raise ValueError(f"ImbSAM's closure must return per-sample losses of shape ({targets.shape[0]},) "
                             f"(e.g. loss_fn.per_sample(logits, y)), got shape {tuple(per.shape)}")
        if not bool(torch.isfinite(per).all()):
            return per.mean().detach()         # nothing stepped: the loop decides (skip or stop)
        tail = torch.isin(targets.to(per.device), opt.tail_classes.to(per.device))
        b = per.shape[0]
        head_loss = per[~tail].sum() / b
        if not bool(tail.any()):
            # no tail sample: the official update reduces to the head gradient (e = 0); the second
            # forward pass is skipped
            head_loss.backward()
            opt._finish(before_step)
            return per.mean().detach()
        head_loss.backward(retain_graph=True)
        g_head = {p: (None if p.grad is None else p.grad.detach().clone()) for p in opt._params()}
        opt.zero_grad()
        (opt.tail_weight * per[tail].sum() / b).backward()
    old = opt._perturb()                       # e from the tail gradient only
    opt.zero_grad()
    with torch.enable_grad(), opt._second_pass():
        per2 = closure()
        (opt.tail_weight * per2[tail.to(per2.device)].sum() / b).backward()
    opt._restore(old)
    with torch.no_grad():
        for p, g in g_head.items():
            if g is None:
                continue
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)
    opt._finish(before_step)
    return per.mean().detach()
