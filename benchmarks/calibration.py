"""How well models' probabilities are calibrated on the MNIST test set: accuracy, the stored
temperature, expected calibration error and negative log-likelihood before and after it, and
test-time augmentation's accuracy and ECE; as `mnistcnn eval MODEL --tta` reports them.

    python benchmarks/calibration.py --data-dir ../shared/data --model models/fast.pth

The bundled model is always measured; `--model` adds others (repeatable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from page import command_line, write_section

from mnistcnn.bundled import BUNDLED
from mnistcnn.evaluate import evaluate_models

HEADS = [
    "model",
    "test acc. (%)",
    "T",
    "ECE before -> after T (%)",
    "NLL before -> after T",
    "with `--tta`: acc. (%), ECE (%)",
]


def row(path: Path, data_dir: str) -> list[str]:
    """One model's table row."""
    report = evaluate_models([path], data_dir, torch.device("cpu"), download=False, use_tta=True)
    cal, tta = report["calibration"], report["calibration"]["tta"]
    return [
        f"`{path.name}`" if path == BUNDLED else f"`{path}`",
        f"{100 * report['accuracy']:.2f}",
        f"{cal['temperature']:.3f}",
        f"{100 * cal['ece']:.2f} -> {100 * cal['ece_calibrated']:.2f}",
        f"{cal['nll']:.3f} -> {cal['nll_calibrated']:.3f}",
        f"{100 * tta['accuracy']:.2f}, {100 * tta['ece_calibrated']:.2f}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw/")
    parser.add_argument(
        "--model", type=Path, action="append", default=[], help="a model file (repeatable)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    lines = ["| " + " | ".join(HEADS) + " |", "| --- |" + " ---: |" * (len(HEADS) - 1)]
    for path in [BUNDLED, *args.model]:
        lines.append("| " + " | ".join(row(path, args.data_dir)) + " |")
        print(lines[-1], flush=True)
    write_section("Calibration and TTA", command_line(), "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
