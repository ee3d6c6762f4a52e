"""A tune file: a training config (every trial's base) plus its `search` section, built with
config's own `build` and `merge` (the same key and type errors); `search.space` as Spaces."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistcnn.config.build import (
    build,
    merge,
    override,
    parse_overrides,
    read_yaml_file,
    replace_config,
)
from mnistcnn.config.schema import Component, Config, check
from mnistcnn.errors import ConfigError

KINDS = ("uniform", "log_uniform", "int", "choice")
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "hyperband")
# metric -> Optuna direction; both are validation numbers: the test set never selects.
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}


def label(value: Any) -> Any:
    """A choice as the study stores it: a scalar Optuna takes, else its JSON (= YAML) text."""
    return value if isinstance(value, type(None) | bool | int | float | str) else json.dumps(value)


@dataclass(frozen=True)
class Space:
    """Where one config key is searched: a range (uniform, log_uniform, int) or a choice list."""

    key: str
    kind: str
    values: tuple[Any, ...]
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Any) -> Any:
        """Draw this key's value for `trial`, as the study stores it."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, self.labels())
        low, high = self.values
        if self.kind == "int":
            return trial.suggest_int(self.key, low, high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, low, high, step=self.step, log=self.log)

    def labels(self) -> list[Any]:
        """The choices as the study stores them."""
        return [label(v) for v in self.values]

    def value(self, stored: Any) -> Any:
        """The config value for a parameter as the study stores it."""
        labels = self.labels() if self.kind == "choice" else []
        return self.values[labels.index(stored)] if stored in labels else stored


@dataclass(frozen=True)
class SearchConfig:
    """The `search` section: what to vary, how to sample and prune, how long, what to maximize."""

    space: tuple[Space, ...] = ()
    study: str = "mnist"
    directory: str = "runs"
    storage: str | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    metric: str = "val_accuracy"
    n_trials: int | None = 20
    timeout: float | None = None
    seed: int = 0
    startup_trials: int = 3
    min_epochs: int = 1
    heartbeat: int = 30

    def __post_init__(self) -> None:
        for key, valid in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("metric", METRICS)):
            if (value := getattr(self, key)) not in valid:
                raise ConfigError(f"search.{key}: unknown {value!r}; valid: {', '.join(valid)}")
        check(bool(self.space), "search.space: name at least one key to search")
        folder = bool(self.study) and all(c.isalnum() or c in "._-" for c in self.study)
        check(folder, f"search.study: must be a folder name, not {self.study!r}")
        n, timeout = self.n_trials, self.timeout
        check(n is None or n >= 1, "search.n_trials must be >= 1 (or null: until the timeout)")
        check(timeout is None or timeout > 0, "search.timeout must be > 0 seconds (or null)")
        check(bool(n or timeout) or self.sampler == "grid", "search: set n_trials and/or timeout")
        for key, low in (("startup_trials", 0), ("min_epochs", 1), ("heartbeat", 1)):
            check(getattr(self, key) >= low, f"search.{key} must be >= {low}")
        ranges = [s.key for s in self.space if s.kind != "choice" and self.sampler == "grid"]
        check(not ranges, f"search.sampler grid needs a choice list for every key, not {ranges}")

    @property
    def direction(self) -> str:
        """`maximize` or `minimize`, from the metric."""
        return METRICS[self.metric]

    def run_dir(self) -> Path:
        """The study's folder: its SQLite database, trial outputs, best.yaml and plots."""
        return Path(self.directory) / self.study

    def storage_url(self, hide_password: bool = False) -> str:
        """The storage URL: `search.storage`, or SQLite in the run folder."""
        url = self.storage or f"sqlite:///{self.run_dir() / 'study.db'}"
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url) if hide_password else url


@dataclass(frozen=True)
class TuneConfig:
    """A whole tune file: the base training config and its search section."""

    base: Config
    search: SearchConfig


def load_tune_config(path: str | Path | None, overrides: Iterable[str] = ()) -> TuneConfig:
    """Defaults < the file's base sections < `--set`; its `search` section < `--set search.*`."""
    check(path is not None, "tune needs --config FILE: a training config plus a search section")
    raw = read_yaml_file(path)
    valid = [f.name for f in dataclasses.fields(Config)] + ["search"]
    for key in raw:
        check(key in valid, f"unknown key {key!r}; valid keys: {', '.join(valid)} ({path})")
    check("search" in raw, f"a tune file needs a search section ({path})")
    sets = list(overrides)
    search_sets = [s for s in sets if s.split("=", 1)[0].strip().startswith("search.")]
    search = raw.pop("search") or {}
    check(isinstance(search, Mapping), f"search: expected a mapping of keys, got {search!r}")
    search = merge(search, parse_overrides(search_sets).get("search", {}), by_name=False)
    # The file's sections go in as one layer of section-wide sets, so searched and fixed values
    # layer exactly as `--config` + `--set` do (a renamed component drops its old arguments).
    file_layer = [override(section, value) for section, value in raw.items()]
    base_sets = [s for s in sets if s not in search_sets]
    base = replace_config(replace_config(Config(), file_layer), base_sets)
    if "space" in search:
        search["space"] = parse_space(search["space"])
    return TuneConfig(base, build(SearchConfig, search, "search"))


def trial_config(tune: TuneConfig, params: Mapping[str, Any], output: str | Path) -> Config:
    """The base config with a trial's parameters (as the study stores them) as one `--set` layer."""
    decode = {s.key: s.value for s in tune.search.space}
    sets = [override(k, decode[k](v) if k in decode else v) for k, v in params.items()]
    return replace_config(tune.base, [*sets, override("train.output", output)])


def parse_space(raw: Any) -> tuple[Space, ...]:
    """The `search.space` mapping (nested or dotted keys) as checked Spaces."""
    check(isinstance(raw, Mapping), "search.space: expected a mapping of config keys to spaces")
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
    listed = isinstance(values, list) and bool(values)
    check(listed, f"{where}.{kind}: expected a list, got {values!r}")
    log, step = raw.get("log", kind == "log_uniform"), raw.get("step")
    if kind == "choice":
        plain = "log" not in raw and step is None
        check(plain, f"{where}: log and step are for ranges, not a choice")
        unique = len(set(map(repr, map(label, values)))) == len(values)
        check(unique, f"{where}.choice: the choices must differ, got {values!r}")
        return Space(key, kind, tuple(values))
    number = (int,) if kind == "int" else (int, float)  # by type(): a bool is no number here
    what = "integers" if kind == "int" else "numbers"
    pair = len(values) == 2 and all(type(v) in number for v in values)
    check(pair, f"{where}.{kind}: expected [low, high] {what}, got {values!r}")
    low, high = values
    check(low < high, f"{where}.{kind}: low must be < high, got {values!r}")
    check(isinstance(log, bool), f"{where}.log: expected true or false, got {log!r}")
    check(not log or low > 0, f"{where}: a log scale needs low > 0, got {values!r}")
    good_step = step is None or (type(step) in number and step > 0 and not log)
    check(good_step, f"{where}.step: expected a number > 0 on a linear scale, got {step!r}")
    if kind != "int":
        low, high = float(low), float(high)
    return Space(key, kind, (low, high), log=log, step=step)


def _check_key(key: str) -> None:
    """A searched key must name a config section's field, or a component's argument."""
    node: Any = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        hints = typing.get_type_hints(node)  # the fields, in order
        if part not in hints:
            where = ".".join(parts[:depth]) or "the config"
            raise ConfigError(
                f"search.space.{key}: {part!r} is not a key of {where}; valid: {', '.join(hints)}"
            )
        node = hints[part]
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
