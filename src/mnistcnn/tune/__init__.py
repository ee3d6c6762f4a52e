"""Hyperparameter search on Optuna: `mnistcnn tune`.

Owns the `search` section of a tune YAML (spaces, sampler, pruner, budget, metric), the trial
objective (one `engine.fit` per trial, its validation metric reported each epoch so a pruner can
stop it), worker processes that share one study in RDB storage (SQLite in the run folder, or a
server URL), and the study's report: top trials, importances, `best.yaml` and plots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistcnn.config import (
    Component,
    Config,
    dump,
    parse_overrides,
    read_yaml_file,
    replace_config,
)
from mnistcnn.errors import ConfigError, MnistCnnError

if typing.TYPE_CHECKING:
    import optuna

KINDS = ("uniform", "log_uniform", "int", "choice")
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "hyperband")
# metric -> Optuna direction; both are validation numbers: the test set never selects.
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
# Optuna stores categorical choices as None/bool/int/float/str only.
_SCALARS = (type(None), bool, int, float, str)


# --- the search section ----------------------------------------------------------------------


def _label(value: Any) -> Any:
    """How a choice is stored in the study: itself if a scalar, else its JSON (= YAML) text."""
    if isinstance(value, _SCALARS):
        return value
    return json.dumps(value)


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
            labels = [_label(v) for v in self.values]
            picked = trial.suggest_categorical(self.key, labels)
            return self.values[labels.index(picked)]
        return self.value(self._draw(trial))

    def _draw(self, trial: optuna.Trial) -> Any:
        low, high = self.values
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(self.key, low, high, step=step, log=self.log)
        return trial.suggest_float(self.key, low, high, step=self.step, log=self.log)

    def value(self, stored: Any) -> Any:
        """The config value for a parameter as the study stores it."""
        if self.kind == "choice":
            labels = [_label(v) for v in self.values]
            return self.values[labels.index(stored)] if stored in labels else stored
        return stored


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
        labels = [_label(v) for v in values]
        if len(set(map(repr, labels))) != len(labels):
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
        def one_of(key: str, value: Any, valid: Iterable[str]) -> None:
            if value not in valid:
                raise ConfigError(f"search.{key}: unknown {value!r}; valid: {', '.join(valid)}")

        one_of("sampler", self.sampler, SAMPLERS)
        one_of("pruner", self.pruner, PRUNERS)
        one_of("metric", self.metric, list(METRICS))
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


def _search_from_dict(raw: Any) -> SearchConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"search: expected a mapping of keys, got {raw!r}")
    names = [f.name for f in dataclasses.fields(SearchConfig)]
    hints = typing.get_type_hints(SearchConfig)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"unknown key 'search.{key}'; valid keys: {', '.join(names)}")
        if key == "space":
            if not isinstance(value, Mapping):
                raise ConfigError("search.space: expected a mapping of config keys to spaces")
            spaces = [_space(k, v) for k, v in _flatten(value).items()]
            for s in spaces:
                _check_key(s.key)
            values[key] = tuple(spaces)
            continue
        tp = hints[key]
        allowed = typing.get_args(tp) or (tp,)
        if value is None and type(None) in allowed:
            values[key] = None
        elif float in allowed and isinstance(value, int | float) and not isinstance(value, bool):
            values[key] = float(value)
        elif any(type(value) is t for t in allowed):
            values[key] = value
        else:
            kinds = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"search.{key}: expected {kinds}, got {value!r}")
    return SearchConfig(**values)


def _merged(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in layer.items():
        old = out.get(key)
        both = isinstance(old, Mapping) and isinstance(value, Mapping)
        out[key] = _merged(old, value) if both else value
    return out


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
    search = _merged(raw.pop("search") or {}, parse_overrides(search_sets).get("search", {}))
    # The file's sections go in as one layer of section-wide sets, so searched and fixed values
    # layer exactly as `--config` + `--set` do (a renamed component drops its old arguments).
    file_layer = [f"{section}={json.dumps(value)}" for section, value in raw.items()]
    base_sets = [s for s in sets if s not in search_sets]
    base = replace_config(replace_config(Config(), file_layer), base_sets)
    return TuneConfig(base, _search_from_dict(search))


# --- Optuna objects --------------------------------------------------------------------------


def _optuna() -> Any:
    try:
        import optuna
    except ModuleNotFoundError as exc:
        raise MnistCnnError(f"tune needs {exc.name}: pip install 'mnistcnn[tune]'") from None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at `url`; SQLite waits for locks held by the other workers."""
    optuna = _optuna()
    import sqlalchemy.exc

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes write one SQLite file: wait up to a minute for a lock, not 5 s.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        # A worker that dies without a word (SIGKILL, a lost machine) leaves its trial RUNNING;
        # the heartbeat lets the next trial mark it failed after the grace period.
        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120, **kwargs)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"storage {url.split(':', 1)[0]} needs the {exc.name} driver (pip install it)"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot open storage {url}: {first}") from None


