"""A library call of ``run`` changes no process-wide state; the command line sets it up."""
from __future__ import annotations

import logging

import torch


def test_run_as_a_library_leaves_threads_and_root_logging_alone(run_tiny):
    root = logging.getLogger()
    handlers, level, threads = list(root.handlers), root.level, torch.get_num_threads()
    pkg_handlers = list(logging.getLogger("imbalance").handlers)
    rdir, _ = run_tiny("num_threads=2", "stage2.enabled=false", "training.epochs=1")
    assert torch.get_num_threads() == threads
    assert list(root.handlers) == handlers and root.level == level
    assert list(logging.getLogger("imbalance").handlers) == pkg_handlers  # the run's file log is detached
    log = (rdir / "logs" / "training.log").read_text()
    assert "stage 1 epoch   1/1" in log and "final test" in log


def test_configure_process_sets_threads_and_console_logging():
    from imbalance.config import compose, with_schema
    from imbalance.runtime import configure_process

    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        n = configure_process(with_schema(compose(["num_threads=1"])))
        assert n == 1 and torch.get_num_threads() == 1
        assert any(getattr(h, "_imbalance_handler", False) for h in root.handlers)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
