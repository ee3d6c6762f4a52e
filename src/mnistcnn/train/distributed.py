"""Data-parallel training: `mnistcnn train --nproc N` (or torchrun) starts N processes, each a DDP
replica on its shard of every batch. `data.batch_size` is the global batch, split evenly, so the
recipe (learning rate included) is the same at any process count; rank 0 alone logs and writes."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mnistcnn.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:  # the process that logs and writes files
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def from_env(environ: dict[str, str] | None = None) -> World:
    """The World torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    env = os.environ if environ is None else environ
    try:
        world = World(
            int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
        )
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if not 0 <= world.rank < world.size:
        raise ConfigError(f"RANK {world.rank} is outside WORLD_SIZE {world.size}")
    return world


def per_rank_batch(batch_size: int, world: World) -> int:
    """Each process's share of the global batch; it must divide evenly."""
    if batch_size % world.size:
        raise ConfigError(
            f"data.batch_size {batch_size} is the global batch and must divide evenly over "
            f"{world.size} processes"
        )
    return batch_size // world.size


def local_device(device: torch.device, world: World) -> torch.device:
    """With several processes on CUDA, each uses the GPU of its local rank."""
    if world.distributed and device.type == "cuda":
        if world.local_rank >= (count := torch.cuda.device_count()):
            raise ConfigError(
                f"process {world.local_rank} on this machine has no GPU of its own ({count} "
                "here): start at most one process per GPU, or train on the CPU (--device cpu)"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(world: World, device: torch.device, timeout: float) -> Iterator[None]:
    """Join the process group (NCCL on CUDA, Gloo on CPU) for the block, in which rank 0 alone logs
    info lines and a collective's failure (another process died, hung or was stopped) becomes one
    line; no-op for one process."""
    # `timeout` bounds every collective: a hung or dead peer stops this one, never waits forever.
    if not world.distributed:
        yield
        return
    env, wait = os.environ, timedelta(seconds=timeout)
    # The rendezvous store of MASTER_ADDR:MASTER_PORT: torchrun's agent serves it (and keeps it
    # across restarts), else rank 0 does. Each restart gets its own key space in it, or the
    # new processes would find the dead ones' addresses.
    agent = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    host, port = env.get("MASTER_ADDR", "localhost"), int(env.get("MASTER_PORT", "29500"))
    store = dist.TCPStore(host, port, world.size, world.main and not agent, wait, multi_tenant=True)
    store = dist.PrefixStore(f"mnistcnn/attempt{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    group = {"rank": world.rank, "world_size": world.size, "timeout": wait}
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, **group)
    logger = logging.getLogger("mnistcnn")
    level = logger.level
    logger.setLevel(level if world.main else logging.WARNING)  # the others would repeat them
    try:
        try:
            yield
        except (dist.DistError, RuntimeError) as exc:
            text = str(exc)
            if not ("gloo" in text or isinstance(exc, dist.DistError)):
                raise
            reason = text.split("] ", 1)[-1].split(". ")[0]  # gloo: "[file:line] Read error ...."
            raise TrainingError(
                f"process {world.rank} lost contact with the other training processes ({reason}); "
                "another one probably failed: see its message"
            ) from None
        finally:
            logger.setLevel(level)
        # Leave together: a process that tears its connections down while another still works
        # (rank 0 tests and saves after training) can abort on a connection closed under it.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module to train: DDP around `model` when there are several processes."""
    if not world.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: nn.Module, world: World) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics), the ones rank 0 saves."""
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def barrier(world: World) -> None:
    """Wait until every process gets here."""
    if world.distributed:
        dist.barrier()


def gather(obj: Any, world: World) -> list[Any]:
    """Every process's `obj` on rank 0 (others get []); `[obj]` for one process."""
    if not world.distributed:
        return [obj]
    out: list[Any] | None = [None] * world.size if world.main else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def mean_over_ranks(values: dict[str, float], world: World, weight: float = 1) -> dict[str, float]:
    """The `weight`-weighted mean of each value over all processes."""
    if not world.distributed:
        return values
    packed = torch.tensor([*(v * weight for v in values.values()), weight], dtype=torch.float64)
    dist.all_reduce(packed)
    return {k: (packed[i] / packed[-1]).item() for i, k in enumerate(values)}


def restarted() -> bool:
    """Has torchrun's agent restarted this process's group after a failure?"""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"


def launch(nproc: int, argv: list[str], checkpoint: Path, max_restarts: int = 0) -> int:
    """Run `python -m mnistcnn ARGV` in `nproc` processes; 0, or the first failed one's code."""
    # If one fails, torchrun's agent stops the others (and, with `max_restarts`, starts them all
    # again: restarted, `train` resumes from the last finished epoch by itself).
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    for name, logger in logging.root.manager.loggerDict.items():  # the agent's own chatter
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    rdzv = {"run_id": str(uuid.uuid4()), "rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0"}
    config = LaunchConfig(1, 1, nproc, max_restarts=max_restarts, monitor_interval=0.5, **rdzv)
    try:
        elastic_launch(config, sys.executable)("-m", "mnistcnn", *argv)
    except SignalException as exc:  # the agent was interrupted: it has stopped the processes
        if exc.sigval == signal.SIGINT:  # Ctrl-C: rank 0 has said what is saved
            return 130
        raise TrainingError(f"training stopped by signal {exc.sigval.name}") from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code < 0:  # killed by a signal, so it could not say why itself
            message = f"training process {rank} died (signal {-code})"
            if checkpoint.is_file():
                resume = f"mnistcnn train --nproc {nproc} --resume {checkpoint}"
                message += f"; go on from the last finished epoch with: {resume}"
            raise TrainingError(message) from None
        return code  # the process printed its own error
    return 0
