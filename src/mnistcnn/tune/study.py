"""Running a study in its storage (SQLite in the run folder, or a server URL) on worker processes,
each trial a `train.fit`; Ctrl-C stops every worker at a safe point, the same command resumes."""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from mnistcnn.config.build import replace_config
from mnistcnn.config.schema import check
from mnistcnn.errors import ConfigError, MnistCnnError
from mnistcnn.tune.report import StudyReport, counts, finished, study_report
from mnistcnn.tune.search import TuneConfig, trial_config

log = logging.getLogger(__name__)


def import_optuna() -> Any:
    """The optuna module, or an error that says how to install it."""
    try:
        import optuna
    except ModuleNotFoundError as exc:
        raise MnistCnnError(f"tune needs {exc.name}: pip install 'mnistcnn[tune]'") from None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _storage(url: str, heartbeat: int, shown: str, tries: int = 3) -> Any:
    """Optuna's RDBStorage at `url`, or a one-line error naming the fix."""
    optuna = import_optuna()
    import sqlalchemy.exc as errors

    # SQLAlchemy reads `postgresql://` as psycopg 2 or 3 by its version: the postgres extra has 3.
    url = re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)
    # Several processes write one SQLite file: wait up to a minute for a lock, not 5 s. A server
    # connection is tested before use, as one left idle through a long trial may be dropped.
    sqlite = url.startswith("sqlite")
    connect = {"timeout": 60} if sqlite else {"connect_timeout": 10}
    # A worker that dies without a word (SIGKILL, a lost machine) stops its trial's heartbeat; 4
    # beats later a live worker fails the trial and queues it again (twice at most: a trial that
    # kills its worker stays failed). 4, not Optuna's 2: a slow beat (a lock wait) is not death.
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
    beat = {"heartbeat_interval": heartbeat, "grace_period": 4 * heartbeat}
    engine = {"connect_args": connect, "pool_pre_ping": not sqlite}
    try:
        return optuna.storages.RDBStorage(url, engine, heartbeat_stale_trial_callback=retry, **beat)
    except ImportError as exc:
        name = getattr(exc.__cause__, "name", None) or "its"
        fix = "'mnistcnn[postgres]'" if url.startswith("postgresql+psycopg") else name
        raise ConfigError(f"storage {shown} needs the {name} driver: pip install {fix}") from None
    except (errors.SQLAlchemyError, ValueError) as exc:
        if tries > 1 and isinstance(exc, errors.IntegrityError | errors.ProgrammingError):
            time.sleep(1)  # workers that start at once on a new database race to make its tables
            return _storage(url, heartbeat, shown, tries - 1)
        text = str(getattr(exc, "orig", exc)).splitlines()[0] if str(exc) else repr(exc)
        fix = "check the URL, its host and port, and that the server is running"
        if "does not exist" in text:
            fix = f"create it first (createdb {url.rsplit('/', 1)[-1].split('?')[0]})"
        elif "password" in text or "authentication" in text:
            fix = "check the user and password in the URL"
        raise ConfigError(f"cannot open the study database {shown}: {text}; {fix}") from None


def open_study(tune: TuneConfig, seed: int, create: bool = False) -> Any:
    """The study in its storage, with the search section's pruner and a sampler seeded `seed`."""
    optuna = import_optuna()
    search, shown = tune.search, tune.search.storage_url(hide_password=True)
    if search.storage is None:  # a server's study makes no local folder until it opens
        search.run_dir().mkdir(parents=True, exist_ok=True)
    storage = _storage(search.storage_url(), search.heartbeat, shown)
    samplers, pruners = optuna.samplers, optuna.pruners
    if search.sampler == "grid":
        sampler = samplers.GridSampler({s.key: s.labels() for s in search.space}, seed=seed)
    elif search.sampler == "random":
        sampler = samplers.RandomSampler(seed=seed)
    else:  # constant_liar: parallel workers treat running trials as bad, so they spread out.
        sampler = samplers.TPESampler(
            n_startup_trials=search.startup_trials, seed=seed, constant_liar=True
        )
    if search.pruner == "median":
        pruner = pruners.MedianPruner(
            n_startup_trials=search.startup_trials, n_warmup_steps=search.min_epochs
        )
    elif search.pruner == "hyperband":
        epochs = max(tune.base.train.epochs, search.min_epochs)
        pruner = pruners.HyperbandPruner(min_resource=search.min_epochs, max_resource=epochs)
    else:
        pruner = pruners.NopPruner()
    kwargs = {"study_name": search.study, "storage": storage, "sampler": sampler, "pruner": pruner}
    if not create:
        return optuna.load_study(**kwargs)
    with contextlib.suppress(KeyError):  # KeyError: a new study
        directions = storage.get_study_directions(storage.get_study_id_from_name(search.study))
        if [d.name.lower() for d in directions] != [search.direction]:
            raise ConfigError(
                f"study {search.study!r} in {shown} does not {search.direction} "
                f"(search.metric {search.metric}); use another search.study"
            )
    return optuna.create_study(**kwargs, direction=search.direction, load_if_exists=True)


