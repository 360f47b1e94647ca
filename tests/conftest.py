"""Shared fixtures: tiny configs that train in seconds on a CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# A complete pipeline (stage 1, stage 2, evaluation) on the built-in data in a few seconds.
TINY = [
    "training.epochs=2",
    "stage2.epochs=2",
    "data.synthetic.train_per_class=60",
    "data.synthetic.test_per_class=20",
    "data.synthetic.length=256",
    "data.batch_size=32",
    "model.width=8",
    "model.depth=2",
    "visualization.enabled=false",
    "scheduler.warmup_epochs=1",
    "num_threads=1",
]


@pytest.fixture(autouse=True)
def _torch_threads():
    """One intra-op thread in every test, as the tiny configs' ``num_threads=1`` gives a command
    line run (``imbalance.pipeline.run`` itself leaves the process's threads alone), so in-process
    and subprocess runs compute the same numbers."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _close_figures():
    """Every test leaves pyplot as it found it: figures a test draws (and does not close itself)
    are closed afterwards, so a later test that counts open figures sees only its own."""
    yield
    import sys
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def interrupt_after(monkeypatch, global_epoch: int) -> None:
    """Ctrl-C in the middle of global epoch ``global_epoch + 1`` (after its first batch), through
    the run's batch hook; ``monkeypatch.undo()`` lets the next run go through."""
    import imbalance.pipeline as P

    def hook(epoch, batch):
        if epoch == global_epoch + 1 and batch == 1:
            raise KeyboardInterrupt

    orig = P._train
    monkeypatch.setattr(P, "_train", lambda *a: orig(*a[:-1], hook))


class ScheduledCE(torch.nn.CrossEntropyLoss):
    """Cross-entropy that records every ``set_epoch`` call (a stand-in for a scheduled loss such
    as LDAM-DRW, to check that wrappers pass the epoch on exactly once)."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def tiny_cfg(*overrides: str):
    from imbalance.config import compose

    return compose(TINY + list(overrides))


@pytest.fixture
def tiny():
    """``tiny(*overrides)`` -> a composed tiny config."""
    return tiny_cfg


@pytest.fixture
def run_tiny(tmp_path):
    """``run_tiny(*overrides, name='r')`` -> (run folder, returned val mAcc)."""
    from imbalance.pipeline import run

    def _run(*overrides: str, name: str = "r"):
        rdir = tmp_path / name
        value = run(tiny_cfg(*overrides), run_dir=rdir)
        return rdir, value

    return _run
