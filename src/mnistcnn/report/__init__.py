"""A run's pictures and report page (`mnistcnn report`) and run tables (`mnistcnn compare`).

runs: finding a run's files; render: the PNGs; html: the page; compare: the table and overlay;
figures: the matplotlib figures themselves (also used by train, eval and predict --explain).
"""

from __future__ import annotations

from mnistcnn.report.compare import compare_runs, format_comparison
from mnistcnn.report.html import write_report
from mnistcnn.report.render import FIGURES
from mnistcnn.report.runs import Run, find_run

__all__ = ["FIGURES", "Run", "compare_runs", "find_run", "format_comparison", "write_report"]
