"""Atomic file writes and CSV: the one utilities layer, importing no sibling module.

Files are written to a temporary file in the same folder, fsynced, then renamed over the target,
so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

# The files of a run folder: train's RunLog writes them, report and compare read them.
RUN_CONFIG, RUN_METRICS = "config.yaml", "metrics.csv"
RUN_STEPS, RUN_MODEL = "steps.csv", "model.pth"

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temp file beside `path`, fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace a text file."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_csv(
    path: str | Path, rows: Iterable[Mapping[str, Any]], fields: Sequence[str] | None = None
) -> None:
    """Atomically write `rows` as CSV with a header (`fields`, else the first row's keys)."""
    rows = list(rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields if fields is not None else rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
