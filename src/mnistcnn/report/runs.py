"""A run as report and compare find it: a run folder, or a model `.pth` whose `.yaml` and
`.metrics.csv` lie beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mnistcnn.errors import MnistCnnError
from mnistcnn.files import RUN_CONFIG, RUN_METRICS, RUN_MODEL, RUN_STEPS, read_csv
from mnistcnn.model import DigitNet


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
    """The rows of a run's metrics.csv or steps.csv (at least one)."""
    rows = read_csv(path)
    if not rows:
        raise MnistCnnError(f"no epochs in {path}")
    return rows


def train_seconds(model: DigitNet, rows: list[dict[str, str]]) -> float:
    """How long the run trained: as the model records it, else the sum over its epochs."""
    return float(model.meta.get("train_seconds") or sum(float(r["seconds"]) for r in rows))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"
