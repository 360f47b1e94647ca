"""A frozen teacher's logits on the student's own batch, for losses of the form
``loss(logits, targets, teacher_logits)``: the piece knowledge distillation
(:mod:`imbalance.distill`) and class-incremental learning (:mod:`imbalance.incremental`) share.

The training loop (:func:`imbalance.engine.train_one_epoch`) calls ``loss_fn(model(x), y)`` and
never shows the loss the input. :class:`TeacherHook` is a forward pre-hook on the student (or on
its DataParallel / DDP wrapper): on every TRAINING-mode forward it runs the teacher on the very
same input tensor (after augmentation, inside the same autocast region, so in the student's
precision), in eval mode and without gradients, and keeps the logits until the next forward.
:class:`BoundTeacherLoss` then turns the three-argument loss into the loop's
``(logits, targets)`` loss. Evaluation forwards (eval mode) do not run the teacher.

:class:`TeacherCache` replaces the per-batch teacher forward by a table of the teacher's logits for
every training sample, computed once: exact when the student's input IS the stored sample (no
augmentation, no input mixing) because the teacher is frozen and deterministic in eval mode (up to
float rounding of a different batch composition in the kernels).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, ContextManager, Optional, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["FrozenTeacher", "TeacherHook", "BoundTeacherLoss", "TeacherCache"]


class FrozenTeacher(nn.Module):
    """``model`` frozen: ``requires_grad=False`` on every parameter, eval mode ALWAYS (``train()``
    leaves it, and every submodule, in eval mode: dropout off, BatchNorm running statistics never
    updated), forward without gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)


class TeacherCache:
    """The teacher's logits for every sample of a data set, computed once.

    ``wrap(dataset)`` returns a view of the data set (for the training loader) whose
    ``get_batch(idx)`` also selects the rows ``idx`` of the table; :meth:`current` returns them (on
    the batch's device) to :class:`TeacherHook`. Only exact when the loader does not change the
    input (no augmentation) and nothing changes it between the loader and the model."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self._rows: Optional[torch.Tensor] = None

    @classmethod
    @torch.no_grad()
    def compute(cls, teacher: nn.Module, dataset: Any, *, batch_size: int, device: torch.device,
                autocast: Optional[Callable[[], ContextManager]] = None) -> "TeacherCache":
        """Run ``teacher`` (eval mode) over ``dataset`` in order, under ``autocast`` (the student's
        precision); the table is kept on the CPU."""
        import contextlib

        teacher.eval()
        ctx = autocast or contextlib.nullcontext
        parts = []
        for start in range(0, len(dataset), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(dataset)))
            x, _ = dataset.get_batch(idx)
            with ctx():
                parts.append(teacher(x.to(device)).detach().cpu())
        return cls(torch.cat(parts))

    def wrap(self, dataset: Any) -> "CachedRows":
        if len(dataset) != len(self.logits):
            raise ValueError(f"the teacher cache has {len(self.logits)} rows but the data set {len(dataset)}")
        return CachedRows(dataset, self)

    def select(self, idx: torch.Tensor) -> None:
        self._rows = self.logits[torch.as_tensor(idx, dtype=torch.long).cpu()]

    def current(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of the batch last drawn through the wrapped data set (on ``x``'s device)."""
        if self._rows is None or self._rows.shape[0] != x.shape[0]:
            raise RuntimeError("the teacher cache has no rows for this batch: the training loader must draw its "
                               "batches through TeacherCache.wrap(dataset)")
        return self._rows.to(x.device, non_blocking=True)


class CachedRows:
    """A data set view whose ``get_batch`` also selects the cache rows of the batch."""

    def __init__(self, dataset: Any, cache: TeacherCache) -> None:
        self.dataset = dataset
        self.cache = cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # labels, classes, ... of the wrapped data set
        if name in ("dataset", "cache"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def get_batch(self, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self.cache.select(idx)
        return self.dataset.get_batch(idx)


class TeacherHook:
    """Computes the teacher's logits on the very input of every training-mode forward of
    ``student`` (a forward pre-hook), in eval mode and without gradients; they are in
    :attr:`logits` until the next forward. ``cache``: take them from a :class:`TeacherCache`
    instead of running the teacher. ``remove()`` detaches the hook.

    Register it on the module the training loop calls (a DataParallel / DDP wrapper, not the
    network inside it, whose replicas see parts of the batch). The forward runs inside the loop's
    autocast region, so the teacher computes in the student's precision. This is the distillation
    target of KD / BKD and of LwF / iCaRL / WA: the teacher's output on the same (augmented)
    input batch. :attr:`calls` counts the teacher forwards."""

    def __init__(self, student: nn.Module, teacher: nn.Module, *, cache: Optional[TeacherCache] = None) -> None:
        self.teacher = teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.cache = cache
        self.logits: Optional[torch.Tensor] = None
        self.calls = 0
        self._handle = student.register_forward_pre_hook(self._pre_forward)

    def _pre_forward(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        if not module.training:
            return
        if self.cache is not None:
            self.logits = self.cache.current(args[0])
            return
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            self.logits = self.teacher(args[0]).detach()
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()
        self.logits = None


class BoundTeacherLoss(nn.Module):
    """``forward(logits, targets)`` = ``loss(logits, targets, hook.logits)``: a teacher loss usable
    where the training loop calls ``criterion(logits, targets)``. ``set_epoch`` and ``epoch`` pass
    through to ``loss`` (schedules keep working)."""

    def __init__(self, loss: nn.Module, hook: Optional[TeacherHook]) -> None:
        super().__init__()
        self.loss = loss
        self.hook = hook

    @property
    def epoch(self) -> Any:
        return getattr(self.loss, "epoch", None)

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to ``loss`` (which passes it on to a base loss it wraps)."""
        if hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(epoch)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = None if self.hook is None else self.hook.logits
        if t is not None and t.shape[0] != logits.shape[0]:
            raise RuntimeError(f"teacher logits are for a batch of {t.shape[0]}, the student's for "
                               f"{logits.shape[0]}: the student must be called on the batch just before the loss")
        return self.loss(logits, targets, t)
