"""Image files in -> digit labels and probabilities out.

Directories are expanded to the images inside them and processed in streamed chunks, so memory
stays bounded; a file that cannot be read becomes an error entry and the rest go on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnistcnn.errors import ImageError
from mnistcnn.model import DigitNet
from mnistcnn.preprocess import preprocess

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class Prediction:
    """One file's answer: the label and its probability, the top k, or the error."""

    path: str
    label: int | None = None
    probability: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None


def expand_inputs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given; directories replaced by the image files in them, sorted by name."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


@torch.inference_mode()
def classify(model: DigitNet, images: np.ndarray) -> torch.Tensor:
    """Probabilities (N, 10) for 28x28 images in [0, 1], shaped (N, 28, 28)."""
    device = next(model.parameters()).device
    batch = torch.from_numpy(images).to(device).unsqueeze(1)
    return torch.softmax(model.eval()(batch).float(), dim=1).cpu()


def _save_view(image: np.ndarray, path: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).round().astype(np.uint8)).save(out_dir / f"{path.stem}.png")


def predict_paths(
    model: DigitNet,
    paths: Iterable[str | Path],
    *,
    top_k: int = 1,
    chunk: int = 256,
    save_dir: str | Path | None = None,
) -> Iterator[Prediction]:
    """Predict every image, `chunk` files at a time, in input order."""
    files = expand_inputs(paths)
    while batch := list(islice(files, chunk)):
        ready: list[tuple[Path, np.ndarray]] = []
        results: dict[Path, Prediction] = {}
        for path in batch:
            try:
                image = preprocess(path).image
            except ImageError as exc:
                results[path] = Prediction(str(path), error=str(exc))
                continue
            ready.append((path, image))
            if save_dir is not None:
                _save_view(image, path, Path(save_dir))
        if ready:
            probs = classify(model, np.stack([image for _, image in ready]))
            values, labels = probs.topk(min(top_k, probs.shape[1]), dim=1)
            for (path, _), vals, labs in zip(ready, values.tolist(), labels.tolist(), strict=True):
                top = list(zip(labs, vals, strict=True))
                results[path] = Prediction(str(path), labs[0], vals[0], top)
        yield from (results[path] for path in batch)
