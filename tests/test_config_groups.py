"""The config: one set of defaults, every group file composes and validates, presets without
``+``, typed model options, SEED's inline keys beside the groups."""
from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import ROOT
from imbalance.config import Config, compose, validate, with_schema
from imbalance.errors import ConfigError

CONF = ROOT / "conf"
GROUPS = ["data", "model", "loss", "sampling", "stage2", "stage3", "experiment", "logger"]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out


def test_config_yaml_equals_the_schema():
    """One set of defaults: every key of the schema is in config.yaml with the same value, and
    config.yaml has no key the schema lacks."""
    schema = _flat(OmegaConf.to_container(OmegaConf.structured(Config)))
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "config.yaml"))
    raw.pop("defaults"), raw.pop("hydra")
    yaml = _flat(raw)
    assert sorted(set(schema) - set(yaml)) == []
    assert sorted(set(yaml) - set(schema)) == []
    assert {k: v for k, v in yaml.items() if schema[k] != v} == {}


def _group_files():
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            yield f"{group}={path.stem}"


@pytest.mark.parametrize("choice", list(_group_files()))
def test_every_group_file_composes_and_validates(choice):
    from imbalance.builders import check_names

    cfg = with_schema(compose([choice]))
    validate(cfg)
    check_names(cfg)


def test_groups_override_the_inline_seed_values_and_inline_keys_still_work():
    a = compose(["loss=focal", "model=resnet1d"])
    assert a.loss.name == "FocalLoss" and a.model.name == "ResNet1D" and a.model.blocks_per_stage == 2
    b = compose(["loss.name=FocalLoss"])  # SEED's spelling
    assert b.loss.name == "FocalLoss"
    assert OmegaConf.to_container(a.loss) == OmegaConf.to_container(b.loss)
    c = compose(["loss=focal", "loss.focal_gamma=0.5"])  # a group, then one of its keys
    assert c.loss.focal_gamma == 0.5


def test_experiment_presets_are_selected_without_plus():
    cfg = compose(["experiment=adsb_full"])
    assert cfg.exp_name == "adsb_full" and cfg.model.width is None and cfg.training.epochs == 200
    assert cfg.experiment.many_thresh == 100  # the `experiment:` section (groups) is untouched
    assert compose(["experiment=baseline"]).stage2.enabled is False
    imp = compose(["experiment=improved"])
    assert imp.stage2.loss == "CostSensitiveCE" and imp.stage2.sampler == "progressive_power"


def test_ldam_drw_starts_at_80_percent_of_the_epochs():
    cfg = with_schema(compose(["loss=ldam_drw", "training.epochs=50"]))
    assert cfg.loss.ldam_drw_start == 40


def test_a_misspelt_model_option_fails_when_composing():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose(["model=resnet1d", "model.blocks_per_stag=3"])


def test_an_option_of_another_model_is_refused_before_any_data(tiny, tmp_path):
    from imbalance.pipeline import run

    with pytest.raises(ConfigError, match="model ConvNetADSB has no option.*blocks_per_stage"):
        run(tiny("model.blocks_per_stage=3"), run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_the_command_line_composes_presets_groups_and_the_older_plus_spelling():
    p = _cli("experiment=adsb_full", "--cfg", "job")
    assert p.returncode == 0, p.stderr[-2000:]
    job = OmegaConf.create(p.stdout)
    assert job.exp_name == "adsb_full" and job.training.epochs == 200
    q = _cli("+experiment=adsb_full", "--cfg", "job")  # rewritten to experiment=adsb_full
    assert q.returncode == 0 and OmegaConf.create(q.stdout) == job
    r = _cli("loss=focal", "model=resnet1d", "--cfg", "job")
    assert r.returncode == 0 and OmegaConf.create(r.stdout).model.name == "ResNet1D"
    bad = _cli("model.blocks_per_stag=3", "--cfg", "job")
    assert bad.returncode != 0 and "blocks_per_stag" in bad.stderr
