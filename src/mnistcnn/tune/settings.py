"""A tune file: a training config (the base of every trial) plus its `search` section,
built with config's own `build` and `merge`, so the same key and type errors apply.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistcnn.config import Config, build, merge, parse_overrides, read_yaml_file, replace_config
from mnistcnn.errors import ConfigError
from mnistcnn.tune.space import Space, parse_space

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "hyperband")
# metric -> Optuna direction; both are validation numbers: the test set never selects.
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}


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

    def __post_init__(self) -> None:
        for key, valid in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("metric", METRICS)):
            if (value := getattr(self, key)) not in valid:
                raise ConfigError(f"search.{key}: unknown {value!r}; valid: {', '.join(valid)}")
        if not self.space:
            raise ConfigError("search.space: name at least one key to search")
        if not self.study or not all(c.isalnum() or c in "._-" for c in self.study):
            raise ConfigError(f"search.study: must be a folder name, not {self.study!r}")
        if self.n_trials is not None and self.n_trials < 1:
            raise ConfigError("search.n_trials must be >= 1 (or null: until the timeout)")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError("search.timeout must be > 0 seconds (or null)")
        if self.n_trials is None and self.timeout is None and self.sampler != "grid":
            raise ConfigError("search: set n_trials and/or timeout (a budget for the study)")
        if self.startup_trials < 0 or self.min_epochs < 1:
            raise ConfigError("search.startup_trials must be >= 0 and search.min_epochs >= 1")
        ranges = [s.key for s in self.space if s.kind != "choice"]
        if self.sampler == "grid" and ranges:
            raise ConfigError(
                f"search.sampler grid needs a choice list for every key; {ranges[0]} is a range"
            )

    @property
    def direction(self) -> str:
        """`maximize` or `minimize`, from the metric."""
        return METRICS[self.metric]

    def run_dir(self) -> Path:
        """The study's folder: its SQLite database, trial outputs, best.yaml and plots."""
        return Path(self.directory) / self.study

    def storage_url(self) -> str:
        """The storage URL: `search.storage`, or SQLite in the run folder."""
        return self.storage or f"sqlite:///{self.run_dir() / 'study.db'}"


@dataclass(frozen=True)
class TuneConfig:
    """A whole tune file: the base training config and its search section."""

    base: Config
    search: SearchConfig


def load_tune_config(path: str | Path | None, overrides: Iterable[str] = ()) -> TuneConfig:
    """Defaults < the file's base sections < `--set`; its `search` section < `--set search.*`."""
    if path is None:
        raise ConfigError("tune needs --config FILE: a training config plus a search section")
    raw = read_yaml_file(path)
    valid = [f.name for f in dataclasses.fields(Config)] + ["search"]
    for key in raw:
        if key not in valid:
            raise ConfigError(f"unknown key {key!r}; valid keys: {', '.join(valid)} ({path})")
    if "search" not in raw:
        raise ConfigError(f"a tune file needs a search section ({path})")
    sets = list(overrides)
    search_sets = [s for s in sets if s.split("=", 1)[0].strip().startswith("search.")]
    search = raw.pop("search") or {}
    if not isinstance(search, Mapping):
        raise ConfigError(f"search: expected a mapping of keys, got {search!r}")
    search = merge(search, parse_overrides(search_sets).get("search", {}), by_name=False)
    # The file's sections go in as one layer of section-wide sets, so searched and fixed values
    # layer exactly as `--config` + `--set` do (a renamed component drops its old arguments).
    file_layer = [f"{section}={json.dumps(value)}" for section, value in raw.items()]
    base_sets = [s for s in sets if s not in search_sets]
    base = replace_config(replace_config(Config(), file_layer), base_sets)
    if "space" in search:
        search["space"] = parse_space(search["space"])
    return TuneConfig(base, build(SearchConfig, search, "search"))


def trial_config(
    tune: TuneConfig, params: Mapping[str, Any], output: str | Path, extra: Iterable[str] = ()
) -> Config:
    """The base config with a trial's parameters (+ `extra` sets) as one `--set` layer."""
    spaces = {s.key: s for s in tune.search.space}
    sets = [
        f"{k}={json.dumps(spaces[k].value(v) if k in spaces else v)}" for k, v in params.items()
    ]
    sets += [f"train.output={json.dumps(str(output))}", *extra]
    return replace_config(tune.base, sets)
