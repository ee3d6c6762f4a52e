"""What the kept epoch and the BatchNorm recount (`train.keep`, `train.precise_bn`) do to
finished runs: MNIST test accuracy of each run's `.pth` as saved, of its `.ckpt`'s last-epoch
weights as trained, and of those weights after a recount over N clean training images.

    python benchmarks/recount.py --data-dir ../shared/data --counts 10000 20000 \
        --runs base DIR/base-seed*.ckpt --runs fast DIR2/fast-*.ckpt

Each `.ckpt` needs its `.pth` and `.yaml` beside it, as `mnistcnn train` and `recipes.py --keep`
write them: the network comes from the `.pth`, the training split from the `.yaml`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from page import command_line, write_section

from mnistcnn.checkpoint import load_model, load_training_state
from mnistcnn.config.build import load_config, override
from mnistcnn.data import load_splits
from mnistcnn.train.loops import evaluate, recount_batchnorm

CPU = torch.device("cpu")
BATCH = 1000  # test images per forward pass


def measure(ckpt: Path, data_dir: str, counts: list[int]) -> tuple[list[float], list[str]]:
    """Test accuracies (saved .pth, last epoch, each recount) and the notes: the saved epoch, the
    recount's seconds per 10,000 images, the run's own `train_seconds`."""
    cfg = load_config(ckpt.with_suffix(".yaml"), [override("data.root", data_dir)])
    splits = load_splits(cfg.data)
    saved = load_model(ckpt.with_suffix(".pth"))
    last = load_training_state(ckpt)["model"]
    accuracies = [evaluate(saved, splits.test, BATCH, CPU)["accuracy"]]
    seconds = 0.0
    for count in [0, *counts]:
        model = load_model(ckpt.with_suffix(".pth"))
        model.load_state_dict(last)
        start = time.perf_counter()
        if count:
            recount_batchnorm(
                model,
                splits.train,
                count,
                cfg.data.batch_size,
                CPU,
                channels_last=cfg.train.channels_last,
            )
        seconds += time.perf_counter() - start
        accuracies.append(evaluate(model, splits.test, BATCH, CPU)["accuracy"])
    recounted = sum(min(c, len(splits.train.labels)) for c in counts)
    meta = saved.meta
    notes = [str(meta["epoch"]), f"{1e4 * seconds / recounted:.2f}", f"{meta['train_seconds']:.1f}"]
    return accuracies, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw/")
    parser.add_argument(
        "--counts", type=int, nargs="+", default=[20000], help="images recounted (each > 0)"
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "CKPT"),
        help="a group's name, then its runs' .ckpt files (repeatable)",
    )
    args = parser.parse_args(argv)
    if min(args.counts) <= 0:
        parser.error("--counts: each count must be > 0")
    torch.set_num_threads(2)
    recounts = [f"recount {c:,}" for c in args.counts]
    heads = ["run", "saved .pth", "last epoch, as trained", *recounts]
    heads += ["saved epoch", "recount s / 10k images", "run's train s"]
    lines = ["| " + " | ".join(heads) + " |", "| --- |" + " ---: |" * (len(heads) - 1)]
    for name, *paths in args.runs:
        table = []
        for path in map(Path, paths):
            accuracies, notes = measure(path, args.data_dir, args.counts)
            table.append(accuracies)
            row = [f"{name}: {path.stem}", *(f"{100 * a:.2f}" for a in accuracies), *notes]
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
        columns = list(zip(*table, strict=True))
        means = [f"{100 * statistics.mean(c):.3f}" for c in columns]
        worst = [f"{100 * min(c):.2f}" for c in columns]
        lines.append(f"| {name}: mean | " + " | ".join(means) + " | | | |")
        lines.append(f"| {name}: worst | " + " | ".join(worst) + " | | | |")
    table = "\n".join(lines)
    print(table)
    write_section("BatchNorm recount", command_line(), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
