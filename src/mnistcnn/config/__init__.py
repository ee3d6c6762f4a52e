"""The run configuration: a frozen, typed dataclass tree, read from YAML and `--set` overrides.

Precedence: dataclass defaults < YAML file < `--set section.key=value`. The defaults *are* the
base recipe (`configs/base.yaml` spells the same values). Unknown keys and wrong types raise
`ConfigError` naming the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnistcnn.errors import ConfigError


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


def _check(ok: bool, key: str, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {rule}")


DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"
FREEZE = ("none", "features")  # what `train.freeze` may stop training (see transfer.py)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of whole training batches: a random affine, then photo-style ink redraws."""

    degrees: float = 10.0
    translate: float = 0.1
    scale: float = 0.1
    ink: float = 0.75  # share of images redrawn as thresholded ink (see data.redraw_ink)

    def __post_init__(self) -> None:
        _check(0 <= self.degrees <= 180, "data.augment.degrees", "must be in [0, 180]")
        _check(0 <= self.translate < 1, "data.augment.translate", "must be in [0, 1)")
        _check(0 <= self.scale < 1, "data.augment.scale", "must be in [0, 1)")
        _check(0 <= self.ink <= 1, "data.augment.ink", "must be in [0, 1]")

    @property
    def affine(self) -> bool:
        return bool(self.degrees or self.translate or self.scale)

    @property
    def active(self) -> bool:
        return self.affine or bool(self.ink)


