"""The MLflow backend and the run-folder importer, read back with MlflowClient.

One sqlite store for the whole module (creating a store runs MLflow's schema migrations, ~3 s);
each test uses its own experiment names and run folders.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install .[tracking])")
from mlflow import MlflowClient  # noqa: E402
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH  # noqa: E402

from imbalance.errors import DataError  # noqa: E402
from imbalance.loggers import MLFLOW_RUN_FILE, RUN_KEY_TAG, make_loggers, run_key  # noqa: E402
from imbalance.mlflow_import import import_run_folder, read_metrics_csv  # noqa: E402
from test_loggers_support import (COLUMNS, CONFIG, FINAL, GROUP_TAGS, make_rows, simulate,  # noqa: E402
                                  value, write_run_files)

ALL = COLUMNS + GROUP_TAGS
# MLflow's own sqlite store uses a SQLAlchemy option that SQLAlchemy 2.1 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, client) of a fresh sqlite store."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()  # creates the tables once
    return uri, client


def mlflow_logger(uri, experiment, **kw):
    return make_loggers(["mlflow"], {"mlflow": {"tracking_uri": uri, "experiment_name": experiment, **kw}})


def runs_of(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    return client.search_runs([exp.experiment_id])


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def artifact_paths(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, f.path) if f.is_dir else [f.path]
    return sorted(out)


def test_mlflow_two_stage_run(store, tmp_path):
    uri, client = store
    run_dir = tmp_path / "demo_20250101"
    config = {**CONFIG, "note": "x" * 7000, "bad key!": 1}
    lg = mlflow_logger(uri, "two_stage")
    simulate(lg, run_dir, config=config)
    assert lg.disabled == {}
    (run,) = runs_of(client, "two_stage")
    rid = run.info.run_id
    assert run.info.run_name == "demo" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.git.commit"] == "0123abcd"
    assert run.data.tags[RUN_KEY_TAG] == run_key(run_dir)
    # params: dotted keys, values as text, MLflow's limits respected
    p = run.data.params
    assert p["loss.name"] == "FocalLoss" and p["training.lr"] == "0.01" and p["training.amp"] == "false"
    assert p["data.path_train"] == "null" and p["gpus"] == "[0, 1]" and p["seed"] == "3"
    assert len(p["note"]) == MAX_PARAM_VAL_LENGTH and p["note"].endswith("...")
    assert p["bad key_"] == "1"
    # per-epoch metrics at step = global epoch, per stage
    per_stage = {1: [1, 2, 3], 2: [4, 5]}
    for s, steps in per_stage.items():
        for c in ALL:
            assert history(client, rid, f"stage{s}/{c}") == [(g, pytest.approx(value(c, g))) for g in steps]
    # final metrics, at the last global epoch
    for k, v in FINAL.items():
        assert history(client, rid, k) == [(5, pytest.approx(v))]
    assert set(run.data.metrics) == {f"stage{s}/{c}" for s in per_stage for c in ALL} | set(FINAL)
    assert artifact_paths(client, rid) == ["config.yaml", "confusion_matrix.png", "figures/curves.png",
                                           "results.json", "summary.txt"]
    saved = json.loads((run_dir / MLFLOW_RUN_FILE).read_text())
    assert saved["run_id"] == rid and saved["tracking_uri"] == uri


def test_mlflow_resume_continues_the_run_without_duplicate_steps(store, tmp_path):
    uri, client = store
    run_dir = tmp_path / "run"
    first = mlflow_logger(uri, "resume")
    simulate(first, run_dir, stages=((1, 4),), finish=False)  # epochs 1..4 logged
    first.close("killed")
    # resumed after global epoch 2 (its checkpoint); the config gained a key and changed one
    second = mlflow_logger(uri, "resume")
    second.start(run_dir, {**CONFIG, "resume": "auto", "seed": 4}, exp_name="demo", resume_global_epoch=2)
    for row, recall in make_rows(((1, 5),), after=2, offset=0.5):
        second.log_epoch(row, recall)
    second.log_final(FINAL)
    second.close()
    assert second.disabled == {}
    (run,) = runs_of(client, "resume")
    assert run.info.status == "FINISHED" and run.data.tags["imbalance.resumed_after"] == "2"
    for c in ALL:
        # steps 3 and 4 were already in the run (MLflow cannot delete values): kept once
        assert history(client, run.info.run_id, f"stage1/{c}") == \
            [(g, pytest.approx(value(c, g, 0.5 if g == 5 else 0.0))) for g in range(1, 6)]
    assert run.data.params["resume"] == "auto" and run.data.params["seed"] == "3"


def test_mlflow_sweep_is_one_experiment(store, tmp_path):
    uri, client = store
    sweep = tmp_path / "multirun_20250101-000000"
    for j in range(2):
        simulate(mlflow_logger(uri, "single_runs"), sweep / f"demo_{j}", sweep=sweep.name,
                 config={**CONFIG, "training": {"lr": 0.01 * (j + 1)}}, confusion=False)
    simulate(mlflow_logger(uri, "single_runs"), tmp_path / "alone", confusion=False)
    runs = runs_of(client, sweep.name)
    assert sorted(r.info.run_name for r in runs) == ["demo_0", "demo_1"]
    assert {r.data.tags["imbalance.sweep"] for r in runs} == {sweep.name}
    assert sorted(r.data.params["training.lr"] for r in runs) == ["0.01", "0.02"]
    assert [r.info.run_name for r in runs_of(client, "single_runs")] == ["demo"]
    # sweep_experiment=false: sweep jobs go to experiment_name, tagged with the sweep
    simulate(mlflow_logger(uri, "all_in_one", sweep_experiment=False), sweep / "demo_2", sweep=sweep.name,
             confusion=False)
    (r,) = runs_of(client, "all_in_one")
    assert r.data.tags["imbalance.sweep"] == sweep.name


def test_mlflow_server_down_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    lg = make_loggers(["csv", "mlflow"], {"mlflow": {"tracking_uri": "http://127.0.0.1:9"}})
    with caplog.at_level(logging.WARNING, logger="imbalance"):
        simulate(lg, tmp_path / "run", confusion=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "mlflow" in warnings[0]
    assert list(lg.disabled) == ["mlflow"]
    assert (tmp_path / "run" / "results" / "results.json").is_file()


def test_mlflow_failure_midway_disables_only_mlflow(store, tmp_path, monkeypatch, caplog):
    uri, client = store
    lg = make_loggers(["tensorboard", "mlflow"], {"mlflow": {"tracking_uri": uri, "experiment_name": "midway"}})
    run_dir = tmp_path / "run"
    lg.start(run_dir, CONFIG, exp_name="demo")
    ml = lg.backends[1]
    real = ml.client.log_batch
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) >= 2:
            raise ConnectionError("server went away")
        return real(*a, **k)

    monkeypatch.setattr(ml.client, "log_batch", flaky)
    with caplog.at_level(logging.WARNING, logger="imbalance"):
        for row, recall in make_rows(((1, 3),)):
            lg.log_epoch(row, recall)
        lg.log_final(FINAL)
        lg.close()
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1
    assert len(calls) == 2 and list(lg.disabled) == ["mlflow"]
    (run,) = runs_of(client, "midway")
    assert history(client, run.info.run_id, "stage1/val_macc") == [(1, pytest.approx(value("val_macc", 1)))]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tb"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("stage1/val_macc")] == [1, 2, 3]


# --------------------------------------------------------------------------- importer
def make_finished_folder(folder: Path) -> Path:
    """A run folder as the pipeline leaves it (before the logger existed)."""
    write_run_files(folder)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    header = "stage,epoch,global_epoch,lr,train_loss,train_acc,val_loss,val_acc,val_macc,epoch_time\n"
    lines = [header]
    for row, _ in make_rows(((1, 3), (2, 2))):
        lines.append(",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c])
                              for c in header.strip().split(",")) + "\n")
    (folder / "logs" / "metrics.csv").write_text("".join(lines))
    (folder / "results" / "curves.pdf").write_bytes(b"%PDF-1.4\n")
    return folder


def folder_state(folder: Path):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_import_run_folder_is_complete_and_idempotent(store, tmp_path):
    uri, client = store
    sweep = tmp_path / "multirun_20240101-101010"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    folder = make_finished_folder(sweep / "demo_0")
    before = folder_state(folder)
    rid = import_run_folder(folder, uri, None)
    assert rid is not None
    assert folder_state(folder) == before  # only read
    (run,) = runs_of(client, sweep.name)  # experiment named after the sweep
    assert run.info.run_id == rid and run.info.run_name == "demo_0" and run.info.status == "FINISHED"
    assert run.data.tags["imbalance.imported"] == "true" and run.data.tags["imbalance.sweep"] == sweep.name
    assert run.data.tags["mlflow.source.git.commit"] == "0123abcd"
    assert run.data.params["loss.name"] == "FocalLoss"
    for s, steps in {1: [1, 2, 3], 2: [4, 5]}.items():
        for c in COLUMNS:
            assert history(client, rid, f"stage{s}/{c}") == [(g, pytest.approx(value(c, g), rel=1e-5)) for g in steps]
    for k, v in FINAL.items():
        assert history(client, rid, k) == [(5, pytest.approx(v))]
    assert artifact_paths(client, rid) == ["config.yaml", "confusion_matrix.png", "figures/curves.pdf",
                                           "figures/curves.png", "results.json", "summary.txt"]
    # a second import skips the folder
    assert import_run_folder(folder, uri, None) is None
    assert len(runs_of(client, sweep.name)) == 1
    # an explicit experiment name wins over the sweep folder
    other = make_finished_folder(tmp_path / "old_run")
    import_run_folder(other, uri, "imported_runs")
    assert len(runs_of(client, "imported_runs")) == 1


def test_import_skips_a_folder_logged_live(store, tmp_path):
    uri, client = store
    folder = tmp_path / "live"
    simulate(mlflow_logger(uri, "live"), folder, confusion=False)
    assert import_run_folder(folder, uri, "live_import") is None
    assert client.get_experiment_by_name("live_import") is None


def test_import_errors(store, tmp_path):
    uri, _ = store
    with pytest.raises(DataError, match="results.json is missing"):
        import_run_folder(tmp_path, uri, "x")


def test_read_metrics_csv_parses_numbers(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("stage,epoch,lr,val_loss\n1,1,0.1,\n1,2,0.05,0.7\n")
    assert read_metrics_csv(p) == [{"stage": 1, "epoch": 1, "lr": 0.1, "global_epoch": 1},
                                   {"stage": 1, "epoch": 2, "lr": 0.05, "val_loss": 0.7, "global_epoch": 2}]
