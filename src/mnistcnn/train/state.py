"""What a run leaves behind and picks up again: its output paths, every RNG state, and the
resumable checkpoint (weights, optimizer, scheduler, RNGs, history) written after each epoch."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistcnn import config as config_mod
from mnistcnn.config import Config
from mnistcnn.errors import MnistCnnError


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


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The state of `generators` and of Python's, torch's and CUDA's global RNGs."""
    state = {name: g.get_state() for name, g in generators.items()}
    state["torch"] = torch.get_rng_state()
    state["python"] = random.getstate()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put back what `rng_state` took."""
    for name, g in generators.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def clone_state(model: nn.Module) -> dict[str, Any]:
    """A copy of the model's state_dict that later training steps leave alone."""
    return {
        k: v.detach().clone() if torch.is_tensor(v) else v for k, v in model.state_dict().items()
    }


def checkpoint(
    cfg: Config,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rngs: list[dict[str, Any]],
    best: dict[str, Any],
    history: list[dict[str, Any]],
    run_dir: Path | None,
) -> dict[str, Any]:
    """The resumable state after `epoch`, with one RNG state per training process (`rngs`)."""
    state = {
        "format": 1,
        "config": config_mod.to_dict(cfg),
        "epoch": epoch,
        "model": clone_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rngs[0],
        "best": best,
        "history": history,
        "run_dir": str(run_dir) if run_dir else None,
    }
    if len(rngs) > 1:
        state["rng_ranks"] = rngs
    return state
