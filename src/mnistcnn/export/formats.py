"""The export formats: a traced TorchScript archive or an ONNX graph with the metadata embedded,
each run from its bytes as a `Runner`, and their static post-training int8 versions."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistcnn.errors import ExportError
from mnistcnn.model.nets import IMAGE_SIZE

# The TorchScript archive's extra file holding the same metadata as the ONNX metadata_props.
METADATA_FILE = "mnistcnn.json"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# 17 is the newest opset the TorchScript-based exporter knows well and every onnxruntime >= 1.14
# runs; the graph (Conv, Relu, MaxPool, GlobalAveragePool, Gemm) needs nothing newer.
OPSET = 17
BATCH = 1000  # images per call when an export is run or calibrated
# Training images (seeded, never test images) that set int8 activation ranges: a thousand
# cover every digit many times; more changes the ranges by less than one quantization step.
CALIBRATION_IMAGES = 1000

Runner = Callable[[np.ndarray], np.ndarray]
Meta = dict[str, str]  # ONNX metadata_props, the TorchScript archive's METADATA_FILE


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """Silence the deprecation warnings of TorchScript, its ONNX exporter and torch.ao."""
    # They warn on every call in torch 2.x; they are what this command is asked for and still
    # work: the docs say so once rather than every export printing a screenful.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(reduce_range|quantize_per_tensor).*")
        # The exporter looks for a Python signature that a traced module does not have.
        warnings.filterwarnings("ignore", message="no signature found")
        yield


def example_images() -> torch.Tensor:
    """Two seeded images to trace with (a traced batch of 1 can pass for a broadcast dimension)."""
    return torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def require(module: str) -> Any:
    """Import an optional export dependency, or say how to install it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        package = module.split(".")[0]
        raise ExportError(f"exporting needs {package}: pip install 'mnistcnn[export]'") from None


def to_torchscript(module: nn.Module, meta: Meta) -> bytes:
    """A traced TorchScript archive of `module` with `meta` as its extra file."""
    # Weights in channels_last make torch pick its NHWC convolutions even for NCHW input: a
    # multiple of the CPU throughput of the NCHW kernels for these small convolutions.
    module = copy.deepcopy(module).eval().to(memory_format=torch.channels_last)
    buf = io.BytesIO()
    with quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(module, example_images())
        torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(meta)})
    return buf.getvalue()


def to_onnx(module: nn.Module, meta: Meta) -> bytes:
    """An ONNX model of `module` with a dynamic batch dimension and `meta` as metadata_props."""
    onnx = require("onnx")
    buf = io.BytesIO()
    with quiet_tracing(), torch.no_grad():
        # The TorchScript-based exporter (dynamo=False): no onnxscript dependency, a second to
        # export, and these models have no control flow for torch.export to gain on. It reads
        # the module's state_dict, where `_extra_state` (a dict) breaks it; a traced module
        # holds only tensors.
        traced = torch.jit.trace(module.eval(), example_images())
        torch.onnx.export(
            traced,
            (example_images(),),
            buf,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
            opset_version=OPSET,
        )
    return with_metadata(onnx.load_from_string(buf.getvalue()), meta)


def with_metadata(proto: Any, meta: Meta) -> bytes:
    """`proto` serialized with `meta` as its only metadata_props, after a full check."""
    onnx = require("onnx")
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def torch_runner(module: nn.Module) -> Runner:
    """Run a torch module on float32 numpy images: (N, 1, 28, 28) -> logits (N, 10)."""
    return torch.inference_mode()(lambda images: module(torch.from_numpy(images)).numpy())


def runner(fmt: str, data: bytes, threads: int | None = None) -> Runner:
    """Run an exported model from its bytes (ONNX on onnxruntime's CPU provider)."""
    if fmt != "onnx":
        with quiet_tracing():
            return torch_runner(torch.jit.load(io.BytesIO(data), map_location="cpu"))
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return lambda images: session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def logits_of(run: Runner, images: np.ndarray) -> np.ndarray:
    """Logits for many images, `BATCH` at a time."""
    return np.concatenate([run(images[s : s + BATCH]) for s in range(0, len(images), BATCH)])


def quantize_torch(model: nn.Module, images: torch.Tensor) -> nn.Module:
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
            example_inputs=(images[:1],),
        )
        for start in range(0, len(images), BATCH):
            prepared(images[start : start + BATCH])
        return convert_fx(prepared)


def quantize_onnx(float_onnx: bytes, images: np.ndarray, meta: Meta) -> bytes:
    """int8 of an ONNX model through onnxruntime (QDQ, per-channel weights)."""
    onnx = require("onnx")
    quantization = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(quantization.CalibrationDataReader):  # type: ignore[misc]
        batches = iter({INPUT_NAME: images[s : s + BATCH]} for s in range(0, len(images), BATCH))

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