def _sampler(search: SearchConfig, seed: int) -> Any:
    optuna = _optuna()
    if search.sampler == "grid":
        grid = {s.key: [_label(v) for v in s.values] for s in search.space}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: parallel workers treat running trials as bad, so they spread out.
    return optuna.samplers.TPESampler(
        n_startup_trials=search.startup_trials, seed=seed, constant_liar=True
    )


def _pruner(search: SearchConfig, epochs: int) -> Any:
    optuna = _optuna()
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=search.startup_trials, n_warmup_steps=search.min_epochs
        )
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=search.min_epochs, max_resource=max(epochs, search.min_epochs)
        )
    return optuna.pruners.NopPruner()


def open_study(tune: TuneConfig, *, seed: int | None = None, create: bool = False) -> Any:
    """The study in its storage, with a sampler seeded by `seed` (default search.seed)."""
    optuna = _optuna()
    search = tune.search
    tune.search.run_dir().mkdir(parents=True, exist_ok=True)
    storage = open_storage(search.storage_url())
    pruner = _pruner(search, tune.base.train.epochs)
    try:
        existing = storage.get_study_id_from_name(search.study)
    except KeyError:
        existing = None
    if existing is not None:
        directions = storage.get_study_directions(existing)
        if [d.name.lower() for d in directions] != [search.direction]:
            raise ConfigError(
                f"study {search.study!r} in {search.storage_url()} does not "
                f"{search.direction} (search.metric {search.metric}); use another search.study"
            )
    kwargs = {"study_name": search.study, "storage": storage, "pruner": pruner}
    kwargs["sampler"] = _sampler(search, search.seed if seed is None else seed)
    if create:
        return optuna.create_study(**kwargs, direction=search.direction, load_if_exists=True)
    return optuna.load_study(**kwargs)


def _counts(study: Any) -> dict[str, int]:
    """Trials by state; a trial failed by Ctrl-C counts as `interrupted`, not `failed`."""
    counts = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0, "running": 0}
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if state == "fail":
            state = "interrupted" if t.user_attrs.get("interrupted") else "failed"
        if state in ("running", "waiting"):
            state = "running"
        counts[state] += 1
    return counts


def _finished(counts: Mapping[str, int]) -> int:
    return counts["complete"] + counts["pruned"] + counts["failed"]


# --- trials ----------------------------------------------------------------------------------


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


def _objective(
    tune: TuneConfig, log: Callable[[str], None], ctrl_c: _CtrlC
) -> Callable[[Any], float]:
    from mnistcnn.train import fit

    optuna = _optuna()
    search = tune.search
    better = max if search.direction == "maximize" else min

    def objective(trial: Any) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {s.key: _label(s.suggest(trial)) for s in search.space}
        output = search.run_dir() / "trials" / f"{trial.number:04d}" / "model.pth"
        seen: list[float] = []

        def report(row: dict[str, Any]) -> None:
            seen.append(row[search.metric])
            trial.report(row[search.metric], row["epoch"])
            if trial.should_prune():
                trial.set_user_attr("epochs", row["epoch"])
                raise optuna.TrialPruned(f"{search.metric} {row[search.metric]:.4f}")

        def trial_log(line: str) -> None:
            log(f"[trial {trial.number}] {line}")

        try:
            with ctrl_c.interruptible():
                # No run folder (TensorBoard log, model copies) per trial: the study has one.
                cfg = trial_config(tune, params, output, ["train.run_dir=null"])
                result = fit(cfg, overwrite=True, progress=False, on_epoch=report)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except MnistCnnError as exc:
            # A bad combination (ConfigError) or a diverged run (TrainingError): this trial
            # fails, the study goes on. NaN makes Optuna record FAIL without a traceback.
            trial.set_user_attr("error", str(exc))
            log(f"[trial {trial.number}] failed: {exc}")
            return math.nan
        except RuntimeError as exc:
            # torch's own errors at extreme values (an overflowing lr...): failed, with the
            # traceback Optuna logs, and the study goes on.
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        trial.set_user_attr("epochs", cfg.train.epochs)
        trial.set_user_attr("model", result["model"])
        # Recorded for the report only: selection uses the validation metric alone.
        trial.set_user_attr("test_accuracy", result["test_accuracy"])
        return better(seen)

    return objective


def _stop_at_budget(n_trials: int | None) -> Callable[[Any, Any], None]:
    """Stop a worker once the study holds `n_trials` finished or running trials (any machine)."""

    def callback(study: Any, trial: Any) -> None:
        counts = _counts(study)
        if n_trials is not None and _finished(counts) + counts["running"] >= n_trials:
            study.stop()

    return callback


