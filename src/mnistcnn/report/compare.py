"""`mnistcnn compare`: one row per run (the config keys that differ, size, accuracy, time) and
their validation curves overlaid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnistcnn import config as config_mod
from mnistcnn.checkpoint import load_model
from mnistcnn.model import count_parameters
from mnistcnn.report import figures
from mnistcnn.report.runs import find_run, percent, read_rows, train_seconds

# Keys that differ between any two runs without being a difference in the recipe.
NOT_RECIPE = ("train.output", "train.run_dir", "train.run_name", "data.root")
LABELS = {"best_val_accuracy": "best val acc", "test_accuracy": "test acc", "seconds": "time"}


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def compare_runs(paths: list[str | Path], plot: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per run: the config keys that differ, parameters, best val acc, test acc, time;
    with `plot`, an overlay of the runs' validation curves written there."""
    runs = [find_run(p) for p in paths]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # two model.pth's, say: tell them apart by their folder
        names = [str(r.model.parent / r.name) for r in runs]
    configs = [_flat(config_mod.read_yaml_file(r.config)) for r in runs]
    keys = sorted({k for c in configs for k in c})
    differ = [k for k in keys if k not in NOT_RECIPE and len({repr(c.get(k)) for c in configs}) > 1]
    table, curves = [], {}
    for name, run, cfg in zip(names, runs, configs, strict=True):
        curves[name] = rows = read_rows(run.metrics)
        model = load_model(run.model)
        table.append(
            {
                "run": name,
                **{k: cfg.get(k) for k in differ},
                "params": count_parameters(model),
                "best_val_accuracy": max(float(r["val_accuracy"]) for r in rows),
                "test_accuracy": model.meta.get("test_accuracy"),
                "seconds": round(train_seconds(model, rows), 1),
            }
        )
    if plot is not None:
        figures.save(figures.compare(curves), plot)
    return table


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("best_val_accuracy", "test_accuracy"):
        return percent(value)
    return f"{value:,}" if key == "params" else f"{value:.1f} s" if key == "seconds" else str(value)


def format_comparison(table: list[dict[str, Any]]) -> str:
    """The compare rows as an aligned text table, one column per run (config keys can be many)."""
    grid = [[LABELS.get(k, k), *(_cell(k, row[k]) for row in table)] for k in table[0]]
    widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in grid
    )
