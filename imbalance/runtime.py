"""The process a run lives in: logging, threads, allocator, devices, seeds, paths.

Process-wide settings (the root logger's console handler, torch's intra-op threads, glibc's
allocator thresholds, cuDNN flags) belong to the program, not to a library call:
:func:`configure_process` is called by the command-line entry points (``main.py`` and the
``imbalance-*`` console scripts). ``imbalance.pipeline.run`` called from Python changes none of
them; it only adds (and removes again) a file handler on the ``imbalance`` logger for its run's
``logs/training.log`` (:func:`attach_run_log`) and seeds the random number generators.
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from . import distributed as D
from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["configure_process", "setup_console_logging", "attach_run_log", "detach_run_log", "seed_everything",
           "parse_gpus", "select_device", "set_threads", "tune_allocator", "resolve_run_dir", "original_cwd",
           "resolve_path", "cli_overrides", "sweep_name", "varied_keys"]

PACKAGE_LOGGER = "imbalance"
_HANDLER_TAG = "_imbalance_handler"


# =============================================================================================
# Process-wide (entry points only)
# =============================================================================================
def configure_process(cfg: Any) -> int:
    """What the command line sets up before a run: console logging, intra-op threads (cores,
    shared by the processes of a node under torchrun), the allocator, cuDNN determinism.
    Returns the number of threads."""
    setup_console_logging()
    tune_allocator()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads = set_threads(int(cfg.num_threads), int(cfg.data.num_workers), local)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return threads


def setup_console_logging() -> None:
    """INFO messages of the package on the console (short format); other ranks of a distributed
    run show warnings only, prefixed with their rank. Replaces Hydra's plain console handler."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_TAG, False) or type(h) is logging.StreamHandler:
            root.removeHandler(h)
    rank = int(os.environ.get("RANK", "0") or 0)
    console = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    if rank == 0:
        console.setFormatter(logging.Formatter("%(message)s"))
        console.setLevel(logging.INFO)
        root.setLevel(logging.INFO)
    else:
        console.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s: %(message)s"))
        console.setLevel(logging.WARNING)
        root.setLevel(logging.WARNING)
    setattr(console, _HANDLER_TAG, True)
    root.addHandler(console)
    for noisy in ("matplotlib", "PIL", "h5py", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def set_threads(num_threads: int, num_workers: int, processes_per_node: int = 1) -> int:
    """Intra-op threads = cores, shared by the processes of a node under torchrun. Batches are
    gathered in the main process (no DataLoader workers), so ``data.num_workers`` takes no core."""
    if num_workers > 0:
        log.info("data.num_workers=%d is not needed: batches are gathered by index in the main process",
                 num_workers)
    if num_threads <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        num_threads = max(1, cores // max(1, int(processes_per_node)))
    torch.set_num_threads(num_threads)
    return num_threads


def tune_allocator() -> None:
    """Keep big freed tensors in the heap instead of unmapping them (glibc): otherwise every
    tensor over the mmap threshold is page-faulted in again each step, which on the CPU cost up
    to a third of a step in system time (bench/bench_hotspots.py). The process keeps memory up
    to its peak, as PyTorch's CUDA caching allocator does."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


# =============================================================================================
# Run-scoped
# =============================================================================================
def attach_run_log(run_dir: Path, *, main_process: bool = True) -> Optional[logging.Handler]:
    """Append the package's INFO messages, timestamped, to ``<run>/logs/training.log`` (rank 0
    only); returns the handler for :func:`detach_run_log`."""
    if not main_process:
        return None
    pkg = logging.getLogger(PACKAGE_LOGGER)
    for h in list(pkg.handlers):  # a run that ended without detaching (e.g. killed in-process)
        if getattr(h, _HANDLER_TAG, False):
            pkg.removeHandler(h)
            h.close()
    path = Path(run_dir) / "logs" / "training.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    fileh = logging.FileHandler(path, encoding="utf-8")
    fileh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fileh.setLevel(logging.INFO)
    setattr(fileh, _HANDLER_TAG, True)
    pkg.addHandler(fileh)
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    return fileh


def detach_run_log(handler: Optional[logging.Handler]) -> None:
    if handler is not None:
        logging.getLogger(PACKAGE_LOGGER).removeHandler(handler)
        handler.close()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def parse_gpus(gpus: Any) -> List[int]:
    """``"0,1,2,3"`` -> [0, 1, 2, 3] (also an int or a list); a ConfigError otherwise."""
    if isinstance(gpus, (list, tuple)):
        items = [str(g) for g in gpus]
    else:
        items = str(gpus).replace(" ", "").split(",")
    try:
        ids = [int(g) for g in items if g != ""]
    except ValueError:
        raise ConfigError(f"gpus={gpus!r} is not valid; use a comma-separated list such as \"0,1\"") from None
    if any(g < 0 for g in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"gpus={gpus!r} is not valid; list distinct GPU ids >= 0, such as \"0,1\"")
    return ids


def select_device(name: str, gpus: str, dist_env: Optional[D.DistEnv] = None) -> Tuple[torch.device, List[int]]:
    """``auto`` picks CUDA when available; ``gpus`` lists the GPU ids used for DataParallel.

    GPUs listed but not visible are dropped with a warning (SEED's template says "0,1,2,3"; a
    machine with one GPU runs on it, without DataParallel); on the CPU ``gpus`` is ignored (said
    once when it lists several). Under torchrun each rank uses GPU ``LOCAL_RANK`` and ``gpus`` is
    ignored: one process per GPU.
    """
    name = str(name).strip().lower()
    ids = parse_gpus(gpus)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device=%s requested but CUDA is not available; using the CPU", name)
        name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not valid; use auto, cpu, cuda or cuda:N") from None
    env = dist_env or D.current()
    if env.enabled:
        dev = D.device_for(env)
        if device.type == "cuda" and dev is not None:
            if len(ids) > 1 and env.is_main:
                log.info("torchrun: one process per GPU (rank r uses cuda:LOCAL_RANK); gpus=%s is not used", gpus)
            return dev, [dev.index]
        return torch.device("cpu"), []
    if device.type != "cuda":
        if len(ids) > 1:
            log.warning("gpus=%s is ignored: training runs on the CPU (no DataParallel)", gpus)
        return device, []
    n = torch.cuda.device_count()
    bad = [g for g in ids if g >= n]
    if bad:
        ids = [g for g in ids if g < n]
        log.warning("gpus=%s names GPU %s, but only %d GPU(s) are visible; using %s", gpus, bad, n,
                    ids if ids else [device.index or 0])
    if device.index is not None and ids and device.index not in ids:
        ids = [device.index]
    if ids and device.index is None:
        device = torch.device("cuda", ids[0])
    return device, ids


# =============================================================================================
# Paths and the command line (Hydra)
# =============================================================================================
def resolve_run_dir(run_dir: Optional[os.PathLike] = None) -> Path:
    """``run_dir``, else Hydra's output folder, else ``experiments/run_<timestamp>``."""
    if run_dir is not None:
        return Path(run_dir).resolve()
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1e6) % 1_000_000:06d}"
    return Path("experiments", f"run_{stamp}").resolve()