class _CtrlC:
    """Ctrl-C, raised only where it is safe: inside a trial's training, never in the middle of
    Optuna's bookkeeping (that would leave a trial RUNNING) nor in a GC callback (where Python
    swallows it). Elsewhere it is noted, passed on to the worker processes, and the study stops
    after the current step; `check()` raises it then."""

    def __init__(self, children: Iterable[Any] = ()) -> None:
        self.seen = False
        self.in_trial = False
        self.children = list(children)

    def __enter__(self) -> _CtrlC:
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.seen = True
        for p in self.children:  # a terminal's Ctrl-C reaches them anyway; `kill -INT` does not
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)
        if self.in_trial:
            self.in_trial = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Where Ctrl-C raises at once (a trial's training); one that came before raises here."""
        self.in_trial = True
        try:
            self.check()
            yield
        finally:
            self.in_trial = False

    def stop_study(self, study: Any, trial: Any) -> None:
        """An Optuna callback: start no new trial after a Ctrl-C."""
        if self.seen:
            study.stop()

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C came."""
        if self.seen:
            raise KeyboardInterrupt


def _worker(
    tune: TuneConfig,
    worker: int,
    seed: int,
    n_trials: int | None,
    jobs: int,
    quiet: bool,
    ctrl_c: _CtrlC | None = None,
) -> None:
    """One process's share of the study: `n_trials` trials (None: until the timeout)."""
    import torch

    optuna = _optuna()
    optuna.logging.set_verbosity(logging.WARNING if quiet else logging.INFO)
    if not tune.base.train.threads:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    study = open_study(tune, seed=seed)
    log = (lambda line: None) if quiet else _stderr
    try:
        with contextlib.nullcontext(ctrl_c) if ctrl_c else _CtrlC() as interrupts:
            study.optimize(
                _objective(tune, log, interrupts),
                n_trials=n_trials,
                timeout=tune.search.timeout,
                callbacks=[_stop_at_budget(tune.search.n_trials), interrupts.stop_study],
                catch=(RuntimeError,),
            )
            interrupts.check()
    except KeyboardInterrupt:
        if worker:  # a child: the parent reports the interruption
            raise SystemExit(130) from None
        raise


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _shares(remaining: int | None, jobs: int) -> list[int | None]:
    if remaining is None:
        return [None] * jobs
    return [remaining // jobs + (i < remaining % jobs) for i in range(jobs)]


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyReport:
    """What a study holds and what tune wrote about it."""

    study: str
    storage: str
    run_dir: str
    metric: str
    counts: dict[str, int]
    top: list[dict[str, Any]]
    importances: dict[str, float] | None
    best_yaml: str | None
    plots: list[str]
    notes: list[str]


def _evaluator() -> Any:
    return _optuna().importance.PedAnovaImportanceEvaluator()


def _importances(study: Any) -> tuple[dict[str, float] | None, str | None]:
    # PED-ANOVA: numpy only and instant; fANOVA (the default before Optuna 5) needs scikit-learn.
    optuna = _optuna()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "too few trials to tell apart": still a result
            found = optuna.importance.get_param_importances(study, evaluator=_evaluator())
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, f"no parameter importances: {exc}"
    return {k: round(float(v), 4) for k, v in found.items()}, None


def _plots(study: Any, run_dir: Path, importances: bool) -> tuple[list[str], list[str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as vis
    except ImportError as exc:
        return [], [f"no plots: {exc} (pip install 'mnistcnn[tune]')"]
    made, notes = [], []
    wanted = [
        ("history.png", vis.plot_optimization_history),
        ("epochs.png", vis.plot_intermediate_values),
    ]
    if importances:
        wanted.append(
            ("importances.png", lambda s: vis.plot_param_importances(s, evaluator=_evaluator()))
        )
    for name, plot in wanted:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
        except (ValueError, RuntimeError) as exc:
            notes.append(f"no {name}: {exc}")
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
        fig.savefig(run_dir / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        made.append(str(run_dir / name))
    return made, notes


def write_best(tune: TuneConfig, trial: Any, path: Path) -> Config:
    """The best trial's config as a ready-to-run YAML (its model goes beside it, best.pth)."""
    cfg = trial_config(tune, trial.params, path.with_suffix(".pth"))
    searched = "\n".join(f"#   {k}: {json.dumps(v)}" for k, v in trial.params.items())
    header = (
        f"# Best trial {trial.number} of study {tune.search.study!r}: "
        f"{tune.search.metric} {trial.value:.4f} (validation split).\n"
        f"# Train it: mnistcnn train --config {path}\n# Searched values:\n{searched}\n"
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + dump(cfg), encoding="utf-8")
    tmp.replace(path)
    return cfg


def report(tune: TuneConfig, top_n: int = 5) -> StudyReport:
    """Summarize the study: counts, top trials, importances, best.yaml, plots."""
    optuna = _optuna()
    search = tune.search
    study = open_study(tune)
    run_dir = search.run_dir()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ranked = sorted(complete, key=lambda t: t.value, reverse=search.direction == "maximize")
    top = [
        {
            "trial": t.number,
            search.metric: round(t.value, 6),
            "epochs": t.user_attrs.get("epochs"),
            "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
            "params": dict(t.params),
        }
        for t in ranked[:top_n]
    ]
    notes: list[str] = []
    importances, note = _importances(study) if len(complete) >= 2 else (None, None)
    if note:
        notes.append(note)
    best_yaml = None
    if ranked:
        best_yaml = run_dir / "best.yaml"
        write_best(tune, ranked[0], best_yaml)
    plots, plot_notes = _plots(study, run_dir, importances is not None) if complete else ([], [])
    return StudyReport(
        study=search.study,
        storage=search.storage_url(),
        run_dir=str(run_dir),
        metric=search.metric,
        counts=_counts(study),
        top=top,
        importances=importances,
        best_yaml=str(best_yaml) if best_yaml else None,
        plots=plots,
        notes=notes + plot_notes,
    )


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_report(rep: StudyReport) -> str:
    """The report as text: counts, a table of the top trials, importances, files."""
    c = rep.counts
    lines = [
        f"study {rep.study} ({rep.storage}): {c['complete']} complete, {c['pruned']} pruned, "
        f"{c['failed']} failed, {c['interrupted']} interrupted, {c['running']} running"
    ]
    if rep.top:
        header = ["trial", rep.metric, "epochs", *rep.top[0]["params"]]
        rows = [
            [str(r["trial"]), f"{r[rep.metric]:.4f}", str(r["epochs"])]
            + [_cell(r["params"].get(k)) for k in header[3:]]
            for r in rep.top
        ]
        widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
        lines.append("")
        for row in [header, *rows]:
            lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    if rep.importances:
        lines += ["", "parameter importances (PED-ANOVA):"]
        lines += [f"  {k:<24} {v:.3f}" for k, v in rep.importances.items()]
    lines.append("")
    if rep.best_yaml:
        lines.append(f"best config: {rep.best_yaml}  (mnistcnn train --config {rep.best_yaml})")
    lines += [f"plot: {p}" for p in rep.plots]
    lines += [f"note: {n}" for n in rep.notes]
    return "\n".join(lines)


# --- the study -------------------------------------------------------------------------------


def run_study(
    tune: TuneConfig, *, jobs: int = 1, quiet: bool = False, log: Callable[[str], None] = _stderr
) -> StudyReport:
    """Create or resume the study, run what is left of its budget on `jobs` processes, report.

    `n_trials` counts the study's finished trials (complete, pruned, failed) across runs, so a
    resumed study runs only the rest; a trial cut short by Ctrl-C does not count.
    """
    if jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    search = tune.search
    study = open_study(tune, create=True)
    # Trials of workers that died without a word, silent past the heartbeat's grace: failed.
    _optuna().storages.fail_stale_trials(study)
    counts = _counts(study)
    remaining = None
    if search.n_trials is not None:
        remaining = max(0, search.n_trials - _finished(counts) - counts["running"])
    log(
        f"study {search.study} in {search.storage_url()}: {_finished(counts)} trials finished"
        + (f", {remaining} to run" if remaining is not None else "")
        + f" on {jobs} process{'es' if jobs > 1 else ''}"
    )
    shares = _shares(remaining, jobs)
    # Seeds differ per worker and per resumption, or two workers would draw the same trials.
    started = len(study.get_trials(deepcopy=False))
    seeds = [
        int(np.random.SeedSequence([search.seed, started, i]).generate_state(1)[0])
        for i in range(jobs)
    ]
    ctx = multiprocessing.get_context("spawn")  # fork and torch's threads do not mix
    children = [
        ctx.Process(target=_worker, args=(tune, i, seeds[i], share, jobs, quiet), name=f"tune-{i}")
        for i, share in enumerate(shares)
        if i and share != 0
    ]
    try:
        with _CtrlC(children) as ctrl_c:
            for p in children:
                p.start()
            if shares[0] != 0:
                _worker(tune, 0, seeds[0], shares[0], jobs, quiet, ctrl_c)
            for p in children:
                p.join()
            ctrl_c.check()
    except KeyboardInterrupt:
        for p in children:
            p.join()
        log(
            f"interrupted: the study {search.study} is kept in {search.storage_url()}; "
            "run the same mnistcnn tune command again to continue it"
        )
        raise
    for p in children:
        if p.exitcode:
            log(
                f"warning: worker {p.name} exited with code {p.exitcode}; its trials did not "
                "run: run the same mnistcnn tune command again to run them"
            )
    return report(tune)
