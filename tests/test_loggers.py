"""imbalance.loggers: helpers, the factory, failure isolation and the TensorBoard backend.

TensorBoard files are read back with TensorBoard's own EventAccumulator / EventMultiplexer.
"""
from __future__ import annotations

import logging
import sys

import pytest

from imbalance.errors import ConfigError, UnknownNameError
from imbalance.loggers import (LOGGERS, CompositeLogger, RunLogger, TensorBoardLogger, epoch_scalars,
                               final_metrics, flatten_config, group_recall, make_loggers, null_logger,
                               render_confusion_matrix_png, resolve_tracking_uri)
from test_loggers_support import (COLUMNS, CONFIG, FINAL, GROUP_TAGS, RESULTS, data_server_series, hparams_of,
                                  make_rows, png_bytes, read_tb, scalar_series, simulate, value)


# --------------------------------------------------------------------------- helpers
def test_flatten_config_dotted_keys_lists_are_leaves():
    cfg = {"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}}
    assert flatten_config(cfg) == {"a.b": 1, "a.c.d": None, "e": [1, 2], "f": {}}


def test_epoch_scalars_names_and_skips():
    row = {"stage": 2, "epoch": 1, "global_epoch": 7, "lr": 0.1, "train_loss": 1.5, "val_acc": None,
           "val_loss": "", "flag": True}
    step, values = epoch_scalars(row, {"many": 0.9, "medium": None, "few": 0.25})
    assert step == 7
    assert values == {"stage2/lr": 0.1, "stage2/train_loss": 1.5, "stage2/val_recall_many": 0.9,
                      "stage2/val_recall_few": 0.25}


def test_final_metrics_flattens_results_blocks():
    res = {
        "metrics": {
            "stage1": {"overall": {"oa": 0.5, "few_acc": None, "nll": float("nan")},
                       "group_wise": {"many": {"acc": 1.0}}},
            "final": {"overall": {"macc": 0.4},
                      "openset": {"msp": {"overall": {"auroc": 0.8}, "group_wise": {"few": {"auroc": 0.6}}}}},
        },
        "val_metrics": {"macc": 0.3},
        "per_class": [{"recall": 1.0}],
        "confusion_matrix": [[1]],
    }
    assert final_metrics(res) == {"test/stage1/oa": 0.5, "test/final/macc": 0.4,
                                  "test/final/openset/msp/auroc": 0.8, "val/macc": 0.3}
    assert final_metrics(RESULTS) == FINAL


def test_group_recall_hand_computed():
    # classes 0,1 many; 2 medium; 3,4 few (class 4 absent from this split: left out, not 0)
    y_true = [0, 0, 1, 1, 1, 2, 3]
    y_pred = [0, 1, 1, 1, 0, 2, 0]
    out = group_recall(y_true, y_pred, ["many", "many", "medium", "few", "few"])
    assert out["many"] == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-12)
    assert out["medium"] == pytest.approx(1.0)
    assert out["few"] == pytest.approx(0.0)
    # a group whose classes never occur is None, never 0
    assert group_recall([0, 1], [0, 0], ["many", "few", "medium"])["medium"] is None


def test_resolve_tracking_uri(tmp_path):
    base = tmp_path / "start"
    assert resolve_tracking_uri("sqlite:///experiments/mlflow.db", base) == \
        f"sqlite:///{(base / 'experiments' / 'mlflow.db').resolve()}"
    assert resolve_tracking_uri("sqlite:////abs/m.db", base) == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://host:5000", base) == "http://host:5000"
    assert resolve_tracking_uri("databricks", base) == "databricks"
    assert resolve_tracking_uri("mlruns", base) == (base / "mlruns").resolve().as_uri()
    assert resolve_tracking_uri("file:./mlruns", base) == (base / "mlruns").resolve().as_uri()
    assert resolve_tracking_uri(None, base) is None


def test_confusion_matrix_png():
    data = render_confusion_matrix_png([[3, 1], [0, 2]], ["x", "y"])
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="square"):
        render_confusion_matrix_png([[1, 2, 3]])


# --------------------------------------------------------------------------- factory
def test_registry_names():
    assert set(LOGGERS.names()) == {"csv", "tensorboard", "mlflow"}