class CtrlC:
    """Ctrl-C, raised at once only inside a trial's training; elsewhere noted for `check()`."""

    # Raised in Optuna's bookkeeping it would leave a trial RUNNING, and in a GC callback Python
    # swallows it: elsewhere it stops the study after the current step. Workers get it too.
    def __init__(self, children: Iterable[Any] = ()) -> None:
        self.seen, self.in_trial, self.children = False, False, list(children)

    def __enter__(self) -> CtrlC:
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

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C came."""
        if self.seen:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _trial_lines(number: int, quiet: bool) -> Iterator[None]:
    """A trial's log lines start with `[trial N]` (workers share stderr), or go when quiet."""

    def lines(record: logging.LogRecord) -> bool:
        if not getattr(record, "trial", False):  # once, whatever the handlers
            record.msg, record.args = f"[trial {number}] {record.getMessage()}", ()
            record.trial = True
        return not quiet

    handlers = logging.getLogger("mnistcnn").handlers
    for handler in handlers:
        handler.addFilter(lines)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(lines)


def objective(tune: TuneConfig, ctrl_c: CtrlC, quiet: bool) -> Callable[[Any], float]:
    """Optuna's objective: one `fit` per trial, its saved model's validation metric the trial's
    value (the weights `train.keep` chose)."""
    from mnistcnn.train.fitting import fit

    optuna = import_optuna()
    search = tune.search

    def run(trial: Any) -> float:
        try:
            return attempt(trial)
        except Exception as exc:
            if _database_error(exc) is None:
                raise
            raise LostDatabase from exc

    def attempt(trial: Any) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {s.key: s.suggest(trial) for s in search.space}
        output = search.run_dir() / "trials" / f"{trial.number:04d}" / "model.pth"

        def report(row: dict[str, Any]) -> None:  # each epoch, so a pruner can stop the trial
            trial.report(row[search.metric], row["epoch"])
            if trial.should_prune():
                trial.set_user_attr("epochs", row["epoch"])
                raise optuna.TrialPruned(f"{search.metric} {row[search.metric]:.4f}")

        with _trial_lines(trial.number, quiet):
            try:
                with ctrl_c.interruptible():
                    # No run folder (TensorBoard log, model copies) per trial: the study has one.
                    cfg = replace_config(trial_config(tune, params, output), ["train.run_dir=null"])
                    result = fit(cfg, overwrite=True, progress=False, on_epoch=report)
            except KeyboardInterrupt:
                trial.set_user_attr("interrupted", True)
                raise
            except MnistCnnError as exc:
                # A bad combination (ConfigError) or a diverged run (TrainingError): this trial
                # fails, the study goes on. NaN makes Optuna record FAIL without a traceback.
                trial.set_user_attr("error", str(exc))
                log.info(f"failed: {exc}")
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
        return result[search.metric]

    return run


