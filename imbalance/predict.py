"""Label new signals with a trained model.

``python -m imbalance.predict --run <run folder or checkpoint> --input <file> --out predictions.csv``

The file may hold signals only (no labels): every format the loader reads (``.mat`` v5/v7.3,
``.h5``/``.hdf5``, ``.npz``, ``.npy``, a plain array included), with the data key found as the
loader finds it (``X, data, signal, signals``) or given by ``--data-key``; the sample axis is the
first (after MATLAB's axis reversal), or the one matching the labels when the file has them.
The signals get the source run's preprocessing (complex -> I/Q channels, its
``data.target_length`` crop/pad, per-sample RMS normalisation). Signals of another length than
the model was trained on are an error unless ``--allow-resize`` (then: keep the first L samples
or zero-pad at the end, as ``data.target_length`` does); another channel count is always an error.

The CSV has one row per signal: ``index, predicted`` (the original label value), ``probability``
(its softmax probability), ``top1_class, top1_prob, ... topk_class, topk_prob``, plus
``predicted_name`` when the run has ``visualization.class_names`` and ``label`` when the file
has labels. With ``--detector NAME`` (a run trained with ``openset.enabled=true``) the run's fitted
open-set detector scores every signal: ``predicted`` is ``unknown`` where the score is below the
run's threshold for it (chosen on known validation data; ``--threshold`` overrides it), and the
columns ``closed_predicted`` (the class the detector pairs with its score) and ``openset_score``
(higher = more likely a known class) are added. Inference is batched under ``torch.inference_mode`` (no autograd); ``--precision
auto`` uses bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX) and fp16 on CUDA, else fp32.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, UserError
from .series_data import series_inputs, uses_series_loader
from .signal_io import prepare_signals, read_signals  # noqa: F401  (public here too)

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# =============================================================================================
# Inference
# =============================================================================================
def choose_precision(device: torch.device, precision: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype for inference (None = fp32). ``auto``: fp16 on CUDA (bf16 if the
    GPU supports it), bf16 on a CPU with native bf16, else fp32."""
    from .precision import cpu_has_native_bf16

    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not valid; valid values: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu":
        if precision == "fp16":
            raise ConfigError("precision=fp16 is not supported on the CPU; use auto, bf16 or fp32")
        if precision == "bf16" or cpu_has_native_bf16():
            return torch.bfloat16
        return None
    return None


@torch.inference_mode()
def predict_proba(model: nn.Module, x: np.ndarray | torch.Tensor, *, batch_size: int = 512,
                  device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None) -> np.ndarray:
    """Softmax probabilities (N, K) float32 of ``model`` on processed signals ``x`` (N, C, L),
    in batches, without autograd, under autocast ``dtype`` when given (softmax in float32)."""
    device = torch.device(device)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    xt = torch.as_tensor(x)
    out: List[torch.Tensor] = []
    for i in range(0, len(xt), batch_size):
        xb = xt[i:i + batch_size].to(device, non_blocking=True)
        if dtype is not None:
            with torch.autocast(device_type=device.type, dtype=dtype):
                z = model(xb)
        else:
            z = model(xb)
        out.append(torch.softmax(z.float(), dim=1).cpu())
    if not out:
        k = getattr(model, "num_classes", 0)
        return np.zeros((0, k), dtype=np.float32)
    return torch.cat(out).numpy()


