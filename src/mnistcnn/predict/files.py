"""Image files in -> `Answer`s out, for any classifier of 28x28 digits (torch or ONNX); torch-free.
Folders are expanded to their images and streamed in chunks so memory stays bounded; a file that
cannot be read becomes an error entry while the rest go on; what the model saw can be saved."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from mnistcnn.errors import ImageError
from mnistcnn.photo import Steps, preprocess, steps_panel

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
DIGITS = tuple(range(10))

# Below this calibrated probability an answer is flagged: the model is then more likely wrong
# than right, and a person should look (a calibrated 0.5 is right about half the time).
MIN_CONFIDENCE = 0.5

# Calibrated probabilities (N, 10) of 28x28 images in [0, 1], shaped (N, 28, 28).
Classifier = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Answer:
    """One file's answer: the label and its probability, the top k, or the error."""

    path: str
    label: int | None = None
    probability: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None
    low_confidence: bool = False  # calibrated probability below the asked minimum


def expand_inputs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given; directories replaced by the image files in them, sorted by name."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def unique_name(path: Path, taken: set[str]) -> str:
    """`path`'s stem, or for a second `digit` input `digit.jpg`, then `digit.jpg-2`...; taken."""
    name, copy = path.stem, 1
    while name in taken:
        copy += 1
        name = path.name if copy == 2 else f"{path.name}-{copy - 1}"
    taken.add(name)
    return name


class Views:
    """Writes what the model saw as `NAME.png` (the 28x28 inputs) and `NAME.steps.png`."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.taken: set[str] = set()

    def save(self, path: Path, images: list[np.ndarray], steps: Steps | None) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = unique_name(path, self.taken)
        strip = np.concatenate(images, axis=1)
        Image.fromarray((strip * 255).round().astype(np.uint8)).save(self.out_dir / f"{name}.png")
        if steps is not None:
            steps_panel(steps).save(self.out_dir / f"{name}.steps.png")


def predict_paths(
    classify: Classifier,
    paths: Iterable[str | Path],
    *,
    labels: Sequence[int] = DIGITS,
    top_k: int = 1,
    chunk: int = 256,
    save_dir: str | Path | None = None,
    min_confidence: float = MIN_CONFIDENCE,
) -> Iterator[Answer]:
    """Answer every image, `chunk` files at a time, in input order, flagging any under
    `min_confidence`; column i of what `classify` returns is the probability of `labels[i]`."""
    files = expand_inputs(paths)
    views = Views(save_dir) if save_dir is not None else None
    while batch := list(islice(files, chunk)):
        ready: list[tuple[Path, np.ndarray]] = []
        results: dict[Path, Answer] = {}
        for path in batch:
            try:
                found = preprocess(path, steps=views is not None)
            except ImageError as exc:
                results[path] = Answer(str(path), error=str(exc))
                continue
            ready.append((path, found.image))
            if views is not None:
                views.save(path, [found.image], found.steps)
        if ready:
            probs = np.asarray(classify(np.stack([image for _, image in ready])), np.float64)
            order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
            for (path, _), row, best in zip(ready, probs, order, strict=True):
                top = [(int(labels[i]), float(row[i])) for i in best]
                low = top[0][1] < min_confidence
                results[path] = Answer(str(path), top[0][0], top[0][1], top, low_confidence=low)
        yield from (results[path] for path in batch)
