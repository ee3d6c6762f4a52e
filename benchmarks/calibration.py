"""How well models' probabilities are calibrated on the MNIST test set: accuracy, the stored
temperature, expected calibration error and negative log-likelihood before and after it, and
test-time augmentation's accuracy and ECE; as `mnistcnn eval MODEL --tta` reports them.

    python benchmarks/calibration.py --data-dir ../shared/data --configs configs/fast.yaml

The bundled model (configs/base.yaml, seed 0) is always measured; each of `--configs` is
trained first, seed 0, on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from page import command_line, write_section

from mnistcnn.bundled import BUNDLED
from mnistcnn.config.build import load_config, override
from mnistcnn.evaluate import evaluate_models
from mnistcnn.train.fitting import fit

HEADS = [
    "model",
    "test acc. (%)",
    "T",
    "ECE before -> after T (%)",
    "NLL before -> after T",
    "with `--tta`: acc. (%), ECE (%)",
]


def train(config: Path, data_dir: str, folder: Path) -> Path:
    """`config`'s model, trained with seed 0 on the CPU into `folder`."""
    path = folder / f"{config.stem}.pth"
    sets = [override("data.root", data_dir), "data.download=false", "train.device=cpu"]
    sets += ["train.run_dir=null", "train.seed=0", override("train.output", path)]
    fit(load_config(config, sets), overwrite=True, progress=False)
    return path


def row(name: str, path: Path, data_dir: str) -> list[str]:
    """One model's table row."""
    report = evaluate_models([path], data_dir, torch.device("cpu"), download=False, use_tta=True)
    cal, tta = report["calibration"], report["calibration"]["tta"]
    return [
        name,
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
        "--configs", type=Path, nargs="*", default=[], help="recipes to train and measure too"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    lines = ["| " + " | ".join(HEADS) + " |", "| --- |" + " ---: |" * (len(HEADS) - 1)]
    with tempfile.TemporaryDirectory() as folder:
        models = [("the bundled model (configs/base.yaml)", BUNDLED)]
        models += [(f"`{c}`", train(c, args.data_dir, Path(folder))) for c in args.configs]
        for name, path in models:
            lines.append("| " + " | ".join(row(name, path, args.data_dir)) + " |")
            print(lines[-1], flush=True)
    write_section("Calibration and TTA", command_line(), "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