@pytest.mark.parametrize("name", LOGGERS.names())
def test_every_backend_builds_with_defaults(name, tmp_path):
    lg = make_loggers([name], base_dir=tmp_path)
    assert [b.name for b in lg.backends] == [name]
    assert isinstance(lg.backends[0], RunLogger)


def test_make_loggers_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="valid logger names: csv, tensorboard, mlflow"):
        make_loggers(["csv", "wandb"])
    with pytest.raises(ConfigError, match=r"logger\.tensorboard\.logdir.*valid keys: log_dir, flush_secs"):
        make_loggers(["tensorboard"], {"tensorboard": {"logdir": "x"}})
    with pytest.raises(ConfigError, match="takes no options"):
        make_loggers(["csv"], {"csv": {"path": "x"}})
    with pytest.raises(ConfigError, match=r"logger\.tensorboard\.flush_secs=0"):
        make_loggers(["tensorboard"], {"tensorboard": {"flush_secs": 0}})
    with pytest.raises(ConfigError, match="inside the run folder"):
        make_loggers(["tensorboard"], {"tensorboard": {"log_dir": "/abs/tb"}})
    with pytest.raises(ConfigError, match=r"logger\.mlflow\.sweep_experiment='yes'"):
        make_loggers(["mlflow"], {"mlflow": {"sweep_experiment": "yes"}})
    # duplicates collapse; sections of backends not selected are ignored
    lg = make_loggers(["csv", "csv"], {"tensorboard": {"bogus": 1}})
    assert [b.name for b in lg.backends] == ["csv"]


def test_csv_only_and_null_logger_write_nothing(tmp_path):
    for lg in (make_loggers(["csv"], base_dir=tmp_path), null_logger()):
        run = tmp_path / f"run_{len(list(tmp_path.iterdir()))}"
        run.mkdir()
        simulate(lg, run, finish=False)
        lg.log_final(FINAL)
        lg.close()
        assert sorted(p.name for p in run.iterdir()) == []


# --------------------------------------------------------------------------- failure isolation
class Recorder(RunLogger):
    name = "recorder"

    def __init__(self):
        self.calls = []

    def start(self, run_dir, config, **kw):
        self.calls.append("start")

    def log_epoch(self, row, group_recall=None):
        self.calls.append(("epoch", row["global_epoch"]))

    def log_final(self, metrics, **kw):
        self.calls.append("final")

    def close(self, status="finished"):
        self.calls.append(("close", status))


class DiskFull(Recorder):
    name = "diskfull"

    def __init__(self):
        super().__init__()
        self.aborted = False

    def log_epoch(self, row, group_recall=None):
        super().log_epoch(row, group_recall)
        raise OSError(28, "No space left on device")

    def abort(self):
        self.aborted = True


def test_failing_backend_warns_once_and_the_rest_logs(tmp_path, caplog):
    bad, good = DiskFull(), Recorder()
    lg = CompositeLogger([bad, good])
    with caplog.at_level(logging.WARNING, logger="imbalance"):
        simulate(lg, tmp_path, confusion=False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "diskfull" in warnings[0].getMessage() and "No space left on device" in warnings[0].getMessage()
    assert bad.calls == ["start", ("epoch", 1)] and bad.aborted  # disabled after its first failure
    assert good.calls == ["start"] + [("epoch", g) for g in range(1, 6)] + ["final", ("close", "finished")]
    assert list(lg.disabled) == ["diskfull"]
    assert (tmp_path / "results" / "results.json").is_file()  # the run folder's own files are kept


def test_context_manager_status():
    rec = Recorder()
    with pytest.raises(RuntimeError):
        with CompositeLogger([rec]):
            raise RuntimeError("boom")
    assert rec.calls[-1] == ("close", "failed")
    rec2 = Recorder()
    with pytest.raises(KeyboardInterrupt):
        with CompositeLogger([rec2]):
            raise KeyboardInterrupt
    assert rec2.calls[-1] == ("close", "killed")
    with pytest.raises(ValueError, match="valid: finished, failed, killed"):
        CompositeLogger([]).close("done")


# --------------------------------------------------------------------------- TensorBoard
tb_reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                reason="tensorboard is not installed")


