"""What the commands print: results on stdout, notes and per-file errors on stderr, JSON.

The predict lines live here too: one line per answer as it comes, the JSON list at the end.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

from mnistcnn.errors import MnistCnnError


def stdout(text: str) -> None:
    print(text, flush=True)


def stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def train_summary(result: dict[str, Any]) -> str:
    """What `train` prints at the end: test accuracy, temperature, where the model went."""
    return (
        f"test accuracy {100 * result['test_accuracy']:.2f} %  (best epoch {result['epoch']})\n"
        f"temperature {result['temperature']:.4f}: validation ECE "
        f"{100 * result['val_ece']:.2f} % -> {100 * result['val_ece_calibrated']:.2f} %\n"
        f"saved {result['model']}"
    )


def calibrate_summary(fitted: dict[str, float], split: str, model: str) -> str:
    """What `calibrate` prints: both temperatures, the split, the ECE before and after."""
    return (
        f"temperature {fitted['temperature']:.4f} (with --tta {fitted['tta_temperature']:.4f}), "
        f"fitted on {split}\nvalidation ECE {100 * fitted['val_ece']:.2f} % -> "
        f"{100 * fitted['val_ece_calibrated']:.2f} %; saved in {model}"
    )


def note_uncalibrated(calibrated: bool, results: list, model: str) -> None:
    """After any answer from a model without a temperature: say its p is not calibrated."""
    if not calibrated and any(not p.error for p in results):
        stderr(
            f"mnistcnn: note: {model} has no stored temperature, so its probabilities are the "
            f"raw softmax (uncalibrated); store one with: mnistcnn calibrate {model}"
        )


def _confidence(p: Any) -> str:
    """`(p=0.981)`, or `(p=0.412, low confidence)` under --min-confidence."""
    return f"(p={p.probability:.3f}{', low confidence' if p.low_confidence else ''})"


def label_line(p: Any) -> str:
    others = "  ".join(f"{k} ({v:.3f})" for k, v in p.top[1:])
    return f"{p.path}: {p.label}  {_confidence(p)}  {others}".rstrip()


def number_line(p: Any) -> str:
    digits = "  ".join(_digit_text(top) for top in p.digits)
    return f"{p.path}: {p.number}  {_confidence(p)}  {digits}"


def _digit_text(top: list[tuple[int, float]]) -> str:
    """`7 (0.981)`, or with --top-k `7 (0.981; 1 0.012; 2 0.004)`."""
    others = "".join(f"; {k} {v:.3f}" for k, v in top[1:])
    return f"{top[0][0]} ({top[0][1]:.3f}{others})"


def show(found: Iterable[Any], as_json: bool, line: Callable[[Any], str]) -> list:
    """Print each answer as it comes (errors on stderr); collect them all."""
    results = []
    for p in found:
        results.append(p)
        if p.error:
            stderr(f"mnistcnn: error: {p.error}")
        elif not as_json:
            stdout(line(p))
    return results


def finish(results: list, images: list[str], as_json: bool) -> int:
    """JSON output if asked; exit 1 when any file failed or none was found."""
    if not results:
        raise MnistCnnError(f"no image files found in {', '.join(images)}")
    if as_json:
        print_json([dataclasses.asdict(p) for p in results])
    return 1 if any(p.error for p in results) else 0
