"""Hyperparameter search on Optuna (`mnistcnn tune`): `search` reads the tune file, `study`
runs the trials (each a `train.fit`) on worker processes, `report` sums the study up."""

from __future__ import annotations

from mnistcnn.tune.report import StudyReport, format_study, study_report
from mnistcnn.tune.search import SearchConfig, TuneConfig, load_tune_config, trial_config
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
