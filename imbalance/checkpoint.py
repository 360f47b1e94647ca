"""Finding, checking and loading the checkpoints a run is resumed from (``resume=...``).

A run folder's ``checkpoints/`` holds, per stage k, ``stage<k>_last.pt`` (the state after the
last completed epoch; the one before it as ``stage<k>_last.prev.pt``) and ``stage<k>_best.pt``
(the state of the best epoch so far), all written atomically by
:func:`imbalance.engine.atomic_save` and loadable with ``torch.load(weights_only=True)``: tensors
and plain Python values only (RNG states as tensors and lists, the run's resolved config as a
plain dict).

- ``resume=auto``: the most recently updated UNFINISHED run of the same ``exp_name`` (a folder
  ``<exp_name>_<YYYYmmdd-HHMMSS[-ffffff]>`` beside the new run's folder with a training
  checkpoint and no ``results/results.json`` of status ``completed``); none: a new run.
- ``resume=<run folder>``: that run, from its most advanced readable checkpoint (stage 2 before
  stage 1; a damaged ``last`` falls back to ``last.prev``, then to the previous stage).
- ``resume=<checkpoint file>``: exactly that checkpoint, in the run folder that holds it.

A resumed run continues with the configuration it was started with (stored in the checkpoint);
only the :data:`RUNTIME_KEYS` take the new command's values.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from .errors import UserError

log = logging.getLogger(__name__)

STAGES = (2, 1)  # most advanced first
RUNTIME_KEYS = (
    "device", "gpus", "num_threads", "progress_bar", "console_log_interval", "compile",
    "data.num_workers", "data.pin_memory", "evaluation.batch_size", "compile_cache_dir", "data.on_device",
)
"""Keys a resumed run takes from the new command line (they do not change what is computed)."""


def previous_path(path: Path) -> Path:
    """Where :func:`atomic_save` with ``keep_previous`` keeps the file it replaces:
    ``stage1_last.pt`` -> ``stage1_last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def atomic_save(obj: Any, path: Path, *, keep_previous: bool = False) -> None:
    """torch.save to a temporary file in the same folder (flushed to disk), then rename over
    ``path``: a reader sees the old file or the new one, never a partial one, whenever the
    process is killed. With ``keep_previous`` the file being replaced stays as
    :func:`previous_path` (a fallback should ``path`` be damaged later, e.g. by a copy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if keep_previous and path.exists():
            prev = previous_path(path)
            prev_tmp = prev.with_name(f".{prev.name}.tmp{os.getpid()}")
            try:
                if prev_tmp.exists():
                    prev_tmp.unlink()
                os.link(path, prev_tmp)  # no copy: a second name for the old file
            except OSError:
                import shutil

                shutil.copy2(path, prev_tmp)
            os.replace(prev_tmp, prev)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors / plain lists (weights_only-loadable)."""
    import random

    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    import random

    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointError(UserError):
    """A checkpoint cannot be read (damaged, truncated, not a checkpoint) or does not fit."""


