"""What a run is built from: the device, the model's starting weights (`init_from`, `freeze`),
and the loss, optimizer, scheduler and mixed precision the config names by their torch names."""

from __future__ import annotations

import contextlib
import functools
import platform
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistcnn.checkpoint import load_state
from mnistcnn.config import build as config_mod
from mnistcnn.config.schema import DEVICE_PATTERN, Config
from mnistcnn.errors import CheckpointError, ConfigError
from mnistcnn.model.nets import NUM_CLASSES, DigitNet

# Schedulers that expect a step per batch; every other one steps once per epoch.
PER_STEP_SCHEDULERS = ("OneCycleLR", "CyclicLR")
# Layers listed per kind in init_from's mismatch error; more are counted, to keep it one line.
_SHOWN = 6


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """`auto` -> CUDA if available, else CPU; a device not here is an error naming `option`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(DEVICE_PATTERN, name):
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


def _shape(value: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, value.shape)) + ")"


def _layers(keys: list[str]) -> list[str]:
    """The distinct layers (module names) of state_dict keys, in order."""
    return list(dict.fromkeys(key.rpartition(".")[0] for key in keys))


def init_from(model: DigitNet, path: str | Path) -> str:
    """Copy the tensors (weights, BatchNorm statistics) of the model file at `path` into `model`;
    a line for the log. Options without weights (pool, activation) may differ."""
    state = load_state(path)
    if "_extra_state" not in state:
        raise CheckpointError(f"--init-from needs a model .pth saved by mnistcnn: {path}")
    own = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}
    theirs = {k: v for k, v in state.items() if torch.is_tensor(v)}
    shapes: dict[str, str] = {}
    for key, value in own.items():
        if key in theirs and theirs[key].shape != value.shape:
            layer, _, name = key.rpartition(".")
            shapes.setdefault(
                layer, f"{layer} ({name} {_shape(theirs[key])} in the file, {_shape(value)} here)"
            )
    found = [
        ("layers of other shapes", list(shapes.values())),
        ("layers missing in the file", _layers([k for k in own if k not in theirs])),
        ("layers not in this model", _layers([k for k in theirs if k not in own])),
    ]
    problems = [
        f"{kind}: {', '.join(items[:_SHOWN])}"
        + (f", and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
        for kind, items in found
        if items
    ]
    if problems:
        raise CheckpointError(
            f"--init-from {path}: the weights do not fit this model; " + "; ".join(problems)
        )
    model.load_state_dict(theirs, strict=False)  # all but `_extra_state`: the model's own
    return f"initialized all {len(theirs)} weight tensors from {path}"


def freeze(model: DigitNet, part: str) -> int:
    """Stop training `part` ("none" or "features"); returns the number of frozen parameters."""
    # BatchNorm statistics still update in training mode, adapting them to the new data's
    # contrast (AdaBN, Li et al. 2016): the cheapest useful change under a domain shift.
    if part == "none":  # else "features", as the config checked
        return 0
    model.features.requires_grad_(False)
    return sum(param.numel() for param in model.features.parameters())


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
    params = [p for p in model.parameters() if p.requires_grad]  # frozen ones stay out
    return _construct("optim", config_mod.optimizers()[cfg.optim.name], params, **cfg.optim.kwargs)


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


def cpu_vendor() -> str:
    """The CPU's maker as the processor names it (GenuineIntel, AuthenticAMD, ...), or ''."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.partition(":")[2].strip()
    return platform.processor()  # Windows names the maker there; elsewhere often ''


@functools.cache  # asked every training step; the answer never changes
def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision type that pays off on `device`, or None (stay in float32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu" or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None  # MPS, or a CPU without native bf16 (emulated: slower than float32)
    # AMX tiles multiply bf16, and oneDNN's bf16 convolutions beat float32 on AMD's AVX-512 BF16;
    # on an Intel Xeon with AVX-512 BF16 but no AMX they ran slower than float32's
    # (benchmarks/speed.py's "bf16 against float32" rows measure a machine).
    if "Intel" in cpu_vendor() and not torch.cpu._is_amx_tile_supported():
        return None
    return torch.bfloat16


def autocast(
    device: torch.device, enabled: bool, cache: bool = True
) -> contextlib.AbstractContextManager:
    """Mixed precision on `device` if `enabled` and it pays off there (see autocast_dtype);
    `cache`: keep each weight's cast copy for the context's duration."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)
