"""Batch iteration by index over an in-memory (or lazily read) signal dataset.

A batch is gathered with one indexing operation on the dataset's contiguous tensor
(``dataset.get_batch(idx)``), then augmented as a whole batch; there is no per-sample
``__getitem__`` and no collate. The order of an epoch comes from the stage's sampler
(``sampler.epoch_indices()``), a seeded permutation, or the natural order, and is a pure function
of (seed, epoch) so that a resumed run sees the same batches.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterator, Optional, Tuple

import torch

log = logging.getLogger(__name__)

Batch = Tuple[torch.Tensor, torch.Tensor]

ON_DEVICE_SETTINGS = ("auto", "true", "false")
ON_DEVICE_FRACTION = 0.25
"""``data.on_device: auto`` keeps a run's training and validation tensors on the accelerator when
together they take at most this fraction of its free memory (the rest is for the model, its
activations and the optimizer)."""


def dataset_nbytes(dataset: Any) -> int:
    """Bytes of a data set's signals and labels once gathered as tensors (float32 x, int64 y)."""
    n = len(dataset)
    x = getattr(dataset, "x", None)
    if isinstance(x, torch.Tensor):
        per = x.element_size() * int(x[0].numel()) if n else 0
    else:  # lazily read: float32 once gathered
        per = 4 * int(getattr(dataset, "num_channels", 1)) * int(getattr(dataset, "length", 1))
    return n * (per + 8)


def resolve_on_device(setting: Any, device: Optional[torch.device], nbytes: int,
                      free_bytes: Optional[int] = None, fraction: float = ON_DEVICE_FRACTION) -> Tuple[bool, str]:
    """Whether data of ``nbytes`` should live on ``device`` (``data.on_device``: auto / true /
    false) and why. Never on the CPU (the data already is where the model is: nothing changes).
    ``auto``: when ``nbytes <= fraction * free_bytes`` (``free_bytes`` default: the accelerator's
    free memory, ``torch.cuda.mem_get_info``)."""
    text = ("true" if setting else "false") if isinstance(setting, bool) else str(setting).strip().lower()
    if text not in ON_DEVICE_SETTINGS:
        from .errors import ConfigError

        raise ConfigError(f"data.on_device={setting!r} is not valid; valid values: auto, true, false")
    if device is None or device.type == "cpu":
        return False, "the device is the CPU: batches are gathered in host memory as before"
    if text == "false":
        return False, "data.on_device=false"
    mib = nbytes / 2 ** 20
    if text == "true":
        return True, f"data.on_device=true ({mib:.0f} MiB)"
    if free_bytes is None:
        if device.type != "cuda":
            return False, f"data.on_device=auto: the free memory of {device} is unknown"
        free_bytes = int(torch.cuda.mem_get_info(device)[0])
    limit = fraction * float(free_bytes)
    if nbytes <= limit:
        return True, (f"data.on_device=auto: {mib:.0f} MiB of training data fit in {fraction:.0%} of the "
                      f"{free_bytes / 2 ** 30:.1f} GiB free on {device}")
    return False, (f"data.on_device=auto: {mib:.0f} MiB of training data exceed {fraction:.0%} of the "
                   f"{free_bytes / 2 ** 30:.1f} GiB free on {device}; batches are copied from host memory")


class DeviceResidentData:
    """A data set's signals and labels copied once to ``device``; ``get_batch(idx)`` gathers the
    batch there by index (no per-batch host-to-device copy, no pinned staging). ``labels`` stay
    the host array (samplers read them)."""

    def __init__(self, dataset: Any, device: torch.device) -> None:
        self.device = torch.device(device)
        self.source = dataset
        x, y = dataset.get_batch(torch.arange(len(dataset)))
        self.x = x.to(self.device)
        self.y = torch.as_tensor(y, dtype=torch.long).to(self.device)
        self.labels = getattr(dataset, "labels", None)

    def __getattr__(self, name: str) -> Any:
        # everything else (classes, class_counts, num_channels, length, subset ...) is the host data set's
        if name in ("source", "device", "x", "y"):
            raise AttributeError(name)
        return getattr(self.source, name)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"DeviceResidentData({self.source!r}, device={self.device})"

    def get_batch(self, idx: torch.Tensor) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.long)
        if idx.device != self.device:
            idx = idx.to(self.device)
        return self.x[idx], self.y[idx]


