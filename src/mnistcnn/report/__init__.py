"""A run's pictures and report page (`mnistcnn report`) and run tables (`mnistcnn compare`).

runs: finding runs and comparing them; page: the PNGs and report.html; figures: the matplotlib
figures themselves (also used by train, eval and predict --explain).
"""

from __future__ import annotations

from mnistcnn.report.page import FIGURES, write_report
from mnistcnn.report.runs import Run, compare_runs, find_run, format_comparison

__all__ = ["FIGURES", "Run", "compare_runs", "find_run", "format_comparison", "write_report"]