def expected_series(tag, stage_epochs, offset_from=None, offset=0.0):
    col = tag.split("/", 1)[1]
    return [(g, pytest.approx(value(col, g, offset if offset_from and g > offset_from else 0.0), rel=1e-6))
            for g in stage_epochs]


def test_tensorboard_two_stage_run(tmp_path):
    run = tmp_path / "demo_20250101"
    lg = make_loggers(["csv", "tensorboard"])
    simulate(lg, run)
    assert lg.disabled == {}
    tb = run / "tb"
    assert [p for p in tb.iterdir() if p.is_dir()] == []  # hparams in the scalars' own log dir
    ea = read_tb(tb)
    per_stage = {1: [1, 2, 3], 2: [4, 5]}
    tags = {f"stage{s}/{c}" for s in per_stage for c in COLUMNS + GROUP_TAGS}
    assert set(ea.Tags()["scalars"]) == tags | set(FINAL)
    for tag in tags:
        assert scalar_series(ea, tag) == expected_series(tag, per_stage[int(tag[5])])
    last = 5
    for name, v in FINAL.items():
        assert scalar_series(ea, name) == [(last, pytest.approx(v, rel=1e-6))]
    # the config as text
    text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: FocalLoss" in text and "lr: 0.01" in text
    # hparams: flattened config (numbers stay numbers) and the final metrics as hparams metrics
    ssi, exp = hparams_of(ea)
    hp = dict(ssi.hparams)
    assert hp["loss.name"].string_value == "FocalLoss"
    assert hp["training.lr"].number_value == pytest.approx(0.01)
    assert hp["training.amp"].string_value == "false"
    assert hp["data.path_train"].string_value == "null"
    assert hp["gpus"].string_value == "[0, 1]"
    assert hp["git_commit"].string_value == "0123abcd"
    assert {m.name.tag for m in exp.metric_infos} == set(FINAL)
    assert {h.name for h in exp.hparam_infos} == set(hp)
    # figures and the confusion matrix as images
    fig = ea.Images("figures/curves")
    assert len(fig) == 1 and (fig[0].width, fig[0].height) == (30, 20)
    assert fig[0].encoded_image_string == png_bytes(30, 20)
    cm = ea.Images("confusion_matrix")
    assert len(cm) == 1 and cm[0].encoded_image_string.startswith(b"\x89PNG")


def test_tensorboard_hparams_tab_shows_the_varied_keys_and_key_metrics_first(tmp_path):
    """TensorBoard's HParams tab shows the first 5 hparams after sorting `differs` ones first, and
    the first 5 metrics: the keys a sweep varies are marked `differs` (a group such as `stage2`
    names its mode), the final mAcc / many / medium / few / HM lead the metrics."""
    from imbalance.logger_tensorboard import FIRST_METRICS

    run = tmp_path / "run"
    simulate(make_loggers(["tensorboard"]), run, varied=["training.lr", "stage2", "no.such.key", "seed"],
             confusion=False)
    ssi, exp = hparams_of(read_tb(run / "tb"))
    names = [h.name for h in exp.hparam_infos]
    assert names[:3] == ["training.lr", "stage2.mode", "seed"]
    assert [h.name for h in exp.hparam_infos if h.differs] == names[:3]
    assert set(names) == set(ssi.hparams)  # nothing lost
    metrics = [m.name.tag for m in exp.metric_infos]
    present = [m for m in FIRST_METRICS if m in FINAL]
    assert present == ["test/final/macc", "test/final/many_acc", "test/final/few_acc", "test/final/hm", "val/macc"]
    assert metrics[:len(present)] == present and set(metrics) == set(FINAL)


