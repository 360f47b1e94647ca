"""Sweeps: run_sweep.sh, the Hydra launcher / Optuna presets, multirun folders found by summarize.

Fast tests compose the presets in-process (hydra.compose) and drive run_sweep.sh with a stub
interpreter; the end-to-end multirun / joblib / Optuna runs are @pytest.mark.slow.
"""
from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]

# A tiny run (seconds on one CPU core): the demo config shrunk.
TINY = [
    "training.epochs=1", "stage2.epochs=1", "visualization.enabled=false",
    "data.synthetic.train_per_class=40", "data.synthetic.test_per_class=10", "data.synthetic.num_classes=4",
    "data.synthetic.length=256", "data.batch_size=32", "model.width=8", "model.depth=2",
    "data.imbalance_ratio=10", "stage3.mode=none",
]


def compose(overrides):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from imbalance.config import register_configs, register_resolvers

    register_configs()
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT), version_base="1.3"):
        return hcompose(config_name="config", overrides=list(overrides), return_hydra_config=True)


# ------------------------------------------------------------------ presets composed in-process
@pytest.mark.filterwarnings("ignore:.*declarative_base")
def test_optuna_preset_composes_and_searches_real_keys():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
    from omegaconf import OmegaConf
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution

    from imbalance.losses import LOSSES
    from imbalance.samplers import SAMPLERS

    cfg = compose(["+hparams_search=optuna", "hydra.sweeper.n_trials=3"])
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith("OptunaSweeper")
    assert sw.direction == "maximize" and sw.n_trials == 3
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.stage2.enabled is True
    assert cfg.hydra.sweep.dir.startswith("experiments/optuna_")
    parser = OverridesParser.create()
    missing = object()
    assert len(sw.params) >= 5
    for key, spec in sw.params.items():
        # every searched key is a real config key (a typo would only fail at the first trial)
        assert OmegaConf.select(cfg, key, default=missing) is not missing, key
        dist = create_optuna_distribution_from_override(parser.parse_override(f"{key}={spec}"))
        if key.endswith(".lr"):
            assert isinstance(dist, LogUniformDistribution) and 0 < dist.low < dist.high <= 0.1
        if key == "stage2.loss":
            assert isinstance(dist, CategoricalDistribution)
            for name in dist.choices:
                LOSSES.get(name)  # raises UnknownNameError for a name that is not a loss
        if key == "stage2.sampler":
            for name in dist.choices:
                SAMPLERS.get(name)


@pytest.mark.parametrize("choice, target, n_jobs", [("local", "JoblibLauncher", 2), ("joblib", "JoblibLauncher", -1)])
def test_joblib_launcher_presets(choice, target, n_jobs):
    cfg = compose(["hydra/launcher=" + choice])
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.launcher.n_jobs == n_jobs
    # jobs of one sweep go to separate numbered subfolders
    raw = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert "${hydra.job.num}" in raw["subdir"]


def test_slurm_preset_composes_with_overrides():
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=60",
                   "+hparams_search=optuna"])
    la = cfg.hydra.launcher
    assert la._target_.endswith("SlurmLauncher")
    assert la.partition == "gpu" and la.timeout_min == 60 and la.gpus_per_node == 1
    assert OmegaConf.to_container(la, resolve=False)["submitit_folder"].startswith("${hydra.sweep.dir}/")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")  # presets combine


def test_run_dirs_are_unique_per_microsecond():
    cfg = compose(["exp_name=u"])
    # runs started in the same second differ in the microseconds of their folder names
    assert re.fullmatch(r"experiments/u_\d{8}-\d{6}-\d{6}", cfg.hydra.run.dir)
    assert re.fullmatch(r"experiments/multirun_\d{8}-\d{6}-\d{6}", cfg.hydra.sweep.dir)


# ------------------------------------------------------------------ run_sweep.sh with a stub python
@pytest.fixture()
def stub_python(tmp_path):
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "fakepython"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f"printf '%s\\n' \"$*\" >> {shlex.quote(str(calls))}\n"
        "echo \"stub run $*\"\n"
        "case \"$*\" in *stage2.loss=FocalLoss*stage2.sampler=inv_freq*) echo 'boom' >&2; exit 3;; esac\n"
    )
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return stub, calls


