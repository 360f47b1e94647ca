"""The one training loop of every stage, plus evaluation, early stopping and checkpoints.

Stages differ only in what they pass in: the module that trains (a whole network, or a
classifier on cached features), which parameters the optimizer holds, the loss, the loader
(with the stage's sampler), the schedule and how long. ``fit`` calls ``loader.set_epoch`` and
``loss_fn.set_epoch`` at the start of every epoch, so re-sampling schedules and deferred
re-weighting really progress.

Under ``torchrun`` (see :mod:`imbalance.distributed`) the same loop runs on every rank: the
model is DistributedDataParallel, train metrics are summed over ranks, evaluation loaders are
contiguous shards whose predictions are gathered, the validation metrics of rank 0 are
broadcast (so early stopping decides the same everywhere), BatchNorm buffers are synchronised
from rank 0 after each epoch, and only the rank given a ``checkpointer``/``metrics`` writes.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from . import distributed as D
from .analysis import accuracy_and_macc  # noqa: F401  (public here too)
from .checkpoint import StageCheckpointer, atomic_save, previous_path, rng_state, set_rng_state  # noqa: F401
from .distributed import unwrap  # noqa: F401  (public here too)
from .run_folder import METRICS_COLUMNS, MetricsWriter  # noqa: F401  (public here too)
from .errors import UserError
from .mixing import mixed_correct, mixed_loss
from .precision import Precision
from .sam import SAM
from .stage_extras import StageExtras, check_sam_precision, sam_step

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """The training loss became NaN or Inf (the message says stage, epoch and batch).

    A :class:`~imbalance.errors.UserError`: ``main.py`` reports it as one line (usually the
    learning rate is too high, or ``amp`` overflowed); ``training.skip_nonfinite=true`` skips such
    batches instead.
    """


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------
class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs
    counted after epoch ``min_epochs`` (the last scheduled switch of the stage: a DRW start, the
    end of a warm-up or of a progressive schedule), so that early stopping never cuts a schedule
    short. The best value is tracked from the first epoch."""

    def __init__(self, *, monitor: str = "val_macc", mode: str = "max", patience: int = 20,
                 min_delta: float = 0.0, enabled: bool = True, min_epochs: int = 0) -> None:
        self.monitor, self.mode, self.patience = monitor, mode, int(patience)
        self.min_delta, self.enabled = float(min_delta), bool(enabled)
        self.min_epochs = max(0, int(min_epochs))
        self.best: Optional[float] = None
        self.best_epoch = 0
        self.bad_epochs = 0

    def is_better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def step(self, value: float, epoch: int) -> bool:
        """Record ``value``; return True when it is the new best."""
        if self.is_better(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), int(epoch), 0
            return True
        if int(epoch) > self.min_epochs:
            self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.bad_epochs >= self.patience > 0

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


