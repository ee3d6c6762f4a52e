"""Image files in -> digits out through an exported `.onnx` model and onnxruntime, without torch.

Importing torch costs seconds at start-up; this path imports only numpy, PIL (through
`preprocess`) and onnxruntime. The file carries everything else: the graph normalizes [0, 1]
pixels itself and its metadata names the input, the output and the labels (see `export`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistcnn.errors import CheckpointError, MnistCnnError
from mnistcnn.predict.files import MIN_CONFIDENCE, Prediction, predict_files


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


def predict_paths(
    model: OnnxModel,
    paths: Iterable[str | Path],
    *,
    top_k: int = 1,
    chunk: int = 256,
    save_dir: str | Path | None = None,
    min_confidence: float = MIN_CONFIDENCE,
    use_tta: bool = False,
) -> Iterator[Prediction]:
    """Predict every image, `chunk` files at a time, in input order (see `answers`)."""
    if use_tta:
        raise MnistCnnError("--tta needs a .pth model (its views are made with torch)")
    return predict_files(
        model.probabilities,
        paths,
        labels=model.labels,
        top_k=top_k,
        chunk=chunk,
        save_dir=save_dir,
        min_confidence=min_confidence,
    )