def _worker(tune: TuneConfig, seed: int, jobs: int, quiet: bool, ctrl_c: CtrlC | None) -> None:
    """One process's trials, until the study's budget is filled or the timeout."""
    if ctrl_c is None:  # a child process: its lines go to stderr as the parent's, errors too
        logging.getLogger("mnistcnn").addHandler(logging.StreamHandler())
        logging.getLogger("mnistcnn").setLevel(logging.INFO)
        try:
            with CtrlC() as ctrl_c, _database(tune.search.storage_url(hide_password=True)):
                return _worker(tune, seed, jobs, quiet, ctrl_c)
        except KeyboardInterrupt:  # the parent reports the interruption
            raise SystemExit(130) from None
        except MnistCnnError as exc:
            print(f"mnistcnn: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
    import torch

    optuna = import_optuna()
    optuna.logging.set_verbosity(logging.WARNING if quiet else logging.INFO)
    if not tune.base.train.threads:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    search = tune.search
    deadline = time.monotonic() + (search.timeout or math.inf)
    study = open_study(tune, seed)

    def more() -> bool:
        """Whether to start a trial: if others' running trials may fill the budget, wait."""
        # A worker may have died: then the heartbeat fails its trial, and it is queued for us.
        while search.n_trials is not None and not ctrl_c.seen and time.monotonic() < deadline:
            optuna.storages.fail_stale_trials(study)
            found, budget = counts(study), search.n_trials
            done = finished(found)
            if done >= budget or done + found["running"] < budget or found["waiting"]:
                return done < budget
            time.sleep(1)  # a cheap query, and the command ends soon after the last trial
        return search.n_trials is None and not ctrl_c.seen

    if more():  # and after each trial: workers on any machine fill the budget
        stop = [lambda study, _: more() or study.stop()]
        run = objective(tune, ctrl_c, quiet)
        study.optimize(run, timeout=search.timeout, callbacks=stop, catch=(RuntimeError,))
    ctrl_c.check()


class LostDatabase(BaseException):
    """The database failed in a trial: no Exception, which Optuna would try to record there."""


def _database_error(exc: BaseException | None) -> BaseException | None:
    """The SQLAlchemy error behind `exc`: Optuna wraps some, and fails on its way out of others."""
    import sqlalchemy.exc

    while exc is not None and not isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
        exc = exc.__cause__ or exc.__context__
    return exc


@contextlib.contextmanager
def _database(shown: str) -> Iterator[None]:
    """A study database lost mid-study (a server gone) as one line: the study is safe in it."""
    previous = threading.excepthook  # a trial's heartbeat thread: the main thread reports it
    threading.excepthook = lambda args: _database_error(args.exc_value) or previous(args)
    try:
        yield
    except (Exception, LostDatabase) as exc:
        if (cause := _database_error(exc)) is None:
            raise
        text = str(getattr(cause, "orig", cause)).splitlines()[0]
        raise MnistCnnError(
            f"lost the study database {shown} ({text}): run the same command again to continue"
        ) from None
    finally:
        threading.excepthook = previous


def run_study(tune: TuneConfig, *, jobs: int = 1, quiet: bool = False) -> StudyReport:
    """Create or resume the study, run what is left of its budget on `jobs` processes, report."""
    # `n_trials` counts the study's finished trials (complete, pruned, failed) across runs and
    # machines; a trial cut short by Ctrl-C, or failed by the heartbeat and retried, does not.
    check(jobs >= 1, "--jobs must be >= 1")
    search, shown = tune.search, tune.search.storage_url(hide_password=True)
    study = open_study(tune, search.seed, create=True)
    with _database(shown):
        found = counts(study)
        todo = None if search.n_trials is None else max(0, search.n_trials - finished(found))
        workers = jobs if todo is None else min(jobs, todo)  # more() waits if others run them
        log.info(
            f"study {search.study} in {shown}: {finished(found)} trials finished"
            + (f", {todo} to run" if todo is not None else "")
            + f" on {workers} process{'es' if workers > 1 else ''}"
        )
        # Seeds differ per worker and per resumption, or two workers would draw the same trials.
        started = len(study.get_trials(deepcopy=False))
        seeds = [
            int(np.random.SeedSequence([search.seed, started, i]).generate_state(1)[0])
            for i in range(workers)
        ]
        ctx = multiprocessing.get_context("spawn")  # fork and torch's threads do not mix
        children = [
            ctx.Process(
                target=_worker, args=(tune, seeds[i], workers, quiet, None), name=f"tune-{i}"
            )
            for i in range(1, workers)
        ]
        try:
            with CtrlC(children) as ctrl_c:
                for p in children:
                    p.start()
                if workers:
                    _worker(tune, seeds[0], workers, quiet, ctrl_c)
                for p in children:
                    p.join()
                ctrl_c.check()
        except KeyboardInterrupt:
            for p in children:
                p.join()
            log.info(
                f"interrupted: the study {search.study} is kept in {shown}; "
                "run the same mnistcnn tune command again to continue it"
            )
            raise
        for p in (p for p in children if p.exitcode):  # the others run what it left
            log.warning(f"warning: worker {p.name} exited with code {p.exitcode}")
        return study_report(tune, study)
