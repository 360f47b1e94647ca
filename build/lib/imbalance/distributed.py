"""Multi-process training with ``torchrun`` (DistributedDataParallel), single node or several.

``torchrun --nproc_per_node=N main.py ...`` starts N copies of ``main.py`` with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` in the environment.
:func:`init_distributed` joins them into one process group (NCCL on CUDA, gloo on the CPU);
without those variables (a plain ``python main.py``) everything here is a no-op and the
single-process code paths are unchanged.

What the pipeline builds on top (see docs/scaling.md):

- ``data.batch_size`` is the GLOBAL batch: each rank takes ``batch_size // world_size``. Rank r
  takes positions ``r::world_size`` of one global epoch order (a seeded permutation or one
  sampler draw, both pure functions of (seed, epoch)), so the union of the ranks' b-th batches
  is exactly the b-th batch a single process would train on, and the class distribution of
  every sampler is preserved (the known gap of ``WeightedRandomSampler`` +
  ``DistributedSampler``).
- Validation and test sets are split into contiguous, unpadded blocks; each rank predicts its
  block and :func:`gather_cat` concatenates the blocks in rank order, so metrics are those of
  the whole set, in the single-process order, identical on every rank (early stopping decides
  the same everywhere).
- Only rank 0 writes files and logs to ``logs/training.log``; other ranks log warnings to the
  console only. All ranks use rank 0's run folder (:func:`broadcast_object`).
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
from torch import nn

log = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying module of a DataParallel / DistributedDataParallel / compiled wrapper."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the (possibly trivial) process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: Optional[str] = None
    owns_group: bool = False  # this module created the group (and destroys it in cleanup)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_ENV = DistEnv()


def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current() -> DistEnv:
    """The process group this process is in (a trivial one before :func:`init_distributed`)."""
    return _ENV


def is_enabled() -> bool:
    return _ENV.enabled and torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main() -> bool:
    return _ENV.rank == 0


def init_distributed(device: str = "auto", *, timeout_s: float = 1800.0) -> DistEnv:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (idempotent).

    Backend: NCCL when ``device`` asks for CUDA (``auto``/``cuda``/``cuda:N``) and CUDA is
    available (each rank then uses GPU ``LOCAL_RANK``), gloo otherwise (CPU).
    """
    global _ENV
    world = env_world_size()
    if world <= 1:
        _ENV = DistEnv()
        return _ENV
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover - builds without distributed
        from .errors import ConfigError

        raise ConfigError("WORLD_SIZE > 1 (torchrun) but this torch build has no torch.distributed")
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    owns = False
    if dist.is_initialized():
        backend = dist.get_backend()
    else:
        want_cuda = str(device).strip().lower() != "cpu" and torch.cuda.is_available()
        backend = "nccl" if want_cuda else "gloo"
        if want_cuda:
            torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        owns = True
    _ENV = DistEnv(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                   backend=str(backend), owns_group=owns)
    return _ENV


def cleanup(*, barrier: bool = True) -> None:
    """Destroy the process group if :func:`init_distributed` created it (after a barrier, so
    that no rank leaves while another still writes; skipped after an error, when the other
    ranks may be gone)."""
    global _ENV
    if is_enabled() and _ENV.owns_group:
        import torch.distributed as dist

        try:
            if barrier:
                dist.barrier()
        finally:
            dist.destroy_process_group()
    _ENV = DistEnv()


def device_for(env: DistEnv) -> Optional[torch.device]:
    """This rank's CUDA device under NCCL (None for gloo / single process)."""
    if env.enabled and env.backend == "nccl":
        return torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
    return None


def barrier() -> None:
    if is_enabled():
        torch.distributed.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; small objects only)."""
    if not is_enabled():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not is_enabled():
        return [obj]
    out: List[Any] = [None] * _ENV.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_cat(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Concatenate every rank's ``t`` (CPU tensors of any first-dimension length, or None for an
    empty shard) in rank order, on every rank."""
    if not is_enabled():
        return t
    parts = [p for p in all_gather_object(None if t is None else t.cpu()) if p is not None]
    return torch.cat(parts) if parts else None


def all_reduce_sum(values: List[float]) -> List[float]:
    """Element-wise sum of ``values`` over the ranks (float64)."""
    if not is_enabled():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dev = device_for(_ENV)
    if dev is not None:
        t = t.to(dev)
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one."""
    if not is_enabled():
        return bool(flag)
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def sync_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank, so that all
    ranks evaluate, and rank 0 checkpoints, the same model."""
    if not is_enabled():
        return
    for buf in module.buffers():
        torch.distributed.broadcast(buf.data, src=src)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` over this rank's device (a no-op without a process group).

    Only parameters that require gradients at wrapping time are synchronised; re-wrap after
    freezing or replacing parameters (stage 2 does).
    """
    if not is_enabled():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    net = unwrap(model)
    if not any(p.requires_grad for p in net.parameters()):
        return net
    ids = [device.index] if device.type == "cuda" else None
    return DDP(net, device_ids=ids, output_device=ids[0] if ids else None)


def per_rank_batch(global_batch: int, env: Optional[DistEnv] = None) -> int:
    """``global_batch // world_size`` (at least 1), with a warning when it does not divide."""
    env = env or _ENV
    if not env.enabled:
        return int(global_batch)
    b = max(1, int(global_batch) // env.world_size)
    if b * env.world_size != int(global_batch) and env.is_main:
        log.warning("data.batch_size=%d does not divide over %d processes; each takes %d (global batch %d)",
                    global_batch, env.world_size, b, b * env.world_size)
    return b
