"""The run loggers wired into real runs: the TensorBoard event files (EventAccumulator) and the
MLflow store (MlflowClient) read back after a two-stage run, a resumed run, a failing backend and
(slow) a 2-job multirun and a torchrun run. Every scalar is compared with the run's own
logs/metrics.csv and results.json."""
from __future__ import annotations

import copy
import csv
import inspect
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

pytest.importorskip("tensorboard", reason="tensorboard is not installed")
mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install .[tracking])")
from mlflow import MlflowClient  # noqa: E402

from conftest import ROOT, TINY, interrupt_after, tiny_cfg  # noqa: E402
from imbalance.errors import ConfigError  # noqa: E402
from imbalance.loggers import LOGGERS, flatten_config  # noqa: E402
from imbalance.run_folder import METRICS_COLUMNS  # noqa: E402
from test_loggers_support import (data_server_series, hparams_of, raw_scalar_events, read_tb,  # noqa: E402
                                  scalar_series)

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

VALUE_COLUMNS = [c for c in METRICS_COLUMNS if c not in ("stage", "epoch", "global_epoch")]
GROUPS = ("many", "medium", "few")
# one cheap figure (a PNG + PDF pair), small
FIGURES = ["visualization.enabled=true", "visualization.dpi=40", "visualization.plot_tsne_2d=false",
           "visualization.plot_training_curves=false",
           "visualization.plot_learning_rate=false", "visualization.plot_confusion_matrix=false",
           "visualization.plot_per_class_acc=false", "visualization.plot_group_performance=false",
           "visualization.plot_sample_vs_performance=false", "visualization.plot_confidence_dist=false",
           "visualization.plot_top_confusions=false", "visualization.plot_reliability_diagram=false"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, client) of one sqlite store for the module (its schema is made once)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()
    return uri, client


def logged(uri: str, experiment: str, *extra: str):
    return ["logger=[csv,tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}",
            f"logger.mlflow.experiment_name={experiment}", *extra]


def csv_rows(rdir: Path):
    with open(rdir / "logs" / "metrics.csv", newline="") as fh:
        return [{k: (int(v) if k in ("stage", "epoch", "global_epoch") else float(v)) for k, v in r.items()}
                for r in csv.DictReader(fh)]


def results_of(rdir: Path):
    return json.loads((rdir / "results" / "results.json").read_text())


