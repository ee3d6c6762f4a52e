"""The architecture presets side by side, and transfer learning to inverted digits.

    python benchmarks/architectures.py --data-dir ../shared/data [--epochs 2] [--seeds 3]
        [--subset 10000] [--width 1.0] [--presets plain residual ...] [--out table.md]
        [--set train.threads=1 ...]

1. Every `configs/arch/*.yaml` trains with the same budget (epochs, training subset, width
   factor) and the same seeds; the table gives parameters, best validation accuracy, the test
   accuracy of that epoch's weights (mean and spread over the seeds) and seconds per epoch
   (training plus the validation pass; the median over the seeds) on this machine.
2. Transfer: `plain`'s seed-0 model (trained on ordinary MNIST in step 1) is fine-tuned on
   `configs/transfer/inverted.yaml` (dark-on-white digits; 100, 200 and 500 labelled training
   images), all layers or the classifier alone, against the same network trained from scratch
   with the same data and epochs; all are tested on the 10k inverted test digits, as is the
   pretrained model without fine-tuning.
Both tables go to docs/benchmarks.md (and to --out). Wall-clock figures depend on the load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mnistcnn.checkpoint import load_model
from mnistcnn.config.build import load_config
from mnistcnn.data import invert, load_mnist
from mnistcnn.model.summary import count_parameters
from mnistcnn.train.fitting import fit
from mnistcnn.train.loops import evaluate

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "arch"
TRANSFER = ROOT / "configs" / "transfer" / "inverted.yaml"
# The control first, then each idea next to the preset it should be read against.
ORDER = ("plain", "deep", "residual", "se", "spatial", "groupnorm", "layernorm", "nonorm")
ORDER += ("avgpool", "strided", "gelu", "silu", "wide")


def presets(names: list[str] | None) -> list[Path]:
    """The preset files to run, in ORDER (unknown extra files last)."""
    found = {p.stem: p for p in PRESETS.glob("*.yaml")}
    if names:
        missing = sorted(set(names) - found.keys())
        if missing:
            sys.exit(f"unknown presets {missing}; known: {', '.join(sorted(found))}")
        found = {n: found[n] for n in names}
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found.values(), key=lambda p: (rank.get(p.stem, len(ORDER)), p.stem))


def idea(path: Path) -> str:
    """A preset's first comment line without its file name: what it demonstrates."""
    first = path.read_text().splitlines()[0].lstrip("# ")
    return first.split(":", 1)[1].strip().rstrip(".") if ":" in first else first


def scaled_channels(path: Path, width: float) -> str:
    """`model.channels=[...]`: the preset's channels times `width` (at least 1 each)."""
    channels = load_config(path).model.kwargs.get("channels", (32, 64, 128))
    return f"model.channels=[{', '.join(str(max(1, round(c * width))) for c in channels)}]"


def train(path: Path, out: Path, sets: list[str]) -> dict[str, Any]:
    """Train one config in this process; the summary plus the mean seconds per epoch."""
    cfg = load_config(path, [f"train.output={out}", "train.run_dir=null", *sets])
    seconds: list[float] = []
    result = fit(
        cfg, overwrite=True, progress=False,
        on_epoch=lambda row: seconds.append(row["seconds"]),
    )  # fmt: skip
    return {**result, "epoch_seconds": statistics.mean(seconds)}


def spread(values: list[float]) -> str:
    """`99.12 ± 0.05` (mean ± sample standard deviation, in %), or one value."""
    mean = 100 * statistics.mean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def architectures(args: argparse.Namespace, folder: Path) -> tuple[list[str], Path | None]:
    """Train every preset for every seed; markdown rows and plain's seed-0 model file."""
    rows = ["| preset | idea | params | val acc % | test acc % | s / epoch |"]
    rows.append("| --- | --- | ---: | ---: | ---: | ---: |")
    pretrained = None
    for path in presets(args.presets):
        runs = []
        for seed in range(args.seeds):
            out = folder / f"{path.stem}-{seed}.pth"
            sets = [*args.budget, scaled_channels(path, args.width), f"train.seed={seed}"]
            runs.append(train(path, out, sets))
            print(
                f"{path.stem} seed {seed}: test {100 * runs[-1]['test_accuracy']:.2f} %, "
                f"{runs[-1]['epoch_seconds']:.1f} s/epoch",
                flush=True,
            )
            if path.stem == "plain" and seed == 0:
                pretrained = out
        rows.append(
            f"| `{path.stem}` | {idea(path)} | {runs[0]['parameters']:,} "
            f"| {spread([r['val_accuracy'] for r in runs])} "
            f"| {spread([r['test_accuracy'] for r in runs])} "
            # The median over the seeds: the run's first training also sets up the kernels.
            f"| {statistics.median(r['epoch_seconds'] for r in runs):.1f} |"
        )
    return rows, pretrained