class TensorPairDataset:
    """The minimal dataset interface over two tensors (used for cached features)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x = x
        self.y = torch.as_tensor(y, dtype=torch.long)
        # the tensors may live on an accelerator (cached features): numpy needs a host copy
        self.labels = self.y.cpu().numpy()

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
        num_replicas, rank: shard the epoch for distributed training. With ``even_shards``
            (training) rank r takes positions r::n of the epoch order, padded by wrapping to equal
            lengths (as ``DistributedSampler``), so the ranks' b-th batches together are the b-th
            batch of one process with ``n`` times the batch size. Without it (evaluation) rank r
            takes the r-th contiguous, unpadded block: concatenated in rank order the blocks are
            the epoch order, each sample once (``is_eval_shard``; gathered by ``engine.predict``).
        device: move batches there (non-blocking from pinned memory when ``pin_memory``). A
            :class:`DeviceResidentData` on that device is gathered there instead: the epoch's
            indices go to the device once, each batch is indexed on it, and the augmentation draws
            its random numbers there (a generator on the device, seeded as on the host).
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
        even_shards: bool = True,
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
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.even_shards = bool(even_shards)
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
        if self.num_replicas > 1 and not self.even_shards:
            lo, hi = self._block(n)
            return idx[lo:hi]
        if self.num_replicas > 1:
            total = math.ceil(n / self.num_replicas) * self.num_replicas
            if total > n:  # pad by wrapping, as DistributedSampler does
                idx = torch.cat([idx, idx[: total - n]])
            idx = idx[self.rank :: self.num_replicas]
        return idx

    @property
    def is_eval_shard(self) -> bool:
        """True when this loader yields one rank's contiguous block of an evaluation set."""
        return self.num_replicas > 1 and not self.even_shards and self.sampler is None

    def _block(self, n: int) -> Tuple[int, int]:
        return n * self.rank // self.num_replicas, n * (self.rank + 1) // self.num_replicas

    def _num_indices(self) -> int:
        if self.sampler is not None:
            return len(self.sampler)
        n = len(self.dataset)
        if self.num_replicas > 1 and not self.even_shards:
            lo, hi = self._block(n)
            return hi - lo
        return math.ceil(n / self.num_replicas) if self.num_replicas > 1 else n

    def __len__(self) -> int:
        n = self._num_indices()
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    @property
    def resident(self) -> bool:
        """True when the data set lives on this loader's device (:class:`DeviceResidentData`)."""
        where = getattr(self.dataset, "device", None)
        return self.device is not None and where is not None and torch.device(where) == torch.device(self.device)

    def __iter__(self) -> Iterator[Batch]:
        idx = self.epoch_indices()
        resident = self.resident
        if resident:
            idx = idx.to(self.device)
        n = len(idx)
        n_batches = len(self)
        gen = None
        if self.augment is not None:
            gen = torch.Generator(device=self.device if resident else "cpu")
            gen.manual_seed(self.seed * 1_000_003 + 7919 * self.epoch + 1)
        for b in range(n_batches):
            bidx = idx[b * self.batch_size : min((b + 1) * self.batch_size, n)]
            x, y = self.dataset.get_batch(bidx)
            if self.augment is not None:
                x = self.augment(x, generator=gen)
            if not resident and self.device is not None and self.device.type != "cpu":
                if self.pin_memory:
                    x, y = x.pin_memory(), y.pin_memory()
                x = x.to(self.device, non_blocking=self.pin_memory)
                y = y.to(self.device, non_blocking=self.pin_memory)
            yield x, y
