"""Model files (a self-describing state_dict, see `model.nets.DigitNet`): atomic writes; they and
training checkpoints read with `weights_only=True`, with one-line errors."""

from __future__ import annotations

import pickle
import pickletools
from pathlib import Path
from typing import Any

import torch

from mnistcnn.errors import CheckpointError
from mnistcnn.files import atomic_write
from mnistcnn.model.nets import DigitNet, model_from_state


def save_model(model: DigitNet, path: str | Path) -> None:
    """Atomically write the model's state_dict (with its description) to `path`."""
    cpu = {k: v.cpu() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: torch.save(cpu, f))


# Pickle opcodes that import or call Python objects; plain weights need none outside torch.
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _builds_objects(path: Path, exc: pickle.UnpicklingError) -> bool:
    """Whether the weights-only unpickler refused code-like content rather than garbage bytes."""
    if "GLOBAL" in str(exc):
        return True
    try:  # genops only parses opcodes; it never imports or calls anything
        opcodes = {op.name for op, _, _ in pickletools.genops(path.read_bytes())}
    except Exception:
        return False
    return bool(opcodes & _CODE_OPCODES)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a state_dict with `weights_only=True`: plain tensors and containers, never code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"model file is empty (0 bytes): {path}")
    unreadable = "not a readable PyTorch model file (truncated or corrupt?)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _builds_objects(path, exc):
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects, not only weights, and "
                "loading it could run code (torch.load with weights_only=True rejected it)"
            ) from None
        raise CheckpointError(f"{unreadable}: {path}") from None
    except Exception as exc:  # torch raises many kinds (KeyError, EOFError, ...) on garbage
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{unreadable}: {path} ({detail})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_model(path: str | Path, device: torch.device | str = "cpu") -> DigitNet:
    """Rebuild the model a `.pth` describes and load its weights, in eval mode."""
    state = load_state(path)
    try:
        model = model_from_state(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} ({path})") from None
    return model.to(device).eval()


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint: the `.ckpt`, the `.pth` saved beside it, or their folder."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.ckpt"))
        if len(found) != 1:
            raise CheckpointError(f"expected one .ckpt file in {path}, found {len(found)}")
        path = found[0]
    elif path.suffix == ".pth":
        path = path.with_suffix(".ckpt")
    state = load_state(path)
    keys = {"format", "config", "epoch", "model", "optimizer", "scheduler", "rng", "best"}
    if not keys <= state.keys():
        raise CheckpointError(f"not a resumable mnistcnn checkpoint: {path}")
    if state["format"] != 1:
        raise CheckpointError(f"checkpoint format {state['format']} is not supported: {path}")
    return {**state, "path": str(path)}
