"""Transfer learning: start a new model from a saved model's weights (`init_from`, which lists
the layers that differ when they do not fit), and freeze the feature extractor (`freeze`)."""

from __future__ import annotations

from pathlib import Path

import torch

from mnistcnn.checkpoint import load_state
from mnistcnn.errors import CheckpointError, ConfigError
from mnistcnn.model import DigitNet

# Listed per kind in the mismatch error; more are counted, not named, to keep it one line.
_SHOWN = 6


def _shape(value: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, value.shape)) + ")"


def _layers(keys: list[str]) -> list[str]:
    """The distinct layers (module names) of state_dict keys, in order."""
    return list(dict.fromkeys(key.rpartition(".")[0] for key in keys))


def _listing(kind: str, items: list[str]) -> str:
    more = f", and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"{kind}: {', '.join(items[:_SHOWN])}{more}"


def mismatches(model: DigitNet, state: dict[str, object]) -> list[str]:
    """Why `state`'s tensors do not load into `model`: a phrase per kind of mismatch (or none)."""
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
    return [_listing(kind, items) for kind, items in found if items]


def init_from(model: DigitNet, path: str | Path) -> str:
    """Copy the tensors (weights, BatchNorm statistics) of the model file at `path` into `model`;
    a line for the log. Options without weights (pool, activation) may differ."""
    state = load_state(path)
    if "_extra_state" not in state:
        raise CheckpointError(f"--init-from needs a model .pth saved by mnistcnn: {path}")
    problems = mismatches(model, state)
    if problems:
        raise CheckpointError(
            f"--init-from {path}: the weights do not fit this model; " + "; ".join(problems)
        )
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if torch.is_tensor(value):
                value.copy_(tensors[key])
    return f"initialized all {len(tensors)} weight tensors from {path}"


def freeze(model: DigitNet, part: str) -> int:
    """Stop training `part` ("none" or "features"); returns the number of frozen parameters."""
    # BatchNorm statistics still update in training mode, adapting them to the new data's
    # contrast (AdaBN, Li et al. 2016): the cheapest useful change under a domain shift.
    if part == "none":
        return 0
    if part != "features":
        raise ConfigError(f"train.freeze: {part!r} is not one of none, features")
    frozen = 0
    for param in model.features.parameters():
        param.requires_grad_(False)
        frozen += param.numel()
    return frozen
