"""data.val_ratio=0: no validation carve (very small data sets). Every training series trains, the
'validation' split is the training split (monitored, never chosen on), every setting that would
choose on it is refused in one line, and summarize does not select on such runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from imbalance.builders import build_data
from imbalance.config import compose, validate
from imbalance.errors import ConfigError
from imbalance.summary import collect_runs

from conftest import TINY

NO_CARVE = ["data.val_ratio=0", "early_stopping.enabled=false", "training.checkpoint_select=last",
            "stage2.checkpoint_select=last"]


def test_the_carve_is_kept_for_any_positive_ratio_and_refused_below_zero():
    with pytest.raises(ConfigError, match=r"data.val_ratio=-0.1 is out of range; it must be in \[0, 1\)"):
        validate(compose(["data.val_ratio=-0.1"]))
    with pytest.raises(ConfigError, match=r"data.val_ratio=1.0 is out of range"):
        validate(compose(["data.val_ratio=1.0"]))
    validate(compose(NO_CARVE))  # the four keys together are a valid configuration


@pytest.mark.parametrize("extra, named", [
    ([], None),
    (["early_stopping.enabled=true"], "early_stopping.enabled=false"),
    (["training.checkpoint_select=best"], "training.checkpoint_select=last"),
    (["stage2.checkpoint_select=best"], "stage2.checkpoint_select=last"),
    (["stage3.mode=tau_norm", "stage3.tau_norm=auto"], "stage3.tau_norm=<a number>"),
    (["stage3.mode=both", "stage3.tau_norm=0.5", "stage3.logit_tau=auto"], "stage3.logit_tau=<a number>"),
    (["stage3.temperature=auto"], "stage3.temperature=<a number> or none"),
    (["evaluation.eval_logit_adjust=posthoc", "evaluation.eval_logit_tau=auto"], "evaluation.eval_logit_tau"),
    (["openset.enabled=true", "openset.num_unknown=1"], "openset.enabled=false"),
])
def test_every_choice_on_validation_is_refused_in_one_line(extra, named):
    cfg = compose(NO_CARVE + extra)
    if named is None:
        validate(cfg)
        return
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data.val_ratio=0 leaves no validation split to choose on")
    assert named in msg and "data.path_val" in msg


def test_fixed_numbers_and_a_disabled_stage_2_pass():
    validate(compose(NO_CARVE[:3] + ["stage2.enabled=false", "stage3.mode=both", "stage3.tau_norm=0.5",
                                     "stage3.logit_tau=1", "stage3.temperature=1.5"]))
    # a validation file is a validation split: the ratio is not used and nothing is refused
    validate(compose(["data.val_ratio=0", "data.path_val=val.mat", "data.path_train=train.mat",
                      "data.path_test=test.mat", "stage3.mode=tau_norm", "stage3.tau_norm=auto"]))


def test_validation_is_the_whole_training_split():
    carved = build_data(compose(TINY + ["data.val_ratio=0.2"]))
    data = build_data(compose(TINY + NO_CARVE))
    # the long-tailed training split draws from all of the pool, and validation is exactly it
    assert len(data.train) > len(carved.train)
    assert len(data.val) == len(data.train) and data.val is not data.train
    assert np.array_equal(np.asarray(data.val.labels), np.asarray(data.train.labels))
    assert np.array_equal(data.val.x.numpy(), data.train.x.numpy())
    assert data.class_counts.sum() == len(data.train)


def test_the_run_records_training_split_metrics_and_summarize_does_not_select_them(run_tiny, tmp_path):
    rdir, value = run_tiny(*NO_CARVE, name="nocarve")
    res = json.loads((rdir / "results" / "results.json").read_text())
    assert res["val_metrics"]["split"] == "train" and res["val_metrics"]["macc"] == pytest.approx(value)
    carved_dir, _ = run_tiny(name="carved")
    carved = json.loads((carved_dir / "results" / "results.json").read_text())
    assert "split" not in carved["val_metrics"]
    runs, _ = collect_runs(tmp_path)
    by_name = {r.path.name: r for r in runs}
    assert "val_macc" not in by_name["nocarve"].extra and "val_macc" in by_name["carved"].extra
    # the training curves call the monitored split what it is and mark no "best" epoch on it
    from imbalance.visualization import DEFAULT_VIZ, fig_training_curves, load_run_artifacts

    labels = {}
    for name in ("nocarve", "carved"):
        fig = fig_training_curves(load_run_artifacts(tmp_path / name), dict(DEFAULT_VIZ))
        labels[name] = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert "Train split, eval mode mAcc" in labels["nocarve"] and "Best val. mAcc" not in labels["nocarve"]
    assert {"Val. mAcc", "Best val. mAcc", "Validation"} <= labels["carved"]


# --------------------------------------------------------------------- data.batch_size=auto
def test_auto_batch_size_is_the_official_fcn_rule():
    from imbalance.config_checks import auto_batch_size, parse_batch_size

    # hfawaz/dl-4-tsc: mini_batch_size = int(min(x_train.shape[0] / 10, 16)); ours at least 1
    assert [auto_batch_size(n) for n in (5, 10, 36, 50, 100, 159, 160, 10_000)] == [1, 1, 3, 5, 10, 15, 16, 16]
    assert parse_batch_size("auto") == "auto" and parse_batch_size(8) == 8 and parse_batch_size(8.0) == 8
    for bad in (0, -3, 2.5, "big", True, None):
        with pytest.raises(ConfigError, match="data.batch_size=.* is not valid; use an integer >= 1 or auto"):
            parse_batch_size(bad)
    with pytest.raises(ConfigError, match="data.batch_size=0 is not valid"):
        validate(compose(["data.batch_size=0"]))


def test_auto_batch_size_is_resolved_from_the_training_split_and_recorded(run_tiny):
    rdir, _ = run_tiny("data.batch_size=auto", name="auto_bs")
    res = json.loads((rdir / "results" / "results.json").read_text())
    n_train = sum(res["class_counts"])
    assert res["config"]["data"]["batch_size"] == min(n_train // 10, 16) > 0
    # the stage-1 loader is built with it
    import torch

    from imbalance.builders import build_model, build_stage1

    cfg = compose(TINY + ["data.batch_size=auto"])
    data = build_data(cfg)
    model = build_model(cfg, data, torch.device("cpu"))
    plan = build_stage1(cfg, data, model, torch.device("cpu"))
    assert cfg.data.batch_size == plan.train_loader.batch_size == min(len(data.train) // 10, 16)
