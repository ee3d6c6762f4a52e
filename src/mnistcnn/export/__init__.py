"""A trained `.pth` -> a deployable file: BatchNorm folding, TorchScript or ONNX, optional int8.

The exported graph takes images in [0, 1] shaped (N, 1, 28, 28) and normalizes them itself, as
the model does; the model's description, normalization and labels are embedded (ONNX
`metadata_props`, a TorchScript extra file), so the file is all a consumer needs. Every export is
run and compared with the source model before it replaces the target file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistcnn import __version__
from mnistcnn.checkpoint import load_model
from mnistcnn.errors import ExportError
from mnistcnn.files import atomic_write
from mnistcnn.model import IMAGE_SIZE, NUM_CLASSES, DigitNet, count_batchnorms, fuse

FORMATS = ("onnx", "torchscript")
QUANTIZATIONS = ("int8",)
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
LABELS = tuple(str(digit) for digit in range(NUM_CLASSES))
# The TorchScript archive's extra file holding the same metadata as the ONNX metadata_props.
METADATA_FILE = "mnistcnn.json"
# 17 is the newest opset the TorchScript-based exporter knows well and every onnxruntime >= 1.14
# runs; the graph (Conv, Relu, MaxPool, GlobalAveragePool, Gemm) needs nothing newer.
OPSET = 17
# A float export must reproduce the source model's logits this closely (they are ~1-10 in size);
# more means a broken export, not rounding.
FLOAT_TOLERANCE = 1e-4
# Training images (seeded, never test images) that set int8 activation ranges: a thousand
# cover every digit many times; more changes the ranges by less than one quantization step.
CALIBRATION_IMAGES = 1000
# Without MNIST at hand, a float export is checked on this many seeded uniform-noise images.
NOISE_IMAGES = 256
_BATCH = 1000

Runner = Callable[[np.ndarray], np.ndarray]


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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # TorchScript, the TorchScript-based ONNX exporter and torch.ao quantization each warn that
    # they are deprecated in torch 2.x on every call. They are what this command is asked for and
    # still work: the README says so once rather than every export printing a screenful.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(reduce_range|quantize_per_tensor).*")
        # The exporter looks for a Python signature that a traced module does not have.
        warnings.filterwarnings("ignore", message="no signature found")
        yield


def _require(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ExportError(
            f"exporting needs {module.split('.')[0]}: pip install 'mnistcnn[export]'"
        ) from None


def metadata(model: DigitNet, *, fused: bool, quantize: str | None) -> dict[str, str]:
    """Everything a consumer needs besides the graph, as strings (ONNX metadata_props)."""
    info = model.get_extra_state()
    return {
        "producer": f"mnistcnn {__version__}",
        "model_format": str(info["format"]),
        "arch": info["arch"],
        "args": json.dumps(info["args"]),
        "input": INPUT_NAME,
        "input_shape": f"N,1,{IMAGE_SIZE},{IMAGE_SIZE}",
        "input_range": "0,1",
        "input_polarity": "white ink on black, like MNIST",
        # Applied inside the graph: a consumer feeds [0, 1] pixels, never normalized ones.
        "normalization": json.dumps({"mean": info["mean"], "std": info["std"], "in_graph": True}),
        "output": OUTPUT_NAME,
        "labels": json.dumps(list(LABELS)),
        "fused": json.dumps(fused),
        "quantize": quantize or "none",
        "training": json.dumps(info["meta"]),
    }


def _example() -> torch.Tensor:
    # Batch 2, not 1: a traced size of 1 can be mistaken for a broadcast dimension.
    return torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE, generator=_seeded())


def to_torchscript(module: nn.Module, meta: dict[str, str]) -> bytes:
    """A traced TorchScript archive of `module` with `meta` as its extra file."""
    # Weights in channels_last make torch pick its NHWC convolutions even for NCHW input: three
    # times the CPU throughput of the NCHW kernels for these small convolutions.
    module = copy.deepcopy(module).eval().to(memory_format=torch.channels_last)
    buf = io.BytesIO()
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(module, _example())
        torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(meta)})
    return buf.getvalue()


def _with_metadata(proto: Any, meta: dict[str, str]) -> bytes:
    onnx = _require("onnx")
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def to_onnx(module: nn.Module, meta: dict[str, str]) -> bytes:
    """An ONNX model of `module` with a dynamic batch dimension and `meta` as metadata_props."""
    onnx = _require("onnx")
    buf = io.BytesIO()
    with _quiet(), torch.no_grad():
        # The TorchScript-based exporter (dynamo=False): no onnxscript dependency, a second to
        # export, and these models have no control flow for torch.export to gain on. It reads
        # the module's state_dict, where `_extra_state` (a dict) breaks it; a traced module
        # holds only tensors.
        traced = torch.jit.trace(module.eval(), _example())
        torch.onnx.export(
            traced,
            (_example(),),
            buf,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
            opset_version=OPSET,
        )
    return _with_metadata(onnx.load_from_string(buf.getvalue()), meta)


def calibration_images(data_dir: str | Path, count: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """`count` seeded MNIST training images as floats in [0, 1], (count, 1, 28, 28)."""
    from mnistcnn.data import default_cache_dir, load_mnist, to_float

    if count < 1:
        raise ExportError(f"calibration needs at least 1 image (got {count})")
    train = load_mnist(data_dir, train=True, download=False, cache=default_cache_dir())
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:count]
    return to_float(train.images[pick])


def quantize_torch(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """Static post-training int8 (torch.ao FX, x86 backend): Conv+BN+ReLU fused, per-channel."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if "x86" not in torch.backends.quantized.supported_engines:
        raise ExportError("int8 TorchScript needs torch's x86 quantized engine; export to onnx")
    # The same recipe as the onnxruntime path: min/max ranges, 8-bit activations, symmetric
    # per-channel weights. The x86 default keeps activations to 7 bits against int16
    # saturation on CPUs without VNNI (before ~2019); that costs a small model 0.5 points.
    qconfig = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=False),
        weight=PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric
        ),
    )
    with _quiet(), torch.no_grad():
        prepared = prepare_fx(
            copy.deepcopy(model).eval(),
            get_default_qconfig_mapping("x86").set_global(qconfig),
            example_inputs=(calibration[:1],),
        )
        for start in range(0, len(calibration), _BATCH):
            prepared(calibration[start : start + _BATCH])
        return convert_fx(prepared)


