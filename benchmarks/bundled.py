"""Rebuild the model the wheel ships (src/mnistcnn/bundled/base.pth) from configs/base.yaml on
the CPU, and check that the file comes out byte for byte the same.

    python benchmarks/bundled.py --data-dir ../shared/data          # train, compare, report
    python benchmarks/bundled.py --data-dir ../shared/data --write  # ... and replace the file

Same seed, same CPU type (its bf16 support decides the autocast), same torch, 2 threads: the
same weights (the training is deterministic on a CPU). The file keeps the run's metadata
(recipe, seed, torch version, validation and test accuracy, temperatures) without its timing,
so that a rebuild is identical to the byte.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from page import command_line, write_section

from mnistcnn.bundled import BUNDLED
from mnistcnn.checkpoint import load_model, load_state, save_model
from mnistcnn.config.build import load_config, override
from mnistcnn.train.fitting import fit

RECIPE = "configs/base.yaml"
THREADS = 2  # a thread count of its own: the sums' order, hence the weights, depend on it
ROOT = Path(__file__).resolve().parent.parent


def build(data_dir: str, out: Path) -> dict:
    """Train the base recipe on the CPU into `out`; its metadata, timing left out."""
    sets = [
        override("data.root", data_dir),
        "train.device=cpu",
        f"train.threads={THREADS}",
        override("train.output", out),
        "train.run_dir=null",
    ]
    fit(load_config(ROOT / RECIPE, sets), progress=sys.stderr.isatty())
    model = load_model(out)
    model.meta = {"recipe": RECIPE, **model.meta}
    del model.meta["train_seconds"]  # the one figure a rebuild cannot repeat
    save_model(model, out)
    return model.meta


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw/")
    parser.add_argument("--write", action="store_true", help=f"replace {BUNDLED.name}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "base.pth"
        meta = build(args.data_dir, built)
        if BUNDLED.is_file():
            old, new = load_state(BUNDLED), load_state(built)
            tensors = [k for k in new if torch.is_tensor(new[k])]
            equal = sum(k in old and torch.equal(old[k], new[k]) for k in tensors)
            files = f"sha256 {digest(BUNDLED)} vs {digest(built)}"
            same = f"{equal}/{len(tensors)} tensors equal; {files}"
            identical = digest(BUNDLED) == digest(built)
        else:
            same, identical = "no bundled file before", False
        if args.write:
            shutil.copyfile(built, BUNDLED)
    verdict = "identical" if identical else "written" if args.write else "DIFFERENT"
    rows = [
        ("test accuracy", f"{100 * meta['test_accuracy']:.2f} %"),
        ("validation accuracy", f"{100 * meta['val_accuracy']:.2f} % (epoch {meta['epoch']})"),
        ("temperature", f"{meta['temperature']:.4f} (TTA {meta['tta_temperature']:.4f})"),
        ("seed, torch, threads", f"{meta['seed']}, {meta['torch']}, {THREADS}"),
        ("rebuilt vs bundled", f"{verdict}: {same}"),
    ]
    table = "| | |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    write_section("Bundled model", command_line(), table)
    return 0 if identical or args.write else 1


if __name__ == "__main__":
    sys.exit(main())