def test_tensorboard_resume_has_no_duplicate_steps(tmp_path):
    run = tmp_path / "run"
    # first session: stage 1 (epochs 1-3) and stage 2 (4-5) logged, then interrupted; the run is
    # resumed from a checkpoint at global epoch 2 and now trains stage 1 for 4 epochs (3-4) and
    # stage 2 for 2 (5-6), with other values. Stage 2's old step 4 must go although no new
    # stage-2 value is written at step 4 (purge_step), and nothing <= 2 is written again.
    first = make_loggers(["tensorboard"])
    simulate(first, run, stages=((1, 3), (2, 2)), finish=False)
    first.close("killed")
    second = make_loggers(["tensorboard"])
    second.start(run, CONFIG, exp_name="demo", resume_global_epoch=2)
    for row, recall in make_rows(((1, 4), (2, 2)), after=1, offset=0.5):  # re-sends epoch 2 by mistake
        second.log_epoch(row, recall)
    second.log_final(FINAL)
    second.close()
    ea = read_tb(run / "tb")
    for c in COLUMNS + GROUP_TAGS:
        want1 = expected_series(f"stage1/{c}", [1, 2, 3, 4], offset_from=2, offset=0.5)
        want2 = expected_series(f"stage2/{c}", [5, 6], offset_from=2, offset=0.5)
        assert scalar_series(ea, f"stage1/{c}") == want1  # TensorBoard's Python reader
        assert scalar_series(ea, f"stage2/{c}") == want2
        assert data_server_series(run / "tb", f"stage1/{c}") == want1  # its default data server
        assert data_server_series(run / "tb", f"stage2/{c}") == want2
    assert len(ea.Tensors("config/text_summary")) == 1
    assert scalar_series(ea, "test/final/macc") == [(6, pytest.approx(0.6))]


def test_tensorboard_sweep_runs_line_up(tmp_path):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    sweep = tmp_path / "experiments" / "multirun_20250101"
    for j, lr in enumerate((0.01, 0.1)):
        lg = make_loggers(["tensorboard"])
        simulate(lg, sweep / f"demo_{j}", sweep=sweep.name, config={**CONFIG, "training": {"lr": lr}},
                 confusion=False)
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path / "experiments"))
    mux.Reload()
    assert sorted(mux.Runs()) == ["multirun_20250101/demo_0/tb", "multirun_20250101/demo_1/tb"]
    lrs = []
    for run in sorted(mux.Runs()):
        ea = mux.GetAccumulator(run)
        ssi, exp = hparams_of(ea)
        assert ssi.hparams["sweep"].string_value == "multirun_20250101"
        lrs.append(ssi.hparams["training.lr"].number_value)
        assert {m.name.tag for m in exp.metric_infos} == set(FINAL)
        assert "stage2/val_macc" in ea.Tags()["tensors"]  # the plugin accumulator keeps scalars as tensors
    assert lrs == [pytest.approx(0.01), pytest.approx(0.1)]


def test_missing_mlflow_warns_once_and_tensorboard_still_logs(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    lg = make_loggers(["tensorboard", "mlflow"], {"mlflow": {"tracking_uri": "sqlite:///m.db"}}, base_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="imbalance"):
        simulate(lg, tmp_path / "run", confusion=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pip install mlflow" in warnings[0]
    assert list(lg.disabled) == ["mlflow"]
    assert not (tmp_path / "m.db").exists()
    ea = read_tb(tmp_path / "run" / "tb")
    assert len(ea.Scalars("stage2/val_macc")) == 2 and len(ea.Scalars("test/final/macc")) == 1


def test_tensorboard_failure_midway_keeps_training_going(tmp_path, monkeypatch, caplog):
    lg = make_loggers(["tensorboard"])
    rec = Recorder()
    lg.backends.append(rec)
    run = tmp_path / "run"
    lg.start(run, CONFIG, exp_name="demo")
    tbl = lg.backends[0]
    assert isinstance(tbl, TensorBoardLogger)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tbl.writer, "add_scalar", full)
    with caplog.at_level(logging.WARNING, logger="imbalance"):
        for row, recall in make_rows(((1, 3),)):
            lg.log_epoch(row, recall)
        lg.log_final(FINAL)
        lg.close()
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1
    assert rec.calls[-1] == ("close", "finished") and ("epoch", 3) in rec.calls
    assert tbl.writer is None  # aborted: the event file is closed


def test_import_without_mlflow_is_one_clear_error(tmp_path, monkeypatch):
    from imbalance.mlflow_import import import_run_folder

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match="pip install mlflow"):
        import_run_folder(tmp_path, "sqlite:///m.db", None, base_dir=tmp_path)
