"""One run: data -> model -> stage 1 -> stage 2 -> stage 3 -> evaluation -> results + figures.

``run(cfg)`` is what ``main.py`` calls with Hydra's composed config; it reads as the list of
steps. The config is turned into components by :mod:`imbalance.builders`, the stages run in
:mod:`imbalance.stages`, the model is evaluated by :mod:`imbalance.evaluation`, and the run folder
(:mod:`imbalance.run_folder`), checkpoints (:mod:`imbalance.checkpoint`) and results record
(:mod:`imbalance.results`) each have one owner.

Scaling and survival (docs/scaling.md): ``gpus: "0,1"`` wraps the model in DataParallel;
``torchrun --nproc_per_node=N main.py`` runs DistributedDataParallel (:mod:`imbalance.distributed`);
``resume=auto|<run folder>|<checkpoint>`` continues an interrupted run in its own folder; Ctrl-C
stops after the last completed epoch's checkpoint and says how to resume.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import builders as B
from . import distributed as D
from . import recipe
from .analysis import accuracy_and_macc
from .checkpoint import load_checkpoint, prepare_resume, remove_stale_temporaries, report_interrupt, \
    save_final_model
from .classifier_chain import describe_chain
from .config import validate, with_schema
from .distill import distill_record, distillation
from .engine import predict
from .evaluation import evaluate_model, public, save_predictions, write_figures, write_tables
from .incremental_run import check_memory_budget, keeps_memory
from .loggers import epoch_hook, log_run_end
from .precision import make_precision
from .results import build_results, format_pct, git_commit, plain, write_results
from .run_folder import MetricsWriter, RunFolder, update_latest_link
from .runtime import attach_run_log, cli_overrides, detach_run_log, resolve_run_dir, seed_everything, select_device, \
    sweep_name, varied_keys
from .stages import RunContext, fit_prototype_classifier, run_stage1, run_stage2, run_stage3

log = logging.getLogger(__name__)

BatchHook = Callable[[int, int], None]


def run(cfg: DictConfig, run_dir: Optional[os.PathLike] = None, *, on_batch_end: Optional[BatchHook] = None) -> float:
    """Train and evaluate as ``cfg`` says; write the run folder; return the final val mAcc.

    ``cfg.resume`` (``auto``, a run folder or a checkpoint) continues an interrupted run in its own
    folder; with ``mode=eval`` it names the trained run to evaluate (:mod:`imbalance.evaluate`), with
    ``mode=incremental`` the parent run a class-incremental session continues (:mod:`imbalance.incremental_run`).
    Under torchrun every rank calls this; rank 0 writes. Ctrl-C ends the run with exit status 130
    after saying how to resume it. ``on_batch_end(global_epoch, batch)`` (1-based) is called after
    every training batch. Process-wide settings (threads, console logging) are left to the caller
    (:func:`imbalance.runtime.configure_process`, which the command line calls).
    """
    t_start = time.perf_counter()
    cfg = with_schema(cfg)
    validate(cfg)
    B.check_names(cfg)
    if cfg.mode == "eval":
        from .evaluate import run_eval

        return run_eval(cfg, resolve_run_dir(run_dir))
    if cfg.mode == "incremental":  # a class-incremental session after the run cfg.resume (only read)
        from .incremental_run import run_incremental

        return run_incremental(cfg, resolve_run_dir(run_dir), on_batch_end=on_batch_end)
    D.init_distributed(str(cfg.device))
    ok = False
    try:
        rdir, cfg, point, notes = prepare_resume(cfg, resolve_run_dir(run_dir), cli_overrides() or [])
        tracker = B.build_run_logger(cfg, main_process=D.current().is_main)  # TensorBoard / MLflow (rank 0)
        handler = attach_run_log(rdir, main_process=D.current().is_main)
        try:
            with tracker:  # closed as finished, failed (an error) or killed (Ctrl-C); a failing backend never stops us
                value = _train(cfg, RunFolder(rdir), point, notes, t_start, tracker, on_batch_end)
        except KeyboardInterrupt:
            report_interrupt(rdir)
            raise SystemExit(130) from None
        finally:
            detach_run_log(handler)
        ok = True
        return value
    finally:
        D.cleanup(barrier=ok)


def _announce(cfg: DictConfig, folder: RunFolder, point: Any, notes: List[str]) -> None:
    env = D.current()
    log.info("run folder: %s", folder.root)
    for note in notes:
        log.info("%s", note)
    if point is not None:
        if env.is_main:
            remove_stale_temporaries(folder.root)
        log.info("resuming from %s (stage %d, epoch %d)", point.checkpoint, point.stage, point.epoch)
    if env.enabled:
        bs = cfg.data.batch_size  # 'auto' is resolved when the data are built
        log.info("distributed: %d processes (%s), global batch %s", env.world_size, env.backend,
                 bs if bs == "auto" else D.per_rank_batch(int(bs), env) * env.world_size)
    recipe.warn_unused_user_keys(cfg, cli_overrides() or [])
    posthoc = cfg.stage3.mode in ("logit_adjust", "both") or cfg.evaluation.eval_logit_adjust == "posthoc"
    s2 = [(B.stage2_loss_name(cfg), cfg.stage2.logit_tau if cfg.stage2.logit_tau is not None else cfg.loss.logit_tau)]
    for msg in recipe.stacked_logit_adjustment(
            head=recipe.resolve_head(cfg.model.head, cfg.loss.name), posthoc=posthoc,
            loss_names=[cfg.loss.name] + ([s2[0][0]] if cfg.stage2.enabled else []),
            logit_taus=[cfg.loss.logit_tau] + ([s2[0][1]] if cfg.stage2.enabled else [])):
        log.warning("%s", msg)


def _context(cfg: DictConfig, folder: RunFolder, point: Any, on_batch_end: Optional[BatchHook],
             timings: Dict[str, float]) -> tuple:
    """Seed, device, precision, data, model and loaders: the run's :class:`RunContext`."""
    env = D.current()
    seed_everything(int(cfg.seed))
    device, gpu_ids = select_device(cfg.device, cfg.gpus)
    precision = make_precision(device, bool(cfg.amp), cfg.amp_dtype)
    log.info("device: %s%s, %d CPU threads, precision %s", device,
             f" (DataParallel over GPUs {gpu_ids})" if len(gpu_ids) > 1 else "", torch.get_num_threads(),
             precision.name)
    t0 = time.perf_counter()
    data = B.place_data(cfg, B.build_data(cfg), device)
    class_names = B.class_names_for(cfg, data.classes)
    timings["data"] = time.perf_counter() - t0

    n_devices = env.world_size if env.enabled else max(1, len(gpu_ids))
    model = B.build_model(cfg, data, device, n_devices=n_devices)
    from .models import model_complexity

    info = model_complexity(model, data.num_channels, data.length)
    log.info("model: %s, %s parameters, %s FLOPs per sample", cfg.model.name, f"{info['params']:,}",
             f"{info['flops_per_sample']:,}")
    if env.enabled:
        model = D.wrap_ddp(model, device)
    elif len(gpu_ids) > 1:
        model = nn.DataParallel(model, device_ids=gpu_ids)
    model, compiled = B.compile_for_run(cfg, data, model, device, precision, n_devices=n_devices)

    writer = MetricsWriter(folder.metrics_csv) if env.is_main else None
    if writer is not None and point is not None:
        writer.drop_rows_after(point.stage, point.epoch)  # rows written after the checkpoint
    bs_eval = B.cfg_eval_batch(cfg)
    ctx = RunContext(folder=folder, device=device, precision=precision, data=data, model=model, metrics=writer,
                     val_loader=B.make_loader(data.val, bs_eval, device, cfg),
                     test_loader=B.make_loader(data.test, bs_eval, device, cfg),
                     config=OmegaConf.to_container(cfg, resolve=True),
                     progress=B.progress_enabled(cfg.progress_bar) and env.is_main,
                     console_log_interval=int(cfg.console_log_interval), pin_memory=bool(cfg.data.pin_memory),
                     resume=point, on_batch_end=on_batch_end)
    return ctx, class_names, {"name": cfg.model.name, **info, "compile": compiled.as_dict()}


