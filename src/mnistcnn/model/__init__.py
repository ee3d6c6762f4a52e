"""The model: layers, the registered networks (nets), `model show`'s summary, BatchNorm fusion.

A saved `.pth` is the model's state_dict and describes itself (see `nets.DigitNet`).
"""

from __future__ import annotations

from mnistcnn.model.nets import (
    IMAGE_SIZE,
    MODELS,
    NUM_CLASSES,
    DigitNet,
    build_model,
    model_from_state,
)
from mnistcnn.model.summary import (
    count_batchnorms,
    count_parameters,
    format_layer_table,
    fuse,
    inference_batch,
    layer_table,
)

__all__ = [
    "IMAGE_SIZE",
    "MODELS",
    "NUM_CLASSES",
    "DigitNet",
    "build_model",
    "count_batchnorms",
    "count_parameters",
    "format_layer_table",
    "fuse",
    "inference_batch",
    "layer_table",
    "model_from_state",
]
