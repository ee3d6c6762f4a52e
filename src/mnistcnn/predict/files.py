"""Image files in -> `Answer`s out, for any classifier of 28x28 digits: a torch model's, or an
exported `.onnx` one run by onnxruntime (this module never imports torch: that costs seconds)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mnistcnn.errors import CheckpointError, ImageError, MnistCnnError
from mnistcnn.photo.digit import Preprocessed, preprocess, steps_panel
from mnistcnn.photo.ink import Found

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
    """Files as given; folders replaced by the image files in them and their subfolders, sorted."""
    for path in map(Path, paths):
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            yield from sorted(p for p in found if not p.is_dir())
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


def save_views(out_dir: Path, name: str, made: list[Preprocessed], steps: Found | None) -> None:
    """What the model saw: `NAME.png` (these 28x28 inputs side by side) and `NAME.steps.png`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    strip = (np.concatenate([d.image for d in made], axis=1) * 255).round().astype(np.uint8)
    Image.fromarray(strip).save(out_dir / f"{name}.png")
    if steps is not None:
        steps_panel(steps, made).save(out_dir / f"{name}.steps.png")


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
    """Answer each image in order, `chunk` at a time; `classify`'s column i is p(`labels[i]`)."""
    files = expand_inputs(paths)
    taken: set[str] = set()  # the names of the views written
    while batch := list(islice(files, chunk)):
        ready: list[tuple[Path, np.ndarray]] = []
        results: dict[Path, Answer] = {}
        for path in batch:
            try:
                found = preprocess(path, steps=save_dir is not None)
            except ImageError as exc:
                results[path] = Answer(str(path), error=str(exc))
                continue
            ready.append((path, found.image))
            if save_dir is not None:
                save_views(Path(save_dir), unique_name(path, taken), [found], found.steps)
        if ready:
            probs = np.asarray(classify(np.stack([image for _, image in ready])), np.float64)
            order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
            for (path, _), row, best in zip(ready, probs, order, strict=True):
                top = [(int(labels[i]), float(row[i])) for i in best]
                low = top[0][1] < min_confidence
                results[path] = Answer(str(path), top[0][0], top[0][1], top, low_confidence=low)
        yield from (results[path] for path in batch)


@dataclass(frozen=True)
class OnnxModel:
    """An `mnistcnn export` run by onnxruntime; the graph itself normalizes [0, 1] pixels."""

    session: Any  # onnxruntime.InferenceSession
    input_name: str
    output_name: str
    labels: tuple[int, ...]
    temperature: float | None  # None: exported from a model trained before `calibrate`

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, 10) for 28x28 images in [0, 1], shaped (N, 28, 28)."""
        batch = np.ascontiguousarray(images, dtype=np.float32)[:, None]
        logits = self.session.run([self.output_name], {self.input_name: batch})[0]
        logits = logits.astype(np.float64) / (self.temperature or 1.0)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


def load_onnx(path: str | Path) -> OnnxModel:
    """Open an `.onnx` file written by `mnistcnn export` for CPU inference."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        import onnxruntime as ort
    except ImportError:
        raise MnistCnnError(
            "running .onnx models needs onnxruntime: pip install 'mnistcnn[export]'"
        ) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no notices on stderr in a CLI
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"not a readable ONNX model: {path} ({detail})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "labels" not in meta or "input" not in meta or "output" not in meta:
        raise CheckpointError(f"not an mnistcnn export (no labels/input/output metadata): {path}")
    labels = tuple(map(int, json.loads(meta["labels"])))
    # The temperature is in the export's training metadata (the model's meta), if valid.
    try:
        t = json.loads(meta.get("training", "{}")).get("temperature")
    except (ValueError, AttributeError):
        t = None
    valid = isinstance(t, int | float) and math.isfinite(t) and t > 0
    return OnnxModel(session, meta["input"], meta["output"], labels, float(t) if valid else None)
