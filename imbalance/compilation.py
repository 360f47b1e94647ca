"""``torch.compile`` for a run: whether it pays (``compile: auto``), where its artifacts are cached,
and compiling the model.

``compile``: ``auto`` (default), ``true`` (always compile), ``false`` (never).

The rule of ``auto`` (:func:`decide`), from the configured schedule, never from how long a run
happens to last (early stopping):

* ``N`` = the planned training steps: stage-1 epochs x batches per epoch, plus stage 2's when it
  runs the backbone (fine-tuning, or a frozen backbone without the feature cache).
* ``t_e`` = the measured eager step (forward, loss, backward on a copy of the model, with the
  run's batch shape, device and precision; :func:`measure`). On the CPU step times are process
  CPU time per thread (what the step takes on an unloaded machine), so a busy shared machine
  does not make a short run look long, nor a noisy pair of steps a speed-up.
* Pre-check, before paying for a compile: even a step :data:`PRIOR_MAX_SPEEDUP` (2x) faster would
  save at most ``N t_e (1 - 1/2)``; if that is less than :data:`PAYBACK` (10) times a typical
  cold compile (:data:`PRIOR_COMPILE_S`, 60 s), do not compile. The quick demo (60 epochs x 9
  steps of about 0.2 s: at most ~60 s to save) never gets past this.
* Otherwise measure: compile a copy (this fills the on-disk cache, so compiling the run's model
  afterwards takes a fraction of a second), time its compile ``C`` (first compiled training step
  and first compiled evaluation batch minus their eager times) and its steady step ``t_c``;
  compile when the planned saving ``N (t_e - t_c)`` is at least ``PAYBACK`` times ``C``, i.e.
  when the compile costs at most a tenth of what it saves. The decision and its numbers are
  logged and recorded in results.json (``model_info.compile``).

What the measurement costs when the answer is no: one cold compile of the model (bounded by the
pre-check to at most about a fifth of the planned eager time at the threshold, a few per cent
for a long run), paid once per model and shapes: the cache makes the next run's measurement
take seconds.

Cache (:func:`configure_cache`): inductor's FX-graph cache and AOTAutograd's cache (the compiled
forward and backward graphs) in ``compile_cache_dir`` (default ``$XDG_CACHE_HOME/imbalance/
torch_compile``, i.e. ``~/.cache/imbalance/torch_compile``), so a second run of the same model and
shapes compiles from the cache (measured: 181 s cold -> 7.8 s, bench/bench_speed.py). Dynamo's
tracing is not cached (a few seconds).

Checkpoints never see the compiled wrapper: the stages save ``distributed.unwrap(model)``'s state
dict (no ``_orig_mod.`` prefixes), and :func:`strip_compile_prefix` cleans a state dict saved
elsewhere from a compiled module.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import ConfigError

log = logging.getLogger(__name__)

COMPILE_SETTINGS = ("auto", "true", "false")
PAYBACK = 10.0
"""``auto`` compiles when the planned saving is at least this many times the compile cost."""
PRIOR_COMPILE_S = 60.0
"""A typical cold compile (training + evaluation graphs) of a small network, used before anything
is measured: 73 s for the demo model on a loaded 2-core CPU (BENCHMARKS.md)."""
PRIOR_MAX_SPEEDUP = 2.0
"""The largest steady step speed-up compiling gave in our measurements (1.95x, demo model, CPU),
used as the bound of the pre-check."""
COMPILE_PREFIX = "_orig_mod."


def parse_setting(value: Any) -> str:
    """``compile`` as ``'auto'``, ``'true'`` or ``'false'`` (booleans and their strings accepted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text in COMPILE_SETTINGS:
        return text
    raise ConfigError(f"compile={value!r} is not valid; valid values: auto, true, false")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/imbalance/torch_compile`` (``~/.cache/...`` without XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imbalance" / "torch_compile"


def configure_cache(cache_dir: Optional[os.PathLike | str] = None) -> Path:
    """Keep torch.compile's artifacts in ``cache_dir`` (default :func:`default_cache_dir`):
    inductor's FX-graph cache and AOTAutograd's cache on, ``TORCHINDUCTOR_CACHE_DIR`` pointing
    there (``TRITON_CACHE_DIR`` under it unless set). Call before compiling; returns the folder."""
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"compile_cache_dir={str(path)!r} cannot be created ({err.strerror}); "
                          "name a writable folder") from None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path.resolve())
    os.environ.setdefault("TRITON_CACHE_DIR", str(path.resolve() / "triton"))
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return path


