"""Batch iteration by index over an in-memory (or lazily read) signal dataset.

A batch is gathered with one indexing operation on the dataset's contiguous tensor
(``dataset.get_batch(idx)``), then augmented as a whole batch; there is no per-sample
``__getitem__`` and no collate. The order of an epoch comes from the stage's sampler
(``sampler.epoch_indices()``), a seeded permutation, or the natural order, and is a pure function
of (seed, epoch) so that a resumed run sees the same batches.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Optional, Tuple

import torch

Batch = Tuple[torch.Tensor, torch.Tensor]


class TensorPairDataset:
    """The minimal dataset interface over two tensors (used for cached features)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x = x
        self.y = torch.as_tensor(y, dtype=torch.long)
        self.labels = self.y.numpy()

    def __len__(self) -> int:
        return len(self.y)

    def get_batch(self, idx: torch.Tensor) -> Batch:
        return self.x[idx], self.y[idx]


class BatchLoader:
    """Iterate ``(x, y)`` batches of ``dataset`` (anything with ``__len__`` and ``get_batch``).

    Args:
        batch_size: samples per batch.
        shuffle: a fresh seeded permutation each epoch (ignored when ``sampler`` is given).
        sampler: an ``imbalance.samplers`` sampler; its ``epoch_indices()`` give the epoch.
        drop_last: drop a last incomplete batch (never drops the only batch).
        augment: a callable applied to each whole batch ``x`` (B, C, L), e.g. from
            ``imbalance.data.build_augmentation``; it receives ``generator=`` for repeatability.
        seed: base seed of the shuffling and augmentation generators.
        num_replicas, rank: shard the epoch for distributed training (rank r takes r::n).
        device: move batches there (non-blocking from pinned memory when ``pin_memory``).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        shuffle: bool = False,
        sampler: Optional[Any] = None,
        drop_last: bool = False,
        augment: Optional[Callable[..., torch.Tensor]] = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        device: Optional[torch.device] = None,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.sampler = sampler
        self.drop_last = drop_last
        self.augment = augment
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.device = device
        self.pin_memory = bool(pin_memory) and device is not None and device.type == "cuda"
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (the sampler's schedule and the shuffling/augmentation seeds)."""
        self.epoch = int(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)

    def epoch_indices(self) -> torch.Tensor:
        if self.sampler is not None:
            # A sampler built with num_replicas already returns this rank's shard.
            return torch.as_tensor(self.sampler.epoch_indices(), dtype=torch.long)
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.num_replicas > 1:
            total = math.ceil(n / self.num_replicas) * self.num_replicas
            if total > n:  # pad by wrapping, as DistributedSampler does
                idx = torch.cat([idx, idx[: total - n]])
            idx = idx[self.rank :: self.num_replicas]
        return idx

    def _num_indices(self) -> int:
        if self.sampler is not None:
            return len(self.sampler)
        n = len(self.dataset)
        return math.ceil(n / self.num_replicas) if self.num_replicas > 1 else n

    def __len__(self) -> int:
        n = self._num_indices()
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        idx = self.epoch_indices()
        n = len(idx)
        n_batches = len(self)
        gen = None
        if self.augment is not None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * self.epoch + 1)
        for b in range(n_batches):
            bidx = idx[b * self.batch_size : min((b + 1) * self.batch_size, n)]
            x, y = self.dataset.get_batch(bidx)
            if self.augment is not None:
                x = self.augment(x, generator=gen)
            if self.device is not None and self.device.type != "cpu":
                if self.pin_memory:
                    x, y = x.pin_memory(), y.pin_memory()
                x = x.to(self.device, non_blocking=self.pin_memory)
                y = y.to(self.device, non_blocking=self.pin_memory)
            yield x, y
