"""An exported `.onnx` model run by onnxruntime, without torch (importing torch costs seconds).

The file carries everything: the graph normalizes [0, 1] pixels itself and its metadata names
the input, the output and the labels (see `export`); `files.predict_paths(model.probabilities,
paths, labels=model.labels)` answers image files with it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistcnn.errors import CheckpointError, MnistCnnError


@dataclass(frozen=True)
class OnnxModel:
    """An onnxruntime session over an mnistcnn export and the metadata it carries."""

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
