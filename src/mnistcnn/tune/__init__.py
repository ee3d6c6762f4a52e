"""Hyperparameter search on Optuna: `mnistcnn tune`.

`space` and `settings` read the tune file, `storage` opens the shared study, `objective` runs
one trial (a `train.fit`), `study` runs the workers, `report` sums the study up.
"""

from __future__ import annotations

from mnistcnn.tune.report import StudyReport, format_study, study_report, write_best
from mnistcnn.tune.settings import SearchConfig, TuneConfig, load_tune_config, trial_config
from mnistcnn.tune.space import Space
from mnistcnn.tune.storage import open_storage, open_study
from mnistcnn.tune.study import run_study

__all__ = [
    "SearchConfig",
    "Space",
    "StudyReport",
    "TuneConfig",
    "format_study",
    "load_tune_config",
    "open_storage",
    "open_study",
    "run_study",
    "study_report",
    "trial_config",
    "write_best",
]
