"""TorchScript: the traced archive with its metadata, and the warnings every tracer prints.

ONNX export and int8 quantization start from the same trace, quieted the same way.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from mnistcnn.model import IMAGE_SIZE

# The TorchScript archive's extra file holding the same metadata as the ONNX metadata_props.
METADATA_FILE = "mnistcnn.json"

Runner = Callable[[np.ndarray], np.ndarray]


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


def to_torchscript(module: nn.Module, meta: dict[str, str]) -> bytes:
    """A traced TorchScript archive of `module` with `meta` as its extra file."""
    # Weights in channels_last make torch pick its NHWC convolutions even for NCHW input: a
    # multiple of the CPU throughput of the NCHW kernels for these small convolutions.
    module = copy.deepcopy(module).eval().to(memory_format=torch.channels_last)
    buf = io.BytesIO()
    with quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(module, example_images())
        torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(meta)})
    return buf.getvalue()


def torch_runner(module: nn.Module) -> Runner:
    """Run a torch module on float32 numpy images: (N, 1, 28, 28) -> logits (N, 10)."""

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(images)).numpy()

    return run


def torchscript_runner(data: bytes) -> Runner:
    """Run a TorchScript archive from its bytes."""
    with quiet_tracing():
        return torch_runner(torch.jit.load(io.BytesIO(data), map_location="cpu"))
