"""Optimizers and per-epoch learning-rate schedules.

The schedule sets each parameter group's learning rate at the START of every epoch
(``start_epoch``), so the rate logged for an epoch is the one it trained with. Linear warmup
over ``warmup_epochs`` never runs an epoch at rate 0: warmup epoch e (0-based) uses
``target * (e + 1) / warmup_epochs``, with ``target = base_lr * warmup_multiplier``; the main
schedule then runs over the remaining epochs from ``target``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional

import torch

from .errors import ConfigError
from .registry import Registry

OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.add("Adam", torch.optim.Adam)
OPTIMIZERS.add("AdamW", torch.optim.AdamW)
OPTIMIZERS.add("SGD", torch.optim.SGD)

SCHEDULES = ("cosine", "step", "plateau", "cosine_warmup_restarts", "none")


def create_optimizer(
    name: str,
    params: Iterable[Any],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD (with Nesterov momentum) over ``params`` (tensors or param groups)."""
    cls = OPTIMIZERS.get(name)
    kwargs: Dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if cls is torch.optim.SGD:
        kwargs.update(momentum=momentum, nesterov=momentum > 0)
    return cls(params, **kwargs)


class EpochSchedule:
    """Learning rate per epoch for every parameter group of ``optimizer``.

    names: cosine (to ``min_lr`` over the epochs after warmup), step (times ``gamma`` every
    ``step_size`` epochs), plateau (times ``plateau_factor`` after ``plateau_patience`` epochs
    without improvement of the monitored value; call ``end_epoch(value)``),
    cosine_warmup_restarts (SGDR: cosine cycles of ``restart_period`` epochs, each
    ``restart_mult`` times longer), none (constant).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str = "cosine",
        *,
        epochs: int,
        warmup_epochs: int = 0,
        warmup_multiplier: float = 1.0,
        min_lr: float = 0.0,
        step_size: int = 30,
        gamma: float = 0.1,
        plateau_patience: int = 5,
        plateau_factor: float = 0.5,
        plateau_mode: str = "max",
        restart_period: int = 10,
        restart_mult: int = 2,
    ) -> None:
        if name not in SCHEDULES:
            raise ConfigError(f"unknown scheduler {name!r}; valid scheduler names: {', '.join(SCHEDULES)}")
        if warmup_multiplier < 1.0:
            raise ConfigError(f"scheduler.warmup_multiplier={warmup_multiplier} must be >= 1")
        if name == "step" and step_size < 1:
            raise ConfigError(f"scheduler.step_size={step_size} must be >= 1")
        if name == "cosine_warmup_restarts" and (restart_period < 1 or restart_mult < 1):
            raise ConfigError("scheduler.restart_period and scheduler.restart_mult must be >= 1")
        self.optimizer = optimizer
        self.name = name
        self.epochs = max(int(epochs), 1)
        # Keep at least one epoch of the main schedule.
        self.warmup_epochs = max(0, min(int(warmup_epochs), self.epochs - 1))
        self.warmup_multiplier = float(warmup_multiplier)
        self.min_lr = float(min_lr)
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        self.plateau_patience = int(plateau_patience)
        self.plateau_factor = float(plateau_factor)
        self.plateau_mode = plateau_mode
        self.restart_period = int(restart_period)
        self.restart_mult = int(restart_mult)
        self.base_lrs: List[float] = [float(g["lr"]) for g in optimizer.param_groups]
        # plateau state
        self.plateau_scale = 1.0
        self.plateau_best: Optional[float] = None
        self.plateau_bad = 0
        self.last_epoch = -1

    # ---------------------------------------------------------------------------------
    def factor(self, epoch: int) -> float:
        """Multiplier of the base learning rate at ``epoch`` (0-based), min_lr not applied."""
        w = self.warmup_epochs
        target = self.warmup_multiplier
        if epoch < w:
            return target * (epoch + 1) / w
        t = epoch - w
        total = self.epochs - w
        if self.name == "cosine":
            return target * 0.5 * (1.0 + math.cos(math.pi * t / total))
        if self.name == "step":
            return target * self.gamma ** (t // self.step_size)
        if self.name == "cosine_warmup_restarts":
            period, start = self.restart_period, 0
            while t >= start + period:
                start += period
                period *= self.restart_mult
            return target * 0.5 * (1.0 + math.cos(math.pi * (t - start) / period))
        if self.name == "plateau":
            return target * self.plateau_scale
        return target  # none

    def lr_at(self, epoch: int, group: int = 0) -> float:
        base = self.base_lrs[group]
        f = self.factor(epoch)
        if self.name in ("cosine", "cosine_warmup_restarts") and epoch >= self.warmup_epochs:
            top = base * self.warmup_multiplier
            floor = min(self.min_lr, top)
            return floor + (top - floor) * f / self.warmup_multiplier
        return max(base * f, self.min_lr) if epoch >= self.warmup_epochs else base * f

    def start_epoch(self, epoch: int) -> float:
        """Set every group's rate for ``epoch``; return group 0's rate."""
        self.last_epoch = int(epoch)
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = self.lr_at(epoch, i)
        return float(self.optimizer.param_groups[0]["lr"])

    def end_epoch(self, monitored: Optional[float] = None) -> None:
        """Feed the monitored validation value (used by 'plateau' only)."""
        if self.name != "plateau" or monitored is None or self.last_epoch < self.warmup_epochs:
            return
        better = (
            self.plateau_best is None
            or (self.plateau_mode == "max" and monitored > self.plateau_best)
            or (self.plateau_mode == "min" and monitored < self.plateau_best)
        )
        if better:
            self.plateau_best, self.plateau_bad = float(monitored), 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad > self.plateau_patience:
                self.plateau_scale *= self.plateau_factor
                self.plateau_bad = 0

    def state_dict(self) -> Dict[str, Any]:
        return {
            "last_epoch": self.last_epoch,
            "plateau_scale": self.plateau_scale,
            "plateau_best": self.plateau_best,
            "plateau_bad": self.plateau_bad,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = state["plateau_best"]
        self.plateau_bad = int(state["plateau_bad"])
        self.base_lrs = [float(v) for v in state["base_lrs"]]
