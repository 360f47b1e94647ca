"""Shared pieces of the logger tests (no tests here): a simulated run and a hand-made PNG."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

CONFIG: Dict[str, Any] = {
    "exp_name": "demo",
    "seed": 3,
    "loss": {"name": "FocalLoss", "focal_gamma": 2.0},
    "training": {"lr": 0.01, "amp": False, "epochs": 3},
    "data": {"path_train": None, "target_length": 1024},
    "stage2": {"enabled": True, "mode": "crt"},
    "gpus": [0, 1],
}

# results.json's metrics block as the pipeline writes it (overall + group_wise per stage)
RESULTS: Dict[str, Any] = {
    "exp_name": "demo",
    "status": "completed",
    "git_commit": "0123abcd",
    "config": CONFIG,
    "class_names": ["a", "b", "c"],
    "confusion_matrix": [[8, 1, 1], [2, 5, 0], [1, 1, 1]],
    "metrics": {
        "stage1": {"overall": {"oa": 0.61, "macc": 0.52, "many_acc": 0.8, "medium_acc": None, "few_acc": 0.25},
                   "group_wise": {"many": {"acc": 0.8, "n_classes": 1}}},
        "final": {"overall": {"oa": 0.7, "macc": 0.6, "many_acc": 0.9, "medium_acc": None, "few_acc": 0.3,
                              "hm": 0.45},
                  "group_wise": {"many": {"acc": 0.9}}},
    },
    "val_metrics": {"acc": 0.72, "macc": 0.63},
    "per_class": [{"recall": 0.8}],
}
FINAL = {"test/stage1/oa": 0.61, "test/stage1/macc": 0.52, "test/stage1/many_acc": 0.8,
         "test/stage1/few_acc": 0.25, "test/final/oa": 0.7, "test/final/macc": 0.6,
         "test/final/many_acc": 0.9, "test/final/few_acc": 0.3, "test/final/hm": 0.45,
         "val/acc": 0.72, "val/macc": 0.63}
COLUMNS = ["lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_macc", "epoch_time"]
GROUP_TAGS = ["val_recall_many", "val_recall_medium", "val_recall_few"]


def value(column: str, global_epoch: int, offset: float = 0.0) -> float:
    """A distinct value per column and epoch (``offset`` tells two sessions apart)."""
    return round(0.001 * (COLUMNS + GROUP_TAGS).index(column) + 0.01 * global_epoch + offset, 6)


def make_rows(stages: Sequence[Tuple[int, int]], *, after: int = 0, offset: float = 0.0
              ) -> List[Tuple[Dict[str, Any], Dict[str, float]]]:
    """(row, group_recall) pairs of a run whose stage k runs ``n`` epochs, for global epochs >
    ``after``."""
    out = []
    g = 0
    for stage, n in stages:
        for e in range(1, n + 1):
            g += 1
            if g <= after:
                continue
            row = {"stage": stage, "epoch": e, "global_epoch": g, **{c: value(c, g, offset) for c in COLUMNS}}
            recall = {t.split("_")[-1]: value(t, g, offset) for t in GROUP_TAGS}
            out.append((row, recall))
    return out


def png_bytes(width: int, height: int) -> bytes:
    """A valid grey-scale PNG written by hand (the zlib/CRC format of the PNG spec)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(width)) for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_run_files(run_dir: Path) -> Tuple[Path, Path, Path]:
    """results.json, summary.txt and one 30x20 figure in ``run_dir/results``."""
    import json

    res = run_dir / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "results.json").write_text(json.dumps({**RESULTS, "run_dir": str(run_dir)}))
    (res / "summary.txt").write_text("Run: demo\n")
    (res / "curves.png").write_bytes(png_bytes(30, 20))
    return res / "results.json", res / "summary.txt", res / "curves.png"


def simulate(logger: Any, run_dir: Path, *, stages=((1, 3), (2, 2)), exp_name: str = "demo",
             resume_after: Any = None, offset: float = 0.0, finish: bool = True, sweep: Any = None,
             config: Any = None, confusion: bool = True, varied: Sequence[str] = ()) -> None:
    """Drive ``logger`` through a run as the training loop would (``confusion=False`` skips the
    confusion-matrix figure, the slowest part)."""
    logger.start(run_dir, config or CONFIG, exp_name=exp_name, resume_global_epoch=resume_after, sweep=sweep,
                 git_commit="0123abcd", varied=varied)
    for row, recall in make_rows(stages, after=resume_after or 0, offset=offset):
        logger.log_epoch(row, recall)
    if finish:
        results, summary, fig = write_run_files(run_dir)
        logger.log_final(FINAL, results_path=results, summary_path=summary, figures=[fig],
                         confusion_matrix=RESULTS["confusion_matrix"] if confusion else None,
                         class_names=RESULTS["class_names"])
        logger.close()


def read_tb(path: Path):
    """TensorBoard's EventAccumulator over ``path``, everything kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def hparams_of(ea):
    """(session start info, experiment) of the HParams plugin in an accumulator."""
    from tensorboard.plugins.hparams import metadata

    content = ea.PluginTagToContent("hparams")
    ssi = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    exp = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    return ssi, exp


def scalar_series(ea, tag):
    """[(step, value)] of a scalar tag."""
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def data_server_series(tb_dir: Path, tag: str):
    """A series as TensorBoard's default (Rust) data server shows it: event files in name order,
    and a record of step s replaces the series' records of steps >= s (reservoir.rs
    "preemption"); it ignores purge_step."""
    import numpy as np
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = []
    for f in sorted(p for p in tb_dir.iterdir() if "tfevents" in p.name):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                if v.tag == tag:
                    val = v.simple_value if v.HasField("simple_value") else float(
                        np.frombuffer(v.tensor.tensor_content, np.float32)[0]) if v.tensor.tensor_content \
                        else v.tensor.float_val[0]
                    out = [(s, x) for s, x in out if s < ev.step] + [(ev.step, val)]
    return out


def raw_scalar_events(tb_dir: Path) -> List[Tuple[str, int]]:
    """(tag, step) of every scalar record in the event files of ``tb_dir``, as written (no reader's
    purge or replacement): a step logged twice appears twice."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = []
    for f in sorted(p for p in Path(tb_dir).iterdir() if "tfevents" in p.name):
        for ev in EventFileLoader(str(f)).Load():
            out += [(v.tag, int(ev.step)) for v in ev.summary.value if v.HasField("simple_value")
                    or v.metadata.plugin_data.plugin_name == "scalars"]
    return out