def _train(cfg: DictConfig, folder: RunFolder, point: Any, notes: List[str], t_start: float, tracker: Any,
           on_batch_end: Optional[BatchHook]) -> float:
    env = D.current()
    folder.root.mkdir(parents=True, exist_ok=True)
    if env.is_main:
        update_latest_link(folder.root, cfg.exp_name)
    _announce(cfg, folder, point, notes)
    timings: Dict[str, float] = {}
    ctx, class_names, model_info = _context(cfg, folder, point, on_batch_end, timings)
    if keeps_memory(cfg):
        check_memory_budget(cfg, ctx.data.num_classes)  # a budget below one per class fails before training
    analyzer = B.build_analyzer(cfg, ctx.data.class_counts.tolist())
    tracker.start(folder.root, ctx.config, exp_name=cfg.exp_name, sweep=sweep_name(), git_commit=git_commit(),
                  resume_global_epoch=None if point is None else int(point.state["global_epoch"]), varied=varied_keys())
    ctx.on_epoch_end = epoch_hook(tracker, analyzer.groups)  # each metrics.csv row, + val recall per group
    metrics: Dict[str, Any] = {}
    stage_info: Dict[str, Any] = {}

    # ---- stage 1
    t0 = time.perf_counter()
    if point is not None and point.stage >= 2:  # stage 1 had finished: stage 2 starts from its weights
        ctx.net.load_state_dict(load_checkpoint(folder.checkpoints / B.stage1_checkpoint_name(cfg))["model"])
        ctx.global_epoch = int(point.state["global_epoch"]) - int(point.state["epoch"])
        stage_info["stage1"] = dict((point.state.get("previous_stages") or {}).get("stage1") or {})
        log.info("stage 1: finished before the interruption (%d epochs); its %s weights restored", ctx.global_epoch,
                 cfg.training.checkpoint_select)
    else:
        plan1 = B.build_stage1(cfg, ctx.data, ctx.model, ctx.device)
        with distillation(ctx, plan1, loss_name=cfg.loss.name, **B.distill_options(cfg)):  # no-op without a teacher
            r1 = run_stage1(ctx, plan1)
        stage_info["stage1"] = {"epochs_run": r1.epochs_run, "best_epoch": r1.best_epoch, "best_value": r1.best_value}
    timings["stage1"] = time.perf_counter() - t0
    metrics["stage1"] = public(evaluate_model(ctx.model, ctx.test_loader, analyzer, precision=ctx.precision))

    # ---- stage 2
    if cfg.stage2.enabled:
        t0 = time.perf_counter()
        stage1_ckpt = folder.checkpoints / B.stage1_checkpoint_name(cfg)
        if ctx.is_main and not stage1_ckpt.exists():
            from .errors import UserError

            raise UserError(f"stage 2 needs stage 1's checkpoint, but {stage1_ckpt} does not exist")
        r2 = run_stage2(ctx, B.build_stage2(cfg, ctx.data, ctx.model, ctx.device), stage1=stage_info["stage1"])
        timings["stage2"] = time.perf_counter() - t0
        stage_info["stage2"] = {"epochs_run": r2.epochs_run, "best_epoch": r2.best_epoch, "best_value": r2.best_value}
        metrics["stage2"] = public(evaluate_model(ctx.model, ctx.test_loader, analyzer, precision=ctx.precision))

    # ---- evaluation classifier: NCM / kNN fitted on the training features (evaluation.classifier)
    proto = B.build_eval_classifier(cfg)
    if proto is not None:
        fit_prototype_classifier(ctx, proto, B.cfg_eval_batch(cfg))

    # ---- stage 3
    t0 = time.perf_counter()
    plan3 = B.build_stage3(cfg)
    calib = run_stage3(ctx, plan3)
    if plan3.ran:
        timings["stage3"] = time.perf_counter() - t0

    # ---- evaluation
    t0 = time.perf_counter()
    final = evaluate_model(ctx.model, ctx.test_loader, analyzer, precision=ctx.precision, features=True)
    if plan3.ran:
        metrics["stage3"] = public(final)
    metrics["final"] = public(final)
    val_out = predict(ctx.model, ctx.val_loader, precision=ctx.precision)
    val_acc, val_macc = accuracy_and_macc(val_out["logits"].argmax(1), val_out["labels"], ctx.data.num_classes)
    if not env.is_main:
        return float(val_macc)
    data = ctx.data
    save_final_model(folder.final_checkpoint, model_state=ctx.net.state_dict(),
                     classifier_chain=describe_chain(ctx.net.classifier), calibration=calib,
                     classes=[plain(c) for c in data.classes], class_counts=data.class_counts.tolist(),
                     num_channels=data.num_channels, length=data.length, config=ctx.config,
                     mask_channel=data.mask_channel)
    save_predictions(folder, final, class_counts=data.class_counts, classes=data.classes,
                     max_samples=int(cfg.visualization.max_samples), seed=int(cfg.seed))
    write_tables(folder, final, class_names)
    timings["evaluation"] = time.perf_counter() - t0
    openset = None
    if data.test_unknown is not None:  # open set: unknowns reach the model only here (imbalance.openset_run)
        from .openset_run import run_openset

        t0 = time.perf_counter()
        openset = run_openset(ctx.net, B.build_openset(cfg, data, ctx.device), class_counts=data.class_counts,
                              precision=ctx.precision, folder=folder)
        metrics["final"]["openset"] = openset.metrics
        timings["openset"] = time.perf_counter() - t0

    # ---- results and figures
    extra: Dict[str, Any] = {"val_metrics": {"acc": val_acc, "macc": val_macc}, "stages": stage_info}
    if B.validation_is_training(cfg):  # data.val_ratio=0: summarize does not select on these
        extra["val_metrics"]["split"] = "train"
    if point is not None:
        extra["resumed_from"] = {"checkpoint": str(point.checkpoint), "stage": point.stage, "epoch": point.epoch}
    if env.enabled:
        extra["distributed"] = {"world_size": env.world_size, "backend": env.backend}
    if keeps_memory(cfg):  # the base session of class-incremental learning: exemplar memory, session 0
        from .incremental_run import base_session

        extra["incremental"] = base_session(cfg, folder, ctx.net, data, final, device=ctx.device)
    if openset is not None:
        extra["openset"] = openset.info
    if cfg.distill.teacher:
        extra["distill"] = distill_record(class_counts=data.class_counts.tolist(), **B.distill_options(cfg))
    results = build_results(
        exp_name=cfg.exp_name, run_dir=folder.root, config=ctx.config, class_counts=data.class_counts,
        classes=data.classes, class_names=class_names, metrics=metrics, final=final, calibration=calib,
        model_info=model_info, precision=ctx.precision.name, device=str(ctx.device),
        data_files=data.files.values(), timings=timings, **extra)
    write_results(folder, results, t_start)
    if cfg.visualization.enabled:
        if openset is not None:
            from .openset_run import write_openset_figures

            write_openset_figures(folder.root, openset.figures)
        write_figures(folder, cfg.visualization, class_names, results, t_start)
    log_run_end(tracker, results, results_path=folder.results_json, summary_path=folder.summary_txt,
                figures_dir=folder.results)

    f = metrics["final"]["overall"]
    log.info("final test: OA %s  mAcc %s  many %s  medium %s  few %s  HM %s  (%.0fs)", format_pct(f["oa"]),
             format_pct(f["macc"]), format_pct(f.get("many_acc")), format_pct(f.get("medium_acc")),
             format_pct(f.get("few_acc")), format_pct(f.get("hm")), results["timings"]["total"])
    log.info("results: %s", folder.results_json)
    return float(val_macc)


__all__ = ["run"]
