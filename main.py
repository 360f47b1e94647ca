"""Train, evaluate and report: ``python main.py [key=value ...]`` (Hydra).

Examples::

    python main.py                                   # the quick demo on built-in data
    python main.py data.path_train=data/train.mat data.path_test=data/test.mat
    python main.py exp_name=x training.epochs=5 data.batch_size=128
    python main.py experiment=adsb_full              # the seed's full-scale settings
    python main.py loss=focal model=resnet1d         # config groups (conf/)
    python main.py -m seed=0,1,2                     # Hydra multirun

Returns the final model's validation mAcc (for Hydra sweepers such as Optuna). The installed
console script ``imbalance-train`` is the same command.
"""
import os

from imbalance.cli import hydra_entry

if __name__ == "__main__":
    hydra_entry(os.path.dirname(os.path.abspath(__file__)))
