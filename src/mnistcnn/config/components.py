"""What a component may be: torch's optimizers, schedulers and losses by class name, and
the type each keyword argument takes (from the class's signature).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from mnistcnn.errors import ConfigError

# Losses that take (logits, class indices), the only pair the training loop produces.
LOSSES = ("CrossEntropyLoss", "MultiMarginLoss")


def _torch_classes(module: types.ModuleType, base: type) -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base and name[0] != "_"
    }


def optimizers() -> dict[str, type]:
    """Every optimizer class in `torch.optim`, by name."""
    import torch

    found = _torch_classes(torch.optim, torch.optim.Optimizer)
    # LBFGS needs a loss closure per step and SparseAdam sparse gradients: neither fits a CNN loop.
    for name in ("LBFGS", "SparseAdam"):
        found.pop(name, None)
    return found


def schedulers() -> dict[str, type]:
    """Every LR scheduler class in `torch.optim.lr_scheduler` usable from a config, by name."""
    from torch.optim import lr_scheduler

    found = _torch_classes(lr_scheduler, lr_scheduler.LRScheduler)
    found["ReduceLROnPlateau"] = lr_scheduler.ReduceLROnPlateau
    # These wrap other scheduler objects or Python callables, which YAML cannot express.
    for name in ("SequentialLR", "ChainedScheduler", "LambdaLR", "MultiplicativeLR"):
        found.pop(name, None)
    return found


def losses() -> dict[str, type]:
    """The `torch.nn` losses that fit a classifier's logits, by name."""
    import torch.nn

    return {name: getattr(torch.nn, name) for name in LOSSES}


def unknown_name(key: str, name: object, valid: Iterable[str]) -> ConfigError:
    """The error for a component name that is not one of `valid`."""
    return ConfigError(f"{key}: unknown name {name!r}; valid: {', '.join(sorted(valid))}")


def kwarg_types(
    key: str, cls: Any, kwargs: Mapping[str, Any], skip: int
) -> Iterator[tuple[str, Any, Any]]:
    """Each (name, value, type to coerce it to) of `kwargs` for `cls`, whose first `skip`
    parameters train fills in; a number default takes any number (momentum: 0 -> 0.9)."""
    params = list(inspect.signature(cls).parameters.values())[skip:]
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for name, value in kwargs.items():
        if name not in named:
            raise ConfigError(
                f"{key}.{name}: not an argument of {cls.__name__}; valid: {', '.join(named)}"
            )
        default = named[name].default
        kind = type(default) if isinstance(default, bool | int | float | str | tuple) else Any
        if kind in (int, float):
            if not isinstance(value, float | int) or isinstance(value, bool):
                raise ConfigError(f"{key}.{name}: expected a number, got {value!r}")
            kind = float if isinstance(value, float) or kind is float else int
        yield name, value, kind
