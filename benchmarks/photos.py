"""Accuracy on photographed-style digits, per condition: resize-only vs textbook vs mnistcnn.

Generates a fixed-seed set of photos per condition (benchmarks/photogen.py) from MNIST *test*
digits, writes them to a temporary folder, and reads each one three ways: (a) the usual
tutorial (grey, resize to 28x28, invert), (b) the textbook recipe (invert, Otsu threshold, crop
to the ink, fit 20x20, centre of mass), (c) `mnistcnn.photo`. The column "28x28" is the
model on the same digits straight from MNIST: the ceiling for (c). With --multi, also reads
generated 4-digit numbers with `predict --multi` and counts the numbers read entirely right.

    python benchmarks/photos.py --model models/cnn.pth --data-dir data
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnistcnn.checkpoint import load_model
from mnistcnn.data import load_mnist
from mnistcnn.errors import ImageError
from mnistcnn.model.nets import DigitNet
from mnistcnn.photo.digit import preprocess
from mnistcnn.photo.row import segment
from mnistcnn.predict.classify import classify
from mnistcnn.predict.number import read_number

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photogen import CONDITIONS, ROW_CONDITIONS, Photo, photo_set

# The baselines read big photos through a JPEG draft (at least 1024 px) to keep the run short;
# their results are the same as at full size.
BASELINE_SIDE = 1024


def _open_plain(path: Path) -> Image.Image:
    """Open as tutorials do: no EXIF orientation, first frame, whatever the mode."""
    img = Image.open(path)
    img.draft("RGB", (BASELINE_SIDE, BASELINE_SIDE))
    return img


def resize_only(path: Path) -> np.ndarray:
    """(a) The usual tutorial: grey, resize to 28x28, invert (MNIST is white on black)."""
    gray = _open_plain(path).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    return 1 - np.asarray(gray, dtype=np.float32) / 255


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centers)
    between = (mean[-1] * weight - mean * weight[-1]) ** 2 / np.maximum(
        weight * (weight[-1] - weight), 1
    )
    return float(centers[np.argmax(between)])


def textbook(path: Path) -> np.ndarray:
    """(b) Invert, Otsu threshold, crop to the ink, fit in 20x20, centre of mass in 28x28."""
    ink = 1 - np.asarray(_open_plain(path).convert("L"), dtype=np.float32) / 255
    binary = (ink > _otsu(ink)).astype(np.float32)
    rows, cols = np.flatnonzero(binary.any(1)), np.flatnonzero(binary.any(0))
    if len(rows) == 0:
        return np.zeros((28, 28), np.float32)
    crop = binary[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = 20 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = np.asarray(Image.fromarray(crop, "F").resize(size, Image.Resampling.BILINEAR))
    canvas = np.zeros((28, 28), np.float32)
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]]
    total = max(float(small.sum()), 1e-6)
    cy, cx = float((ys * small).sum()) / total, float((xs * small).sum()) / total
    y0 = int(np.clip(round(14 - cy), 0, 28 - size[1]))
    x0 = int(np.clip(round(14 - cx), 0, 28 - size[0]))
    canvas[y0 : y0 + size[1], x0 : x0 + size[0]] = np.clip(small, 0, 1)
    return canvas


def mnistcnn_recipe(path: Path) -> np.ndarray:
    """(c) This package's preprocessing."""
    return preprocess(path).image


METHODS: dict[str, Callable[[Path], np.ndarray]] = {
    "resize-only": resize_only,
    "textbook": textbook,
    "mnistcnn": mnistcnn_recipe,
}


def _write(photos: list[Photo], folder: Path) -> list[Path]:
    paths = []
    for i, photo in enumerate(photos):
        path = folder / f"{photo.condition}-{i:04d}-{photo.label}{photo.suffix}"
        path.write_bytes(photo.data)
        paths.append(path)
    return paths


def _read(method: Callable[[Path], np.ndarray], paths: list[Path]) -> tuple[np.ndarray, float]:
    images, seconds = [], 0.0
    for path in paths:
        start = time.perf_counter()
        try:
            images.append(method(path))
        except Exception:  # a baseline that crashes on an image gets it wrong, as would a user
            images.append(np.zeros((28, 28), np.float32))
        seconds += time.perf_counter() - start
    return np.stack(images).astype(np.float32), seconds / len(paths)


def evaluate_condition(
    model: DigitNet,
    images: np.ndarray,
    labels: np.ndarray,
    condition: str,
    count: int,
    seed: int,
    keep: Path | None = None,
    tta: bool = False,
) -> dict[str, float]:
    """Accuracy of each method (and of the raw 28x28 digits) on one condition's photos; with
    `tta` also of (c) with test-time augmentation."""
    photos = list(photo_set(images, labels, condition, count, seed))
    truth = torch.tensor([int(p.label) for p in photos])
    # The same digits straight from MNIST: what the model does without any photo.
    raw = images[[p.sources[0] for p in photos]].astype(np.float32) / 255
    result = {"28x28": float((classify(model, raw).argmax(1) == truth).float().mean())}
    with tempfile.TemporaryDirectory() as tmp:
        paths = _write(photos, Path(tmp))
        for name, method in METHODS.items():
            batch, seconds = _read(method, paths)
            predicted = classify(model, batch).argmax(1)
            result[name] = float((predicted == truth).float().mean())
            if name == "mnistcnn":
                result["ms"] = 1000 * seconds
                if tta:
                    with_tta = classify(model, batch, use_tta=True).argmax(1)
                    result["tta"] = float((with_tta == truth).float().mean())
                if keep is not None:
                    keep.mkdir(parents=True, exist_ok=True)
                    for path, p, t in zip(paths, predicted.tolist(), truth.tolist(), strict=True):
                        if p != t:
                            (keep / f"{path.stem}-as{p}{path.suffix}").write_bytes(
                                path.read_bytes()
                            )
    return result


