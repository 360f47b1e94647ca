"""What a training stage may add around the plain step: batch mixing (with Balanced-MixUp's
second, class-balanced loader), MaxNorm (weight balancing) and SAM / ImbSAM.

The pieces are built from plain values by :mod:`imbalance.builders` (the only config reader)
and used by the one training loop (:func:`imbalance.engine.fit` / ``train_one_epoch``):

* :class:`StageExtras` -- the stage's batch mix and its second loader, and the MaxNorm
  constraint with the head weight it caps (its radius is part of the stage's checkpoint, so a
  resumed stage keeps it);
* :func:`make_sam` -- the optimizer wrapped in :class:`imbalance.sam.SAM` after the checks that
  refuse what it cannot do (one clear line each); :func:`sam_step` is one SAM/ImbSAM update of a
  batch (the closure the wrapper calls twice).

Mixing happens on the device, after the per-sample augmentation and before the forward pass;
validation, test and feature extraction never mix, and stage 2 mixes only with
``data.augment.mix.stage2`` (then on its inputs: a stage that mixes never trains on cached
features).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn

from .classifier_chain import LWSClassifier, classifier_weight
from .constraints import MaxNorm
from .errors import ConfigError
from .losses import supports_per_sample
from .mixing import BatchMix, mixed_loss
from .sam import SAM, imbsam_tail_classes

log = logging.getLogger(__name__)

__all__ = ["StageExtras", "head_weight", "make_maxnorm", "make_sam", "sam_step", "check_sam_precision"]


# ------------------------------------------------------------------------------ the extras
@dataclass
class StageExtras:
    """The additions of one training stage (each None when unused)."""

    mix: Optional[BatchMix] = None
    mix_loader: Any = None  # balanced_mixup: the class-balanced loader over the same training set
    maxnorm: Optional[MaxNorm] = None
    maxnorm_weight: Optional[torch.Tensor] = None  # the (K, D) head weight MaxNorm caps

    def set_epoch(self, epoch: int) -> None:
        if self.mix_loader is not None:
            self.mix_loader.set_epoch(epoch)

    def num_batches(self, loader: Any) -> int:
        """Batches of one epoch: Balanced-MixUp ends with the shorter of its two loaders (the
        official ``ComboLoader``)."""
        if self.mix is not None and self.mix_loader is not None:
            return min(len(loader), len(self.mix_loader))
        return len(loader)

    def batches(self, loader: Any) -> Iterator[Tuple[torch.Tensor, Any]]:
        """``(x, target)`` per training batch: mixed as the stage's mix says (``target`` a
        :class:`~imbalance.mixing.MixedTarget`), else the loader's own batches."""
        if self.mix is None:
            yield from loader
        elif self.mix.needs_second_batch:
            if self.mix_loader is None:
                raise ValueError(f"{self.mix!r} needs the second, class-balanced loader")
            for (x, y), (xb, yb) in zip(loader, self.mix_loader):
                yield self.mix(x, y, xb, yb)
        else:
            for x, y in loader:
                yield self.mix(x, y)

    def after_step(self) -> None:
        """After every optimizer step (MaxNorm with ``every='step'``)."""
        if self.maxnorm is not None and self.maxnorm.every == "step":
            self.maxnorm(self.maxnorm_weight)

    def after_epoch(self) -> None:
        """After the last step of a training epoch, before validation (MaxNorm with
        ``every='epoch'``, as the official ``train_model`` calls ``pgdFunc.PGD(model)``)."""
        if self.maxnorm is not None and self.maxnorm.every == "epoch":
            self.maxnorm(self.maxnorm_weight)

    def state_dict(self) -> Dict[str, Any]:
        return {"maxnorm": self.maxnorm.state_dict()} if self.maxnorm is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.maxnorm is not None and state.get("maxnorm"):
            self.maxnorm.load_state_dict(state["maxnorm"])

    def describe(self) -> str:
        parts = []
        if self.mix is not None:
            parts.append(f"mixing {self.mix!r}" + (" with a class-balanced second loader" if self.mix_loader else ""))
        if self.maxnorm is not None:
            parts.append(f"MaxNorm (radius {self.maxnorm.radius:.4g}, projected every {self.maxnorm.every})")
        return "; ".join(parts)


# ------------------------------------------------------------------------------- MaxNorm
def head_weight(classifier: nn.Module) -> torch.Tensor:
    """The (K, D) weight of a classifier head, looking through an LWS wrapper (stage 2
    ``crt_lws`` trains the head inside it)."""
    head = classifier.head if isinstance(classifier, LWSClassifier) else classifier
    try:
        return classifier_weight(head)
    except ConfigError:
        raise ConfigError(f"stage2.maxnorm_thresh: MaxNorm caps the class norms of a head with a (classes x "
                          f"features) weight; {type(head).__name__} has none") from None


