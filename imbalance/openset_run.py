"""The open-set step of a run: detectors fitted and scored on the final model, thresholds on
known validation, results, saved detectors and figures.

:func:`run_openset` is what :mod:`imbalance.pipeline` calls after the final evaluation, with an
:class:`OpenSetPlan` that :func:`imbalance.builders.build_openset` makes from the config:

1. the final model in eval mode gives the penultimate features and the logits of the TRAINING
   set (known classes, no augmentation), the KNOWN validation set, the known test set and the
   unknown test set;
2. the detectors (:mod:`imbalance.openset`) are fitted on the training features/logits only;
   ODIN's epsilon (``epsilon=auto``) is chosen on the known validation inputs only;
3. each detector's threshold (``openset.threshold``, e.g. tpr95) is chosen on its scores of the
   known validation samples only;
4. every detector is reported on the test set (known + unknown):
   ``metrics.final.openset.<detector>.{overall, group_wise}`` (:mod:`imbalance.openset_metrics`).

Saved in the run folder: ``checkpoints/openset.pt`` (every fitted detector and its threshold, so
``python -m imbalance.predict --detector NAME`` can answer ``unknown``) and
``results/openset_scores.npz`` (test scores, labels, predictions, where each unknown came from and
its original label, a feature subset: what the figures of :mod:`imbalance.openset_figures` need).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .data import stratified_subset
from .engine import predict
from .errors import DataError, UserError
from .openset import build_detectors, detector_from_state, evaluate_detectors, fit_detectors
from .run_folder import RunFolder

log = logging.getLogger(__name__)

__all__ = ["OpenSetPlan", "OpenSetOutcome", "run_openset", "write_openset_figures", "load_openset_state",
           "score_signals", "OPENSET_CHECKPOINT", "OPENSET_SCORES"]

#: Files of the open-set step inside a run folder.
OPENSET_CHECKPOINT = "checkpoints/openset.pt"
OPENSET_SCORES = "results/openset_scores.npz"


@dataclass
class OpenSetPlan:
    """What the open-set step runs, as built objects and plain values (no config)."""

    loaders: Dict[str, Any]  # train, val (known), test (known), unknown: evaluation loaders in data order
    detectors: Optional[List[str]] = None  # None: imbalance.openset.DEFAULT_DETECTORS
    params: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    threshold: Union[str, float] = "tpr95"
    many_thresh: float = 100
    few_thresh: float = 20
    grouping: str = "absolute"
    max_feature_samples: int = 5000  # features kept for the t-SNE
    seed: int = 0
    figures: Optional[Dict[str, Any]] = None  # dpi, panel_mm, panel_scale, tsne_perplexity, tsne_n_iter
    data_info: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OpenSetOutcome:
    metrics: Dict[str, Any]  # {detector: {overall, group_wise}}: results.json metrics.final.openset
    info: Dict[str, Any]  # results.json "openset": held-out classes, sources, thresholds, detector settings
    thresholds: Dict[str, float]
    scores: Dict[str, np.ndarray]  # test scores (known first, then unknown)
    y_true: np.ndarray  # known 0..K-1, unknown -1
    figures: Optional[Dict[str, Any]] = None  # the plan's figure settings (write_openset_figures)


def _predict(model: nn.Module, loader: Any, precision: Any, name: str) -> Dict[str, torch.Tensor]:
    out = predict(model, loader, precision=precision, features=True)
    log.info("open set: %s features %s", name, tuple(out["features"].shape))
    return out


def _known_only(labels: torch.Tensor, name: str) -> np.ndarray:
    y = labels.numpy().astype(np.int64)
    if (y < 0).any():  # the data split guarantees this; a regression must not pass silently
        raise DataError(f"open set: the {name} split holds {int((y < 0).sum())} unknown sample(s)")
    return y


def run_openset(model: nn.Module, plan: OpenSetPlan, *, class_counts: Sequence[int], precision: Any = None,
                folder: Optional[RunFolder] = None) -> OpenSetOutcome:
    """Fit, threshold and report every detector of ``plan`` on ``model`` (module docstring);
    write ``openset.pt`` and ``openset_scores.npz`` into ``folder`` when given."""
    t0 = time.perf_counter()
    ld = plan.loaders
    tr = _predict(model, ld["train"], precision, "training")
    va = _predict(model, ld["val"], precision, "known validation")
    te = _predict(model, ld["test"], precision, "known test")
    un = _predict(model, ld["unknown"], precision, "unknown test")
    y_train = _known_only(tr["labels"], "training")
    _known_only(va["labels"], "validation")
    y_test = np.concatenate([_known_only(te["labels"], "known test"), np.full(len(un["labels"]), -1, np.int64)])
    timings = {"features": time.perf_counter() - t0}

    dets = build_detectors(plan.detectors, plan.params)
    post = {n: d for n, d in dets.items() if not d.needs_inputs}
    t1 = time.perf_counter()
    fit_detectors(post, tr["features"], y_train, train_logits=tr["logits"])
    timings["fit"] = time.perf_counter() - t1
    extra: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for name, det in dets.items():
        if det.needs_inputs:  # ODIN: epsilon on known validation inputs, then a backward pass per input
            t1 = time.perf_counter()
            det.fit_inputs(model, ld["val"])
            scores = np.concatenate([det.score_inputs(model, ld["test"]), det.score_inputs(model, ld["unknown"])])
            extra[name] = (det.score_inputs(model, ld["val"]), scores)
            timings[name] = time.perf_counter() - t1
    t1 = time.perf_counter()
    ev = evaluate_detectors(post, val_logits=va["logits"], val_features=va["features"],
                            test_logits=torch.cat([te["logits"], un["logits"]]),
                            test_features=torch.cat([te["features"], un["features"]]), y_test=y_test,
                            class_counts=list(class_counts), threshold=plan.threshold, extra_scores=extra,
                            many_thresh=plan.many_thresh, few_thresh=plan.few_thresh, grouping=plan.grouping)
    timings["score"] = time.perf_counter() - t1
    order = list(dets)  # config order
    metrics = {n: ev["metrics"][n] for n in order}
    info = dict(plan.data_info)
    info.update({
        "detectors": {n: dets[n].params() for n in order}, "threshold": plan.threshold,
        "thresholds": {n: float(ev["thresholds"][n]) for n in order},
        "closed_set_metrics": "metrics.final and the stage metrics are on the known test samples only",
        "timings": timings,
    })
    for n, d in dets.items():  # what the detectors chose on training / known validation data
        if getattr(d, "selection_", None):
            info.setdefault("chosen", {})[n] = {"epsilon": d.epsilon, "mean_val_score": d.selection_}
        if getattr(d, "covariance_kind_", None):
            info.setdefault("chosen", {})[n] = {"covariance": d.covariance_kind_}
    _log_table(metrics, ev["thresholds"])
    if folder is not None:
        _save(folder, dets, ev, order, y_test, plan, class_counts, torch.cat([te["features"], un["features"]]),
              sources=_sources(ld["unknown"].dataset if hasattr(ld["unknown"], "dataset") else None, len(te["labels"])))
    return OpenSetOutcome(metrics=metrics, info=info, thresholds=info["thresholds"],
                          scores={n: ev["scores"][n] for n in order}, y_true=y_test, figures=plan.figures)


def _sources(unknown_ds: Any, n_known: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per test sample: where it comes from (``known`` or the unknown source) and its original
    label value as text (empty for known samples and unlabelled unknowns)."""
    src = getattr(unknown_ds, "sources", None)
    lab = getattr(unknown_ds, "source_labels", None)
    n = len(unknown_ds) if unknown_ds is not None else 0
    tail = np.asarray(src, dtype=str) if src is not None else np.full(n, "unknown")
    labs = np.asarray(["" if v is None else str(v) for v in lab] if lab is not None else [""] * n, dtype=str)
    return np.concatenate([np.full(n_known, "known"), tail]), np.concatenate([np.full(n_known, ""), labs])


