"""A Config from layers of plain data (defaults < YAML file < `--set`) and back to YAML; the
torch classes a component may name. Bad keys, names and types raise ConfigError."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mnistcnn.config.schema import Component, Config, check
from mnistcnn.errors import ConfigError

# Losses that take (logits, class indices), the only pair the training loop produces.
LOSSES = ("CrossEntropyLoss", "MultiMarginLoss")


def _torch_classes(module: types.ModuleType, base: type, drop: tuple[str, ...]) -> dict:
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base
        if name[0] != "_" and name not in drop
    }


def optimizers() -> dict[str, type]:
    """Every optimizer class in `torch.optim`, by name."""
    import torch

    # LBFGS needs a loss closure per step and SparseAdam sparse gradients: neither fits a CNN loop.
    return _torch_classes(torch.optim, torch.optim.Optimizer, ("LBFGS", "SparseAdam"))


def schedulers() -> dict[str, type]:
    """Every LR scheduler class in `torch.optim.lr_scheduler` usable from a config, by name."""
    from torch.optim import lr_scheduler

    # These wrap other scheduler objects or Python callables, which YAML cannot express.
    drop = ("SequentialLR", "ChainedScheduler", "LambdaLR", "MultiplicativeLR")
    return _torch_classes(lr_scheduler, lr_scheduler.LRScheduler, drop)


def losses() -> dict[str, type]:
    """The `torch.nn` losses that fit a classifier's logits, by name."""
    import torch.nn

    return {name: getattr(torch.nn, name) for name in LOSSES}


class _Loader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader that also reads `1e-3` as a float (YAML 1.1 reads a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML safely: no tags that build Python objects; errors name the place."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark is not None else where
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem} ({at})") from None


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp` (lists become tuples, ints floats) or raise ConfigError."""
    origin = typing.get_origin(tp) or (tp if tp in (tuple, list) else None)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):  # the schemas' unions are all `X | None`
        (arg,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else coerce(value, arg, key)
    if tp is Component:
        return _component(key, value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # already built (tune's search spaces)
            return value
        check(isinstance(value, Mapping), f"{key}: expected a mapping of keys, got {value!r}")
        return build(tp, value, key)
    if origin in (tuple, list):
        check(isinstance(value, list | tuple), f"{key}: expected a list, got {value!r}")
        item = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        return origin(coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, bool, str) and type(value) is tp:
        return value
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    raise ConfigError(f"{key}: expected {name}, got {value!r}")


def build(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    """Dataclass `cls` from plain data; keys are named `where.key` in errors."""
    hints = typing.get_type_hints(cls)  # the fields, in order: the schemas have no ClassVar
    values = {}
    for key, value in raw.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in hints:
            raise ConfigError(f"unknown key {full!r}; valid keys: {', '.join(hints)}")
        values[key] = coerce(value, hints[key], full)
    return cls(**values)


def _component(key: str, raw: Any) -> Component:
    if raw is None:
        raw = {"name": None}
    if not isinstance(raw, Mapping) or "name" not in raw:
        raise ConfigError(f"{key}: expected a mapping with a 'name' key, got {raw!r}")
    name = raw["name"]
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{key}.name: expected a name (a string), got {name!r}")
    kwargs = {k: v for k, v in raw.items() if k != "name"}
    check(all(isinstance(k, str) for k in kwargs), f"{key}: keys must be strings")
    if key == "sched" and name in (None, "none"):
        return Component(None, {})
    if key == "model":
        from mnistcnn.model.nets import MODELS

        valid = MODELS
    else:
        valid = {"loss": losses, "optim": optimizers, "sched": schedulers}[key]()
    if name not in valid:
        raise ConfigError(f"{key}: unknown name {name!r}; valid: {', '.join(sorted(valid))}")
    cls = valid[name]
    # The optimizer/scheduler's first argument (params/optimizer) is filled in by train.
    skip = 1 if key in ("optim", "sched") else 0
    params = list(inspect.signature(cls).parameters.values())[skip:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {p.name: p.default for p in params if p.kind in kinds}
    checked = {}
    for arg, value in kwargs.items():
        where = f"{key}.{arg}"
        if arg not in named:
            raise ConfigError(
                f"{where}: not an argument of {cls.__name__}; valid: {', '.join(named)}"
            )
        checked[arg] = coerce(value, _argument_type(where, value, named[arg]), where)
    if key == "model":  # a model's arguments take the types its __init__ declares
        hints = typing.get_type_hints(cls.__init__)
        checked = {k: coerce(v, hints[k], f"{key}.{k}") for k, v in kwargs.items()}
    return Component(name, checked)


def _argument_type(key: str, value: Any, default: Any) -> Any:
    """The type an argument takes, from its default; a number takes any number (momentum 0)."""
    kind = type(default) if isinstance(default, bool | int | float | str | tuple) else Any
    if kind not in (int, float):
        return kind
    if not isinstance(value, float | int) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    return float if isinstance(value, float) or kind is float else int


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain YAML-able data, components flattened to `{name: ..., **kwargs}`."""

    def plain(value: Any) -> Any:
        if isinstance(value, Component):
            return {"name": value.name, **{k: plain(v) for k, v in value.kwargs.items()}}
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def merge(base: Mapping[str, Any], layer: Mapping[str, Any], by_name: bool = True) -> dict:
    """`layer` merged onto `base`; with `by_name`, a new `name` drops the old kwargs."""
    out = dict(base)
    for key, value in layer.items():
        old = out.get(key)
        both = isinstance(old, Mapping) and isinstance(value, Mapping)
        if both and by_name and "name" in value and old.get("name") != value["name"]:
            out[key] = dict(value)
        elif both:
            out[key] = merge(old, value, by_name)
        else:
            out[key] = value
    return out


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn `["optim.lr=0.01", ...]` into a nested mapping; values are parsed as YAML."""
    layer: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        node = layer
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is set to a value above")
        node[parts[-1]] = parse_yaml(text, f"--set {key}")
    return layer


def override(key: str, value: Any) -> str:
    """The `--set` item that gives `key` exactly `value`: JSON-quoted, which YAML reads back
    (a path with ': ' or '#' in it would not parse bare)."""
    return f"{key}={json.dumps(value, default=str)}"


def read_yaml_file(path: str | Path) -> dict[str, Any]:
    """Read a config file into plain data: a mapping of sections."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        return {}
    check(isinstance(raw, dict), f"a config file must be a mapping of sections ({path})")
    return raw


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Validate plain data into a Config."""
    return build(Config, raw, "")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file at `path` (if any), then `--set` overrides."""
    raw = to_dict(Config())
    if path is not None:
        raw = merge(raw, read_yaml_file(path))
    return from_dict(merge(raw, parse_overrides(overrides)))


def replace_config(cfg: Config, overrides: Iterable[str]) -> Config:
    """`cfg` with `--set` overrides applied."""
    return from_dict(merge(to_dict(cfg), parse_overrides(overrides)))


def dump(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
