"""Variants of configs/base.yaml over several seeds: test accuracy of each variant (every seed,
mean, worst) and of the ensemble of its models, several trainings at once on one device.

    python benchmarks/recipes.py --data-dir ../shared/data [--variants base ink25] [--seeds 5]
        [--workers 4] [--device cuda] [--keep DIR]

Accuracy only: the trainings share the device, so their times say nothing and are not shown.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# name: (what changes, --set overrides of configs/base.yaml)
VARIANTS = {
    "base": ("configs/base.yaml as it is", []),
    "ls05": ("label smoothing 0.05 (0.1)", ["loss.label_smoothing=0.05"]),
    "aug15": (
        "rotation 15 degrees, shift 0.12, zoom 0.15 (10, 0.1, 0.1)",
        ["data.augment.degrees=15", "data.augment.translate=0.12", "data.augment.scale=0.15"],
    ),
    "lowres25": (
        "a quarter of the images redrawn from a coarse copy (a digit of 8-16 px)",
        ["data.augment.lowres=0.25"],
    ),
    "ink25": ("a quarter of the images redrawn as photo ink (3 in 4)", ["data.augment.ink=0.25"]),
    "lr02": ("peak rate 0.2 (0.1)", ["optim.lr=0.2", "sched.max_lr=0.2"]),
    "drop0": ("no dropout (0.1)", ["model.dropout=0.0"]),
    "wd1e3": ("weight decay 0.001 (0.0005)", ["optim.weight_decay=0.001"]),
    "ep25": ("25 epochs (20)", ["train.epochs=25"]),
    "res": ("identity skips in each stage", ["model.residual=true"]),
    "b64": ("batch 64, peak rate 0.05 (128, 0.1)", ["data.batch_size=64", "sched.max_lr=0.05"]),
}


def train(job: tuple[str, int, str, str, Path]) -> dict:
    """One variant and seed trained in this worker process; its test accuracy and model file."""
    name, seed, data_dir, device, folder = job
    torch.set_num_threads(2)  # several workers share the CPU cores
    from mnistcnn.config.build import load_config, override
    from mnistcnn.train.fitting import fit

    path = folder / f"{name}-seed{seed}.pth"
    sets = [
        override("data.root", data_dir),
        f"train.device={device}",
        "train.run_dir=null",
        override("train.output", path),
        f"train.seed={seed}",
        *VARIANTS[name][1],
    ]
    result = fit(load_config(ROOT / "configs" / "base.yaml", sets), overwrite=True, progress=False)
    print(f"  {name} seed {seed}: {100 * result['test_accuracy']:.2f} %", flush=True)
    return {"name": name, "seed": seed, "test": result["test_accuracy"], "path": path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--variants", nargs="+", default=["base"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 of each variant")
    parser.add_argument("--workers", type=int, default=1, help="trainings at once")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keep", type=Path, help="folder for the model files (default: temp)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="mnistcnn-recipes-"))
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [
        (name, seed, args.data_dir, args.device, folder)
        for seed in range(args.seeds)
        for name in args.variants
    ]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        rows = pool.map(train, jobs, chunksize=1)

    from mnistcnn.evaluate import evaluate_models

    lines = [
        "| variant | change | test accuracy per seed (%) | mean | worst | ensemble of all "
        "| its eval (s) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name in args.variants:
        runs = sorted((r for r in rows if r["name"] == name), key=lambda r: r["seed"])
        accs = [100 * r["test"] for r in runs]
        paths = [r["path"] for r in runs]
        ensemble = " | "
        if len(paths) > 1:  # all trainings done: the device is this evaluation's alone
            report = evaluate_models(paths, args.data_dir, torch.device(args.device))
            ensemble = f"{100 * report['accuracy']:.2f} | {report['ensemble']['seconds']:.2f}"
        lines.append(
            f"| `{name}` | {VARIANTS[name][0]} | {', '.join(f'{a:.2f}' for a in accs)} "
            f"| {statistics.mean(accs):.3f} | {min(accs):.2f} | {ensemble} |"
        )
    where = f"{args.device}, torch {torch.__version__}"
    at_once = "one training at a time" if args.workers == 1 else f"{args.workers} trainings at once"
    table = f"Seeds 0-{args.seeds - 1}, {at_once} on {where}.\n\n"
    table += "\n".join(lines)
    print(table)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from page import command_line, write_section

    write_section("Recipes", command_line(), table)


if __name__ == "__main__":
    main()
