"""Static post-training int8: calibration images, then torch.ao FX or onnxruntime QDQ.

Both use the same recipe: min/max ranges, 8-bit activations, symmetric per-channel int8 weights.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnistcnn.errors import ExportError
from mnistcnn.export.onnx import INPUT_NAME, require, with_metadata
from mnistcnn.export.torchscript import quiet_tracing, to_torchscript

# Training images (seeded, never test images) that set int8 activation ranges: a thousand
# cover every digit many times; more changes the ranges by less than one quantization step.
CALIBRATION_IMAGES = 1000
BATCH = 1000


def calibration_images(data_dir: str | Path, count: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """`count` seeded MNIST training images as floats in [0, 1], (count, 1, 28, 28)."""
    from mnistcnn.data import default_cache_dir, load_mnist, to_float

    if count < 1:
        raise ExportError(f"calibration needs at least 1 image (got {count})")
    train = load_mnist(data_dir, train=True, download=False, cache=default_cache_dir())
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:count]
    return to_float(train.images[pick])


def to_int8(
    fmt: str, model: nn.Module, float_onnx: bytes, images: torch.Tensor, meta: dict[str, str]
) -> bytes:
    """The int8 export: onnxruntime's from `float_onnx`, or torch.ao's traced `model`."""
    if fmt == "onnx":
        return quantize_onnx(float_onnx, images.numpy(), meta)
    return to_torchscript(quantize_torch(model, images), meta)


def quantize_torch(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """int8 through torch.ao FX on the x86 backend: Conv+BN+ReLU fused, per-channel weights."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if "x86" not in torch.backends.quantized.supported_engines:
        raise ExportError("int8 TorchScript needs torch's x86 quantized engine; export to onnx")
    # The x86 default keeps activations to 7 bits against int16 saturation on CPUs without VNNI
    # (before ~2019); that costs a small model 0.5 points, so all 8 bits are used.
    qconfig = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=False),
        weight=PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric
        ),
    )
    with quiet_tracing(), torch.no_grad():
        prepared = prepare_fx(
            copy.deepcopy(model).eval(),
            get_default_qconfig_mapping("x86").set_global(qconfig),
            example_inputs=(calibration[:1],),
        )
        for start in range(0, len(calibration), BATCH):
            prepared(calibration[start : start + BATCH])
        return convert_fx(prepared)


def quantize_onnx(float_onnx: bytes, calibration: np.ndarray, meta: dict[str, str]) -> bytes:
    """int8 of an ONNX model through onnxruntime (QDQ, per-channel weights)."""
    onnx = require("onnx")
    quantization = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(quantization.CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            starts = range(0, len(calibration), BATCH)
            self.batches = iter({INPUT_NAME: calibration[s : s + BATCH]} for s in starts)

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
    return with_metadata(proto, meta)
