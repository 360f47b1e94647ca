"""``python tests/kill_after.py N <overrides>``: ``python main.py <overrides>`` that SIGKILLs itself
in the middle of global epoch N+1 (after its first batch), i.e. right after epoch N's checkpoint.
A test helper: the hook reaches the run through ``imbalance.pipeline.run``'s ``on_batch_end``."""
import logging
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import imbalance.pipeline as P  # noqa: E402
from imbalance.cli import hydra_entry  # noqa: E402

N = int(sys.argv.pop(1))
_orig = P._train


def _hook(global_epoch: int, batch: int) -> None:
    if global_epoch == N + 1 and batch == 1:
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


P._train = lambda *a: _orig(*a[:-1], _hook)

if __name__ == "__main__":
    hydra_entry(str(ROOT))