def strip_compile_prefix(state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` with every ``_orig_mod.`` (a compiled module's wrapper) removed from its keys."""
    if not any(COMPILE_PREFIX in k for k in state):
        return state
    return {k.replace(COMPILE_PREFIX, ""): v for k, v in state.items()}


def planned_steps(*, n_samples: int, batch_size: int, epochs: int, drop_last: bool = True) -> int:
    """Training steps of ``epochs`` epochs over ``n_samples`` in batches of ``batch_size`` (a last
    incomplete batch dropped with ``drop_last``, never the only one), as BatchLoader counts."""
    n, b = max(0, int(n_samples)), max(1, int(batch_size))
    per_epoch = n // b if (drop_last and n >= b) else -(-n // b)
    return max(0, int(epochs)) * per_epoch


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Probe:
    """A copy of the model in training mode with a fixed random batch; times forward + loss +
    backward (the part compile changes), and an evaluation-mode forward of ``eval_batch``."""

    def __init__(self, model: nn.Module, *, batch_shape: Sequence[int], device: torch.device,
                 autocast: Callable[[], ContextManager], eval_batch: Optional[int]) -> None:
        from .distributed import unwrap

        self.net = copy.deepcopy(unwrap(model)).to(device)
        self.device = device
        self.autocast = autocast
        g = torch.Generator(device="cpu").manual_seed(0)
        self.x = torch.randn(tuple(int(s) for s in batch_shape), generator=g).to(device)
        self.y: Optional[torch.Tensor] = None
        self.unloaded = 0.0
        self.x_eval = None
        if eval_batch:
            self.x_eval = torch.randn((int(eval_batch), *self.x.shape[1:]), generator=g).to(device)

    def step(self, module: nn.Module) -> float:
        """Wall seconds of one step; ``self.unloaded`` gets the estimate for an unloaded machine."""
        module.train()
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        with self.autocast():
            z = module(self.x)
        z = z.float()
        if self.y is None:
            self.y = torch.randint(0, z.shape[1], (z.shape[0],), generator=torch.Generator().manual_seed(1)).to(
                self.device)
        loss = nn.functional.cross_entropy(z, self.y)
        if loss.requires_grad:
            loss.backward()
        self.net.zero_grad(set_to_none=True)
        _sync(self.device)
        wall = time.perf_counter() - t0
        # on the CPU, the process CPU time per thread is the step on an unloaded machine (a busy shared
        # machine stretches the wall time, and the pre-check's prior compile cost is an unloaded figure)
        self.unloaded = wall if self.device.type != "cpu" else min(
            wall, (time.process_time() - c0) / max(1, torch.get_num_threads()))
        return wall

    @torch.no_grad()
    def eval_forward(self, module: nn.Module) -> float:
        if self.x_eval is None:
            return 0.0
        module.eval()
        _sync(self.device)
        t0 = time.perf_counter()
        with self.autocast():
            module(self.x_eval)
        _sync(self.device)
        module.train()
        return time.perf_counter() - t0


@dataclass
class Measurement:
    """Seconds per training step eager and compiled, and the compile cost (None: not measured)."""

    eager_step_s: float
    compiled_step_s: Optional[float] = None
    compile_s: Optional[float] = None


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def measure(model: nn.Module, *, batch_shape: Sequence[int], device: torch.device,
            autocast: Optional[Callable[[], ContextManager]] = None, eval_batch: Optional[int] = None,
            steps: int = 3, compiled: bool = True, gate: Optional[Callable[[float], bool]] = None,
            before_compile: Optional[Callable[[], Any]] = None) -> Measurement:
    """Time ``model`` (a copy; the model, its BatchNorm statistics and every RNG are left as they
    were) on a random batch of ``batch_shape``: one warm-up and ``steps`` timed eager steps; then,
    when ``compiled`` and ``gate(eager_step_s)`` allows, ``before_compile()`` (e.g. the cache
    set-up), the first compiled step and evaluation batch (the compile) and ``steps`` timed
    compiled steps.

    A step time is the fastest of its timed steps, as process CPU time per thread on the CPU (what
    an unloaded machine takes: a busy shared machine stretches wall times unevenly) and as
    synchronised wall time on a GPU. The compile cost is wall time (a busy machine makes it look
    larger, so ``auto`` errs toward not compiling)."""
    autocast = autocast or contextlib.nullcontext
    n = max(1, int(steps))
    with torch.random.fork_rng(devices=_rng_devices(device)):
        probe = _Probe(model, batch_shape=batch_shape, device=device, autocast=autocast, eval_batch=eval_batch)

        def timed(module: nn.Module) -> Tuple[float, float]:
            """(fastest unloaded estimate, fastest wall) of ``n`` steps."""
            walls, unloaded = [], []
            for _ in range(n):
                walls.append(probe.step(module))
                unloaded.append(probe.unloaded)
            return min(unloaded), min(walls)

        probe.step(probe.net)
        t_e, _ = timed(probe.net)
        out = Measurement(eager_step_s=t_e)
        if not compiled or (gate is not None and not gate(t_e)):
            return out
        if before_compile is not None:
            before_compile()
        t_eval = probe.eval_forward(probe.net)
        comp = torch.compile(probe.net)
        first = probe.step(comp)
        first_eval = probe.eval_forward(comp)
        t_c, t_c_wall = timed(comp)
        out.compiled_step_s = t_c
        out.compile_s = max(0.0, first - t_c_wall) + max(0.0, first_eval - t_eval)
    return out


# ---------------------------------------------------------------------------------------------
# Deciding
# ---------------------------------------------------------------------------------------------
@dataclass
class CompileDecision:
    """Whether the run compiles, why (one line for the log), and the numbers behind it."""

    compile: bool
    setting: str
    reason: str
    planned_steps: int = 0
    eager_step_s: Optional[float] = None
    compiled_step_s: Optional[float] = None
    compile_s: Optional[float] = None
    cache_dir: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def worth_measuring(planned: int, eager_step_s: float, *, payback: float = PAYBACK,
                    prior_compile_s: float = PRIOR_COMPILE_S, prior_speedup: float = PRIOR_MAX_SPEEDUP) -> bool:
    """The pre-check: could the planned work save ``payback`` x a typical compile at all?"""
    return planned * eager_step_s * (1.0 - 1.0 / prior_speedup) >= payback * prior_compile_s


def decide(setting: Any, *, planned: int, measured: Optional[Measurement] = None, payback: float = PAYBACK,
           prior_compile_s: float = PRIOR_COMPILE_S, prior_speedup: float = PRIOR_MAX_SPEEDUP) -> CompileDecision:
    """The decision for ``setting`` (see the module docstring) from the planned steps and what was
    measured (``measured.compiled_step_s`` None: the pre-check said no before compiling)."""
    setting = parse_setting(setting)
    planned = max(0, int(planned))
    if setting == "false":
        return CompileDecision(False, setting, "compile=false", planned)
    if setting == "true":
        return CompileDecision(True, setting, "compile=true (forced)", planned)
    if measured is None or planned == 0:
        return CompileDecision(False, setting, "compile=auto: nothing planned to train", planned)
    t_e = measured.eager_step_s
    base = dict(planned_steps=planned, eager_step_s=t_e, compiled_step_s=measured.compiled_step_s,
                compile_s=measured.compile_s)
    if measured.compiled_step_s is None or measured.compile_s is None:
        bound = planned * t_e * (1.0 - 1.0 / prior_speedup)
        return CompileDecision(False, setting, (
            f"compile=auto: not compiling: {planned} planned steps x {t_e:.3g} s (eager) could save at most "
            f"{bound:.3g} s even at {prior_speedup:g}x, less than {payback:g} x a typical compile "
            f"({prior_compile_s:.0f} s)"), **base)
    t_c, cost = measured.compiled_step_s, measured.compile_s
    saving = planned * (t_e - t_c)
    ok = saving >= payback * cost
    verdict = "compiling" if ok else "not compiling"
    relation = ">=" if ok else "<"
    return CompileDecision(ok, setting, (
        f"compile=auto: {verdict}: {planned} planned steps x ({t_e:.3g} s eager - {t_c:.3g} s compiled) "
        f"= {saving:.0f} s saved {relation} {payback:g} x the measured compile ({cost:.1f} s)"), **base)


def compile_model(model: nn.Module, setting: Any, *, planned: int, batch_shape: Sequence[int],
                  device: torch.device, autocast: Optional[Callable[[], ContextManager]] = None,
                  eval_batch: Optional[int] = None, cache_dir: Optional[os.PathLike | str] = None,
                  agree: Optional[Callable[[Any], Any]] = None) -> Tuple[nn.Module, CompileDecision]:
    """Apply ``compile`` (auto / true / false) to ``model``; return (the model to train, possibly
    ``torch.compile(model)``, and the decision, also logged). ``planned``: training steps of the
    configured schedule; ``batch_shape``: one training batch on this device; ``agree``: makes all
    processes take rank 0's decision (``distributed.broadcast_object``)."""
    setting = parse_setting(setting)
    measured = None
    folder: list = []  # the cache is set up (importing inductor: seconds) only when something compiles

    def cache() -> Path:
        if not folder:
            folder.append(configure_cache(cache_dir))
        return folder[0]

    if setting == "auto" and planned > 0:
        try:
            measured = measure(model, batch_shape=batch_shape, device=device, autocast=autocast,
                               eval_batch=eval_batch, gate=lambda t: worth_measuring(planned, t),
                               before_compile=cache)
        except Exception as err:  # a model that cannot be compiled or copied: train eager
            log.warning("compile=auto: measuring failed (%s: %s); training without compile",
                        type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
            measured = None
            decision = CompileDecision(False, setting, f"compile=auto: measuring failed ({type(err).__name__})",
                                       planned)
            return model, decision
    decision = decide(setting, planned=planned, measured=measured)
    if agree is not None:
        decision = agree(decision)
    if decision.compile:
        decision.cache_dir = str(cache())
    log.info("%s%s", decision.reason, f" (cache {decision.cache_dir})" if decision.compile else "")
    if decision.compile:
        return torch.compile(model), decision
    return model, decision


def is_compiled(model: nn.Module) -> bool:
    """True for a ``torch.compile`` wrapper (at any depth of DataParallel / DDP wrapping)."""
    while True:
        if hasattr(model, "_orig_mod"):
            return True
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return False
        model = inner


__all__ = ["COMPILE_SETTINGS", "PAYBACK", "PRIOR_COMPILE_S", "PRIOR_MAX_SPEEDUP", "CompileDecision", "Measurement",
           "compile_model", "configure_cache", "decide", "default_cache_dir", "is_compiled", "measure",
           "parse_setting", "planned_steps", "strip_compile_prefix", "worth_measuring"]
