"""Training and evaluation: `train_one_epoch`, `evaluate`, and `fit`, the one orchestrator.

The loops are functions of their inputs (model, batches, optimizer, device) and return metric
dicts. `fit` resolves the device once, builds everything from a Config, keeps the best weights
by validation accuracy (saved atomically as soon as they improve), and tests them at the end.
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnistcnn import config as config_mod
from mnistcnn.calibrate import calibrate_model
from mnistcnn.checkpoint import save_model, save_training_state
from mnistcnn.config import AugmentConfig, Config
from mnistcnn.data import (
    Split,
    augment_batch,
    default_cache_dir,
    eval_batches,
    invert,
    load_mnist,
    shard_loader,
    split_train_val,
    to_float,
    train_loader,
)
from mnistcnn.errors import ConfigError, MnistCnnError, TrainingError
from mnistcnn.files import atomic_write_text, write_csv
from mnistcnn.model import (
    NUM_CLASSES,
    DigitNet,
    build_model,
    count_batchnorms,
    count_parameters,
    fuse,
    inference_batch,
)
from mnistcnn.train import distributed, transfer
from mnistcnn.train.runlog import RunLog

# Schedulers that expect a step per batch; every other one steps once per epoch.
PER_STEP_SCHEDULERS = ("OneCycleLR", "CyclicLR")


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """`auto` -> CUDA if available, else CPU; an unknown or unavailable device is an error
    that names `option`, where the device was asked for."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(config_mod.DEVICE_PATTERN, name):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} is {name} but CUDA is not available here; use auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= (count := torch.cuda.device_count()):
        valid = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise ConfigError(f"{option} is {name} but this machine has {count} GPU(s): use {valid}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option} is mps but MPS is not available here; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global RNGs (weight init, dropout)."""
    random.seed(seed)
    torch.manual_seed(seed)


def _construct(section: str, cls: type, *args: Any, **kwargs: Any) -> Any:
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError, IndexError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"{section}: {cls.__name__}: {exc}") from None


def build_loss(cfg: Config) -> nn.Module:
    """The configured loss module, checked on a dummy batch (some arguments fail only there)."""
    loss_fn = _construct("loss", config_mod.losses()[cfg.loss.name], **cfg.loss.kwargs)
    try:
        value = loss_fn(torch.zeros(2, NUM_CLASSES), torch.zeros(2, dtype=torch.long))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"loss: {cfg.loss.name}: {exc}") from None
    if value.dim() != 0:
        raise ConfigError(f"loss: {cfg.loss.name} must reduce a batch to one number, not 'none'")
    return loss_fn


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The configured `torch.optim` optimizer over the model's parameters."""
    cls = config_mod.optimizers()[cfg.optim.name]
    params = [p for p in model.parameters() if p.requires_grad]  # frozen ones stay out
    return _construct("optim", cls, params, **cfg.optim.kwargs)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """The configured LR scheduler, or None. OneCycleLR's length and peak default to the run's."""
    if cfg.sched.name is None:
        return None
    kwargs = dict(cfg.sched.kwargs)
    if cfg.sched.name == "OneCycleLR":
        if not {"total_steps", "epochs", "steps_per_epoch"} & kwargs.keys():
            kwargs["total_steps"] = cfg.train.epochs * steps_per_epoch
        kwargs.setdefault("max_lr", optimizer.param_groups[0]["lr"])
    return _construct("sched", config_mod.schedulers()[cfg.sched.name], optimizer, **kwargs)


