"""Hyperparameter search on Optuna (`mnistcnn tune`): `space` and `settings` read the tune
file, `storage` opens the shared study, `objective` runs one trial (a `train.fit`), `study`
runs the workers, `report` sums the study up.
"""

from __future__ import annotations

from mnistcnn.tune.report import StudyReport, format_study, study_report
from mnistcnn.tune.settings import SearchConfig, TuneConfig, load_tune_config, trial_config
from mnistcnn.tune.study import run_study

__all__ = [
    "SearchConfig",
    "StudyReport",
    "TuneConfig",
    "format_study",
    "load_tune_config",
    "run_study",
    "study_report",
    "trial_config",
]