def evaluate_multi(
    model: DigitNet,
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    seed: int,
    touch: bool = False,
    keep: Path | None = None,
    tta: tuple[bool, ...] = (False,),
) -> dict[bool, dict[str, float]]:
    """Per TTA setting: the fraction of generated 4-digit numbers read entirely right, and of
    their digits (the photos made once, misreads without TTA copied to `keep`)."""
    name = "touching" if touch else "multi"
    photos = list(
        photo_set(
            images, labels, name, count, seed, digits=4, conditions=ROW_CONDITIONS, touch=touch
        )
    )
    right = dict.fromkeys(tta, 0)
    digits_right = dict.fromkeys(tta, 0)
    with tempfile.TemporaryDirectory() as tmp:
        for path, photo in zip(_write(photos, Path(tmp)), photos, strict=True):
            try:
                row = segment(path)  # once, whatever the TTA settings read it with
            except ImageError:
                row = None
            for use_tta in tta:
                number = ""
                if row is not None:
                    number = read_number(model, path, use_tta=use_tta, row=row).number or ""
                right[use_tta] += number == photo.label
                if len(number) == len(photo.label):
                    digits_right[use_tta] += sum(
                        a == b for a, b in zip(number, photo.label, strict=True)
                    )
                if number != photo.label and keep is not None and not use_tta:
                    keep.mkdir(parents=True, exist_ok=True)
                    misread = keep / f"{path.stem}-as{number or 'none'}{path.suffix}"
                    misread.write_bytes(photo.data)
    return {
        use_tta: {"numbers": right[use_tta] / count, "digits": digits_right[use_tta] / (4 * count)}
        for use_tta in tta
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", default="models/cnn.pth", metavar="MODEL.pth")
    parser.add_argument("--data-dir", default="data", metavar="DIR", help="holds MNIST/raw/")
    parser.add_argument("--count", type=int, default=200, help="photos per condition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditions", nargs="*", default=list(CONDITIONS), metavar="NAME")
    parser.add_argument("--multi", type=int, default=0, metavar="N", help="4-digit numbers")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="copy misread photos here")
    parser.add_argument(
        "--tta", action="store_true", help="also read with --tta: a column, and --multi's lines"
    )
    parser.add_argument(
        "--section", default="Photographed digits", help="the benchmarks page's section to write"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.model)
    test = load_mnist(args.data_dir, train=False, download=False)
    images, labels = test.images.numpy(), test.labels.numpy()
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"model {args.model}; {args.count} photos per condition, seed {args.seed}\n")
    extra = " (c) --tta |" if args.tta else ""
    say(
        "| condition | (a) resize-only | (b) textbook | (c) mnistcnn | 28x28 MNIST | ms/img (c) |"
        + extra
    )
    say("|---|---:|---:|---:|---:|---:|" + ("---:|" if args.tta else ""))
    totals: dict[str, list[float]] = {}
    for condition in args.conditions:
        r = evaluate_condition(
            model, images, labels, condition, args.count, args.seed, args.keep, args.tta
        )
        tta = f" {100 * r['tta']:.1f} |" if args.tta else ""
        for key, value in r.items():
            totals.setdefault(key, []).append(value)
        say(
            f"| {condition} | {100 * r['resize-only']:.1f} | {100 * r['textbook']:.1f} | "
            f"**{100 * r['mnistcnn']:.1f}** | {100 * r['28x28']:.1f} | {r['ms']:.1f} |{tta}"
        )
    if totals:
        mean = {key: float(np.mean(values)) for key, values in totals.items()}
        tta = f" {100 * mean['tta']:.1f} |" if args.tta else ""
        say(
            f"| **all** | {100 * mean['resize-only']:.1f} | {100 * mean['textbook']:.1f} | "
            f"**{100 * mean['mnistcnn']:.1f}** | {100 * mean['28x28']:.1f} | {mean['ms']:.1f} |"
            + tta
        )
    if args.multi:
        say()
        for touch in (False, True):
            tta = (False, True) if args.tta else (False,)
            found = evaluate_multi(
                model, images, labels, args.multi, args.seed, touch, args.keep, tta
            )
            for use_tta, r in found.items():
                kind = "with two digits touching" if touch else "digits apart"
                say(
                    f"- `--multi{' --tta' if use_tta else ''}`, {kind}: "
                    f"{100 * r['numbers']:.1f} % of {args.multi} 4-digit numbers read entirely "
                    f"right ({100 * r['digits']:.1f} % of digits in place)"
                )
    from page import command_line, write_section

    write_section(args.section, command_line(), "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