@functools.cache  # asked every training step; the answer never changes
def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision type that pays off on `device`, or None (stay in float32).

    CUDA: bf16 where supported, else fp16. CPU: bf16 only where the cores multiply it natively
    (AVX-512 BF16 or AMX: 1.3-2x faster training here); emulated, it would be slower.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision on `device` if `enabled` and it pays off there (see autocast_dtype)."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    device: torch.device,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    scheduler: Any = None,
    amp: bool = False,
    channels_last: bool = False,
    log_every: int = 50,
    progress: tqdm | None = None,
    epoch: int = 1,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """One pass over `batches` of (uint8 images, labels); returns mean loss and accuracy.

    `scheduler`, if given, steps after every batch. Losses stay on the device and are checked
    for NaN/inf (and shown) every `log_every` steps, so the loop does not sync each batch.
    At those steps `on_log(step, {loss, accuracy, lr, grad_norm})` gets the window's means and
    the gradient norm of that step (computed only then).
    """
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    losses: list[torch.Tensor] = []
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    checked = 0
    window = (0, 0)  # (correct, seen) at the last check, for the window's accuracy
    grad_norm = torch.zeros(())

    def check(upto: int, log: bool) -> None:
        nonlocal window
        recent = torch.stack(losses[checked:upto])
        if not torch.isfinite(recent).all():
            batch = checked + int((~torch.isfinite(recent)).nonzero()[0]) + 1
            raise TrainingError(
                f"loss became {recent[batch - checked - 1].item()} at epoch {epoch}, batch "
                f"{batch}; training stopped. Try a smaller learning rate (optim.lr)"
            )
        if progress is not None:
            progress.set_postfix(
                loss=f"{recent.mean().item():.4f}", acc=f"{correct.item() / seen:.4f}"
            )
            progress.update(upto - checked)
        if log and on_log is not None:
            right = correct.item()
            on_log(
                upto,
                {
                    "loss": recent.mean().item(),
                    "accuracy": (right - window[0]) / max(seen - window[1], 1),
                    "lr": optimizer.param_groups[0]["lr"],
                    "grad_norm": grad_norm.item(),
                },
            )
            window = (right, seen)

    for step, (images, labels) in enumerate(batches, 1):
        images = to_float(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        if augment is not None:
            images = augment_batch(images, augment, generator)
        images = images.contiguous(memory_format=memory_format)
        with autocast(device, amp):
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if on_log is not None and step % log_every == 0:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grad_norm = nn.utils.get_total_norm(grads)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach())
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        if step % log_every == 0:
            check(step, log=True)
            checked = step
    if len(losses) > checked:
        check(len(losses), log=False)
    return {"loss": torch.stack(losses).mean().item(), "accuracy": correct.item() / seen}


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    split: Split,
    batch_size: int,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits (N, 10) for a whole split, streamed in batches of `batch_size` images (0: sized to
    the CPU's caches, `inference_batch`). A DigitNet with BatchNorms runs as a copy with them
    folded into the layers before them (`fuse`): same logits, less work; one already folded
    runs as it is."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(model, DigitNet) and count_batchnorms(model):
        model = fuse(model).to(memory_format=memory_format)
    batch_size = batch_size or inference_batch(model, device)
    outputs = []
    for images, _ in eval_batches(split, batch_size):
        images = to_float(images.to(device, non_blocking=True)).contiguous(
            memory_format=memory_format
        )
        with autocast(device, amp):
            outputs.append(model(images).float())
    return torch.cat(outputs)


def evaluate(
    model: nn.Module, split: Split, batch_size: int, device: torch.device, **kwargs: Any
) -> dict[str, float]:
    """Cross-entropy loss and accuracy of `model` on `split`."""
    return scores(predict_logits(model, split, batch_size, device, **kwargs), split.labels)


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Cross-entropy loss and accuracy of `logits` against `labels`."""
    labels = labels.to(logits.device)
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
    }


def output_paths(cfg: Config) -> dict[str, Path]:
    """Where a run writes: the model, its resumable checkpoint, resolved config and metrics."""
    model = Path(cfg.train.output)
    return {
        "model": model,
        "checkpoint": model.with_suffix(".ckpt"),
        "config": model.with_suffix(".yaml"),
        "metrics": model.with_suffix(".metrics.csv"),
    }


def check_output(cfg: Config, overwrite: bool) -> None:
    """Refuse to replace an existing model file unless told to."""
    model = output_paths(cfg)["model"]
    if model.exists() and not overwrite:
        raise MnistCnnError(
            f"{model} already exists; pass --overwrite to replace it "
            "or --set train.output=OTHER.pth"
        )


def _rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    state = {name: g.get_state() for name, g in generators.items()}
    state["torch"] = torch.get_rng_state()
    state["python"] = random.getstate()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    for name, g in generators.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _clone_state(model: nn.Module) -> dict[str, Any]:
    return {
        k: v.detach().clone() if torch.is_tensor(v) else v for k, v in model.state_dict().items()
    }


def fit(
    cfg: Config,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train a model as `cfg` says, save the best-by-validation weights, test them; the summary.

    `on_epoch(row)` is called with each epoch's metrics row once its files are saved (a tuner
    may raise there to stop the run early).

    After every epoch a resumable checkpoint (weights, optimizer, scheduler, every RNG state)
    is written atomically beside the model; `resume` (as `load_training_state` returns it)
    continues from it and ends with the same weights as an uninterrupted run, on CPU.

    Started by torchrun (see distributed.py), each process trains a DistributedDataParallel
    replica on its shard of the data; metrics are averaged over the processes, and only rank 0
    logs and writes files. The other ranks return an empty summary.
    """
    world = distributed.from_env()
    device = distributed.local_device(resolve_device(cfg.train.device), world)
    with (
        distributed.process_group(world, device, cfg.train.dist_timeout),
        distributed.contact(world),
    ):
        return _train(
            cfg,
            world,
            device,
            overwrite=overwrite,
            progress=progress and world.main,
            log=log if world.main else _quiet,
            resume=resume,
            on_epoch=on_epoch,
        )


def _quiet(_: str) -> None:
    """The log of every process but rank 0."""


def _train(
    cfg: Config,
    world: distributed.World,
    device: torch.device,
    *,
    overwrite: bool,
    progress: bool,
    log: Callable[[str], None],
    resume: dict[str, Any] | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    paths = output_paths(cfg)
    check_output(cfg, overwrite or resume is not None)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)

    started = time.perf_counter()
    cache = default_cache_dir() if cfg.data.cache else None
    train_split, val_split = split_train_val(
        load_mnist(cfg.data.root, train=True, download=cfg.data.download, cache=cache), cfg.data
    )
    test_split = load_mnist(cfg.data.root, train=False, download=cfg.data.download, cache=cache)
    if cfg.data.invert:
        train_split, val_split, test_split = map(invert, (train_split, val_split, test_split))
    train_split, val_split, test_split = (
        s.to(device) for s in (train_split, val_split, test_split)
    )

    model = build_model(cfg.model.name, dict(cfg.model.kwargs), cfg.data.mean, cfg.data.std)
    if cfg.train.init_from and resume is None:
        log(transfer.init_from(model, cfg.train.init_from))
    transfer.freeze(model, cfg.train.freeze)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    eval_batch = cfg.data.eval_batch_size or inference_batch(model, device)
    compiled = torch.compile(model) if cfg.train.compile else model
    runner = distributed.wrap(compiled, world, device)  # DDP when several processes train
    loss_fn = build_loss(cfg)
    optimizer = build_optimizer(cfg, model)
    # Each process draws its own augmentations (and dropout masks); rank 0 draws the same ones
    # as a single process.
    generators = {
        "order": torch.Generator().manual_seed(cfg.train.seed),
        "augment": torch.Generator(device).manual_seed(cfg.train.seed + 1 + (world.rank << 32)),
    }
    if world.rank:
        torch.manual_seed(cfg.train.seed + (world.rank << 32))
    if world.distributed:
        batch = distributed.per_rank_batch(cfg.data.batch_size, world)
        loader = shard_loader(train_split, batch, cfg.train.seed, world.rank, world.size)
    else:
        loader = train_loader(train_split, cfg.data.batch_size, generators["order"])
    scheduler = build_scheduler(cfg, optimizer, len(loader))
    per_step = cfg.sched.name in PER_STEP_SCHEDULERS
    speed = {"amp": cfg.train.amp, "channels_last": cfg.train.channels_last}

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_accuracy": -1.0}
    start = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        # One RNG state per process that wrote the checkpoint (one: no "rng_ranks").
        states = resume.get("rng_ranks") or [resume["rng"]]
        _set_rng_state(states[world.rank % len(states)], generators)
        history, best, start = resume["history"], resume["best"], resume["epoch"] + 1
        log(f"resuming after epoch {resume['epoch']} from {paths['checkpoint']}")
        if len(states) != world.size:
            log(
                f"the checkpoint was written by {len(states)} process(es), this run has "
                f"{world.size}: training goes on, but with other data order and augmentations "
                "than an uninterrupted run"
            )
    processes = f"; {world.size} processes, global batch {cfg.data.batch_size}"
    log(
        f"model {cfg.model.name}: {count_parameters(model):,} parameters; "
        f"device {device}{processes if world.distributed else ''}; "
        f"{len(train_split)} train / {len(val_split)} val / {len(test_split)} test images"
    )
    run_step = len(loader) * (start - 1)  # the global step training resumes after
    runlog = (
        RunLog.open(
            cfg, log=log, resume=None if resume is None else {**resume, "run_step": run_step}
        )
        if world.main
        else RunLog(None, None, [])
    )
    runlog.graph(model, to_float(test_split.images[:1]))
    epoch = start
    try:
        for epoch in range(start, cfg.train.epochs + 1):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            if world.distributed:
                loader.batch_sampler.sampler.set_epoch(epoch)
            with tqdm(
                total=len(loader),
                desc=f"epoch {epoch}/{cfg.train.epochs}",
                file=sys.stderr,
                disable=not progress,
                leave=False,
                dynamic_ncols=True,
            ) as bar:
                train = train_one_epoch(
                    runner,
                    loader,
                    optimizer,
                    loss_fn,
                    device=device,
                    augment=cfg.data.augment,  # augment_batch skips the parts set to 0
                    generator=generators["augment"],
                    scheduler=scheduler if per_step else None,
                    log_every=cfg.train.log_every,
                    progress=bar,
                    epoch=epoch,
                    on_log=runlog.step_logger(epoch, len(loader)),
                    **speed,
                )
            train = distributed.mean_over_ranks(train, world)
            # Validate rank 0's weights (the ones saved), each process a slice of the split.
            distributed.sync_buffers(model, world)
            part = slice(world.rank, None, world.size)
            val_part = Split(val_split.images[part], val_split.labels[part])
            val = evaluate(compiled, val_part, eval_batch, device, **speed)
            val = distributed.mean_over_ranks(val, world, weight=len(val_part))
            if scheduler is not None and not per_step:
                is_plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
                scheduler.step(val["loss"]) if is_plateau else scheduler.step()
            row = {
                "epoch": epoch,
                "train_loss": round(train["loss"], 6),
                "train_accuracy": round(train["accuracy"], 6),
                "val_loss": round(val["loss"], 6),
                "val_accuracy": round(val["accuracy"], 6),
                "lr": lr,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            history.append(row)
            improved = val["accuracy"] > best["val_accuracy"]
            if improved:
                summary = {"epoch": epoch, "val_accuracy": val["accuracy"], "val_loss": val["loss"]}
                model.meta = dict(summary)
                best = {**summary, "state": _clone_state(model)}
            rng = distributed.gather(_rng_state(generators), world)
            if world.main:
                state = {
                    "format": 1,
                    "config": config_mod.to_dict(cfg),
                    "epoch": epoch,
                    "model": _clone_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": rng[0],
                    "best": best,
                    "history": history,
                    "run_dir": str(runlog.folder) if runlog.folder else None,
                }
                if world.distributed:
                    state["rng_ranks"] = rng
                # The checkpoint first: whoever finds the model file also finds a checkpoint.
                save_training_state(paths["checkpoint"], state)
                if improved:
                    save_model(model, paths["model"])
                write_csv(paths["metrics"], history)
            distributed.barrier(world)  # a process that dies later leaves this epoch saved
            runlog.epoch(row, history, paths["model"] if best["epoch"] == epoch else None)
            log(
                f"epoch {epoch:>3}/{cfg.train.epochs}  train loss {train['loss']:.4f} "
                f"acc {100 * train['accuracy']:.2f}%  val loss {val['loss']:.4f} "
                f"acc {100 * val['accuracy']:.2f}%  lr {lr:.3g}  {row['seconds']:.1f}s"
            )
            if on_epoch is not None:
                on_epoch(row)
    except KeyboardInterrupt:
        # `best` has an epoch once any epoch finished (the first always improves on -1), even
        # when Ctrl-C lands after an epoch's files were written but before the next began.
        if "epoch" in best:
            log(
                f"interrupted in epoch {history[-1]['epoch'] + 1}: the best model so far "
                f"(epoch {best['epoch']}) "
                f"is in {paths['model']}; continue with: mnistcnn train "
                f"{f'--nproc {world.size} ' if world.distributed else ''}"
                f"--resume {paths['checkpoint']}"
            )
        else:
            log(f"interrupted in epoch {epoch}, before any epoch finished: nothing saved")
        runlog.close()
        raise
    except BaseException:
        runlog.close()
        raise
    if not world.main:
        return {}
    atomic_write_text(paths["config"], config_mod.dump(cfg))

    model.load_state_dict(best.pop("state"))
    # BatchNorm folded once, for the calibration and the test.
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    inference = fuse(model).to(memory_format=layout)
    # Temperatures for honest probabilities (plain and TTA), val ECE before/after.
    calibration = calibrate_model(inference, val_split.images, val_split.labels, eval_batch)
    # Training time as the benchmarks compare it: everything but the final test.
    train_seconds = time.perf_counter() - started
    # Tested in float32, as `eval` and `predict` run it: the score is the saved model's.
    logits = predict_logits(
        inference,
        test_split,
        eval_batch,
        device,
        channels_last=cfg.train.channels_last,
    )
    test = scores(logits, test_split.labels)
    model.meta = {
        **best,
        **calibration,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "epochs": cfg.train.epochs,
        "train_seconds": round(train_seconds, 2),
        "parameters": count_parameters(model),
        "torch": str(torch.__version__),
    }
    save_model(model, paths["model"])
    runlog.copy_model(paths["model"])
    runlog.finish(test_split.images, test_split.labels, logits, model.meta)
    runlog.close()
    run_dir = str(runlog.folder) if runlog.folder else None
    return {**model.meta, "model": str(paths["model"]), "device": str(device), "run_dir": run_dir}