@dataclass
class Predictions:
    """Predictions for the signals of one file (class indices refer to ``classes``)."""

    prob: np.ndarray            # (N, K) float32
    classes: List[Any]          # original label values
    class_names: Optional[List[str]] = None
    labels: Optional[np.ndarray] = None   # the file's raw label values, if it had labels
    open_scores: Optional[np.ndarray] = None  # open-set detector score per signal (higher = known)
    open_pred: Optional[np.ndarray] = None    # the class index the detector pairs with its score
    open_threshold: Optional[float] = None    # score < threshold: unknown
    detector: Optional[str] = None

    @property
    def is_unknown(self) -> Optional[np.ndarray]:
        if self.open_scores is None:
            return None
        return self.open_scores < float(self.open_threshold)

    @property
    def pred_index(self) -> np.ndarray:
        return self.prob.argmax(axis=1)

    def top_k(self, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(indices (N, k), probabilities (N, k)) in decreasing probability (ties: lower index)."""
        k = max(1, min(int(k), self.prob.shape[1]))
        idx = np.argsort(-self.prob, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(self.prob, idx, axis=1)


CPU_BATCH_ELEMENTS = 1 << 16  # samples x length per CPU batch: larger batches fall out of cache


def auto_batch_size(device: torch.device, length: int) -> int:
    """512 on a GPU; on a CPU about 65k time samples per batch (16 signals of 4800: measured
    2.4x faster than batches of 64, see bench/bench_predict.py)."""
    if device.type != "cpu":
        return 512
    return int(max(1, min(512, CPU_BATCH_ELEMENTS // max(1, int(length)))))


def predict_file(run_or_checkpoint: str, input_path: str, *, batch_size: Optional[int] = None, device: str = "cpu",
                 allow_resize: bool = False, data_key: Optional[str] = None, label_key: Optional[str] = None,
                 precision: str = "auto", detector: Optional[str] = None,
                 threshold: Optional[float] = None, compile: bool = False,
                 compile_cache_dir: Optional[str] = None) -> Predictions:
    """Load a run's final model and predict every signal of ``input_path`` (labels optional);
    with ``detector``, also its open-set scores and the unknown decision (module docstring).
    ``compile``: ``torch.compile`` the model first (artifacts cached in ``compile_cache_dir``, see
    :mod:`imbalance.compilation`); pays only for large files or a warm cache."""
    from .evaluate import load_trained_model

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available; use --device cpu")
    model, info = load_trained_model(run_or_checkpoint, device=dev)
    if compile:
        from .compilation import configure_cache

        log.info("compiling the model (cache %s)", configure_cache(compile_cache_dir))
        model = torch.compile(model)
    dcfg = info.config.data
    dkey = data_key if data_key is not None else dcfg.data_key
    mode = str(dcfg.get("normalize_mode", "rms"))
    if getattr(model, "mask_channel", False) or uses_series_loader(source=dcfg.get("source"), path_train=input_path,
                                                                  normalize_mode=mode):
        x, labels = series_inputs(input_path, num_channels=info.num_channels, length=info.length,  # time series
                                  normalize=bool(dcfg.normalize), normalize_mode=mode,
                                  mask_channel=bool(getattr(model, "mask_channel", False)), data_key=dkey,
                                  label_key=label_key)
    else:
        x, labels = read_signals(input_path, data_key=dkey, label_key=label_key)
        x = prepare_signals(x, num_channels=info.num_channels, length=info.length, target_length=dcfg.target_length,
                            normalize=bool(dcfg.normalize), allow_resize=allow_resize, where=input_path)
    dtype = choose_precision(dev, precision)
    if batch_size is None:
        batch_size = auto_batch_size(dev, info.length)
    t0 = time.perf_counter()
    prob = predict_proba(model, x, batch_size=batch_size, device=dev, dtype=dtype)
    dt = time.perf_counter() - t0
    log.info("predicted %d signals in %.2fs (%s, %s)", len(prob), dt, dev,
             {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype])
    names = info.config.visualization.class_names
    names = [str(n) for n in names] if names is not None and len(names) == info.num_classes else None
    preds = Predictions(prob=prob, classes=list(info.classes), class_names=names, labels=labels)
    if detector is not None:
        from .openset_run import load_openset_state, score_signals

        state = load_openset_state(info.source_run) if info.source_run is not None else None
        if state is None:
            raise UserError(f"--detector {detector}: {run_or_checkpoint} has no fitted open-set detectors "
                            f"(checkpoints/openset.pt; train with openset.enabled=true)")
        preds.open_scores, preds.open_pred = score_signals(model, x, state, detector, batch_size=batch_size,
                                                           device=dev, dtype=dtype)
        preds.detector = detector
        preds.open_threshold = float(state["thresholds"][detector] if threshold is None else threshold)
        log.info("open set: %s, threshold %.6g (%s): %d of %d signals unknown", detector, preds.open_threshold,
                 "given" if threshold is not None else f"the run's {state.get('threshold')}",
                 int(preds.is_unknown.sum()), len(prob))
    return preds


def write_predictions_csv(path: str, preds: Predictions, top_k: int = 3) -> int:
    """One row per signal (see the module docstring); returns the number of rows."""
    idx, p = preds.top_k(top_k)
    k = idx.shape[1] if idx.ndim == 2 else 0
    cls = np.asarray(preds.classes, dtype=object)
    header = ["index", "predicted", "probability"]
    if preds.class_names is not None:
        header.append("predicted_name")
    if preds.labels is not None:
        header.append("label")
    unknown = preds.is_unknown
    if unknown is not None:
        header += ["closed_predicted", "openset_score"]
    for j in range(1, k + 1):
        header += [f"top{j}_class", f"top{j}_prob"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i in range(len(p)):
            top = idx[i, 0] if unknown is None else int(preds.open_pred[i])
            shown = "unknown" if unknown is not None and unknown[i] else cls[top]
            row: List[Any] = [i, shown, f"{preds.prob[i, top]:.6g}"]
            if preds.class_names is not None:
                row.append("unknown" if shown == "unknown" else preds.class_names[top])
            if preds.labels is not None:
                row.append(_plain(preds.labels[i]))
            if unknown is not None:
                row += [cls[top], f"{preds.open_scores[i]:.6g}"]
            for j in range(k):
                row += [cls[idx[i, j]], f"{p[i, j]:.6g}"]
            w.writerow(row)
    os.replace(tmp, path)
    return len(p)


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


# =============================================================================================
# Command line
# =============================================================================================
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imbalance.predict",
        description="Label the signals of a file with a trained run's final model (one CSV row per signal).")
    parser.add_argument("--run", required=True, help="run folder (experiments/<run>) or a checkpoint file (final.pt)")
    parser.add_argument("--input", required=True, help="signal file: .mat (v5 or v7.3), .h5/.hdf5, .npz or .npy")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    parser.add_argument("--top-k", type=int, default=3, help="top-k classes and probabilities per row (default 3)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="signals per forward pass (default: 512 on a GPU, about 65k samples on a CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 on CPUs with native bf16, fp16/bf16 on CUDA, else fp32")
    parser.add_argument("--allow-resize", action="store_true",
                        help="crop/pad signals of another length to the trained length (else an error)")
    parser.add_argument("--data-key", default=None, help="name of the signal array in the file")
    parser.add_argument("--label-key", default=None, help="name of the label array, if any (optional)")
    parser.add_argument("--detector", default=None,
                        help="open-set detector fitted by the run (openset.enabled=true): rows below its threshold "
                             "are predicted 'unknown'")
    parser.add_argument("--threshold", type=float, default=None,
                        help="with --detector: score threshold (default: the run's, chosen on known validation)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model first (pays for large files; cached on disk)")
    parser.add_argument("--compile-cache-dir", default=None,
                        help="torch.compile's cache folder (default ~/.cache/imbalance/torch_compile)")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for noisy in ("matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.top_k < 1:
            raise ConfigError(f"--top-k={args.top_k} is not valid; give an integer >= 1")
        if args.threshold is not None and args.detector is None:
            raise ConfigError("--threshold needs --detector (the open-set detector whose score it thresholds)")
        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        preds = predict_file(args.run, args.input, batch_size=args.batch_size, device=device,
                             allow_resize=args.allow_resize, data_key=args.data_key, label_key=args.label_key,
                             precision=args.precision, detector=args.detector, threshold=args.threshold,
                             compile=args.compile,
                             compile_cache_dir=args.compile_cache_dir)
        n = write_predictions_csv(args.out, preds, top_k=args.top_k)
    except UserError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {n} rows")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
