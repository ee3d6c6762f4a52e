"""A run as report and compare find it (a run folder, or a model `.pth` with its `.yaml` and
`.metrics.csv` beside it), and `mnistcnn compare`'s table of runs with their curves overlaid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistcnn.checkpoint import load_model
from mnistcnn.config import build as config_mod
from mnistcnn.errors import MnistCnnError
from mnistcnn.files import RUN_CONFIG, RUN_METRICS, RUN_MODEL, RUN_STEPS, read_csv
from mnistcnn.model.nets import DigitNet
from mnistcnn.model.summary import count_parameters
from mnistcnn.report import figures

# Keys that differ between any two runs without being a difference in the recipe.
NOT_RECIPE = ("train.output", "train.run_dir", "train.run_name", "data.root")
LABELS = {"best_val_accuracy": "best val acc", "test_accuracy": "test acc", "seconds": "time"}


@dataclass(frozen=True)
class Run:
    """Where one run's files are."""

    name: str
    model: Path
    config: Path
    metrics: Path
    steps: Path | None
    report_dir: Path


def find_run(path: str | Path) -> Run:
    """A run folder, or a model `.pth` with its `.yaml` and `.metrics.csv` beside it."""
    path = Path(path)
    if not path.exists():
        raise MnistCnnError(f"run not found: {path}")
    if path.is_file() and path.name == RUN_MODEL and (path.parent / RUN_CONFIG).is_file():
        path = path.parent
    if path.is_dir():
        files = [path / RUN_MODEL, path / RUN_CONFIG, path / RUN_METRICS]
        steps = path / RUN_STEPS
        run = Run(path.name, *files, steps if steps.is_file() else None, path / "report")
    elif path.suffix == ".pth":
        files = [path, path.with_suffix(".yaml"), path.with_suffix(".metrics.csv")]
        run = Run(path.stem, *files, None, path.with_name(f"{path.stem}-report"))
    else:
        raise MnistCnnError(f"not a run folder or a .pth model: {path}")
    missing = [p.name for p in (run.model, run.config, run.metrics) if not p.is_file()]
    if missing:
        raise MnistCnnError(f"{path} is not a complete run: {', '.join(missing)} missing")
    return run


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv (at least one epoch)."""
    rows = read_csv(path)
    if not rows:
        raise MnistCnnError(f"no epochs in {path}")
    return rows


def train_seconds(model: DigitNet, rows: list[dict[str, str]]) -> float:
    """How long the run trained: as the model records it, else the sum over its epochs."""
    return float(model.meta.get("train_seconds") or sum(float(r["seconds"]) for r in rows))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def compare_runs(paths: list[str | Path], plot: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per run (differing config keys, size, accuracy, time); `plot`: curves overlaid."""
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
