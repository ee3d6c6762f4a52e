"""`fit`, the orchestrator: set up a run from a Config, train it epoch by epoch (the best weights
and a resumable checkpoint saved atomically after each), then calibrate and test the best.
Under torchrun each process trains a DDP replica on its shard; rank 0 alone logs and writes."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mnistcnn import config as config_mod
from mnistcnn.calibrate import calibrate_model
from mnistcnn.checkpoint import save_model, save_training_state
from mnistcnn.config import Config
from mnistcnn.data import Split, Splits, load_splits, shard_loader, to_float, train_loader
from mnistcnn.files import atomic_write_text, write_csv
from mnistcnn.model import DigitNet, build_model, count_parameters, fuse, inference_batch
from mnistcnn.train import build, distributed, loops, state, transfer
from mnistcnn.train.distributed import World
from mnistcnn.train.runlog import RunLog

log = logging.getLogger(__name__)
Row = dict[str, Any]


@dataclass(frozen=True)
class Run:
    """What one training run works with, made once by `set_up`."""

    cfg: Config
    world: World
    device: torch.device
    model: DigitNet
    compiled: nn.Module  # the model, through torch.compile if asked: what validates
    runner: nn.Module  # the compiled model, in DDP with several processes: what trains
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    generators: dict[str, torch.Generator]
    eval_batch: int


def fit(
    cfg: Config,
    *,
    splits: Splits | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[Row], None] | None = None,
) -> dict[str, Any]:
    """Train on `splits` (None: MNIST as cfg.data says), test the best epoch; the summary."""
    # on_epoch(row) runs once the epoch's files are saved (a tuner may raise there to stop);
    # `resume` (from load_training_state) ends with the weights of an uninterrupted run on CPU.
    world = distributed.from_env()
    device = distributed.local_device(build.resolve_device(cfg.train.device), world)
    with (
        distributed.process_group(world, device, cfg.train.dist_timeout),
        distributed.contact(world),
        distributed.info_from_main(world),
    ):
        state.check_output(cfg, overwrite or resume is not None)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        build.seed_everything(cfg.train.seed)
        started = time.perf_counter()
        splits = Splits(*(s.to(device) for s in splits or load_splits(cfg.data)))
        run = set_up(cfg, world, device, splits.train, fresh=resume is None)
        history, best, start = [], {"val_accuracy": -1.0}, 1
        if resume is not None:
            history, best, start = _resume(run, resume)
        where = f"; {world.size} processes, global batch {cfg.data.batch_size}"
        log.info(
            f"model {cfg.model.name}: {count_parameters(run.model):,} parameters; "
            f"device {device}{where if world.distributed else ''}; "
            f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images"
        )
        run_step = len(run.loader) * (start - 1)  # the global step training resumes after
        resumed = None if resume is None else {**resume, "run_step": run_step}
        runlog = RunLog.open(cfg, resume=resumed) if world.main else RunLog(None, None, [])
        runlog.graph(run.model, to_float(splits.test.images[:1]))
        epochs = range(start, cfg.train.epochs + 1)
        progress = progress and world.main
        best = _epochs(run, splits.val, runlog, history, best, epochs, progress, on_epoch)
        return _finish(run, splits, best, runlog, started) if world.main else {}


def set_up(cfg: Config, world: World, device: torch.device, train: Split, fresh: bool) -> Run:
    """Build the model (from `train.init_from` when `fresh`), its optimizer, schedule, batches."""
    model = build_model(cfg.model.name, dict(cfg.model.kwargs), cfg.data.mean, cfg.data.std)
    if cfg.train.init_from and fresh:
        log.info(transfer.init_from(model, cfg.train.init_from))
    transfer.freeze(model, cfg.train.freeze)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    eval_batch = cfg.data.eval_batch_size or inference_batch(model, device)
    compiled = torch.compile(model) if cfg.train.compile else model
    runner = distributed.wrap(compiled, world, device)
    loss_fn = build.build_loss(cfg)
    optimizer = build.build_optimizer(cfg, model)
    # Each process draws its own augmentations and dropout masks; rank 0 those of one process.
    seed = cfg.train.seed
    generators = {
        "order": torch.Generator().manual_seed(seed),
        "augment": torch.Generator(device).manual_seed(seed + 1 + (world.rank << 32)),
    }
    if world.rank:
        torch.manual_seed(seed + (world.rank << 32))
    if world.distributed:
        batch = distributed.per_rank_batch(cfg.data.batch_size, world)
        loader = shard_loader(train, batch, seed, world.rank, world.size)
    else:
        loader = train_loader(train, cfg.data.batch_size, generators["order"])
    scheduler = build.build_scheduler(cfg, optimizer, len(loader))
    parts = (model, compiled, runner, loss_fn, optimizer, scheduler, loader, generators, eval_batch)
    return Run(cfg, world, device, *parts)


def _resume(run: Run, resume: dict[str, Any]) -> tuple[list[Row], dict[str, Any], int]:
    """Load a checkpoint's states into `run`; its history, best epoch and the next epoch."""
    run.model.load_state_dict(resume["model"])
    run.optimizer.load_state_dict(resume["optimizer"])
    if run.scheduler is not None:
        run.scheduler.load_state_dict(resume["scheduler"])
    # One RNG state per process that wrote the checkpoint (one: no "rng_ranks").
    states = resume.get("rng_ranks") or [resume["rng"]]
    state.set_rng_state(states[run.world.rank % len(states)], run.generators)
    ckpt = state.output_paths(run.cfg)["checkpoint"]
    log.info(f"resuming after epoch {resume['epoch']} from {ckpt}")
    if len(states) != run.world.size:
        log.info(
            f"the checkpoint was written by {len(states)} process(es), this run has "
            f"{run.world.size}: training goes on, but with other data order and augmentations "
            "than an uninterrupted run"
        )
    return resume["history"], resume["best"], resume["epoch"] + 1


