"""One trial: sample its values, train with `train.fit`, report each epoch so a pruner can stop it.
A bad combination or a diverged run fails its trial and the study goes on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from mnistcnn.errors import MnistCnnError
from mnistcnn.tune.settings import TuneConfig, trial_config
from mnistcnn.tune.space import label
from mnistcnn.tune.storage import counts, finished, import_optuna

if TYPE_CHECKING:
    from mnistcnn.tune.study import CtrlC

log = logging.getLogger(__name__)


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
    from mnistcnn.train import fit

    optuna = import_optuna()
    search = tune.search
    better = max if search.direction == "maximize" else min

    def run(trial: Any) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {s.key: label(s.suggest(trial)) for s in search.space}
        output = search.run_dir() / "trials" / f"{trial.number:04d}" / "model.pth"
        seen: list[float] = []

        def report(row: dict[str, Any]) -> None:
            seen.append(row[search.metric])
            trial.report(row[search.metric], row["epoch"])
            if trial.should_prune():
                trial.set_user_attr("epochs", row["epoch"])
                raise optuna.TrialPruned(f"{search.metric} {row[search.metric]:.4f}")

        with _trial_lines(trial.number, quiet):
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


def stop_at_budget(n_trials: int | None) -> Callable[[Any, Any], None]:
    """Stop a worker once the study holds `n_trials` finished or running trials (any machine)."""

    def callback(study: Any, trial: Any) -> None:
        found = counts(study)
        if n_trials is not None and finished(found) + found["running"] >= n_trials:
            study.stop()

    return callback
