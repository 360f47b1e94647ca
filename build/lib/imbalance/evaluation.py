"""Evaluating a model on a test loader and writing what the figures and tables need."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .analysis import write_confusion_matrix_csv, write_per_class_csv
from .data import stratified_subset
from .engine import predict
from .precision import Precision
from .results import write_results
from .run_folder import RunFolder

log = logging.getLogger(__name__)

__all__ = ["evaluate_model", "public", "save_predictions", "write_tables", "write_figures"]


def evaluate_model(model: nn.Module, loader: Any, analyzer: Any, *, precision: Optional[Precision] = None,
                   features: bool = False) -> Dict[str, Any]:
    """The analyzer's metrics of ``model`` (eval mode) on ``loader``; the arrays behind them
    (labels, predictions, probabilities, features when asked) under the private key ``_arrays``."""
    out = predict(model, loader, precision=precision, features=features)
    prob = torch.softmax(out["logits"], dim=1).numpy()
    y_true = out["labels"].numpy()
    y_pred = prob.argmax(1)
    result = analyzer.analyze_predictions(y_true, y_pred, prob)
    result["_arrays"] = {"y_true": y_true, "y_pred": y_pred, "prob": prob.astype(np.float32)}
    if features:
        result["_arrays"]["features"] = out["features"].numpy()
    return result


def public(result: Dict[str, Any]) -> Dict[str, Any]:
    """What results.json keeps of one evaluation per stage: ``overall`` and ``group_wise``."""
    return {"overall": result["overall"], "group_wise": result["group_wise"]}


def save_predictions(folder: RunFolder, final: Dict[str, Any], *, class_counts: Sequence[int],
                     classes: Sequence[Any], max_samples: int, seed: int) -> Path:
    """``results/predictions.npz``: labels, predictions, probabilities of every test sample and the
    features of a stratified subset of at most ``max_samples`` (for t-SNE), atomically."""
    arrays = final["_arrays"]
    keep = stratified_subset(arrays["y_true"], int(max_samples), int(seed))
    path = folder.predictions_npz
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".predictions.tmp.npz")
    np.savez_compressed(
        tmp, y_true=arrays["y_true"].astype(np.int64), y_pred=arrays["y_pred"].astype(np.int64),
        prob=arrays["prob"], features=arrays["features"][keep].astype(np.float32),
        feature_labels=arrays["y_true"][keep].astype(np.int64), class_counts=np.asarray(class_counts),
        classes=np.asarray(classes),
    )
    os.replace(tmp, path)
    return path


def write_tables(folder: RunFolder, final: Dict[str, Any], class_names: Optional[Sequence[str]] = None) -> None:
    """``results/per_class.csv`` and ``results/confusion_matrix.csv``."""
    write_per_class_csv(final, folder.per_class_csv, class_names=class_names)
    write_confusion_matrix_csv(final, folder.confusion_matrix_csv, class_names=class_names)


def write_figures(folder: RunFolder, viz: Any, class_names: Optional[List[str]], results: Dict[str, Any],
                  t_start: float) -> None:
    """Every enabled figure from the run folder's artifacts; its time goes into results.json.
    A failing figure is logged and never loses the results already written."""
    t0 = time.perf_counter()
    try:
        from .visualization import visualize_all_results

        from omegaconf import OmegaConf

        viz = OmegaConf.to_container(viz, resolve=True) if OmegaConf.is_config(viz) else dict(viz)
        written = visualize_all_results(folder.root, viz, class_names=class_names)
        log.info("figures: %d files in %s", len(written), folder.results)
    except Exception as err:
        log.exception("figures failed: %s", err)
    results["timings"]["figures"] = time.perf_counter() - t0
    write_results(folder, results, t_start)