def run_sweep(tmp_path, env_extra, *args):
    env = dict(os.environ, LOG_DIR=str(tmp_path / "logs"), **env_extra)
    return subprocess.run(["bash", str(ROOT / "run_sweep.sh"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_run_sweep_loops_logs_and_passes_arguments(tmp_path, stub_python):
    stub, calls = stub_python
    p = run_sweep(tmp_path, {"PYTHON": str(stub), "LOSSES": "CrossEntropy FocalLoss",
                             "SAMPLERS": "none inv_freq progressive_power", "SEEDS": "0 1"},
                  "training.epochs=1", "exp_note=a b")
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 * 3 * 2  # losses x samplers x seeds, the failing run did not stop the loop
    combos = set()
    for line in lines:
        assert line.startswith(str(ROOT / "main.py") + " ")
        assert "stage2.enabled=true" in line and line.endswith("training.epochs=1 exp_note=a b")
        tok = dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)
        assert tok["exp_name"] == f"sweep_{tok['stage2.loss']}_{tok['stage2.sampler']}"
        combos.add((tok["stage2.loss"], tok["stage2.sampler"], tok["seed"]))
    assert len(combos) == 12
    logs = sorted(q.name for q in (tmp_path / "logs").iterdir())
    assert len(logs) == 12 and "sweep_FocalLoss_none_seed1.log" in logs
    assert "stub run" in (tmp_path / "logs" / "sweep_CrossEntropy_none_seed0.log").read_text()
    # one failure (FocalLoss + inv_freq, both seeds): reported, exit status 1
    assert p.returncode == 1
    assert "FAILED (exit 3): sweep_FocalLoss_inv_freq" in p.stderr and "boom" in p.stderr
    assert "10 of 12 succeeded" in p.stdout


def test_run_sweep_defaults_match_seed_and_dry_run(tmp_path, stub_python):
    stub, calls = stub_python
    p = run_sweep(tmp_path, {"PYTHON": str(stub), "DRY_RUN": "1"})
    assert p.returncode == 0 and not calls.exists()
    cmds = p.stdout.strip().splitlines()
    assert len(cmds) == 9  # SEED.md's 3 losses x 3 samplers
    for loss in ("CrossEntropy", "FocalLoss", "CostSensitiveCE"):
        for sampler in ("none", "inv_freq", "progressive_power"):
            assert any(f"stage2.loss={loss} stage2.sampler={sampler}" in c and
                       f"logs/sweep_{loss}_{sampler}.log" in c for c in cmds)


def test_run_sweep_is_strict_bash():
    text = (ROOT / "run_sweep.sh").read_text()
    assert "set -euo pipefail" in text
    assert subprocess.run(["bash", "-n", str(ROOT / "run_sweep.sh")]).returncode == 0


# ------------------------------------------------------------------ end to end (subprocess)
def _main(tmp_path, *args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _summarize(tmp_path, *args):
    from imbalance.summary import summarize

    return summarize(tmp_path / "experiments", out=tmp_path / "summary", make_figure=False, *args)


@pytest.mark.slow
def test_multirun_jobs_get_own_folders_that_summarize_finds(tmp_path):
    p = _main(tmp_path, "-m", "exp_name=mr", "stage2.enabled=true", "stage2.loss=CrossEntropy,FocalLoss",
              "stage2.sampler=none", "seed=0,1", *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    sweeps = list((tmp_path / "experiments").glob("multirun_*"))
    assert len(sweeps) == 1
    jobs = sorted(d for d in sweeps[0].iterdir() if not d.is_symlink() and (d / "results" / "results.json").is_file())
    assert [d.name for d in jobs] == [f"mr_{k}" for k in range(4)]
    out, st, skipped = _summarize(tmp_path)
    assert not skipped and len(st.runs) == 4
    assert sorted(st.groups["n"]) == [2, 2]  # seeds grouped per stage-2 loss
    assert set(st.groups["loss"]) == {"CrossEntropy", "FocalLoss"}


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_folders(tmp_path):
    p = _main(tmp_path, "-m", "hydra/launcher=local", "exp_name=jl", "seed=0,1", *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    _, st, skipped = _summarize(tmp_path)
    assert not skipped and len(st.runs) == 2 and len(st.groups) == 1 and st.groups["n"].iloc[0] == 2
    assert len({Path(r).parent for r in st.runs["run_dir"]}) == 1  # one sweep folder, two job folders


@pytest.mark.slow
def test_optuna_preset_runs_three_tiny_trials(tmp_path):
    import yaml

    p = _main(tmp_path, "+hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=3",
              "exp_name=opt", *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    sweeps = list((tmp_path / "experiments").glob("optuna_*"))
    assert len(sweeps) == 1
    res = yaml.safe_load((sweeps[0] / "optimization_results.yaml").read_text())
    assert res["name"] == "optuna" and 0.0 <= float(res["best_value"]) <= 1.0
    assert set(res["best_params"]) == set(compose(["+hparams_search=optuna"]).hydra.sweeper.params)
    out, st, skipped = _summarize(tmp_path)
    assert not skipped and len(st.runs) == 3
    assert st.searches and st.searches[0]["best_value"] == res["best_value"]
    assert "optimization_results.yaml" in (out / "REPORT.md").read_text()
    # the value Optuna maximised is what main returned: each trial's validation mAcc
    import json

    vals = [json.loads((d / "results" / "results.json").read_text())["val_metrics"]["macc"]
            for d in sweeps[0].iterdir() if not d.is_symlink() and (d / "results" / "results.json").is_file()]
    assert len(vals) == 3
    assert float(res["best_value"]) == pytest.approx(max(vals))
    assert sorted(st.runs["val_macc"]) == pytest.approx(sorted(vals))