def transfer(args: argparse.Namespace, folder: Path, pretrained: Path) -> list[str]:
    """Inverted digits, per labelled-set size: the pretrained model as is, fine-tuned (all
    layers or the classifier only) and the same network from scratch; test accuracy."""
    model = load_model(pretrained)
    test = invert(load_mnist(args.data_dir, train=False, download=False))
    # The transfer config normalizes with the inverted data's mean; so must the zero-shot check.
    cfg = load_config(TRANSFER, args.budget_transfer)
    model.mean, model.std = cfg.data.mean, cfg.data.std
    zero_shot = evaluate(model, test, 1000, torch.device("cpu"))["accuracy"]
    sizes = args.transfer_sizes
    rows = [
        "| start | trained | params trained | " + " | ".join(f"{n} images" for n in sizes) + " |",
        "| --- | --- | ---: |" + " ---: |" * len(sizes),
        "| pretrained on MNIST | nothing | 0 |" + f" {100 * zero_shot:.2f} |" * len(sizes),
    ]
    init = f"train.init_from={pretrained}"
    setups = [
        ("pretrained on MNIST", "all layers", [init]),
        ("pretrained on MNIST", "classifier only", [init, "train.freeze=features"]),
        ("random (from scratch)", "all layers", []),
    ]
    for start, trained, sets in setups:
        cells = []
        for size in sizes:
            runs = []
            for seed in range(args.seeds):
                out = folder / f"inverted-{len(rows)}-{size}-{seed}.pth"
                more = [*sets, f"data.subset={size}", f"train.seed={seed}"]
                runs.append(train(TRANSFER, out, [*args.budget_transfer, *more]))
                print(
                    f"inverted {size}: {start}, {trained}, seed {seed}: "
                    f"test {100 * runs[-1]['test_accuracy']:.2f} %",
                    flush=True,
                )
            cells.append(spread([r["test_accuracy"] for r in runs]))
        tuned = load_model(runs[0]["model"])
        if trained == "classifier only":
            tuned.features.requires_grad_(False)
        rows.append(
            f"| {start} | {trained} | {count_parameters(tuned):,} | " + " | ".join(cells) + " |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw/")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per preset")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per preset")
    parser.add_argument("--subset", type=int, default=0, help="training images (0 = all 55k)")
    parser.add_argument("--width", type=float, default=1.0, help="factor on every preset's width")
    parser.add_argument("--presets", nargs="+", metavar="NAME", help="only these presets")
    parser.add_argument("--no-transfer", action="store_true", help="skip the transfer demo")
    parser.add_argument(
        "--transfer-sizes",
        type=int,
        nargs="+",
        default=[100, 200, 500],
        metavar="N",
        help="labelled inverted training images for the transfer demo",
    )
    parser.add_argument("--out", help="also write the tables to this markdown file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    common = [f"data.root={args.data_dir}", "data.download=false", *args.set]
    args.budget = [*common, f"train.epochs={args.epochs}", f"data.subset={args.subset}"]
    # The transfer task keeps its own small data and epochs (configs/transfer/inverted.yaml)
    # and plain.yaml's network, at the same width, to take plain's weights.
    args.budget_transfer = [*common, scaled_channels(PRESETS / "plain.yaml", args.width)]
    if not args.no_transfer and args.presets and "plain" not in args.presets:
        args.presets = ["plain", *args.presets]  # the demo starts from plain's model
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnistcnn-arch-") as tmp:
        rows, pretrained = architectures(args, Path(tmp))
        lines = [
            f"Budget: {args.epochs} epochs, training subset {args.subset or 'all 55k'}, "
            f"width x{args.width}, seeds 0..{args.seeds - 1}; extra --set {args.set or 'none'}.",
            "",
            *rows,
        ]
        if not args.no_transfer and pretrained is not None:
            lines += [
                "",
                "Transfer to inverted digits (configs/transfer/inverted.yaml: its epochs, N "
                "labelled training images), test accuracy % on the 10k inverted test digits; "
                "pretrained = plain, seed 0, from the table above.",
                "",
                *transfer(args, Path(tmp), pretrained),
            ]
    lines += ["", f"Total wall time {time.perf_counter() - t0:.0f} s."]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    from page import command_line, write_section

    write_section("Architectures and transfer", command_line(), "\n".join(lines))


if __name__ == "__main__":
    main()
