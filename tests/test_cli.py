"""``python main.py`` as a user runs it: a subprocess in a fresh folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY
from imbalance.models import MODELS

MAIN = str(ROOT / "main.py")


def _main(args, cwd, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, MAIN, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_tiny_run_writes_the_run_folder_and_latest_link(tmp_path):
    proc = _main([*TINY, "exp_name=cli", "training.epochs=1", "stage2.epochs=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    link = tmp_path / "experiments" / "cli_latest"
    assert link.is_symlink()
    run = link.resolve()
    assert run.name.startswith("cli_") and (run / ".hydra" / "config.yaml").is_file()
    res = json.loads((run / "results" / "results.json").read_text())
    assert res["exp_name"] == "cli" and "final" in res["metrics"]
    assert "final test" in proc.stdout


@pytest.mark.parametrize("args, needle", [
    (["model.name=Nope"], "unknown model 'Nope'; valid model names: ConvNetADSB"),
    (["data.path_train=missing/train.mat", "data.path_test=missing/test.mat"], "data file not found"),
    (["data.imbalance_ratio=0.5"], "data.imbalance_ratio=0.5 is out of range"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    proc = _main([*TINY, *args], tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_misspelt_key_is_refused(tmp_path):
    proc = _main(["data.batchsize=3"], tmp_path)
    assert proc.returncode != 0 and "data.batchsize" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", MODELS.names())
def test_one_epoch_with_each_model_in_process(run_tiny, name):
    rdir, _ = run_tiny(f"model.name={name}", "training.epochs=1", "stage2.epochs=1", "model.width=8",
                       "model.depth=2", name=name)
    res = json.loads((rdir / "results" / "results.json").read_text())
    assert res["model_info"]["name"] == name and res["model_info"]["params"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_one_epoch_cli_run_with_each_model(tmp_path, name):
    proc = _main([*TINY, f"model.name={name}", "training.epochs=1", "stage2.epochs=1", f"exp_name={name}"],
                 tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "experiments" / f"{name}_latest" / "results" / "results.json").is_file()