def _log_table(metrics: Mapping[str, Any], thresholds: Mapping[str, float]) -> None:
    log.info("open set (test: known vs unknown; thresholds from known validation):")
    log.info("  %-12s %7s %7s %7s %7s %7s %7s %11s", "detector", "AUROC", "FPR95", "OSCR", "openF1", "many", "few",
             "threshold")

    def pct(v: Any) -> str:
        return "    n/a" if v is None else f"{100 * v:7.2f}"

    for n, m in metrics.items():
        o, g = m["overall"], m["group_wise"]
        log.info("  %-12s %s %s %s %s %s %s %11.4g", n, pct(o["auroc"]), pct(o["fpr95"]), pct(o["oscr"]),
                 pct(o["open_macro_f1"]), pct(g["many"]["auroc"]), pct(g["few"]["auroc"]), thresholds[n])


def _save(folder: RunFolder, dets: Mapping[str, Any], ev: Mapping[str, Any], order: Sequence[str],
          y_test: np.ndarray, plan: OpenSetPlan, class_counts: Sequence[int], features: torch.Tensor,
          sources: Tuple[np.ndarray, np.ndarray]) -> None:
    root = Path(folder.root)
    ckpt = root / OPENSET_CHECKPOINT
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": 1, "threshold": str(plan.threshold),
             "detectors": {n: dets[n].state_dict() for n in order},
             "thresholds": {n: float(ev["thresholds"][n]) for n in order}}
    tmp = ckpt.with_name(".openset.tmp.pt")
    torch.save(state, tmp)
    tmp.replace(ckpt)
    keep = stratified_subset(y_test, int(plan.max_feature_samples), int(plan.seed))
    npz = root / OPENSET_SCORES
    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(".openset_scores.tmp.npz")
    np.savez_compressed(
        tmp, detectors=np.asarray(list(order), dtype=str), y_true=y_test,
        scores=np.stack([np.asarray(ev["scores"][n], np.float64) for n in order], axis=1),
        y_pred=np.stack([np.asarray(ev["predictions"][n], np.int64) for n in order], axis=1),
        thresholds=np.asarray([ev["thresholds"][n] for n in order], np.float64),
        class_counts=np.asarray(class_counts, np.int64), features=features.numpy()[keep].astype(np.float32),
        feature_labels=y_test[keep], source=sources[0], source_label=sources[1],
        grouping=np.asarray(plan.grouping), many_thresh=float(plan.many_thresh), few_thresh=float(plan.few_thresh))
    tmp.replace(npz)