def original_cwd() -> Path:
    """The folder the user started the command in (Hydra may run elsewhere)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        from hydra.utils import get_original_cwd

        return Path(get_original_cwd())
    return Path.cwd()


def resolve_path(path: Optional[str]) -> Optional[str]:
    """A data path relative to the directory the user started in."""
    if path is None or str(path).strip() == "":
        return None
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute():
        p = original_cwd() / p
    return str(p)


def cli_overrides() -> Optional[List[str]]:
    """The overrides typed on this command line (Hydra), e.g. ``['resume=auto', 'seed=1']``;
    None outside a Hydra application (a config composed in-process)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    try:
        return [str(o) for o in HydraConfig.get().overrides.task]
    except Exception:  # pragma: no cover - Hydra internals
        return []


def sweep_name() -> Optional[str]:
    """The folder name of the Hydra multirun this job belongs to (``multirun_<timestamp>``); None
    for a single run or outside a Hydra application."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    try:
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return Path(str(hc.sweep.dir)).name if hc.mode == RunMode.MULTIRUN else None
    except Exception:  # pragma: no cover - Hydra internals
        return None


def varied_keys() -> List[str]:
    """The config keys this run's Hydra multirun varies: the swept overrides of the sweep's command
    (``seed=0,1``, ``training.lr=range(...)``, ``choice(...)``, read from its ``multirun.yaml``) and
    the sweeper's ``params`` (Optuna's search space); for a single run, the keys set on its
    command line. ``hydra.*``, ``logger*`` and ``resume`` are left out. Empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        hc = HydraConfig.get()
        parser = OverridesParser.create()
        if hc.mode == RunMode.MULTIRUN:
            spec = Path(str(hc.sweep.dir)) / "multirun.yaml"
            task = list(OmegaConf.load(spec).hydra.overrides.task) if spec.is_file() else []
            keys = [o.key_or_group for o in parser.parse_overrides(task) if o.is_sweep_override()]
            keys += [str(k) for k in (OmegaConf.select(hc.sweeper, "params") or {})]
        else:
            keys = [o.key_or_group for o in parser.parse_overrides([str(o) for o in hc.overrides.task])]
    except Exception:  # pragma: no cover - Hydra internals, a damaged multirun.yaml
        return []
    out: List[str] = []
    for key in keys:
        if key not in out and not key.startswith(("hydra", "logger")) and key != "resume":
            out.append(key)
    return out
