"""A photo of a digit (or a row of digits) -> the 28x28 MNIST-style images the model expects.

A module per step: decode, lines (erase ruled lines), ink (flatten the light, find the pieces),
digit (choose and redraw it, the steps' panel), row (a number's digits). PIL, numpy and scipy
only: no torchvision (start-up time).
"""

from __future__ import annotations

from mnistcnn.photo.decode import DRAFT_SIDE, MAX_PIXELS, open_image
from mnistcnn.photo.digit import Preprocessed, Steps, preprocess, preprocess_image, steps_panel
from mnistcnn.photo.row import Row, segment

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
    "steps_panel",
]