def quantize_onnx(float_onnx: bytes, calibration: np.ndarray, meta: dict[str, str]) -> bytes:
    """Static post-training int8 of an ONNX model (onnxruntime, QDQ, per-channel weights)."""
    onnx = _require("onnx")
    quantization = _require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(quantization.CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            starts = range(0, len(calibration), _BATCH)
            self.batches = iter({INPUT_NAME: calibration[s : s + _BATCH]} for s in starts)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="mnistcnn-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(onnx.load_from_string(float_onnx), prepared)
        # QDQ rather than QOperator: the portable form; onnxruntime fuses it into QLinearConv.
        # Activations uint8, weights int8 per channel: what x86 integer kernels run fastest.
        quantization.quantize_static(
            prepared,
            quantized,
            Batches(),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
        )
        proto = onnx.load(quantized)
    return _with_metadata(proto, meta)


def runner(fmt: str, data: bytes, threads: int | None = None) -> Runner:
    """Run an exported model from its bytes: (N, 1, 28, 28) float32 -> logits (N, 10)."""
    if fmt == "onnx":
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return lambda images: session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    with _quiet():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(images)).numpy()

    return run


def logits_of(run: Runner, images: np.ndarray) -> np.ndarray:
    """Logits for many images, `_BATCH` at a time."""
    return np.concatenate([run(images[s : s + _BATCH]) for s in range(0, len(images), _BATCH)])


def _torch_runner(model: nn.Module) -> Runner:
    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images)).numpy()

    return run


def _check_set(data_dir: str | Path | None) -> tuple[str, np.ndarray, np.ndarray | None]:
    if data_dir is None:
        noise = torch.rand(NOISE_IMAGES, 1, IMAGE_SIZE, IMAGE_SIZE, generator=_seeded())
        return "noise", noise.numpy(), None
    from mnistcnn.data import default_cache_dir, load_mnist, to_float

    test = load_mnist(data_dir, train=False, download=False, cache=default_cache_dir())
    return "test", to_float(test.images).numpy(), test.labels.numpy()


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


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
    calibration: int = CALIBRATION_IMAGES,
    overwrite: bool = False,
) -> ExportReport:
    """Export a `.pth` model to `out`, check the result against it, then write it atomically."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantize!r}; valid: {', '.join(QUANTIZATIONS)}")
    if quantize and data_dir is None:
        raise ExportError(
            "--quantize int8 calibrates on MNIST training images: pass --data-dir "
            "(the folder holding MNIST/raw/)"
        )
    out = Path(out)
    if out.exists() and out.resolve() == Path(model_path).resolve():
        raise ExportError(f"the output would replace the model being exported: {out}")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists: pass --overwrite to replace it")
    model = load_model(model_path)
    source = fuse(model) if fuse_bn else model
    meta = metadata(model, fused=fuse_bn, quantize=quantize)
    write = to_onnx if fmt == "onnx" else to_torchscript
    float_bytes = write(source, meta)
    data, calibrated = float_bytes, 0
    if quantize:
        images = calibration_images(data_dir, calibration)  # type: ignore[arg-type]
        calibrated = len(images)
        if fmt == "onnx":
            data = quantize_onnx(float_bytes, images.numpy(), meta)
        else:
            data = to_torchscript(quantize_torch(source, images), meta)
    checked_on, images_np, labels = _check_set(data_dir)
    expected = logits_of(_torch_runner(model), images_np)
    got = logits_of(runner(fmt, data), images_np)
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
        checked_on=checked_on,
        images=len(images_np),
        max_abs_diff=diff,
        accuracy=_accuracy(got, labels),
        source_accuracy=_accuracy(expected, labels),
        calibration=calibrated,
    )


def format_report(report: ExportReport) -> str:
    """Two or three human lines: what was written, how it compares, the int8 changes."""
    kind = " ".join(
        [report.format] + ["fused"] * report.fused + [report.quantize] * bool(report.quantize)
    )
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
