"""A photo of a digit (or a row of digits) -> the 28x28 MNIST-style images the model expects.

A module per step: decode, light (flatten it), lines (erase ruled lines), ink (its pieces),
digit (choose and redraw it), row (a number's digits), steps (the panel). PIL, numpy and scipy
only: no torchvision (start-up time).
"""

from __future__ import annotations

from mnistcnn.photo.decode import DRAFT_SIDE, MAX_PIXELS, open_image
from mnistcnn.photo.digit import Preprocessed, preprocess, preprocess_image
from mnistcnn.photo.row import Row, segment, segment_image
from mnistcnn.photo.steps import Steps, steps_panel

__all__ = [
    "DRAFT_SIDE",
    "MAX_PIXELS",
    "Preprocessed",
    "Row",
    "Steps",
    "open_image",
    "preprocess",
    "preprocess_image",
    "segment",
    "segment_image",
    "steps_panel",
]