def only_run(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def artifacts(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return sorted(out)


def expected_final(res):
    """``test/<stage>/<metric>`` and ``val/<metric>`` from results.json, as a reader computes them."""
    out = {f"test/{stage}/{k}": v for stage, block in res["metrics"].items()
           for k, v in block["overall"].items() if isinstance(v, (int, float)) and v == v}
    out.update({f"val/{k}": v for k, v in res["val_metrics"].items()})
    return out


def assert_group_recall_matches_val_macc(series, rows, res):
    """The validation set holds every class, so val_macc is the class-count weighted mean of the
    groups' recalls (groups from the TRAINING counts, as results.json records them)."""
    gw = res["metrics"]["final"]["group_wise"]
    k = sum(gw[g]["n_classes"] for g in GROUPS)
    for row in rows:
        s, g = row["stage"], row["global_epoch"]
        weighted = sum(gw[grp]["n_classes"] * series[f"stage{s}/val_recall_{grp}"][g] for grp in GROUPS
                       if gw[grp]["n_classes"])
        assert weighted / k == pytest.approx(row["val_macc"], rel=1e-5, abs=1e-6), (s, g)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("name", LOGGERS.names())
def test_the_logger_group_files_hold_the_backend_defaults(name):
    from imbalance.config import compose

    section = OmegaConf.to_container(compose([f"logger=[{name}]"]).logger)
    params = inspect.signature(LOGGERS.get(name)).parameters
    assert section == {name: {k: p.default for k, p in params.items() if k != "base_dir"}}


def test_default_is_csv_and_several_backends_compose():
    from imbalance.config import compose, with_schema

    assert OmegaConf.to_container(with_schema(compose([])).logger) == {"csv": {}}
    cfg = with_schema(compose(["logger=[csv,tensorboard,mlflow]", "logger.tensorboard.flush_secs=5"]))
    assert list(cfg.logger) == ["csv", "tensorboard", "mlflow"] and cfg.logger.tensorboard.flush_secs == 5


def test_a_bad_logger_option_fails_before_any_data(tmp_path):
    from imbalance.pipeline import run

    with pytest.raises(ConfigError, match=r"logger\.tensorboard\.logdir; valid keys: log_dir, flush_secs, log_images"):
        run(tiny_cfg("logger=[tensorboard]", "+logger.tensorboard.logdir=x"), run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_other_ranks_get_the_no_op_logger():
    from imbalance.builders import build_run_logger

    cfg = tiny_cfg("logger=[csv,tensorboard,mlflow]")
    assert [b.name for b in build_run_logger(cfg).backends] == ["csv", "tensorboard", "mlflow"]
    assert build_run_logger(cfg, main_process=False).backends == []


def test_varied_keys_are_the_swept_keys_of_a_multirun_else_the_command_line(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from imbalance.config import CONFIG_DIR, register_configs, register_resolvers
    from imbalance.runtime import varied_keys

    assert varied_keys() == []  # outside Hydra
    register_configs()
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["seed=1", "loss=focal", "logger=[csv,tensorboard]", "resume=auto"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    multi = copy.deepcopy(cfg)
    try:
        HydraConfig.instance().set_config(cfg)
        assert varied_keys() == ["seed", "loss"]  # a single run: what the command line set
        # a job of `python main.py -m seed=0,1 loss=focal training.lr=range(...) logger=[csv,tensorboard]`
        (tmp_path / "multirun.yaml").write_text(OmegaConf.to_yaml({"hydra": {"overrides": {"task": [
            "seed=0,1", "loss=focal", "training.lr=range(0.1,0.3,0.1)", "logger=[csv,tensorboard]",
            "stage2.loss=choice(CrossEntropy,FocalLoss)"]}}}))
        OmegaConf.set_struct(multi, False)
        multi.hydra.mode = "MULTIRUN"
        multi.hydra.sweep.dir = str(tmp_path)
        multi.hydra.sweeper.params = {"stage2.lr": "interval(0.001, 0.1)"}  # e.g. Optuna's search space
        HydraConfig.instance().set_config(multi)
        assert varied_keys() == ["seed", "training.lr", "stage2.loss", "stage2.lr"]
    finally:
        HydraConfig.instance().cfg = None


# --------------------------------------------------------------------------- a two-stage run
def test_two_stage_run_logs_every_scalar_hparam_figure_and_artifact(tmp_path, store):
    from imbalance.pipeline import run

    uri, client = store
    rdir = tmp_path / "demo_20250101-000000-000001"
    run(tiny_cfg(*logged(uri, "two_stage"), *FIGURES), run_dir=rdir)
    rows, res = csv_rows(rdir), results_of(rdir)
    assert [(r["stage"], r["global_epoch"]) for r in rows] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    final = expected_final(res)
    assert {"test/stage1/macc", "test/stage2/few_acc", "test/final/hm", "val/macc"} <= set(final)
    pngs = sorted(p.name for p in (rdir / "results").glob("*.png"))
    pdfs = sorted(p.name for p in (rdir / "results").glob("*.pdf"))
    assert pngs and pdfs

    # ---- TensorBoard: every metrics.csv value at step = global epoch, per stage
    ea = read_tb(rdir / "tb")
    series = {}
    for s in (1, 2):
        want_steps = [r["global_epoch"] for r in rows if r["stage"] == s]
        for col in VALUE_COLUMNS:
            got = scalar_series(ea, f"stage{s}/{col}")
            assert got == [(r["global_epoch"], pytest.approx(r[col], rel=1e-5, abs=1e-9)) for r in rows
                           if r["stage"] == s], (s, col)
        for grp in GROUPS:
            got = scalar_series(ea, f"stage{s}/val_recall_{grp}")
            assert [g for g, _ in got] == want_steps and all(0.0 <= v <= 1.0 for _, v in got)
            series[f"stage{s}/val_recall_{grp}"] = dict(got)
    assert_group_recall_matches_val_macc(series, rows, res)
    for name, v in final.items():
        assert scalar_series(ea, name) == [(4, pytest.approx(v, rel=1e-6, abs=1e-7))], name
    assert Counter(raw_scalar_events(rdir / "tb")).most_common(1)[0][1] == 1  # no step written twice
    # the config as text; hparams = the flattened config, final metrics as HParams metrics
    text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: CrossEntropy" in text and "epochs: 2" in text
    ssi, exp = hparams_of(ea)
    hp = ssi.hparams
    assert hp["loss.name"].string_value == "CrossEntropy" and hp["training.epochs"].number_value == 2
    assert hp["stage2.mode"].string_value == "crt" and hp["exp_name"].string_value == "demo"
    assert hp["git_commit"].string_value == (res["git_commit"] or "")
    assert {m.name.tag for m in exp.metric_infos} == set(final)
    # the run's PNG figures and the confusion matrix as images
    images = set(ea.Tags()["images"])
    assert images == {f"figures/{Path(p).stem}" for p in pngs} | {"confusion_matrix"}
    first = sorted(pngs)[0]
    assert ea.Images(f"figures/{Path(first).stem}")[0].encoded_image_string == (rdir / "results" / first).read_bytes()

    # ---- MLflow: params, metrics per global epoch, final metrics, tags and artifacts
    r = only_run(client, "two_stage")
    rid = r.info.run_id
    assert r.info.run_name == "demo" and r.info.status == "FINISHED"
    if res["git_commit"]:
        assert r.data.tags["mlflow.source.git.commit"] == res["git_commit"]
    flat = flatten_config(res["config"])
    assert set(r.data.params) == set(flat)
    assert r.data.params["loss.name"] == "CrossEntropy" and r.data.params["training.epochs"] == "2"
    assert r.data.params["logger.mlflow.experiment_name"] == "two_stage"
    for s in (1, 2):
        for col in VALUE_COLUMNS:
            assert history(client, rid, f"stage{s}/{col}") == [
                (row["global_epoch"], pytest.approx(row[col], rel=1e-5, abs=1e-9)) for row in rows if row["stage"] == s]
        for grp in GROUPS:
            assert history(client, rid, f"stage{s}/val_recall_{grp}") == [
                (g, pytest.approx(v, rel=1e-6)) for g, v in sorted(series[f"stage{s}/val_recall_{grp}"].items())]
    for name, v in final.items():
        assert history(client, rid, name) == [(4, pytest.approx(v, rel=1e-9))], name
    assert artifacts(client, rid) == sorted(["config.yaml", "confusion_matrix.png", "results.json", "summary.txt"]
                                            + [f"figures/{n}" for n in pngs + pdfs])
    got = json.loads(Path(client.download_artifacts(rid, "results.json", str(tmp_path / "dl"))).read_text())
    assert got["metrics"] == res["metrics"]
    assert json.loads((rdir / "logs" / "mlflow_run.json").read_text())["run_id"] == rid


# --------------------------------------------------------------------------- resume
def test_resumed_run_continues_the_same_runs_without_duplicate_steps(tmp_path, store, monkeypatch):
    """Interrupted in global epoch 4, resumed from the checkpoint BEFORE the last one (global epoch
    2), so steps 3 are in both trackers already: TensorBoard drops them from its files and logs
    the re-run once; MLflow keeps each step once in the same run."""
    from imbalance.pipeline import run

    uri, client = store
    rdir = tmp_path / "demo_20250101-000000-000002"
    interrupt_after(monkeypatch, 3)
    with pytest.raises(SystemExit):
        run(tiny_cfg("training.epochs=4", *logged(uri, "resumed")), run_dir=rdir)
    monkeypatch.undo()
    killed = only_run(client, "resumed")
    assert killed.info.status == "KILLED"
    assert [g for g, _ in history(client, killed.info.run_id, "stage1/val_macc")] == [1, 2, 3]
    assert sorted({s for t, s in raw_scalar_events(rdir / "tb")}) == [1, 2, 3]

    prev = rdir / "checkpoints" / "stage1_last.prev.pt"
    run(tiny_cfg(f"resume={prev}"), run_dir=rdir)
    rows = csv_rows(rdir)
    assert [(r["stage"], r["global_epoch"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6)]
    # TensorBoard: each (tag, step) once in the files; every series equals the rewritten CSV
    events = Counter(raw_scalar_events(rdir / "tb"))
    assert max(events.values()) == 1
    ea = read_tb(rdir / "tb")
    for s in (1, 2):
        for col in VALUE_COLUMNS:
            want = [(r["global_epoch"], pytest.approx(r[col], rel=1e-5, abs=1e-9)) for r in rows if r["stage"] == s]
            assert scalar_series(ea, f"stage{s}/{col}") == want
            assert data_server_series(rdir / "tb", f"stage{s}/{col}") == want  # TensorBoard's default server
    assert len(ea.Tensors("config/text_summary")) == 1
    # MLflow: the same run, finished, each step once (step 3 kept from the first session)
    r = only_run(client, "resumed")
    assert r.info.run_id == killed.info.run_id and r.info.status == "FINISHED"
    assert r.data.tags["imbalance.resumed_after"] == "2"
    for s in (1, 2):
        for col in VALUE_COLUMNS + [f"val_recall_{g}" for g in GROUPS]:
            steps = [g for g, _ in history(client, r.info.run_id, f"stage{s}/{col}")]
            assert steps == [row["global_epoch"] for row in rows if row["stage"] == s], (s, col)
        for col in ("val_macc", "train_loss", "lr"):  # bit-for-bit resume: the kept step 3 is the re-run's value
            assert history(client, r.info.run_id, f"stage{s}/{col}") == [
                (row["global_epoch"], pytest.approx(row[col], rel=1e-5, abs=1e-9)) for row in rows if row["stage"] == s]
    assert history(client, r.info.run_id, "test/final/macc") == [
        (6, pytest.approx(results_of(rdir)["metrics"]["final"]["overall"]["macc"]))]


# --------------------------------------------------------------------------- failures
def test_failing_backends_warn_once_and_the_run_completes(tmp_path, store, monkeypatch, capsys):
    """MLflow's server is down from the start and TensorBoard's disk fills up after two epochs: one
    warning each, the run finishes with every file of its own (metrics.csv although `csv` is not
    selected), and `summarize.py --to-mlflow` imports it afterwards (twice: the second skips it)."""
    from torch.utils.tensorboard import SummaryWriter

    from imbalance.pipeline import run
    from imbalance.summary import main as summarize_main

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    real = SummaryWriter.add_scalar
    calls = []

    def disk_full(self, *a, **k):
        calls.append(a[0])
        if len(calls) > 2 * len(VALUE_COLUMNS + list(GROUPS)):  # epochs 1 and 2 are written
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full)
    root = tmp_path / "experiments"
    rdir = root / "demo_20250101-000000-000003"
    run(tiny_cfg("logger=[tensorboard,mlflow]", "logger.mlflow.tracking_uri=http://127.0.0.1:9"), run_dir=rdir)
    res = results_of(rdir)
    assert res["status"] == "completed"
    assert len(csv_rows(rdir)) == 4
    for rel in ("checkpoints/final.pt", "results/summary.txt", "logs/training.log"):
        assert (rdir / rel).is_file()
    warnings = [line for line in (rdir / "logs" / "training.log").read_text().splitlines() if " WARNING " in line
                and "failed in" in line]
    assert len(warnings) == 2, warnings
    assert "logger mlflow failed in start" in warnings[0] and "logger tensorboard failed in log_epoch" in warnings[1]
    assert "No space left on device" in warnings[1]
    assert sorted({s for _, s in raw_scalar_events(rdir / "tb")}) == [1, 2]
    assert not (rdir / "logs" / "mlflow_run.json").exists()

    uri, client = store
    monkeypatch.chdir(tmp_path)
    assert summarize_main(["--root", str(root), "--to-mlflow", uri, "--mlflow-experiment", "imported"]) == 0
    assert "1 runs imported" in capsys.readouterr().out
    r = only_run(client, "imported")
    assert r.data.tags["imbalance.imported"] == "true" and r.info.status == "FINISHED"
    rows = csv_rows(rdir)
    assert history(client, r.info.run_id, "stage2/val_macc") == [
        (row["global_epoch"], pytest.approx(row["val_macc"], rel=1e-5)) for row in rows if row["stage"] == 2]
    assert history(client, r.info.run_id, "test/final/macc") == [(4, pytest.approx(res["metrics"]["final"]["overall"]["macc"]))]
    assert summarize_main(["--root", str(root), "--to-mlflow", uri, "--mlflow-experiment", "imported"]) == 0
    out = capsys.readouterr().out
    assert "0 runs imported" in out and "1 already there" in out
    assert len(client.search_runs([r.info.experiment_id])) == 1


def test_to_mlflow_without_runs_is_one_clear_error(tmp_path, capsys):
    from imbalance.summary import main as summarize_main

    assert summarize_main(["--root", str(tmp_path), "--to-mlflow", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "error: no run folders" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end (subprocess)
def _main(cwd, *args, runner=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1", PYTHONPATH=str(ROOT))
    cmd = (runner or [sys.executable]) + [str(ROOT / "main.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_job_multirun_is_one_mlflow_experiment_and_lines_up_in_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    p = _main(tmp_path, "-m", "hydra/launcher=local", "exp_name=mr", "seed=0,1", "logger=[csv,tensorboard,mlflow]",
              *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    (sweep,) = (tmp_path / "experiments").glob("multirun_*")
    jobs = sorted(d for d in sweep.iterdir() if not d.is_symlink() and (d / "results" / "results.json").is_file())
    assert [d.name for d in jobs] == ["mr_0", "mr_1"]
    # MLflow: the default store (sqlite:///experiments/mlflow.db where the command started); one
    # experiment named after the sweep folder, one run per job
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'experiments' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(sweep.name)
    runs = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in runs] == ["mr_0", "mr_1"]
    assert [r.data.params["seed"] for r in runs] == ["0", "1"]
    for r, job in zip(runs, jobs):
        rows, res = csv_rows(job), results_of(job)
        assert r.info.status == "FINISHED" and r.data.tags["imbalance.sweep"] == sweep.name
        assert r.data.tags["imbalance.varied"] == "seed"
        for row in rows:
            key = f"stage{row['stage']}/val_macc"
            assert (row["global_epoch"], pytest.approx(row["val_macc"], rel=1e-5)) in history(client, r.info.run_id, key)
        for name, v in expected_final(res).items():
            assert history(client, r.info.run_id, name) == [(4, pytest.approx(v))]
        assert {"results.json", "summary.txt", "config.yaml", "confusion_matrix.png"} <= set(artifacts(client, r.info.run_id))
    # TensorBoard over the experiments folder: both jobs, hparams with the sweep and the seed
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path / "experiments"))
    mux.Reload()
    # TensorBoard follows the mr_latest link too: the newest job is listed a second time under it
    assert sorted(mux.Runs()) == [f"{sweep.name}/mr_0/tb", f"{sweep.name}/mr_1/tb", f"{sweep.name}/mr_latest/tb"]
    for j, job in enumerate(jobs):
        ea = mux.GetAccumulator(f"{sweep.name}/mr_{j}/tb")
        ssi, exp_info = hparams_of(ea)
        assert ssi.hparams["sweep"].string_value == sweep.name and ssi.hparams["seed"].number_value == j
        assert [h.name for h in exp_info.hparam_infos if h.differs] == ["seed"]  # shown first in the HParams tab
        assert {m.name.tag for m in exp_info.metric_infos} == set(expected_final(results_of(job)))
        assert "stage2/val_recall_few" in ea.Tags()["tensors"]


@pytest.mark.slow
def test_under_torchrun_only_rank_0_logs(tmp_path):
    port = 29500 + os.getpid() % 1000
    p = _main(tmp_path, "logger=[csv,tensorboard]", *TINY,
              runner=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"])
    assert p.returncode == 0, p.stderr[-3000:]
    (rdir,) = [d for d in (tmp_path / "experiments").iterdir() if not d.is_symlink()]
    files = list((rdir / "tb").glob("*tfevents*"))
    assert len(files) == 1  # one writer
    events = Counter(raw_scalar_events(rdir / "tb"))
    assert max(events.values()) == 1 and events[("stage1/val_macc", 1)] == 1