@dataclass
class ResumePoint:
    """Where a resumed run continues: ``state`` is the loaded ``checkpoint``."""

    run_dir: Path
    checkpoint: Path
    state: Dict[str, Any]

    @property
    def stage(self) -> int:
        return int(self.state["stage"])

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU; a damaged or truncated file is a
    :class:`CheckpointError` naming it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # zip truncated, CRC mismatch, unpickling refused ...
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint ({msg[:200]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this framework (no 'model' entry)")
    if isinstance(state["model"], dict):  # weights saved from a torch.compile wrapper load without compile
        from .compilation import strip_compile_prefix

        state["model"] = strip_compile_prefix(state["model"])
    return state


def _is_training_state(state: Dict[str, Any]) -> bool:
    return all(k in state for k in ("stage", "epoch", "optimizer", "early_stopping"))


def candidates(run_dir: Path) -> List[Path]:
    """Training checkpoints of ``run_dir`` in the order they are tried."""
    ck = Path(run_dir) / "checkpoints"
    out: List[Path] = []
    for k in STAGES:
        last = ck / f"stage{k}_last.pt"
        out += [last, previous_path(last)]
    return out


def _note(notes: Optional[List[str]], text: str) -> None:
    if notes is None:
        log.warning("%s", text)
    else:
        notes.append(text)


def latest_checkpoint(run_dir: Path, notes: Optional[List[str]] = None) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The most advanced readable training checkpoint of ``run_dir`` (None if there is none);
    damaged files are skipped and reported (logged, or appended to ``notes``)."""
    for path in candidates(run_dir):
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            _note(notes, f"{err}; using the previous checkpoint")
            continue
        if _is_training_state(state):
            return path, state
        _note(notes, f"{path} is not a training checkpoint; skipped")
    return None


def run_status(run_dir: Path) -> Optional[str]:
    """``status`` of ``results/results.json`` (None when there is none or it is unreadable)."""
    path = Path(run_dir) / "results" / "results.json"
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        return None


def is_finished(run_dir: Path) -> bool:
    return run_status(run_dir) == "completed"


def has_training_checkpoint(run_dir: Path) -> bool:
    return any(p.exists() for p in candidates(run_dir))


def find_unfinished_run(root: Path, exp_name: str, exclude: Iterable[Path] = ()) -> Optional[Path]:
    """The most recently updated unfinished run folder of ``exp_name`` directly under ``root``."""
    root = Path(root)
    if not root.is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(exp_name)}_\d{{8}}-\d{{6}}(-\d{{6}})?$")
    skip = {Path(p).resolve() for p in exclude}
    found: List[Tuple[float, Path]] = []
    for d in root.iterdir():
        if d.is_symlink() or not d.is_dir() or not pattern.match(d.name) or d.resolve() in skip:
            continue
        if is_finished(d):
            continue
        stamps = [p.stat().st_mtime for p in candidates(d) if p.exists()]
        if stamps:
            found.append((max(stamps), d))
    if not found:
        return None
    return max(found, key=lambda t: (t[0], t[1].name))[1].resolve()


def resolve_resume(value: str, *, root: Path, exp_name: str, exclude: Iterable[Path] = (),
                   notes: Optional[List[str]] = None) -> Optional[ResumePoint]:
    """The point ``resume=value`` continues from; None for ``auto`` when there is nothing to
    resume. ``value`` (not ``auto``) must already be an absolute path. What was decided and any
    damaged file skipped are reported (logged, or appended to ``notes``)."""
    text = str(value).strip()
    if text.lower() == "auto":
        run_dir = find_unfinished_run(root, exp_name, exclude)
        if run_dir is None:
            _note(notes, f"resume=auto: no unfinished run of {exp_name!r} under {root}; starting a new run")
            return None
        found = latest_checkpoint(run_dir, notes)
        if found is None:
            raise CheckpointError(f"resume=auto picked {run_dir}, but none of its checkpoints can be read")
        _note(notes, f"resume=auto: continuing {run_dir}")
        return ResumePoint(run_dir, found[0], found[1])
    path = Path(text)
    if path.is_dir():
        if not (path / "checkpoints").is_dir():
            raise CheckpointError(f"resume={text}: {path} has no checkpoints/ folder; name a run folder "
                                  "(experiments/<exp_name>_<time>) or a stage<k>_last.pt file")
        if is_finished(path):
            raise CheckpointError(f"resume={text}: that run has finished (results/results.json is complete); "
                                  "nothing to resume")
        found = latest_checkpoint(path, notes)
        if found is None:
            raise CheckpointError(f"resume={text}: no readable training checkpoint (stage<k>_last.pt) in "
                                  f"{path / 'checkpoints'}")
        return ResumePoint(path.resolve(), found[0], found[1])
    if path.is_file():
        state = load_checkpoint(path)
        if not _is_training_state(state):
            raise CheckpointError(f"resume={text}: {path.name} is not a training checkpoint; name a "
                                  "stage<k>_last.pt (or stage<k>_best.pt) file or a run folder")
        run_dir = path.resolve().parent.parent
        return ResumePoint(run_dir, path.resolve(), state)
    raise CheckpointError(f"resume={text}: no such run folder or checkpoint file (or use resume=auto)")


def best_state_for(point: ResumePoint, stage: int) -> Dict[str, torch.Tensor]:
    """The best weights of ``stage`` so far (``stage<k>_best.pt``), which the stage restores at
    its end."""
    path = point.run_dir / "checkpoints" / f"stage{stage}_best.pt"
    if point.checkpoint.name == path.name:
        return point.state["model"]
    state = load_checkpoint(path)
    return state["model"]


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary files an interrupted atomic save left behind."""
    ck = Path(run_dir) / "checkpoints"
    if ck.is_dir():
        for p in ck.glob(".*.tmp*"):
            try:
                p.unlink()
            except OSError:
                pass


def discard_if_empty(run_dir: Path) -> bool:
    """Remove ``run_dir`` when it holds nothing but Hydra's ``.hydra`` folder (the folder Hydra
    made for a command that continues another run); return whether it was removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    entries = {p.name for p in run_dir.iterdir()}
    if entries - {".hydra"}:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def merged_config(saved: Dict[str, Any], current: Any, explicit: Iterable[str] = ()) -> Any:
    """The resumed run's config: ``saved`` (the original run's) with the :data:`RUNTIME_KEYS` and
    ``resume`` taken from ``current``. Keys in ``explicit`` (the new command's overrides) that
    would change anything else are reported as ignored."""
    from omegaconf import OmegaConf

    from .config import with_schema

    merged = OmegaConf.create(saved)
    OmegaConf.set_struct(merged, False)
    for key in RUNTIME_KEYS + ("resume",):
        value = OmegaConf.select(current, key)
        OmegaConf.update(merged, key, value, merge=False)
    for item in explicit:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in RUNTIME_KEYS or key == "resume" or key.startswith("hydra."):
            continue
        new, old = OmegaConf.select(current, key), OmegaConf.select(merged, key)
        if OmegaConf.is_config(new):
            new = OmegaConf.to_container(new, resolve=True)
        if OmegaConf.is_config(old):
            old = OmegaConf.to_container(old, resolve=True)
        if new != old:
            log.warning("resume: %s is ignored; the run continues with the value it started with (%r)", item, old)
    return with_schema(merged)


# ---------------------------------------------------------------------------------------------
# The epoch state (one owner of its format)
# ---------------------------------------------------------------------------------------------
class StageCheckpointer:
    """Writes the state of stage ``stage`` at every epoch boundary into ``ckpt_dir``:
    ``stage<k>_last.pt`` (the one before kept as ``stage<k>_last.prev.pt``) and, when the
    monitored value improved, ``stage<k>_best.pt`` (the same state with the best weights).

    A state is everything a resumed run needs to continue bit-for-bit: model, optimizer, schedule,
    GradScaler, early stopping, RNG states (every rank's under DDP), plus ``extra()`` (the
    sampler/loss epochs, the run's config, earlier stages' summaries), all tensors and plain
    values (``torch.load(weights_only=True)``)."""

    def __init__(self, ckpt_dir: Path, stage: int, extra: Optional[Any] = None) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.stage = int(stage)
        self.extra = extra

    @property
    def last_path(self) -> Path:
        return self.ckpt_dir / f"stage{self.stage}_last.pt"

    @property
    def best_path(self) -> Path:
        return self.ckpt_dir / f"stage{self.stage}_best.pt"

    def save(self, *, epoch: int, global_epoch: int, epochs: int, model_state: Dict[str, Any], optimizer: Any,
             schedule: Any, early_stopping: Any, rng: Dict[str, Any], rng_ranks: Optional[List[Any]],
             scaler: Any, improved: bool, best_state: Dict[str, Any]) -> None:
        state = {
            "stage": self.stage, "epoch": int(epoch), "global_epoch": int(global_epoch), "epochs": int(epochs),
            "model": model_state, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "early_stopping": early_stopping.state_dict(), "rng": rng, "rng_ranks": rng_ranks,
            "scaler": scaler.state_dict() if scaler is not None else None, "completed": False,
        }
        if self.extra is not None:
            state.update(self.extra())
        atomic_save(state, self.last_path, keep_previous=True)
        if improved:
            atomic_save({**state, "model": best_state}, self.best_path)


# ---------------------------------------------------------------------------------------------
# The final model (one owner of final.pt)
# ---------------------------------------------------------------------------------------------
FINAL_KEYS = ("model", "classifier_chain", "calibration", "classes", "class_counts", "num_channels", "length",
              "config")  # and "mask_channel" (a series run whose last input channel is the observation mask)


def save_final_model(path: Path, *, model_state: Dict[str, Any], classifier_chain: List[Dict[str, Any]],
                     calibration: Dict[str, Any], classes: List[Any], class_counts: List[int], num_channels: int,
                     length: int, config: Dict[str, Any], mask_channel: bool = False) -> None:
    """``checkpoints/final.pt``: the final weights, the classifier chain that holds them (head and
    stage-2/3 wrappers, :mod:`imbalance.classifier_chain`), the classes, the training counts, the
    signal shape (``mask_channel``: its last channel is the observation mask, set by the data) and
    the resolved config; everything a reader needs to rebuild the model."""
    atomic_save({"model": model_state, "classifier_chain": classifier_chain,
                 "calibration": {k: v for k, v in calibration.items() if not isinstance(v, (list, dict))},
                 "classes": classes, "class_counts": class_counts, "num_channels": int(num_channels),
                 "length": int(length), "config": config, "mask_channel": bool(mask_channel)}, Path(path))


# ---------------------------------------------------------------------------------------------
# Where a run continues (resume=...), decided once for every rank
# ---------------------------------------------------------------------------------------------
def prepare_resume(cfg: Any, own: Path, overrides: Iterable[str] = ()) -> Tuple[Path, Any, Optional[ResumePoint],
                                                                                List[str]]:
    """The run folder (rank 0 decides; every rank uses it) and, with ``cfg.resume``, the point the
    run continues from and the config it continues with (:func:`merged_config`). Returns
    ``(run folder, config, resume point or None, notes to log)``."""
    from . import distributed as D
    from .config import validate
    from .runtime import resolve_path

    env = D.current()
    point = None
    notes: List[str] = []
    if cfg.resume:
        msg, where = None, None
        if env.is_main:
            value = str(cfg.resume).strip()
            if value.lower() != "auto":
                value = resolve_path(value)
            try:
                point = resolve_resume(value, root=own.parent, exp_name=str(cfg.exp_name), exclude=[own],
                                       notes=notes)
                where = None if point is None else (str(point.run_dir), str(point.checkpoint))
            except CheckpointError as err:
                msg = str(err)
        msg, where, notes = D.broadcast_object((msg, where, notes))
        if msg:
            raise CheckpointError(msg)
        if where is not None and point is None:
            point = ResumePoint(Path(where[0]), Path(where[1]), load_checkpoint(Path(where[1])))
    if point is not None:
        saved = point.state.get("config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{point.checkpoint} does not hold the run's config; it cannot be resumed")
        cfg = merged_config(saved, cfg, overrides)
        validate(cfg)
        rdir = point.run_dir
    else:
        rdir = Path(D.broadcast_object(str(own)))
    if own != rdir and discard_if_empty(own):
        notes.append(f"removed {own} (this command continues {rdir})")
    return rdir, cfg, point, notes


def report_interrupt(rdir: Path) -> None:
    """After Ctrl-C: where the last completed epoch is saved and how to resume."""
    lasts = sorted((Path(rdir) / "checkpoints").glob("stage*_last.pt"))
    if lasts:
        log.warning("interrupted; the last completed epoch is saved in %s. Resume with: python main.py resume=%s",
                    lasts[-1], rdir)
    else:
        log.warning("interrupted before the first epoch completed; nothing to resume (%s)", rdir)