def make_maxnorm(classifier: nn.Module, *, thresh: float, every: str = "epoch") -> Tuple[MaxNorm, torch.Tensor]:
    """A :class:`MaxNorm` whose radius is fixed from the weights the stage starts from (the
    official ``setPerLayerThresh`` before stage 2), and the weight it caps."""
    weight = head_weight(classifier)
    maxnorm = MaxNorm(thresh, every=every)
    maxnorm.set_radius(weight)
    return maxnorm, weight


# ----------------------------------------------------------------------------------- SAM
def make_sam(optimizer: torch.optim.Optimizer, *, model: nn.Module, mode: str = "sam", rho: float = 0.05,
             class_counts: Sequence[int] = (), tail_thresh: int = 20, tail_weight: float = 2.0,
             freeze_bn_second_pass: Optional[bool] = None, loss_fn: Optional[nn.Module] = None,
             accumulation_steps: int = 1, distributed: bool = False, mix: Optional[BatchMix] = None,
             has_aux_loss: bool = False) -> SAM:
    """``optimizer`` wrapped in SAM / ImbSAM, or a :class:`ConfigError` (one line) for what they
    cannot do here: gradient accumulation, ImbSAM on mixed batches, ImbSAM under
    DistributedDataParallel, ImbSAM with a loss that has no per-sample form. (fp16 with a
    GradScaler is refused when the stage starts: :func:`check_sam_precision`.)"""
    if int(accumulation_steps) > 1:
        raise ConfigError(f"training.sam.enabled=true takes two forward/backward passes per optimizer step; it does "
                          f"not combine with training.accumulation_steps={accumulation_steps} (set it to 1)")
    tail = None
    if mode == "imbsam":
        if mix is not None:
            raise ConfigError(f"training.sam.mode=imbsam splits a batch into head and tail samples by their label; a "
                              f"mixed batch (data.augment.mix.name={type(mix).__name__}) has two labels per sample: "
                              "use training.sam.mode=sam or no mixing")
        if distributed:
            raise ConfigError("training.sam.mode=imbsam runs two backward passes through one forward pass, which "
                              "DistributedDataParallel does not allow; use training.sam.mode=sam or one process")
        if loss_fn is not None and not supports_per_sample(loss_fn):
            raise ConfigError(f"training.sam.mode=imbsam needs the per-sample losses of the batch; "
                              f"{type(loss_fn).__name__} is not a mean of per-sample terms (LDAMLoss with DRW)")
        tail = imbsam_tail_classes(class_counts, int(tail_thresh))
        if has_aux_loss:
            log.warning("training.sam.mode=imbsam splits per-sample losses; the model's auxiliary loss (a mixture's "
                        "load-balance term) is not a per-sample term and is left out")
    return SAM(optimizer, model=model, rho=float(rho), mode=mode, tail_classes=tail, tail_weight=float(tail_weight),
               freeze_bn_second_pass=freeze_bn_second_pass)


def check_sam_precision(optimizer: Any, precision: Any) -> None:
    """SAM with fp16 autocast and a GradScaler is refused: the perturbation ``rho g / ||g||``
    needs the unscaled gradient of both passes, which one scaler step per batch cannot give."""
    if isinstance(optimizer, SAM) and getattr(precision, "scaler", None) is not None:
        raise ConfigError("training.sam.enabled=true does not combine with fp16 mixed precision (GradScaler); use "
                          "amp_dtype=bf16 or amp=false")


def sam_step(sam: SAM, model: nn.Module, x: torch.Tensor, target: Any, loss_fn: nn.Module, *, precision: Any,
             aux: Optional[Callable[[], torch.Tensor]] = None,
             before_step: Optional[Callable[[], None]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One SAM / ImbSAM update on a batch; returns the logits and the loss at ``w`` (detached).

    The closure runs the forward pass (in the stage's autocast) and the loss in float32: the
    (possibly mixed) batch loss for SAM, the per-sample losses for ImbSAM (which splits them by
    class). ``before_step`` runs on the final gradient before the base optimizer's step
    (gradient clipping). A non-finite first loss changes nothing; it is returned for the loop to
    skip the batch or stop."""
    first = []
    imbsam = sam.mode == "imbsam"

    def closure() -> torch.Tensor:
        with precision.autocast():
            z = model(x)
        if not first:
            first.append(z.detach())
        z = z.float()
        if imbsam:  # the auxiliary loss is left out (make_sam says so)
            return loss_fn.per_sample(z, target)
        loss = mixed_loss(loss_fn, z, target)
        return loss + aux() if aux is not None else loss

    loss = sam.step(closure, targets=target if imbsam else None, before_step=before_step)
    return first[0], loss
