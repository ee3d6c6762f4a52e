"""A torch model's calibrated probabilities for 28x28 digit images, with or without TTA."""

from __future__ import annotations

import numpy as np
import torch

from mnistcnn.model import DigitNet
from mnistcnn.predict import tta
from mnistcnn.predict.files import Classifier
from mnistcnn.temperature import probabilities


@torch.inference_mode()
def digit_logits(model: DigitNet, images: np.ndarray, use_tta: bool = False) -> torch.Tensor:
    """Raw logits (V, N, 10) of 28x28 images in [0, 1], (N, 28, 28): V = 1, or the TTA views."""
    device = next(model.parameters()).device
    batch = torch.from_numpy(np.asarray(images, dtype=np.float32)).to(device).unsqueeze(1)
    if use_tta:
        return tta.view_logits(model, batch).cpu()
    return model.eval()(batch).float()[None].cpu()


def classify(model: DigitNet, images: np.ndarray, use_tta: bool = False) -> torch.Tensor:
    """Calibrated probabilities (N, 10) for 28x28 images in [0, 1], shaped (N, 28, 28)."""
    return probabilities(digit_logits(model, images, use_tta), model.meta, use_tta)


def classifier(model: DigitNet, use_tta: bool = False) -> Classifier:
    """`classify` as `files.predict_paths` takes it: numpy images in, numpy probabilities out."""
    return lambda images: classify(model, images, use_tta).numpy()