@dataclass(frozen=True)
class DataConfig:
    """Where MNIST lives and how it is split, batched, normalized and augmented."""

    root: str = "data"
    download: bool = True
    cache: bool = True
    val_size: int = 5000
    split_seed: int = 0
    subset: int = 0
    batch_size: int = 128
    eval_batch_size: int = 0
    mean: float = 0.1307
    std: float = 0.3081
    invert: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check(1 <= self.val_size < 60000, "data.val_size", "must be in [1, 59999]")
        _check(self.subset >= 0, "data.subset", "must be >= 0 (0 = the whole training split)")
        _check(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        _check(
            self.eval_batch_size >= 0,
            "data.eval_batch_size",
            "must be >= 0 (0 = sized to the CPU's caches, 1000 on a GPU)",
        )
        _check(self.std > 0, "data.std", "must be > 0")
        _check(
            not (self.invert and self.augment.active),
            "data.invert",
            "needs data.augment.degrees, translate, scale and ink at 0 (augmentation assumes "
            "a black background)",
        )


@dataclass(frozen=True)
class Component:
    """A thing chosen by name plus keyword arguments (a model, loss, optimizer or schedule)."""

    name: str | None
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, seed, device and where the model and the run folder go."""

    epochs: int = 20
    seed: int = 0
    device: str = "auto"
    output: str = "models/cnn.pth"
    threads: int = 0
    amp: bool = True
    compile: bool = False
    channels_last: bool = True
    log_every: int = 50
    run_dir: str | None = "runs"
    run_name: str | None = None
    dist_timeout: float = 300.0
    init_from: str | None = None
    freeze: str = "none"

    def __post_init__(self) -> None:
        _check(self.freeze in FREEZE, "train.freeze", f"must be one of {', '.join(FREEZE)}")
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.dist_timeout > 0, "train.dist_timeout", "must be > 0 (seconds)")
        _check(self.threads >= 0, "train.threads", "must be >= 0 (0 = torch's default)")
        _check(self.log_every >= 1, "train.log_every", "must be >= 1")
        _check(
            re.fullmatch(DEVICE_PATTERN, self.device) is not None,
            "train.device",
            f"must be auto, cpu, cuda, cuda:N or mps, not {self.device!r}",
        )
        _check(self.output.endswith(".pth"), "train.output", "must end with .pth")
        _check(
            self.run_name is None or re.fullmatch(r"[\w.-]+", self.run_name) is not None,
            "train.run_name",
            f"must be a folder name (letters, digits, . _ -), not {self.run_name!r}",
        )
        _check(self.run_name not in (".", ".."), "train.run_name", "must not be . or ..")


@dataclass(frozen=True)
class Config:
    """A whole run. The defaults are the base recipe (see configs/base.yaml for the reasons)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: Component = field(
        default_factory=lambda: Component("cnn", {"channels": (32, 64, 128), "dropout": 0.1})
    )
    loss: Component = field(
        default_factory=lambda: Component("CrossEntropyLoss", {"label_smoothing": 0.1})
    )
    optim: Component = field(
        default_factory=lambda: Component(
            "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
        )
    )
    sched: Component = field(
        default_factory=lambda: Component("OneCycleLR", {"max_lr": 0.1, "pct_start": 0.2})
    )
    train: TrainConfig = field(default_factory=TrainConfig)


# --- what each component name may be -------------------------------------------------------

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


def _one_of(key: str, name: object, valid: Iterable[str]) -> ConfigError:
    return ConfigError(f"{key}: unknown name {name!r}; valid: {', '.join(sorted(valid))}")


def _check_kwargs(key: str, cls: Any, kwargs: Mapping[str, Any], skip: int) -> dict[str, Any]:
    """Check keyword names against `cls`'s signature (its first `skip` parameters are filled in
    by the engine) and values against the type of each parameter's default, when it has one."""
    params = list(inspect.signature(cls).parameters.values())[skip:]
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    out = {}
    for name, value in kwargs.items():
        if name not in named:
            raise ConfigError(
                f"{key}.{name}: not an argument of {cls.__name__}; valid: {', '.join(named)}"
            )
        default = named[name].default
        kind = type(default) if isinstance(default, bool | int | float | str | tuple) else Any
        if kind in (int, float):  # a number default takes any number (momentum: 0 -> 0.9)
            if not isinstance(value, float | int) or isinstance(value, bool):
                raise ConfigError(f"{key}.{name}: expected a number, got {value!r}")
            kind = float if isinstance(value, float) or kind is float else int
        out[name] = coerce(value, kind, f"{key}.{name}")
    return out


# --- building the dataclasses from plain data ----------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp` (lists become tuples, ints floats) or raise ConfigError."""
    origin = typing.get_origin(tp) or (tp if tp in (tuple, list) else None)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of keys, got {value!r}")
        return _build(tp, value, key)
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return origin(coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, bool, str) and type(value) is tp:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key {full!r}; valid keys: {', '.join(names)}")
        if hints[key] is Component:
            values[key] = _component(full, value)
        else:
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
    if not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"{key}: keys must be strings")
    if key == "model":
        from mnistcnn.model import MODELS

        if name not in MODELS:
            raise _one_of(key, name, MODELS)
        cls = MODELS[name]
        _check_kwargs(key, cls, kwargs, skip=0)
        hints = typing.get_type_hints(cls.__init__)
        kwargs = {k: coerce(v, hints[k], f"{key}.{k}") for k, v in kwargs.items()}
    elif key == "sched" and name in (None, "none"):
        return Component(None, {})
    else:
        valid = {"loss": losses, "optim": optimizers, "sched": schedulers}[key]()
        if name not in valid:
            raise _one_of(key, name, valid)
        # The optimizer/scheduler's first argument (params/optimizer) is filled in by the engine.
        kwargs = _check_kwargs(key, valid[name], kwargs, skip=0 if key == "loss" else 1)
    return Component(name, kwargs)


# --- layers: defaults, file, overrides -----------------------------------------------------


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


def _merge(base: dict[str, Any], layer: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Merge `layer` onto `base`; a component whose name changes starts from empty kwargs."""
    out = dict(base)
    for key, value in layer.items():
        full = f"{where}.{key}" if where else str(key)
        old = out.get(key)
        renamed = isinstance(value, Mapping) and "name" in value and isinstance(old, Mapping)
        if renamed and old.get("name") != value["name"]:
            out[key] = dict(value)
        elif isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = _merge(old, value, full)
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
    if not isinstance(raw, dict):
        raise ConfigError(f"a config file must be a mapping of sections ({path})")
    return raw


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Validate plain data into a Config."""
    return _build(Config, raw, "")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file at `path` (if any), then `--set` overrides."""
    raw = to_dict(Config())
    if path is not None:
        raw = _merge(raw, read_yaml_file(path))
    raw = _merge(raw, parse_overrides(overrides))
    return from_dict(raw)


def replace_config(cfg: Config, overrides: Iterable[str]) -> Config:
    """`cfg` with `--set` overrides applied."""
    return from_dict(_merge(to_dict(cfg), parse_overrides(overrides)))


def dump(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