def _epochs(
    run: Run,
    val: Split,
    runlog: RunLog,
    history: list[Row],
    best: dict[str, Any],
    epochs: range,
    progress: bool,
    on_epoch: Callable[[Row], None] | None,
) -> dict[str, Any]:
    """Train `epochs`, saving each: the best epoch so far, with its weights."""
    paths, total = state.output_paths(run.cfg), run.cfg.train.epochs
    epoch = epochs.start
    try:
        for epoch in epochs:
            row, train, scores = _one_epoch(run, val, runlog, epoch, progress)
            history.append(row)
            if scores["accuracy"] > best["val_accuracy"]:
                acc, loss = scores["accuracy"], scores["loss"]
                run.model.meta = {"epoch": epoch, "val_accuracy": acc, "val_loss": loss}
                best = {**run.model.meta, "state": state.clone_state(run.model)}
            _save(run, epoch, history, best, runlog)
            log.info(
                f"epoch {epoch:>3}/{total}  train loss {train['loss']:.4f} "
                f"acc {100 * train['accuracy']:.2f}%  val loss {scores['loss']:.4f} "
                f"acc {100 * scores['accuracy']:.2f}%  lr {row['lr']:.3g}  {row['seconds']:.1f}s"
            )
            if on_epoch is not None:
                on_epoch(row)
    except BaseException as exc:
        runlog.close()
        # `best` has an epoch once any epoch finished (the first always improves on -1), even
        # when Ctrl-C lands after an epoch's files were written but before the next began.
        if isinstance(exc, KeyboardInterrupt) and "epoch" not in best:
            log.info(f"interrupted in epoch {epoch}, before any epoch finished: nothing saved")
        elif isinstance(exc, KeyboardInterrupt):
            nproc = f"--nproc {run.world.size} " if run.world.distributed else ""
            log.info(
                f"interrupted in epoch {history[-1]['epoch'] + 1}: the best model so far "
                f"(epoch {best['epoch']}) is in {paths['model']}; continue with: mnistcnn "
                f"train {nproc}--resume {paths['checkpoint']}"
            )
        raise
    return best


