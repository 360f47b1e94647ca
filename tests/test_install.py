"""``pip install .`` (not editable) into a fresh virtual environment, then the console scripts
run the demo, evaluation, prediction, figures and summarize from a folder outside the
repository (the package carries config.yaml and conf/). Slow: it builds and installs a wheel."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import venv

import pytest

from conftest import ROOT

TINY = ["training.epochs=2", "stage2.epochs=2", "model.width=8", "model.depth=2", "visualization.enabled=false",
        "num_threads=1", "data.batch_size=32", "scheduler.warmup_epochs=1"]


@pytest.mark.slow
def test_pip_install_then_console_scripts_outside_the_repository(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    pip = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()

    def cli(name, *args):
        p = subprocess.run([str(bin_dir / name), *args], cwd=work, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{name}: {p.stderr[-2000:]}"
        return p

    # the package imported is the installed copy, not the repository
    where = subprocess.run([str(bin_dir / "python"), "-c", "import imbalance, imbalance.config as c; "
                            "print(imbalance.__file__); print(c.CONFIG_DIR)"], cwd=work, capture_output=True,
                           text=True)
    assert str(env_dir) in where.stdout and str(ROOT) not in where.stdout, where.stdout
    cli("imbalance-data", "--out", "data", "--format", "mat", "--num-classes", "4", "--train-per-class", "40",
        "--test-per-class", "10", "--length", "128")
    cli("imbalance-train", "exp_name=inst", "data.path_train=data/train.mat", "data.path_test=data/test.mat", *TINY)
    run_dir = (work / "experiments" / "inst_latest").resolve()
    res = json.loads((run_dir / "results" / "results.json").read_text())
    assert res["status"] == "completed" and res["classes"] == [0, 1, 2, 3]
    cli("imbalance-train", "exp_name=demo_builtin", "data.synthetic.num_classes=4",
        "data.synthetic.train_per_class=40", "data.synthetic.test_per_class=10", "data.synthetic.length=128", *TINY)
    cli("imbalance-train", "mode=eval", "resume=experiments/inst_latest", "data.path_test=data/test.mat",
        "visualization.enabled=false", "exp_name=ev")
    ev = json.loads(((work / "experiments" / "ev_latest").resolve() / "results" / "results.json").read_text())
    assert ev["metrics"]["final"] == res["metrics"]["final"]
    cli("imbalance-predict", "--run", "experiments/inst_latest", "--input", "data/test.mat", "--out", "preds.csv")
    rows = list(csv.DictReader(open(work / "preds.csv")))
    assert len(rows) == 40 and {"predicted", "probability", "label"} <= set(rows[0])
    cli("imbalance-figures", "--exp_dir", "experiments/inst_latest")
    assert (run_dir / "results" / "confusion_matrix.png").is_file()
    out = cli("imbalance-summarize", "--root", "experiments", "--out", "report", "--no-figure")
    assert "runs in" in out.stdout and (work / "report" / "REPORT.md").is_file()
    assert sys.executable  # the test's own interpreter was not used for any of the above
