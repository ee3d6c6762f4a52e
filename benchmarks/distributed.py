"""Training throughput in 1 process vs N data-parallel processes (torchrun, Gloo on CPU).

    python benchmarks/distributed.py --data-dir ../shared/data [--nproc 2] [--epochs 2]

Each setting trains configs/fast.yaml for the same epochs, as a user would run it (a fresh
`mnistcnn train` subprocess), and reads the epoch times it wrote to its .metrics.csv; the
first epoch is left out as warm-up when there are several. Samples/s counts the training
images of an epoch over its wall time (validation included). With CUDA, one GPU is added.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 55_000  # fast.yaml: the 60k training images less the 5k validation split


def train(data_dir: str, out: Path, epochs: int, extra: list[str], env: dict[str, str]) -> dict:
    """One `mnistcnn train` run; its wall time, epoch times and test accuracy."""
    cmd = [sys.executable, "-m", "mnistcnn", "train", "--config", "configs/fast.yaml"]
    sets = [f"data.root={data_dir}", f"train.epochs={epochs}", "train.run_dir=null"]
    cmd += [f"--set={s}" for s in sets] + ["-o", str(out), "--overwrite", "--quiet", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*cmd, *extra], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd + extra)} failed:\n{proc.stderr}")
    with open(out.with_suffix(".metrics.csv"), newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    timed = seconds[1:] or seconds
    return {
        "wall": wall,
        "epoch": statistics.median(timed),
        "rate": TRAIN_IMAGES / statistics.median(timed),
        "accuracy": torch.load(out, weights_only=True)["_extra_state"]["meta"]["test_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    out = Path(tempfile.mkdtemp(prefix="mnistcnn-ddp-"))
    base_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    runs = {
        f"1 process, {cores} threads": ("cpu", [], base_env),
        f"{args.nproc} processes (Gloo), {max(1, cores // args.nproc)} thread(s) each": (
            "cpu",
            ["--nproc", str(args.nproc)],
            base_env,
        ),
    }
    if torch.cuda.is_available():
        runs[f"1 GPU ({torch.cuda.get_device_name()})"] = ("cuda", [], base_env)
    rows = []
    for name, (device, extra, env) in runs.items():
        print(f"{name} ...", flush=True)
        result = train(
            args.data_dir, out / f"{len(rows)}.pth", args.epochs, [*extra, "--device", device], env
        )
        rows.append((name, result))
    first = rows[0][1]["rate"]
    lines = [
        f"fast.yaml, {args.epochs} epochs, torch {torch.__version__}, {cores} CPU cores",
        "",
        "| setting | samples/s | vs 1 process | s/epoch | run wall s | test acc |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['rate']:,.0f} | {r['rate'] / first:.2f}x | {r['epoch']:.1f} | "
            f"{r['wall']:.1f} | {100 * r['accuracy']:.2f} % |"
        )
    print("\n" + "\n".join(lines))
    from page import command_line, write_section

    write_section("Distributed training", command_line(), "\n".join(lines))


if __name__ == "__main__":
    main()