def write_openset_figures(run_dir: Any, figures: Optional[Mapping[str, Any]] = None) -> List[Path]:
    """The open-set figures of a run (score histograms by group, ROC, OSCR, t-SNE with unknowns)
    from its ``results/openset_scores.npz``, into ``results/`` beside the other figures."""
    from .openset_figures import save_openset_figures

    root = Path(run_dir)
    path = root / OPENSET_SCORES
    if not path.is_file():
        log.warning("no %s: no open-set figures", path)
        return []
    fig = dict(figures or {})
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["detectors"]]
        scores = {n: z["scores"][:, i] for i, n in enumerate(names)}
        preds = {n: z["y_pred"][:, i] for i, n in enumerate(names)}
        thr = {n: float(z["thresholds"][i]) for i, n in enumerate(names)}
        y, counts = z["y_true"], z["class_counts"]
        feats, flab = z["features"], z["feature_labels"]
        grp = dict(grouping=str(z["grouping"]), many_thresh=float(z["many_thresh"]), few_thresh=float(z["few_thresh"]))
    t0 = time.perf_counter()
    written = save_openset_figures(
        root / "results", scores=scores, y_true=y, y_pred=preds, class_counts=counts.tolist(), thresholds=thr,
        features=feats if fig.get("tsne", True) and len(flab) else None, feature_labels=flab, **grp,
        dpi=float(fig.get("dpi", 300)), panel_mm=float(fig.get("panel_mm", 85)),
        panel_scale=float(fig.get("panel_scale", 1.0)), tsne_perplexity=float(fig.get("tsne_perplexity", 30.0)),
        tsne_n_iter=int(fig.get("tsne_n_iter", 1000)), max_samples=max(1, len(flab)))
    log.info("open-set figures: %d files (%.1fs)", len(written), time.perf_counter() - t0)
    return written


# ------------------------------------------------------------------------------ prediction
def load_openset_state(run_dir: Any) -> Optional[Dict[str, Any]]:
    """``checkpoints/openset.pt`` of a run folder (None when the run had no open-set step)."""
    path = Path(run_dir) / OPENSET_CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged file is a user error with one line
        raise UserError(f"{path} cannot be read ({str(err).splitlines()[0][:160]})") from None


def score_signals(model: nn.Module, x: Any, state: Mapping[str, Any], detector: str, *, batch_size: int = 512,
                  device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """``(scores, closed-set predictions)`` of processed signals ``x`` (N, C, L) by the fitted
    ``detector`` of a run's open-set state (:func:`load_openset_state`); higher = known."""
    saved = state.get("detectors") or {}
    if detector not in saved:
        raise UserError(f"the run has no fitted open-set detector {detector!r}; it has: {', '.join(saved) or 'none'}")
    det = detector_from_state(saved[detector])
    dev = torch.device(device)
    xt = torch.as_tensor(x)
    logits, feats = [], []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(xt), int(batch_size)):
            xb = xt[i:i + int(batch_size)].to(dev)
            with torch.autocast(device_type=dev.type, dtype=dtype, enabled=dtype is not None):
                f = model.forward_features(xb)
                z = model.classifier(f)
            feats.append(f.float().cpu())
            logits.append(z.float().cpu())
    z = torch.cat(logits) if logits else torch.zeros(0, 0)
    f = torch.cat(feats) if feats else torch.zeros(0, 0)
    if det.needs_inputs:
        det.batch_size = int(batch_size)
        return det.score_inputs(model, xt), z.numpy().argmax(axis=1)
    return det.score(z, f), det.predict(z, f)

