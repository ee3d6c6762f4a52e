"""What a run is built from: the device, seeded RNGs, and the loss, optimizer, scheduler and
mixed precision chosen by the config (components resolved by their torch names)."""

from __future__ import annotations

import contextlib
import functools
import random
import re
from typing import Any

import torch
from torch import nn

from mnistcnn import config as config_mod
from mnistcnn.config import Config
from mnistcnn.errors import ConfigError
from mnistcnn.model import NUM_CLASSES

# Schedulers that expect a step per batch; every other one steps once per epoch.
PER_STEP_SCHEDULERS = ("OneCycleLR", "CyclicLR")


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """`auto` -> CUDA if available, else CPU; a device not here is an error naming `option`."""
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
    """The mixed-precision type that pays off on `device`, or None (stay in float32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On a CPU only where the cores multiply bf16 natively (AVX-512 BF16, AMX): emulated, slower.
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision on `device` if `enabled` and it pays off there (see autocast_dtype)."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
