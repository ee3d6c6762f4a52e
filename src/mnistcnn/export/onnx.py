"""ONNX: export through a TorchScript trace, embed the metadata, run with onnxruntime."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from mnistcnn.errors import ExportError
from mnistcnn.export.torchscript import Runner, example_images, quiet_tracing

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# 17 is the newest opset the TorchScript-based exporter knows well and every onnxruntime >= 1.14
# runs; the graph (Conv, Relu, MaxPool, GlobalAveragePool, Gemm) needs nothing newer.
OPSET = 17


def require(module: str) -> Any:
    """Import an optional export dependency, or say how to install it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ExportError(
            f"exporting needs {module.split('.')[0]}: pip install 'mnistcnn[export]'"
        ) from None


def with_metadata(proto: Any, meta: dict[str, str]) -> bytes:
    """`proto` serialized with `meta` as its only metadata_props, after a full check."""
    onnx = require("onnx")
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def to_onnx(module: nn.Module, meta: dict[str, str]) -> bytes:
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


def onnx_runner(data: bytes, threads: int | None = None) -> Runner:
    """Run an ONNX model from its bytes on onnxruntime's CPU provider."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return lambda images: session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
