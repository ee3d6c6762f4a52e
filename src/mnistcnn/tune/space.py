"""The search space: `search.space` of a tune file, one `Space` per config key searched,
a range (uniform, log_uniform, int, with optional log and step) or a choice list.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mnistcnn.config import Component, Config
from mnistcnn.errors import ConfigError

if typing.TYPE_CHECKING:
    import optuna

KINDS = ("uniform", "log_uniform", "int", "choice")
# Optuna stores categorical choices as None/bool/int/float/str only.
_SCALARS = (type(None), bool, int, float, str)


def label(value: Any) -> Any:
    """How a choice is stored in the study: itself if a scalar, else its JSON (= YAML) text."""
    return value if isinstance(value, _SCALARS) else json.dumps(value)


@dataclass(frozen=True)
class Space:
    """Where one config key is searched: a range (uniform, log_uniform, int) or a choice list."""

    key: str
    kind: str
    values: tuple[Any, ...]
    log: bool = False
    step: float | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw this key's value for `trial` (choices come back as the YAML values)."""
        if self.kind == "choice":
            return self.value(trial.suggest_categorical(self.key, self.labels()))
        low, high = self.values
        if self.kind == "int":
            return trial.suggest_int(self.key, low, high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, low, high, step=self.step, log=self.log)

    def labels(self) -> list[Any]:
        """The choices as the study stores them."""
        return [label(v) for v in self.values]

    def value(self, stored: Any) -> Any:
        """The config value for a parameter as the study stores it."""
        if self.kind == "choice":
            labels = self.labels()
            return self.values[labels.index(stored)] if stored in labels else stored
        return stored


def parse_space(raw: Any) -> tuple[Space, ...]:
    """The `search.space` mapping (nested or dotted keys) as checked Spaces."""
    if not isinstance(raw, Mapping):
        raise ConfigError("search.space: expected a mapping of config keys to spaces")
    spaces = tuple(_space(k, v) for k, v in _flatten(raw).items())
    for s in spaces:
        _check_key(s.key)
    return spaces


def _space(key: str, raw: Mapping[str, Any]) -> Space:
    where = f"search.space.{key}"
    kinds = [k for k in raw if k in KINDS]
    extra = [k for k in raw if k not in (*KINDS, "log", "step")]
    if len(kinds) != 1 or extra:
        bad = extra[0] if extra else ", ".join(kinds) or "nothing"
        raise ConfigError(
            f"{where}: expected one of {', '.join(KINDS)} (+ log, step for ranges), got {bad}"
        )
    kind = kinds[0]
    values = raw[kind]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{kind}: expected a list, got {values!r}")
    log, step = raw.get("log", kind == "log_uniform"), raw.get("step")
    if kind == "choice":
        if "log" in raw or step is not None:
            raise ConfigError(f"{where}: log and step are for ranges, not a choice")
        if len(set(map(repr, map(label, values)))) != len(values):
            raise ConfigError(f"{where}.choice: the choices must differ, got {values!r}")
        return Space(key, kind, tuple(values))
    number = int if kind == "int" else (int, float)
    if len(values) != 2 or not all(
        isinstance(v, number) and not isinstance(v, bool) for v in values
    ):
        what = "integers" if kind == "int" else "numbers"
        raise ConfigError(f"{where}.{kind}: expected [low, high] {what}, got {values!r}")
    low, high = values
    if not low < high:
        raise ConfigError(f"{where}.{kind}: low must be < high, got {values!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got {values!r}")
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, number) or step <= 0 or log
    ):
        raise ConfigError(f"{where}.step: expected a number > 0 on a linear scale, got {step!r}")
    if kind != "int":
        low, high = float(low), float(high)
    return Space(key, kind, (low, high), log=log, step=step)


def _check_key(key: str) -> None:
    """A searched key must name a config section's field, or a component's argument."""
    node: Any = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            where = ".".join(parts[:depth]) or "the config"
            raise ConfigError(
                f"search.space.{key}: {part!r} is not a key of {where}; valid: {', '.join(names)}"
            )
        node = typing.get_type_hints(node)[part]
        if node is Component or not dataclasses.is_dataclass(node):
            break  # a component takes any of its class's arguments, checked per trial
    if key in ("train.output", "train"):
        raise ConfigError(f"search.space.{key}: each trial's output is set by tune")


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Mapping[str, Any]]:
    """`{optim: {lr: {...}}}` and `{optim.lr: {...}}` are the same space."""
    out: dict[str, Mapping[str, Any]] = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if not isinstance(value, Mapping):
            raise ConfigError(f"search.space.{full}: expected a mapping like {{choice: [...]}}")
        if not value or not all(isinstance(v, Mapping) for v in value.values()):
            out[full] = value
        else:
            out.update(_flatten(value, full))
    return out
