"""Running a study in its storage (SQLite in the run folder, or a server URL) on worker processes,
each trial a `train.fit`; Ctrl-C stops every worker at a safe point, the same command resumes."""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import signal
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from mnistcnn.config.build import replace_config
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


def open_study(tune: TuneConfig, seed: int, create: bool = False) -> Any:
    """The study in its storage, with the search section's pruner and a sampler seeded `seed`."""
    optuna = import_optuna()
    import sqlalchemy.exc

    search, url = tune.search, tune.search.storage_url()
    search.run_dir().mkdir(parents=True, exist_ok=True)
    # Several processes write one SQLite file: wait up to a minute for a lock, not 5 s.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        # A worker that dies without a word (SIGKILL, a lost machine) leaves its trial RUNNING;
        # the heartbeat lets the next trial mark it failed after the grace period.
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=30, grace_period=120
        )
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"storage {url.split(':', 1)[0]} needs the {exc.name} driver (pip install it)"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot open storage {url}: {first}") from None
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
                f"study {search.study!r} in {url} does not {search.direction} "
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

    def stop_study(self, study: Any, trial: Any) -> None:
        """An Optuna callback: start no new trial after a Ctrl-C."""
        if self.seen:
            study.stop()

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
    """Optuna's objective: one `fit` per trial, its best validation metric the trial's value."""
    from mnistcnn.train.fitting import fit

    optuna = import_optuna()
    search = tune.search
    better = max if search.direction == "maximize" else min

    def run(trial: Any) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {s.key: s.suggest(trial) for s in search.space}
        output = search.run_dir() / "trials" / f"{trial.number:04d}" / "model.pth"
        seen: list[float] = []

        def report(row: dict[str, Any]) -> None:  # each epoch, so a pruner can stop the trial
            seen.append(row[search.metric])
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
        return better(seen)

    return run


def _worker(
    tune: TuneConfig, seed: int, n_trials: int | None, jobs: int, quiet: bool, ctrl_c: CtrlC | None
) -> None:
    """One process's share of the study: `n_trials` trials (None: until the timeout). A child
    process gets no `ctrl_c` and makes its own."""
    import torch

    import_optuna().logging.set_verbosity(logging.WARNING if quiet else logging.INFO)
    if ctrl_c is None:  # a child process: its trials' lines go to stderr, as the parent's do
        logger = logging.getLogger("mnistcnn")
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
    if not tune.base.train.threads:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    budget = tune.search.n_trials

    def stop_at_budget(study: Any, trial: Any) -> None:  # workers on any machine fill it
        found = counts(study)
        if budget is not None and finished(found) + found["running"] >= budget:
            study.stop()

    study = open_study(tune, seed)
    try:
        with contextlib.nullcontext(ctrl_c) if ctrl_c else CtrlC() as interrupts:
            study.optimize(
                objective(tune, interrupts, quiet),
                n_trials=n_trials,
                timeout=tune.search.timeout,
                callbacks=[stop_at_budget, interrupts.stop_study],
                catch=(RuntimeError,),
            )
            interrupts.check()
    except KeyboardInterrupt:
        if ctrl_c is None:  # a child: the parent reports the interruption
            raise SystemExit(130) from None
        raise


def run_study(tune: TuneConfig, *, jobs: int = 1, quiet: bool = False) -> StudyReport:
    """Create or resume the study, run what is left of its budget on `jobs` processes, report."""
    # `n_trials` counts the study's finished trials (complete, pruned, failed) across runs, so
    # a resumed study runs only the rest; a trial cut short by Ctrl-C does not count.
    if jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    search = tune.search
    study = open_study(tune, search.seed, create=True)
    # Trials of workers that died without a word, silent past the heartbeat's grace: failed.
    import_optuna().storages.fail_stale_trials(study)
    found = counts(study)
    remaining = None
    if search.n_trials is not None:
        remaining = max(0, search.n_trials - finished(found) - found["running"])
    log.info(
        f"study {search.study} in {search.storage_url()}: {finished(found)} trials finished"
        + (f", {remaining} to run" if remaining is not None else "")
        + f" on {jobs} process{'es' if jobs > 1 else ''}"
    )
    shares = [
        None if remaining is None else remaining // jobs + (i < remaining % jobs)
        for i in range(jobs)
    ]
    # Seeds differ per worker and per resumption, or two workers would draw the same trials.
    started = len(study.get_trials(deepcopy=False))
    seeds = [
        int(np.random.SeedSequence([search.seed, started, i]).generate_state(1)[0])
        for i in range(jobs)
    ]
    ctx = multiprocessing.get_context("spawn")  # fork and torch's threads do not mix
    children = [
        ctx.Process(
            target=_worker, args=(tune, seeds[i], share, jobs, quiet, None), name=f"tune-{i}"
        )
        for i, share in enumerate(shares)
        if i and share != 0
    ]
    try:
        with CtrlC(children) as ctrl_c:
            for p in children:
                p.start()
            if shares[0] != 0:
                _worker(tune, seeds[0], shares[0], jobs, quiet, ctrl_c)
            for p in children:
                p.join()
            ctrl_c.check()
    except KeyboardInterrupt:
        for p in children:
            p.join()
        log.info(
            f"interrupted: the study {search.study} is kept in {search.storage_url()}; "
            "run the same mnistcnn tune command again to continue it"
        )
        raise
    for p in children:
        if p.exitcode:
            log.warning(
                f"warning: worker {p.name} exited with code {p.exitcode}; its trials did not "
                "run: run the same mnistcnn tune command again to run them"
            )
    return study_report(tune, study)
