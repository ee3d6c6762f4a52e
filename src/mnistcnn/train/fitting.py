"""`fit`, the orchestrator: set up a run from a Config, train it epoch by epoch (the kept weights,
`train.keep`, and a resumable checkpoint saved atomically after each), then calibrate and test
them.
Under torchrun each process trains a DDP replica on its shard; rank 0 alone logs and writes."""

from __future__ import annotations

import copy
import logging
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mnistcnn.calibrate import calibrate_model
from mnistcnn.checkpoint import save_model
from mnistcnn.config import build as config_mod
from mnistcnn.config.schema import Config
from mnistcnn.data import Split, Splits, load_splits, shard_loader, to_float, train_loader
from mnistcnn.errors import MnistCnnError
from mnistcnn.files import atomic_write, atomic_write_text, write_csv
from mnistcnn.model.nets import build_model
from mnistcnn.model.summary import count_parameters, fuse, inference_batch
from mnistcnn.train import build, distributed, loops
from mnistcnn.train.distributed import World
from mnistcnn.train.graphs import StepGraph
from mnistcnn.train.runlog import RunLog

log = logging.getLogger(__name__)
Row = dict[str, Any]


def output_paths(cfg: Config) -> dict[str, Path]:
    """Where a run writes: the model, its resumable checkpoint, resolved config and metrics."""
    model = Path(cfg.train.output)
    suffixes = {"checkpoint": ".ckpt", "config": ".yaml", "metrics": ".metrics.csv"}
    return {"model": model, **{name: model.with_suffix(s) for name, s in suffixes.items()}}


def check_output(cfg: Config, overwrite: bool) -> None:
    """Refuse to replace an existing model file unless told to."""
    model = Path(cfg.train.output)
    if model.exists() and not overwrite:
        raise MnistCnnError(
            f"{model} already exists; pass --overwrite to replace it "
            "or --set train.output=OTHER.pth"
        )


def rng_state(generators: dict[str, torch.Generator]) -> Row:
    """The state of `generators` and of Python's, torch's and CUDA's global RNGs."""
    state = {name: g.get_state() for name, g in generators.items()}
    state["torch"] = torch.get_rng_state()
    state["python"] = random.getstate()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Row, generators: dict[str, torch.Generator]) -> None:
    """Put back what `rng_state` took."""
    for name, g in generators.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(
    cfg: Config,
    *,
    splits: Splits | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: Row | None = None,
    on_epoch: Callable[[Row], None] | None = None,
) -> Row:
    """Train on `splits` (None: MNIST as cfg.data says), test the kept epoch; the summary."""
    # on_epoch(row) runs once the epoch's files are saved (a tuner may raise there to stop);
    # `resume` (from load_training_state) ends with the weights of an uninterrupted run on CPU.
    world = distributed.from_env()
    device = distributed.local_device(build.resolve_device(cfg.train.device), world)
    with distributed.process_group(world, device, cfg.train.dist_timeout):
        check_output(cfg, overwrite or resume is not None)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        random.seed(cfg.train.seed)  # the global RNGs: weight init, dropout
        torch.manual_seed(cfg.train.seed)
        started = time.perf_counter()
        splits = Splits(*(s.to(device) for s in splits or load_splits(cfg.data)))
        run = Run(cfg, world, device, splits, resume)
        run.train(progress and world.main, on_epoch)
        return run.finish(started) if world.main else {}


