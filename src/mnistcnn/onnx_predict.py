"""Image files in -> digits out through an exported `.onnx` model and onnxruntime, without torch.

Importing torch costs seconds at start-up; this path imports only numpy, PIL (through
`preprocess`) and onnxruntime. The file carries everything else: the graph normalizes [0, 1]
pixels itself and its metadata names the input, the output and the labels (see `export`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mnistcnn.errors import CheckpointError, ImageError, MnistCnnError
from mnistcnn.preprocess import Steps, preprocess, steps_panel

# Kept equal to predict.IMAGE_SUFFIXES, which cannot be imported here without torch.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class Prediction:
    """One file's answer: the label and its probability, the top k, or the error.

    The same fields as `predict.Prediction`, so the CLI prints either alike.
    """

    path: str
    label: int | None = None
    probability: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None
    low_confidence: bool = False


@dataclass(frozen=True)
class OnnxModel:
    """An onnxruntime session over an mnistcnn export and the metadata it carries."""

    session: Any  # onnxruntime.InferenceSession
    input_name: str
    output_name: str
    labels: tuple[int, ...]
    metadata: dict[str, str]
    # The exported model's temperature (`calibrate`), None for one trained before it existed.
    temperature: float | None = None

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, 10) for 28x28 images in [0, 1], shaped (N, 28, 28)."""
        batch = np.ascontiguousarray(images, dtype=np.float32)[:, None]
        logits = self.session.run([self.output_name], {self.input_name: batch})[0]
        logits = logits.astype(np.float64) / (self.temperature or 1.0)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxModel:
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
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"not a readable ONNX model: {path} ({detail})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "labels" not in meta or "input" not in meta or "output" not in meta:
        raise CheckpointError(f"not an mnistcnn export (no labels/input/output metadata): {path}")
    labels = tuple(map(int, json.loads(meta["labels"])))
    return OnnxModel(session, meta["input"], meta["output"], labels, meta, _temperature(meta))


def _temperature(meta: dict[str, str]) -> float | None:
    """The temperature in the export's training metadata (the model's meta), if valid."""
    try:
        value = json.loads(meta.get("training", "{}")).get("temperature")
    except (ValueError, AttributeError):
        return None
    ok = isinstance(value, int | float) and math.isfinite(value) and value > 0
    return float(value) if ok else None


def expand_inputs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given; directories replaced by the image files in them, sorted by name."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


class _Views:
    """Writes what the model saw, as `predict._Views` does: `<stem>.png` (the 28x28 input) and
    `<stem>.steps.png` (every preprocessing step), one name per input file."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.taken: set[str] = set()

    def save(self, path: Path, image: np.ndarray, steps: Steps | None) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # digit.png and digit.jpg are two inputs: the second keeps its suffix in the name.
        name = next(
            n
            for n in (path.stem, path.name, *(f"{path.name}-{i}" for i in range(2, 10**6)))
            if n not in self.taken
        )
        self.taken.add(name)
        Image.fromarray((image * 255).round().astype(np.uint8)).save(self.out_dir / f"{name}.png")
        if steps is not None:
            steps_panel(steps).save(self.out_dir / f"{name}.steps.png")


def predict_paths(
    model: OnnxModel,
    paths: Iterable[str | Path],
    *,
    top_k: int = 1,
    chunk: int = 256,
    save_dir: str | Path | None = None,
    min_confidence: float = 0.5,  # predict.MIN_CONFIDENCE, which cannot be imported without torch
    use_tta: bool = False,
) -> Iterator[Prediction]:
    """Predict every image, `chunk` files at a time, in input order (as `predict.predict_paths`)."""
    if use_tta:
        raise MnistCnnError("--tta needs a .pth model (its views are made with torch)")
    files = expand_inputs(paths)
    views = _Views(save_dir) if save_dir is not None else None
    while batch := list(islice(files, chunk)):
        ready: list[tuple[Path, np.ndarray]] = []
        results: dict[Path, Prediction] = {}
        for path in batch:
            try:
                found = preprocess(path, steps=views is not None)
            except ImageError as exc:
                results[path] = Prediction(str(path), error=str(exc))
                continue
            ready.append((path, found.image))
            if views is not None:
                views.save(path, found.image, found.steps)
        if ready:
            probs = model.probabilities(np.stack([image for _, image in ready]))
            order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
            for (path, _), row, best in zip(ready, probs, order, strict=True):
                top = [(model.labels[i], float(row[i])) for i in best]
                low = top[0][1] < min_confidence
                results[path] = Prediction(str(path), top[0][0], top[0][1], top, low_confidence=low)
        yield from (results[path] for path in batch)