# ---------------------------------------------------------------------------------------------
# Forward passes
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Any,
    *,
    precision: Optional[Precision] = None,
    features: bool = False,
) -> Dict[str, torch.Tensor]:
    """Run ``model`` in eval mode over ``loader``; return CPU float32 ``logits`` and ``labels``
    (and ``features`` from ``forward_features`` when asked)."""
    was_training = model.training
    model.eval()
    net = unwrap(model)
    # DDP's forward may run collectives; evaluation shards differ in length, so run the module.
    fwd = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    logits, labels, feats = [], [], []
    ctx = precision.autocast if precision is not None else _null
    for x, y in loader:
        with ctx():
            if features:
                f = net.forward_features(x)
                z = net.classifier(f)
                feats.append(f.float().cpu())
            else:
                z = fwd(x)
        logits.append(z.float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    out = {"logits": _cat(logits), "labels": _cat(labels)}
    if features:
        out["features"] = _cat(feats)
    if getattr(loader, "is_eval_shard", False) and D.is_enabled():
        # every rank predicted its contiguous block: concatenate in rank order = dataset order
        out = {k: D.gather_cat(v) for k, v in out.items()}
    if out["logits"] is None:
        raise ValueError("predict: the loader yielded no batches")
    return out


def _cat(parts: List[torch.Tensor]) -> Optional[torch.Tensor]:
    return torch.cat(parts) if parts else None


def _null():
    import contextlib

    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
@dataclass
class StageResult:
    stage: int
    epochs_run: int
    best_epoch: int
    best_value: Optional[float]
    history: List[Dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def train_one_epoch(
    model: nn.Module,
    loader: Any,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    precision: Precision,
    grad_clip: Optional[float] = None,
    accumulation_steps: int = 1,
    params_to_clip: Optional[List[torch.Tensor]] = None,
    skip_nonfinite: bool = False,
    progress: Any = None,
    location: str = "",
    on_batch_end: Optional[Callable[[int], None]] = None,
    extras: Optional[StageExtras] = None,
) -> Dict[str, float]:
    """One pass over ``loader``; returns mean train loss and accuracy (on the fly) and the
    number of samples (``train_samples``).

    ``extras`` (:class:`~imbalance.stage_extras.StageExtras`): batch mixing (the loss of a mixed
    batch is :func:`~imbalance.mixing.mixed_loss`, its accuracy counts each label by its weight)
    and MaxNorm after each optimizer step when asked. An ``optimizer`` that is a
    :class:`~imbalance.sam.SAM` takes its two-pass step (:func:`~imbalance.stage_extras.sam_step`).

    The loss is computed in float32 on float32 logits whatever the autocast dtype (margins,
    log-priors and re-weighting are precision-sensitive).

    Gradient accumulation (``accumulation_steps = k``): each group of k consecutive batches is
    one optimizer step on the mean of their losses (each batch loss divided by the number of
    batches in its group, so a last, shorter group is a mean too). With equal batch sizes
    (``drop_last``) and layers that do not mix samples (no BatchNorm), k batches of B equal one
    batch of k*B. Under DDP, gradients are only all-reduced on the last batch of a group.
    """
    scaler = precision.scaler
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.float64)
    seen = 0
    optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader) if extras is None else extras.num_batches(loader)
    batches = loader if extras is None else extras.batches(loader)
    sam = optimizer if isinstance(optimizer, SAM) else None
    k = max(1, int(accumulation_steps))
    distributed = D.is_enabled()
    is_ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    clip_params = params_to_clip if params_to_clip is not None else [
        p for g in optimizer.param_groups for p in g["params"]]
    aux = getattr(unwrap(model), "aux_loss", None)
    if aux is not None and isinstance(model, nn.DataParallel):
        log.warning("the model's auxiliary loss is not available under DataParallel (replicas drop it); "
                    "training without it")
        aux = None
    clip = (lambda: torch.nn.utils.clip_grad_norm_(clip_params, grad_clip)) if grad_clip else None
    for i, (x, y) in enumerate(batches):  # y: the labels, or a MixedTarget of a mixed batch
        step_now = (i + 1) % k == 0 or i + 1 == n_batches
        group_len = min(k, n_batches - (i // k) * k)
        sync = model.no_sync() if (is_ddp and not step_now) else contextlib.nullcontext()
        with sync:
            if sam is not None:  # both passes and the step (nothing stepped if the loss is not finite)
                logits, loss = sam_step(sam, model, x, y, loss_fn, precision=precision, aux=aux, before_step=clip)
            else:
                with precision.autocast():
                    logits = model(x)
                loss = mixed_loss(loss_fn, logits.float(), y)
                if aux is not None:  # e.g. a mixture of experts' load-balance term (0 unless weighted)
                    loss = loss + aux()
            bad = not bool(torch.isfinite(loss))
            if distributed:  # every rank must take the same branch (DDP collectives)
                bad = D.any_rank(bad)
            if bad:
                if skip_nonfinite:
                    log.warning("%s, batch %d: non-finite loss %s skipped", location, i + 1, float(loss.detach()))
                    optimizer.zero_grad(set_to_none=True)
                    continue
                raise NonFiniteLossError(f"{location}, batch {i + 1}: the loss is {float(loss.detach())}")
            if sam is None:
                scaled = loss / group_len
                if scaler is not None:
                    scaler.scale(scaled).backward()
                else:
                    scaled.backward()
        if step_now and sam is None:
            if grad_clip:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(clip_params, grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if step_now and extras is not None:
            extras.after_step()
        b = len(y)
        total_loss += loss.detach().double().cpu() * b
        correct += mixed_correct(logits, y).double().cpu()
        seen += b
        if progress is not None:
            progress.update(1)
        if on_batch_end is not None:
            on_batch_end(i + 1)
    if seen == 0:
        return {"train_loss": float("nan"), "train_acc": float("nan"), "train_samples": 0}
    return {"train_loss": float(total_loss) / seen, "train_acc": float(correct) / seen, "train_samples": seen}


def evaluate_loader(
    model: nn.Module, loader: Any, loss_fn: Optional[nn.Module], num_classes: int,
    precision: Optional[Precision] = None,
) -> Dict[str, float]:
    out = predict(model, loader, precision=precision)
    return validation_metrics(out["logits"], out["labels"], loss_fn, num_classes)


def validation_metrics(logits: torch.Tensor, labels: torch.Tensor, loss_fn: Optional[nn.Module],
                       num_classes: int) -> Dict[str, float]:
    """``val_loss`` (``loss_fn`` in eval mode, or plain cross-entropy), ``val_acc`` and ``val_macc``
    of predicted ``logits``."""
    acc, macc = accuracy_and_macc(logits.argmax(1), labels, num_classes)
    if loss_fn is not None:
        was = loss_fn.training
        loss_fn.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(logits, labels))
        loss_fn.train(was)
    else:
        val_loss = float(nn.functional.cross_entropy(logits, labels))
    return {"val_loss": val_loss, "val_acc": acc, "val_macc": macc}


def fit(
    model: nn.Module,
    *,
    stage: int,
    train_loader: Any,
    val_loader: Any,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    epochs: int,
    num_classes: int,
    early_stopping: EarlyStopping,
    precision: Precision,
    metrics: Optional[MetricsWriter] = None,
    checkpointer: Optional[StageCheckpointer] = None,
    set_train_mode: Optional[Callable[[nn.Module], None]] = None,
    grad_clip: Optional[float] = None,
    accumulation_steps: int = 1,
    global_epoch_offset: int = 0,
    console_log_interval: int = 1,
    progress_bar: bool = False,
    val_loss_fn: Optional[nn.Module] = None,
    skip_nonfinite: bool = False,
    start_epoch: int = 0,
    save_module: Optional[nn.Module] = None,
    best_state: Optional[Dict[str, torch.Tensor]] = None,
    on_batch_end: Optional[Callable[[int, int], None]] = None,
    restore_best: bool = True,
    on_epoch_end: Optional[Callable[[Dict[str, Any], Dict[str, torch.Tensor]], None]] = None,
    extras: Optional[StageExtras] = None,
) -> StageResult:
    """Train ``model`` for up to ``epochs`` epochs (from ``start_epoch``, 0-based) and restore the
    best weights (by ``early_stopping.monitor`` on ``val_loader``) at the end, or keep the last
    epoch's weights with ``restore_best=False`` (Kang et al. keep the fully annealed model).

    ``save_module`` is what checkpoints and best-restoring hold (default: ``model``); it differs
    when ``model`` is a classifier trained on cached features of a bigger network.

    Every epoch writes ``stage<k>_last.pt`` (the previous one kept as ``stage<k>_last.prev.pt``)
    and, when the monitored value improved, ``stage<k>_best.pt``, atomically. A checkpoint is the
    whole state at the epoch boundary: model, optimizer, schedule, GradScaler, early stopping,
    RNG states (python, numpy, torch; every rank's under DDP), the sampler/loss epochs
    (``checkpoint_extra``), so that a run resumed from it (``start_epoch`` = its ``epoch``,
    ``best_state`` = the best checkpoint's weights, the states loaded) continues bit-for-bit.
    ``on_batch_end(epoch, batch)`` (1-based) is called after every training batch;
    ``on_epoch_end(row, val)`` after each epoch's metrics row is written, with the row and the
    validation predictions (``logits``, ``labels``), e.g. for the run's loggers. ``extras``
    (:class:`~imbalance.stage_extras.StageExtras`): batch mixing, MaxNorm after each epoch's
    training (or step); its state is part of the checkpoints.
    """
    check_sam_precision(optimizer, precision)
    t_stage = time.perf_counter()
    holder = unwrap(save_module if save_module is not None else model)
    best_state = copy.deepcopy(holder.state_dict()) if best_state is None else best_state
    result = StageResult(stage=stage, epochs_run=int(start_epoch), best_epoch=early_stopping.best_epoch,
                         best_value=early_stopping.best)
    set_mode = set_train_mode or (lambda m: m.train())
    distributed = D.is_enabled()
    if early_stopping.should_stop:  # resumed after the stage had stopped early
        result.stopped_early = True
    for epoch in range(start_epoch, epochs):
        if result.stopped_early:
            break
        t0 = time.perf_counter()
        train_loader.set_epoch(epoch)
        if extras is not None:
            extras.set_epoch(epoch)
        if hasattr(loss_fn, "set_epoch"):
            loss_fn.set_epoch(epoch)
        lr = schedule.start_epoch(epoch)
        set_mode(model)
        bar = _progress(len(train_loader), f"stage {stage} epoch {epoch + 1}/{epochs}", progress_bar)
        batch_hook = None
        if on_batch_end is not None:
            batch_hook = lambda b, _e=epoch + 1: on_batch_end(_e, b)  # noqa: E731
        try:
            tr = train_one_epoch(
                model, train_loader, loss_fn, optimizer, precision=precision, grad_clip=grad_clip,
                accumulation_steps=accumulation_steps, skip_nonfinite=skip_nonfinite, progress=bar,
                location=f"stage {stage}, epoch {epoch + 1}", on_batch_end=batch_hook, extras=extras,
            )
        except NonFiniteLossError as err:
            last = checkpointer.last_path if checkpointer is not None else None
            where = (f"; the last good checkpoint is {last} (epoch {epoch})" if last is not None and last.exists()
                     else "")
            raise NonFiniteLossError(
                f"{err}{where}; lower training.lr, keep training.grad_clip on, or set "
                "training.skip_nonfinite=true to skip such batches") from None
        finally:
            if bar is not None:
                bar.close()
        if extras is not None:
            extras.after_epoch()
        n_seen = tr.pop("train_samples", 0)
        if distributed:
            # sum over ranks; BatchNorm statistics of rank 0 everywhere (what is checkpointed)
            s_loss, s_acc, s_n = D.all_reduce_sum([tr["train_loss"] * n_seen, tr["train_acc"] * n_seen, n_seen])
            tr = {"train_loss": s_loss / max(s_n, 1), "train_acc": s_acc / max(s_n, 1)}
            if isinstance(model, nn.parallel.DistributedDataParallel):
                D.sync_buffers(holder)
        val_out = predict(model, val_loader, precision=precision)
        va = validation_metrics(val_out["logits"], val_out["labels"], val_loss_fn or loss_fn, num_classes)
        if distributed:
            va = D.broadcast_object(va)
        schedule.end_epoch(va[early_stopping.monitor])
        improved = early_stopping.step(va[early_stopping.monitor], epoch + 1)
        if improved:
            best_state = copy.deepcopy(holder.state_dict())
        dt = time.perf_counter() - t0
        row = {"stage": stage, "epoch": epoch + 1, "global_epoch": global_epoch_offset + epoch + 1,
               "lr": lr, **tr, **va, "epoch_time": dt}
        result.history.append(row)
        result.epochs_run = epoch + 1
        if metrics is not None:
            metrics.write(row)
        if on_epoch_end is not None:
            on_epoch_end(row, val_out)
        rng = rng_state()
        rng_ranks = D.all_gather_object(rng) if distributed else None
        if checkpointer is not None:
            checkpointer.save(epoch=epoch + 1, global_epoch=global_epoch_offset + epoch + 1, epochs=epochs,
                              model_state=holder.state_dict(), optimizer=optimizer, schedule=schedule,
                              early_stopping=early_stopping, rng=rng, rng_ranks=rng_ranks,
                              scaler=precision.scaler, improved=improved, best_state=best_state)
        if (epoch + 1) % console_log_interval == 0 or epoch + 1 == epochs:
            log.info(
                "stage %d epoch %3d/%d  lr %.2e  train loss %.4f acc %5.1f%%  val loss %.4f acc %5.1f%% "
                "mAcc %5.1f%%%s  (%.1fs)",
                stage, epoch + 1, epochs, lr, tr["train_loss"], 100 * tr["train_acc"], va["val_loss"],
                100 * va["val_acc"], 100 * va["val_macc"], "  *" if improved else "", dt,
            )
        if early_stopping.should_stop:
            log.info("stage %d: early stop at epoch %d (best %s %.4f at epoch %d)", stage, epoch + 1,
                     early_stopping.monitor, early_stopping.best, early_stopping.best_epoch)
            result.stopped_early = True
            break
    if restore_best:
        holder.load_state_dict(best_state)
    result.best_epoch = early_stopping.best_epoch
    result.best_value = early_stopping.best
    result.seconds = time.perf_counter() - t_stage
    return result
