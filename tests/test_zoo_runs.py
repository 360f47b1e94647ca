"""Every registered model trains for one epoch through ``python main.py`` (stage 1, cRT stage 2,
tau-norm stage 3, evaluation) and records its size in results.json. Slow: one process per model."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from bench_models import DEMO_KW
from conftest import ROOT

from imbalance.models import MODELS

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", MODELS.names())
def test_one_epoch_through_main(name, tmp_path):
    kw = DEMO_KW.get(name, dict(width=16, depth=2))
    run_dir = tmp_path / name
    cmd = [sys.executable, str(ROOT / "main.py"), f"model.name={name}", f"model.width={kw['width']}",
           f"model.depth={kw['depth']}", "training.epochs=1", "stage2.epochs=1", "stage3.mode=tau_norm",
           "data.synthetic.train_per_class=40", "data.synthetic.test_per_class=10", "data.synthetic.length=512",
           "data.batch_size=32", "visualization.enabled=false", "num_threads=1", "scheduler.warmup_epochs=0",
           f"hydra.run.dir={run_dir}"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    res = json.loads((run_dir / "results" / "results.json").read_text())
    assert res["status"] == "completed"
    assert res["model_info"]["name"] == name
    assert res["model_info"]["params"] > 0 and res["model_info"]["flops_per_sample"] > 0
    assert 0.0 <= res["metrics"]["final"]["overall"]["macc"] <= 1.0
