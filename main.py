"""Train, evaluate and report: ``python main.py [key=value ...]`` (Hydra).

Examples::

    python main.py                                   # the quick demo on built-in data
    python main.py data.path_train=data/train.mat data.path_test=data/test.mat
    python main.py exp_name=x training.epochs=5 data.batch_size=128
    python main.py +experiment=adsb_full             # the seed's full-scale settings
    python main.py -m seed=0,1,2                     # Hydra multirun

Returns the final model's validation mAcc (for Hydra sweepers such as Optuna).
"""
from __future__ import annotations

import sys

from imbalance.config import register_configs, register_resolvers

register_configs()
register_resolvers()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path=".", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from imbalance.errors import UserError
    from imbalance.pipeline import run

    try:
        return run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
