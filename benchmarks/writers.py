"""Digits in shapes MNIST's writers rarely used: does a model read them?

    python benchmarks/writers.py --model models/cnn.pth [--model other.pth ...] [--count 2000]

Each installed TrueType font (DejaVu, Liberation...: a 1 with a flag and a foot, a barred 7, an
open 4, serif and slanted 9s) draws each digit as dark ink on light paper, at a random size,
slant, rotation and stroke weight; the images go through `mnistcnn predict`'s pipeline
(`photo.digit.preprocess_image`) and each model classifies them. Printed digits are not
handwriting, but they are shapes outside MNIST, the failure a new writer's style causes; the
table is how training choices (augmentation) are compared, beside MNIST's own test accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from page import command_line, write_section
from PIL import Image, ImageDraw, ImageFont

from mnistcnn.checkpoint import load_model
from mnistcnn.errors import ImageError
from mnistcnn.photo.digit import preprocess_image
from mnistcnn.predict.classify import classify

FONT_DIRS = (Path("/usr/share/fonts"), Path.home() / ".fonts")


def fonts() -> list[Path]:
    """Every TrueType font file installed, in a stable order (math fonts left out)."""
    found = {p for d in FONT_DIRS if d.is_dir() for p in d.rglob("*.ttf")}
    return sorted(p for p in found if "Math" not in p.name)


def draw(digit: int, font: Path, rng: np.random.Generator) -> Image.Image:
    """One digit printed with `font` on a 96-160 px grey-white page, slanted and rotated a bit."""
    side = int(rng.integers(96, 161))
    size = int(side * rng.uniform(0.45, 0.8))
    face = ImageFont.truetype(str(font), size)
    ink = Image.new("L", (side * 2, side * 2), 0)
    weight = int(rng.integers(0, max(1, size // 14) + 1))
    ImageDraw.Draw(ink).text(
        (side, side),
        str(digit),
        fill=255,
        font=face,
        anchor="mm",
        stroke_width=weight,
        stroke_fill=255,
    )
    shear = rng.uniform(-0.25, 0.1)
    ink = ink.transform(ink.size, Image.Transform.AFFINE, (1, shear, -shear * side, 0, 1, 0))
    ink = ink.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR)
    left = side // 2 + int(rng.integers(-side // 8, side // 8 + 1))
    top = side // 2 + int(rng.integers(-side // 8, side // 8 + 1))
    ink = ink.crop((left, top, left + side, top + side))
    paper = rng.uniform(200, 250)
    page = paper - (paper - rng.uniform(10, 70)) * np.asarray(ink, np.float32) / 255
    page += rng.normal(0, 3, page.shape)
    return Image.fromarray(page.clip(0, 255).astype(np.uint8), "L").convert("RGB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="a .pth (repeatable)")
    parser.add_argument("--count", type=int, default=2000, help="images (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = fonts()
    if not files:
        print("no TrueType fonts installed (apt-get install fonts-dejavu)", file=sys.stderr)
        return 1
    rng = np.random.default_rng(args.seed)
    images, labels, missed = [], [], 0
    for i in range(args.count):
        digit = i % 10
        try:
            images.append(preprocess_image(draw(digit, files[rng.integers(len(files))], rng)).image)
            labels.append(digit)
        except ImageError:
            missed += 1
    batch, truth = np.stack(images), np.array(labels)
    rows = []
    for path in args.model:
        model = load_model(path)
        predicted = classify(model, batch).argmax(1).numpy()
        right = predicted == truth
        per_digit = " ".join(f"{100 * right[truth == d].mean():.0f}" for d in range(10))
        mnist = model.meta.get("test_accuracy")
        shown = f"{100 * mnist:.2f} %" if mnist is not None else "-"
        rows.append(f"| {path} | {shown} | {100 * right.mean():.2f} % | {per_digit} |")
    table = "\n".join(
        [
            f"{len(truth)} digits printed in {len(files)} fonts ({missed} not found as a digit).",
            "",
            "| model | MNIST test | fonts | per digit 0-9 (%) |",
            "| --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(table)
    write_section("Digits outside MNIST's styles", command_line(), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
