"""A trained `.pth` -> a deployable file: BatchNorm folding, TorchScript or ONNX, optional int8.

Its metadata is all a consumer needs; each export is checked against the `.pth` before writing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistcnn import __version__
from mnistcnn.checkpoint import load_model
from mnistcnn.errors import ExportError
from mnistcnn.export import formats
from mnistcnn.files import atomic_write
from mnistcnn.model.nets import IMAGE_SIZE, NUM_CLASSES, DigitNet
from mnistcnn.model.summary import count_batchnorms, fuse

FORMATS = {"onnx": formats.to_onnx, "torchscript": formats.to_torchscript}
QUANTIZATIONS = ("int8",)
# A float export must reproduce the source model's logits this closely (they are ~1-10 in size);
# more means a broken export, not rounding.
FLOAT_TOLERANCE = 1e-4
# Without MNIST at hand, a float export is checked on this many seeded uniform-noise images.
NOISE_IMAGES = 256


@dataclass(frozen=True)
class ExportReport:
    """What was written and how it compares with the source `.pth` model."""

    path: str
    format: str
    fused: bool
    quantize: str | None
    folded: int  # BatchNorm layers folded into the layer before them
    bytes: int
    float_bytes: int  # the same export without quantization (equal to `bytes` for a float one)
    source_bytes: int
    checked_on: str  # "test" (the MNIST test set) or "noise" (no data given)
    images: int
    max_abs_diff: float  # largest |logit difference| from the source model
    accuracy: float | None  # the exported file's test accuracy (None on noise)
    source_accuracy: float | None
    calibration: int  # training images that calibrated int8 (0 for float)


def metadata(model: DigitNet, *, fused: bool, quantize: str | None) -> dict[str, str]:
    """Everything a consumer needs besides the graph, as strings (ONNX metadata_props)."""
    info = model.get_extra_state()
    return {
        "producer": f"mnistcnn {__version__}",
        "model_format": str(info["format"]),
        "arch": info["arch"],
        "args": json.dumps(info["args"]),
        "input": formats.INPUT_NAME,
        "input_shape": f"N,1,{IMAGE_SIZE},{IMAGE_SIZE}",
        "input_range": "0,1",
        "input_polarity": "white ink on black, like MNIST",
        # Applied inside the graph: a consumer feeds [0, 1] pixels, never normalized ones.
        "normalization": json.dumps({"mean": info["mean"], "std": info["std"], "in_graph": True}),
        "output": formats.OUTPUT_NAME,
        "labels": json.dumps([str(digit) for digit in range(NUM_CLASSES)]),
        "fused": json.dumps(fused),
        "quantize": quantize or "none",
        "training": json.dumps(info["meta"]),
    }


def _mnist(data_dir: str | Path, train: bool, count: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """MNIST images as floats (N, 1, 28, 28) in [0, 1] and their labels; `count`: seeded ones."""
    from mnistcnn.data import default_cache_dir, load_mnist, to_float

    split = load_mnist(data_dir, train=train, download=False, cache=default_cache_dir())
    if not count:
        return to_float(split.images), split.labels.numpy()
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:count]
    return to_float(split.images[pick]), split.labels[pick].numpy()


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((logits.argmax(1) == labels).mean())


def export_model(
    model_path: str | Path,
    out: str | Path,
    *,
    fmt: str,
    fuse_bn: bool = False,
    quantize: str | None = None,
    data_dir: str | Path | None = None,
    calibration: int = formats.CALIBRATION_IMAGES,
    overwrite: bool = False,
) -> ExportReport:
    """Export a `.pth` model to `out`, check the result against it, then write it atomically."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantize!r}; valid: {', '.join(QUANTIZATIONS)}")
    if quantize and data_dir is None:
        raise ExportError(
            "--quantize int8 calibrates on MNIST training images: pass --data-dir "
            "(the folder holding MNIST/raw/)"
        )
    if out.exists() and out.resolve() == Path(model_path).resolve():
        raise ExportError(f"the output would replace the model being exported: {out}")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists: pass --overwrite to replace it")
    model = load_model(model_path)
    source = fuse(model) if fuse_bn else model
    meta = metadata(model, fused=fuse_bn, quantize=quantize)
    data = float_bytes = FORMATS[fmt](source, meta)
    calibrated = 0
    if quantize:
        if calibration < 1:
            raise ExportError(f"calibration needs at least 1 image (got {calibration})")
        # int8 in both formats: min/max ranges, 8-bit activations, symmetric per-channel weights.
        images = _mnist(data_dir, True, calibration)[0]  # type: ignore[arg-type]
        if fmt == "onnx":
            data = formats.quantize_onnx(float_bytes, images.numpy(), meta)
        else:
            data = formats.to_torchscript(formats.quantize_torch(source, images), meta)
        calibrated = len(images)
    labels = None
    if data_dir is None:
        seeded = torch.Generator().manual_seed(0)
        check = torch.rand(NOISE_IMAGES, 1, IMAGE_SIZE, IMAGE_SIZE, generator=seeded).numpy()
    else:
        images, labels = _mnist(data_dir, False)
        check = images.numpy()
    expected = formats.logits_of(formats.torch_runner(model), check)
    got = formats.logits_of(formats.runner(fmt, data), check)
    diff = float(np.abs(got - expected).max())
    if not quantize and diff > FLOAT_TOLERANCE:
        raise ExportError(
            f"the exported {fmt} model disagrees with {model_path}: max |logit difference| "
            f"{diff:.2e} > {FLOAT_TOLERANCE:.0e}; nothing written"
        )
    atomic_write(out, lambda f: f.write(data))
    return ExportReport(
        path=str(out),
        format=fmt,
        fused=fuse_bn,
        quantize=quantize,
        folded=count_batchnorms(model) - count_batchnorms(source),
        bytes=len(data),
        float_bytes=len(float_bytes),
        source_bytes=Path(model_path).stat().st_size,
        checked_on="noise" if labels is None else "test",
        images=len(check),
        max_abs_diff=diff,
        accuracy=_accuracy(got, labels),
        source_accuracy=_accuracy(expected, labels),
        calibration=calibrated,
    )


def format_export(report: ExportReport) -> str:
    """Two or three human lines: what was written, how it compares, the int8 changes."""
    kind = " ".join(filter(None, [report.format, "fused" * report.fused, report.quantize]))
    lines = [
        f"wrote {report.path} ({kind}): {report.bytes / 1e3:.1f} kB "
        f"(.pth {report.source_bytes / 1e3:.1f} kB); {report.folded} BatchNorm folded"
    ]
    check = f"max |logit difference| from the .pth {report.max_abs_diff:.2e}"
    if report.accuracy is None or report.source_accuracy is None:
        lines.append(f"checked on {report.images} noise images: {check}")
    else:
        change = 100 * (report.accuracy - report.source_accuracy)
        lines.append(
            f"test accuracy {100 * report.accuracy:.2f} % (.pth {100 * report.source_accuracy:.2f}"
            f" %, {change:+.2f} points) on {report.images} images; {check}"
        )
    if report.quantize:
        lines.append(
            f"{report.quantize}: {report.float_bytes / report.bytes:.2f}x smaller than the float "
            f"{report.format} ({report.float_bytes / 1e3:.1f} kB), calibrated on "
            f"{report.calibration} training images"
        )
    return "\n".join(lines)
