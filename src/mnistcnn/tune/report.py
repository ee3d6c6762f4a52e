"""What a study holds: counts, the top trials, parameter importances, plots, and `best.yaml`
(the best trial's config, ready for `mnistcnn train --config`)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mnistcnn.config.build import dump
from mnistcnn.files import atomic_write_text
from mnistcnn.tune.search import TuneConfig, trial_config


@dataclass(frozen=True)
class StudyReport:
    """What a study holds and what tune wrote about it."""

    study: str
    storage: str
    run_dir: str
    metric: str
    counts: dict[str, int]
    top: list[dict[str, Any]]
    importances: dict[str, float] | None
    best_yaml: str | None
    plots: list[str]
    notes: list[str]


def counts(study: Any) -> dict[str, int]:
    """Trials by state; a failed trial that Ctrl-C cut short is `interrupted`, and one that the
    heartbeat failed (its worker died) and queued again is `retried`."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    names = ("complete", "pruned", "failed", "retried", "interrupted", "running", "waiting")
    found = dict.fromkeys(names, 0)
    for t in trials:
        state = t.state.name.lower()
        if state == "fail":
            state = "retried" if t.number in retried else "failed"
            state = "interrupted" if t.user_attrs.get("interrupted") else state
        found[state] += 1
    return found


def finished(found: Mapping[str, int]) -> int:
    """Trials that count against the budget: complete, pruned or failed."""
    return found["complete"] + found["pruned"] + found["failed"]


def _importances(study: Any) -> tuple[dict[str, float] | None, str | None]:
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    # PED-ANOVA: numpy only and instant; fANOVA (the default before Optuna 5) needs scikit-learn.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "too few trials to tell apart": still a result
            found = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, f"no parameter importances: {exc}"
    return {k: round(float(v), 4) for k, v in found.items()}, None


def _plots(study: Any, run_dir: Path, importances: bool) -> tuple[list[str], list[str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.importance import PedAnovaImportanceEvaluator
        from optuna.visualization import matplotlib as vis
    except ImportError as exc:
        return [], [f"no plots: {exc} (pip install 'mnistcnn[tune]')"]
    made, notes = [], []
    wanted = {
        "history.png": vis.plot_optimization_history,
        "epochs.png": vis.plot_intermediate_values,
    }
    if importances:
        evaluator = PedAnovaImportanceEvaluator()
        wanted["importances.png"] = partial(vis.plot_param_importances, evaluator=evaluator)
    for name, plot in wanted.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
        except (ValueError, RuntimeError) as exc:
            notes.append(f"no {name}: {exc}")
            continue
        ax.figure.savefig(run_dir / name, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        made.append(str(run_dir / name))
    return made, notes


def write_best(tune: TuneConfig, trial: Any, path: Path) -> None:
    """The best trial's config as a ready-to-run YAML (its model goes beside it, best.pth)."""
    cfg = trial_config(tune, trial.params, path.with_suffix(".pth"))
    searched = "\n".join(f"#   {k}: {json.dumps(v)}" for k, v in trial.params.items())
    header = (
        f"# Best trial {trial.number} of study {tune.search.study!r}: "
        f"{tune.search.metric} {trial.value:.4f} (validation split).\n"
        f"# Train it: mnistcnn train --config {path}\n# Searched values:\n{searched}\n"
    )
    atomic_write_text(path, header + dump(cfg))


def study_report(tune: TuneConfig, study: Any, top_n: int = 5) -> StudyReport:
    """Summarize the study: counts, top trials, importances, best.yaml, plots."""
    from optuna.trial import TrialState

    search, run_dir = tune.search, tune.search.run_dir()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ranked = sorted(complete, key=lambda t: t.value, reverse=search.direction == "maximize")
    top = [
        {
            "trial": t.number,
            search.metric: round(t.value, 6),
            "epochs": t.user_attrs.get("epochs"),
            "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
            "params": dict(t.params),
        }
        for t in ranked[:top_n]
    ]
    importances, note = _importances(study) if len(complete) >= 2 else (None, None)
    best_yaml = run_dir / "best.yaml" if ranked else None
    if best_yaml:
        write_best(tune, ranked[0], best_yaml)
    plots, plot_notes = _plots(study, run_dir, importances is not None) if complete else ([], [])
    return StudyReport(
        study=search.study,
        storage=search.storage_url(hide_password=True),
        run_dir=str(run_dir),
        metric=search.metric,
        counts=counts(study),
        top=top,
        importances=importances,
        best_yaml=str(best_yaml) if best_yaml else None,
        plots=plots,
        notes=([note] if note else []) + plot_notes,
    )


def format_study(rep: StudyReport) -> str:
    """The report as text: counts, a table of the top trials, importances, files."""
    c = rep.counts
    lines = [f"study {rep.study} ({rep.storage}): " + ", ".join(f"{n} {k}" for k, n in c.items())]
    if rep.top:
        header = ["trial", rep.metric, "epochs", *rep.top[0]["params"]]
        rows = [
            [str(r["trial"]), f"{r[rep.metric]:.4f}", str(r["epochs"])]
            + [
                f"{v:.4g}" if isinstance(v, float) else str(v)
                for v in map(r["params"].get, header[3:])
            ]
            for r in rep.top
        ]
        widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
        lines.append("")
        for row in [header, *rows]:
            lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    if rep.importances:
        lines += ["", "parameter importances (PED-ANOVA):"]
        lines += [f"  {k:<24} {v:.3f}" for k, v in rep.importances.items()]
    lines.append("")
    if rep.best_yaml:
        lines.append(f"best config: {rep.best_yaml}  (mnistcnn train --config {rep.best_yaml})")
    lines += [f"plot: {p}" for p in rep.plots]
    lines += [f"note: {n}" for n in rep.notes]
    return "\n".join(lines)