class Run:
    """One training run: its model, optimizer, schedule and batches, and the epochs done."""

    def __init__(
        self, cfg: Config, world: World, device: torch.device, splits: Splits, resume: Row | None
    ) -> None:
        self.cfg, self.world, self.device, self.splits = cfg, world, device, splits
        self.paths = output_paths(cfg)
        model = build_model(cfg.model.name, dict(cfg.model.kwargs), cfg.data.mean, cfg.data.std)
        if cfg.train.init_from and resume is None:
            log.info(build.init_from(model, cfg.train.init_from))
        build.freeze(model, cfg.train.freeze)
        model.to(device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.eval_batch = cfg.data.eval_batch_size or inference_batch(model, device)
        # The model through torch.compile (if asked) validates; in DDP (several processes) trains.
        self.compiled = torch.compile(model) if cfg.train.compile else model
        self.runner = distributed.wrap(self.compiled, world, device)
        self.loss_fn = build.build_loss(cfg)
        self.optimizer = build.build_optimizer(cfg, model)
        # Each process draws its own augmentations and dropout masks; rank 0 those of one process.
        seed = cfg.train.seed
        self.generators = {
            "order": torch.Generator().manual_seed(seed),
            "augment": torch.Generator(device).manual_seed(seed + 1 + (world.rank << 32)),
        }
        if world.rank:
            torch.manual_seed(seed + (world.rank << 32))
        if world.distributed:
            batch = distributed.per_rank_batch(cfg.data.batch_size, world)
            self.loader = shard_loader(splits.train, batch, seed, world.rank, world.size)
        else:
            self.loader = train_loader(splits.train, cfg.data.batch_size, self.generators["order"])
        self.scheduler = build.build_scheduler(cfg, self.optimizer, len(self.loader))
        # CUDA graphs for one process's eager model (torch.compile and DDP have their own).
        graphed = cfg.train.cuda_graphs and device.type == "cuda"
        alone = not (world.distributed or cfg.train.compile)
        self.graph = StepGraph(self.generators["augment"]) if graphed and alone else None
        self.history: list[Row] = []
        self.best: Row = {"val_accuracy": -1.0}
        self.start = 1  # the first epoch to train
        if resume is not None:
            self._resume(resume)
        where = f"; {world.size} processes, global batch {cfg.data.batch_size}"
        log.info(
            f"model {cfg.model.name}: {count_parameters(model):,} parameters; "
            f"device {device}{where if world.distributed else ''}; "
            f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images"
        )
        run_step = len(self.loader) * (self.start - 1)  # the global step training resumes after
        self.runlog = RunLog.open(cfg, resume, run_step) if world.main else RunLog(None, None, [])
        self.runlog.graph(model, to_float(splits.test.images[:1]))

    def _resume(self, resume: Row) -> None:
        """Load a checkpoint's states, history and kept epoch; go on after its epoch."""
        self.model.load_state_dict(resume["model"])
        self.optimizer.load_state_dict(resume["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(resume["scheduler"])
        # One RNG state per process that wrote the checkpoint (one: no "rng_ranks").
        states = resume.get("rng_ranks") or [resume["rng"]]
        set_rng_state(states[self.world.rank % len(states)], self.generators)
        log.info(f"resuming after epoch {resume['epoch']} from {self.paths['checkpoint']}")
        if len(states) != self.world.size:
            log.info(
                f"the checkpoint was written by {len(states)} process(es), this run has "
                f"{self.world.size}: training goes on, but with other data order and "
                "augmentations than an uninterrupted run"
            )
        self.history, self.best, self.start = resume["history"], resume["best"], resume["epoch"] + 1

    def train(self, progress: bool, on_epoch: Callable[[Row], None] | None) -> None:
        """Train the epochs left, saving each; `best` holds the kept epoch (`train.keep`)
        with its weights."""
        epoch, total = self.start, self.cfg.train.epochs
        try:
            for epoch in range(self.start, total + 1):
                row, train, scores = self._one_epoch(epoch, progress)
                self.history.append(row)
                # keep "last": every epoch replaces the one before (a schedule that anneals
                # ends on its best weights; a 5,000-image split would pick between near-equal
                # epochs by noise); "best": only a higher validation accuracy does.
                last = self.cfg.train.keep == "last"
                if last or scores["accuracy"] > self.best["val_accuracy"]:
                    acc, loss = scores["accuracy"], scores["loss"]
                    self.model.meta = {"epoch": epoch, "val_accuracy": acc, "val_loss": loss}
                    self.best = {**self.model.meta, "state": copy.deepcopy(self.model.state_dict())}
                self._save(epoch)
                log.info(
                    f"epoch {epoch:>3}/{total}  train loss {train['loss']:.4f} "
                    f"acc {100 * train['accuracy']:.2f}%  val loss {scores['loss']:.4f} "
                    f"acc {100 * scores['accuracy']:.2f}%  lr {row['lr']:.3g}  "
                    f"{row['seconds']:.1f}s"
                )
                if on_epoch is not None:
                    on_epoch(row)
        except BaseException as exc:
            self.runlog.close()
            # `best` has an epoch once any epoch finished (the first always improves on -1), even
            # when Ctrl-C lands after an epoch's files were written but before the next began.
            if isinstance(exc, KeyboardInterrupt) and "epoch" not in self.best:
                log.info(f"interrupted in epoch {epoch}, before any epoch finished: nothing saved")
            elif isinstance(exc, KeyboardInterrupt):
                nproc = f"--nproc {self.world.size} " if self.world.distributed else ""
                kept = "best model so far" if self.cfg.train.keep == "best" else "last model"
                log.info(
                    f"interrupted in epoch {self.history[-1]['epoch'] + 1}: the {kept} "
                    f"(epoch {self.best['epoch']}) is in {self.paths['model']}; continue "
                    f"with: mnistcnn train {nproc}--resume {self.paths['checkpoint']}"
                )
            raise

    def _one_epoch(self, epoch: int, progress: bool) -> tuple[Row, Row, Row]:
        """Train an epoch, validate, step a per-epoch schedule: the metrics row, train and val."""
        cfg, world, started = self.cfg, self.world, time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        per_step = cfg.sched.name in build.PER_STEP_SCHEDULERS
        speed = {"amp": cfg.train.amp, "channels_last": cfg.train.channels_last}
        if world.distributed:
            self.loader.batch_sampler.sampler.set_epoch(epoch)
        desc, steps = f"epoch {epoch}/{cfg.train.epochs}", len(self.loader)
        shown = {"file": sys.stderr, "disable": not progress, "leave": False, "dynamic_ncols": True}
        with tqdm(total=steps, desc=desc, **shown) as bar:
            train = loops.train_one_epoch(
                self.runner,
                self.loader,
                self.optimizer,
                self.loss_fn,
                device=self.device,
                augment=cfg.data.augment,  # augment_batch skips the parts set to 0
                generator=self.generators["augment"],
                scheduler=self.scheduler if per_step else None,
                log_every=cfg.train.log_every,
                progress=bar,
                epoch=epoch,
                on_log=self.runlog.step_logger(epoch, steps),
                graph=self.graph,
                **speed,
            )
        train = distributed.mean_over_ranks(train, world)
        # Validate rank 0's weights (the ones saved), each process a slice of the split.
        distributed.sync_buffers(self.model, world)
        val = self.splits.val
        part = Split(val.images[world.rank :: world.size], val.labels[world.rank :: world.size])
        scores = loops.evaluate(self.compiled, part, self.eval_batch, self.device, **speed)
        scores = distributed.mean_over_ranks(scores, world, weight=len(part))
        if self.scheduler is not None and not per_step:
            plateau = isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            self.scheduler.step(scores["loss"]) if plateau else self.scheduler.step()
        both = {"train": train, "val": scores}
        rounded = {f"{name}_{k}": round(v, 6) for name, m in both.items() for k, v in m.items()}
        seconds = round(time.perf_counter() - started, 2)
        return {"epoch": epoch, **rounded, "lr": lr, "seconds": seconds}, train, scores

    def _save(self, epoch: int) -> None:
        """Save the epoch: checkpoint (first: whoever finds the model finds it), model, metrics."""
        rngs = distributed.gather(rng_state(self.generators), self.world)
        improved = self.best["epoch"] == epoch
        if self.world.main:
            folder = self.runlog.folder
            checkpoint = {
                "format": 1,
                "config": config_mod.to_dict(self.cfg),
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "rng": rngs[0],  # one RNG state per training process follows as "rng_ranks"
                "best": self.best,
                "history": self.history,
                "run_dir": str(folder) if folder else None,
            }
            if len(rngs) > 1:
                checkpoint["rng_ranks"] = rngs
            atomic_write(self.paths["checkpoint"], lambda f: torch.save(checkpoint, f))
            if improved:
                save_model(self.model, self.paths["model"])
            write_csv(self.paths["metrics"], self.history)
        distributed.barrier(self.world)  # a process that dies later leaves this epoch saved
        self.runlog.epoch(self.history, self.paths["model"] if improved else None)

    def finish(self, started: float) -> Row:
        """Recount BatchNorm (`train.precise_bn`), calibrate and test the kept weights, save them
        with their results; the summary."""
        cfg, model, val, test = self.cfg, self.model, self.splits.val, self.splits.test
        atomic_write_text(self.paths["config"], config_mod.dump(cfg))
        model.load_state_dict(self.best.pop("state"))
        if cfg.train.precise_bn:
            loops.recount_batchnorm(
                model,
                self.splits.train,
                cfg.train.precise_bn,
                cfg.data.batch_size,
                self.device,
                channels_last=cfg.train.channels_last,
            )
        # BatchNorm folded once, for the calibration and the test.
        layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        inference = fuse(model).to(memory_format=layout)
        if cfg.train.precise_bn:  # the validation scores of the weights saved
            scores = loops.evaluate(inference, val, self.eval_batch, self.device)
            self.best.update(val_accuracy=scores["accuracy"], val_loss=scores["loss"])
        calibration = calibrate_model(inference, val.images, val.labels, self.eval_batch)
        train_seconds = time.perf_counter() - started  # as the benchmarks compare: all but the test
        # Tested in float32, as `eval` and `predict` run it: the score is the saved model's.
        logits = loops.predict_logits(
            inference, test, self.eval_batch, self.device, channels_last=cfg.train.channels_last
        )
        scores = loops.scores(logits, test.labels)
        model.meta = {
            **self.best,
            **calibration,
            "test_accuracy": scores["accuracy"],
            "test_loss": scores["loss"],
            "epochs": cfg.train.epochs,
            "train_seconds": round(train_seconds, 2),
            "parameters": count_parameters(model),
            "seed": cfg.train.seed,
            "torch": str(torch.__version__),
        }
        save_model(model, self.paths["model"])
        self.runlog.copy_model(self.paths["model"])
        self.runlog.finish(test.images, test.labels, logits, model.meta)
        self.runlog.close()
        folder = self.runlog.folder
        where = {"model": str(self.paths["model"]), "device": str(self.device)}
        return {**model.meta, **where, "run_dir": str(folder) if folder else None}
