"""Digits scanned at a few pixels and cropped to their ink, in both polarities: read how well?

    python benchmarks/scans.py --model models/cnn.pth --data-dir data [--first 0] [--count 400]

Each MNIST test digit is cropped to its ink (no paper margin), shrunk to `px` pixels high (a box
filter: a scanner's grey), enlarged to 240 px high (nearest: blocks; bicubic: smooth) and read
through `mnistcnn predict`'s pipeline as dark ink on white and as white on black (MNIST's own).
With no margin there is no paper border to tell which side is ink; "taken inverted" counts the
digits whose polarity the pipeline got wrong, "no digit" those it found no digit in.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from multiprocessing import Pool

import numpy as np
from page import command_line, write_section
from PIL import Image

from mnistcnn.checkpoint import load_model
from mnistcnn.data import load_mnist
from mnistcnn.errors import ImageError
from mnistcnn.photo.digit import preprocess_image
from mnistcnn.predict.classify import classify

SIDE = 240
SCANS = (8, 12, 16, 0)  # pixels high; 0: the digit as MNIST has it, cropped
UPSCALES = {"nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC}


def scan(digit: np.ndarray, px: int, resample: Image.Resampling, light: bool) -> Image.Image:
    """The digit cropped to its ink, scanned `px` high (0: as it is), enlarged to SIDE high."""
    rows, cols = np.flatnonzero(digit.max(1) > 30), np.flatnonzero(digit.max(0) > 30)
    crop = Image.fromarray(digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    if px:
        crop = crop.resize((max(1, crop.width * px // crop.height), px), Image.Resampling.BOX)
    big = crop.resize((max(1, crop.width * SIDE // crop.height), SIDE), resample)
    return big if light else Image.fromarray(255 - np.asarray(big))


def read(job: tuple[np.ndarray, int, str, bool]) -> tuple[np.ndarray, str]:
    """The 28x28 input and what became of the polarity: "right", "inverted" or "none"."""
    digit, px, upscale, light = job
    try:
        found = preprocess_image(scan(digit, px, UPSCALES[upscale], light), steps=True)
    except ImageError:
        return np.zeros((28, 28), np.float32), "none"
    assert found.steps is not None
    return found.image, "inverted" if found.steps.dark is light else "right"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", default="models/cnn.pth", metavar="MODEL.pth")
    parser.add_argument("--data-dir", default="data", metavar="DIR", help="holds MNIST/raw/")
    parser.add_argument("--first", type=int, default=0, help="the first test digit used")
    parser.add_argument("--count", type=int, default=400, help="test digits (default 400)")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    test = load_mnist(args.data_dir, train=False, download=False)
    chosen = slice(args.first, args.first + args.count)
    digits, labels = test.images.numpy()[chosen], test.labels.numpy()[chosen]
    lines = [
        f"model {args.model}; MNIST test digits {args.first}-{args.first + len(digits) - 1}",
        "",
        "| scanned at | enlarged | ink | read (%) | taken inverted | no digit |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    with Pool(2) as pool:
        for px, upscale, light in itertools.product(SCANS, UPSCALES, (False, True)):
            jobs = [(digit, px, upscale, light) for digit in digits]
            images, fates = zip(*pool.map(read, jobs, chunksize=16), strict=True)
            right = classify(model, np.stack(images)).argmax(1).numpy() == labels
            ink = "white on black" if light else "black on white"
            line = (
                f"| {f'{px} px' if px else 'as MNIST'} | {upscale} | {ink} | "
                f"{100 * right.mean():.1f} | {fates.count('inverted')} | {fates.count('none')} |"
            )
            print(line, flush=True)
            lines.append(line)
    write_section("Low-resolution scans cropped to their ink", command_line(), "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
