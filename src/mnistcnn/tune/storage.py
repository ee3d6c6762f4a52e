"""The study in its RDB storage (SQLite in the run folder, or a server URL) that workers
share, with the sampler and pruner the search section names; its trial counts.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from mnistcnn.errors import ConfigError, MnistCnnError
from mnistcnn.tune.settings import SearchConfig, TuneConfig


def import_optuna() -> Any:
    """The optuna module, or an error that says how to install it."""
    try:
        import optuna
    except ModuleNotFoundError as exc:
        raise MnistCnnError(f"tune needs {exc.name}: pip install 'mnistcnn[tune]'") from None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at `url`; SQLite waits for locks held by the other workers."""
    optuna = import_optuna()
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
    samplers = import_optuna().samplers
    if search.sampler == "grid":
        return samplers.GridSampler({s.key: s.labels() for s in search.space}, seed=seed)
    if search.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    # constant_liar: parallel workers treat running trials as bad, so they spread out.
    return samplers.TPESampler(
        n_startup_trials=search.startup_trials, seed=seed, constant_liar=True
    )


def _pruner(search: SearchConfig, epochs: int) -> Any:
    pruners = import_optuna().pruners
    if search.pruner == "median":
        return pruners.MedianPruner(
            n_startup_trials=search.startup_trials, n_warmup_steps=search.min_epochs
        )
    if search.pruner == "hyperband":
        return pruners.HyperbandPruner(
            min_resource=search.min_epochs, max_resource=max(epochs, search.min_epochs)
        )
    return pruners.NopPruner()


def open_study(tune: TuneConfig, *, seed: int | None = None, create: bool = False) -> Any:
    """The study in its storage, with a sampler seeded by `seed` (default search.seed)."""
    optuna = import_optuna()
    search = tune.search
    search.run_dir().mkdir(parents=True, exist_ok=True)
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


def counts(study: Any) -> dict[str, int]:
    """Trials by state; a trial failed by Ctrl-C counts as `interrupted`, not `failed`."""
    found = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0, "running": 0}
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if state == "fail":
            state = "interrupted" if t.user_attrs.get("interrupted") else "failed"
        if state in ("running", "waiting"):
            state = "running"
        found[state] += 1
    return found


def finished(found: Mapping[str, int]) -> int:
    """Trials that count against the budget: complete, pruned or failed."""
    return found["complete"] + found["pruned"] + found["failed"]
