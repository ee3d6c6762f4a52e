"""Running a study: what is left of its budget, on worker processes that share its storage.
Ctrl-C stops every worker at a safe point; the same command resumes the study.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from mnistcnn.errors import ConfigError
from mnistcnn.tune.objective import objective, stop_at_budget
from mnistcnn.tune.report import StudyReport, study_report
from mnistcnn.tune.settings import TuneConfig
from mnistcnn.tune.storage import counts, finished, import_optuna, open_study

log = logging.getLogger(__name__)


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


def _worker(
    tune: TuneConfig,
    worker: int,
    seed: int,
    n_trials: int | None,
    jobs: int,
    quiet: bool,
    ctrl_c: CtrlC | None = None,
) -> None:
    """One process's share of the study: `n_trials` trials (None: until the timeout)."""
    import torch

    import_optuna().logging.set_verbosity(logging.WARNING if quiet else logging.INFO)
    if worker:  # a child process: its trials' lines go to stderr, as the parent's do
        logger = logging.getLogger("mnistcnn")
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
    if not tune.base.train.threads:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    study = open_study(tune, seed=seed)
    try:
        with contextlib.nullcontext(ctrl_c) if ctrl_c else CtrlC() as interrupts:
            study.optimize(
                objective(tune, interrupts, quiet),
                n_trials=n_trials,
                timeout=tune.search.timeout,
                callbacks=[stop_at_budget(tune.search.n_trials), interrupts.stop_study],
                catch=(RuntimeError,),
            )
            interrupts.check()
    except KeyboardInterrupt:
        if worker:  # a child: the parent reports the interruption
            raise SystemExit(130) from None
        raise


def _shares(remaining: int | None, jobs: int) -> list[int | None]:
    if remaining is None:
        return [None] * jobs
    return [remaining // jobs + (i < remaining % jobs) for i in range(jobs)]


def run_study(tune: TuneConfig, *, jobs: int = 1, quiet: bool = False) -> StudyReport:
    """Create or resume the study, run what is left of its budget on `jobs` processes, report."""
    # `n_trials` counts the study's finished trials (complete, pruned, failed) across runs, so
    # a resumed study runs only the rest; a trial cut short by Ctrl-C does not count.
    if jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    search = tune.search
    study = open_study(tune, create=True)
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
        with CtrlC(children) as ctrl_c:
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
    return study_report(tune)