def _one_epoch(
    run: Run, val: Split, runlog: RunLog, epoch: int, progress: bool
) -> tuple[Row, dict[str, float], dict[str, float]]:
    """Train an epoch, validate, step a per-epoch schedule: the metrics row, train and val."""
    cfg, world, started = run.cfg, run.world, time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    per_step = cfg.sched.name in build.PER_STEP_SCHEDULERS
    speed = {"amp": cfg.train.amp, "channels_last": cfg.train.channels_last}
    if world.distributed:
        run.loader.batch_sampler.sampler.set_epoch(epoch)
    desc, steps = f"epoch {epoch}/{cfg.train.epochs}", len(run.loader)
    shown = {"file": sys.stderr, "disable": not progress, "leave": False, "dynamic_ncols": True}
    with tqdm(total=steps, desc=desc, **shown) as bar:
        train = loops.train_one_epoch(
            run.runner,
            run.loader,
            run.optimizer,
            run.loss_fn,
            device=run.device,
            augment=cfg.data.augment,  # augment_batch skips the parts set to 0
            generator=run.generators["augment"],
            scheduler=run.scheduler if per_step else None,
            log_every=cfg.train.log_every,
            progress=bar,
            epoch=epoch,
            on_log=runlog.step_logger(epoch, steps),
            **speed,
        )
    train = distributed.mean_over_ranks(train, world)
    # Validate rank 0's weights (the ones saved), each process a slice of the split.
    distributed.sync_buffers(run.model, world)
    part = Split(val.images[world.rank :: world.size], val.labels[world.rank :: world.size])
    scores = loops.evaluate(run.compiled, part, run.eval_batch, run.device, **speed)
    scores = distributed.mean_over_ranks(scores, world, weight=len(part))
    if run.scheduler is not None and not per_step:
        plateau = isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        run.scheduler.step(scores["loss"]) if plateau else run.scheduler.step()
    both = {"train": train, "val": scores}
    rounded = {f"{name}_{k}": round(v, 6) for name, m in both.items() for k, v in m.items()}
    seconds = round(time.perf_counter() - started, 2)
    return {"epoch": epoch, **rounded, "lr": lr, "seconds": seconds}, train, scores


def _save(run: Run, epoch: int, history: list[Row], best: dict[str, Any], runlog: RunLog) -> None:
    """Save the epoch: checkpoint first (whoever finds the model finds it too), model, metrics."""
    paths = state.output_paths(run.cfg)
    rngs = distributed.gather(state.rng_state(run.generators), run.world)
    if run.world.main:
        parts = (run.model, run.optimizer, run.scheduler)
        ckpt = state.checkpoint(run.cfg, epoch, *parts, rngs, best, history, runlog.folder)
        save_training_state(paths["checkpoint"], ckpt)
        if best["epoch"] == epoch:
            save_model(run.model, paths["model"])
        write_csv(paths["metrics"], history)
    distributed.barrier(run.world)  # a process that dies later leaves this epoch saved
    runlog.epoch(history[-1], history, paths["model"] if best["epoch"] == epoch else None)


def _finish(
    run: Run, splits: Splits, best: dict[str, Any], runlog: RunLog, started: float
) -> dict[str, Any]:
    """Calibrate and test the best weights and save them with their results; the summary."""
    cfg, model, test = run.cfg, run.model, splits.test
    paths = state.output_paths(cfg)
    atomic_write_text(paths["config"], config_mod.dump(cfg))
    model.load_state_dict(best.pop("state"))
    # BatchNorm folded once, for the calibration and the test.
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    inference = fuse(model).to(memory_format=layout)
    # Temperatures for honest probabilities (plain and TTA), val ECE before/after.
    calibration = calibrate_model(inference, splits.val.images, splits.val.labels, run.eval_batch)
    train_seconds = time.perf_counter() - started  # as the benchmarks compare: all but the test
    # Tested in float32, as `eval` and `predict` run it: the score is the saved model's.
    logits = loops.predict_logits(
        inference, test, run.eval_batch, run.device, channels_last=cfg.train.channels_last
    )
    scores = loops.scores(logits, test.labels)
    model.meta = {
        **best,
        **calibration,
        "test_accuracy": scores["accuracy"],
        "test_loss": scores["loss"],
        "epochs": cfg.train.epochs,
        "train_seconds": round(train_seconds, 2),
        "parameters": count_parameters(model),
        "torch": str(torch.__version__),
    }
    save_model(model, paths["model"])
    runlog.copy_model(paths["model"])
    runlog.finish(test.images, test.labels, logits, model.meta)
    runlog.close()
    where = {"model": str(paths["model"]), "device": str(run.device)}
    return {**model.meta, **where, "run_dir": str(runlog.folder) if runlog.folder else None}
