"""`predict --explain`: which pixels drove the answer, by occlusion.

A small patch of the 28x28 input is blanked at every position (one batch of 784 images) and
the drop in the predicted class's probability is recorded at the patch's pixels: large where
the model relied on the ink. Model-agnostic, needs only forward passes, and reads directly as
"without these pixels the model would be less sure". No torchvision; matplotlib draws it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from mnistcnn.calibrate import stored_temperatures
from mnistcnn.model import DigitNet
from mnistcnn.predict.files import Prediction

# A 5x5 patch is about a stroke's width and a third of a digit's height in MNIST's 20x20 box:
# small enough to localize, large enough that blanking it changes the digit.
PATCH = 5


@torch.inference_mode()
def occlusion(
    model: DigitNet, image: np.ndarray, patch: int = PATCH
) -> tuple[np.ndarray, int, float]:
    """(28, 28) map of how much p(predicted label) drops when each pixel's patch is blanked,
    averaged over the patches covering it; also the label and its probability."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.asarray(image, np.float32)).to(device)
    side = x.shape[-1]
    # The calibrated probability, as `predict` prints it (T = 1 for an uncalibrated model).
    t = (stored_temperatures(model.meta) or {"temperature": 1.0})["temperature"]
    probs = torch.softmax(model.eval()(x[None, None]).float() / t, 1)[0]
    label = int(probs.argmax())
    half = patch // 2
    batch = x.repeat(side * side, 1, 1)
    masks = torch.zeros_like(batch, dtype=torch.bool)
    for i in range(side):
        for j in range(side):
            masks[
                i * side + j, max(i - half, 0) : i + half + 1, max(j - half, 0) : j + half + 1
            ] = True
    batch[masks] = 0.0
    occluded = torch.softmax(model(batch[:, None]).float() / t, 1)[:, label]
    drop = probs[label] - occluded
    # Each pixel gets the mean drop over the patches that covered it.
    heat = (drop[:, None, None] * masks).sum(0) / masks.sum(0)
    return heat.cpu().numpy(), label, float(probs[label])


def save_explanation(model: DigitNet, image: np.ndarray, path: str | Path) -> Path:
    """Write the input, its occlusion map and their overlay as one PNG."""
    from mnistcnn.report import figures

    heat, label, probability = occlusion(model, image)
    return figures.save(figures.explain(image, heat, label, probability), path)


def explain_predictions(
    model: DigitNet, predictions: Iterable[Prediction], out_dir: str | Path
) -> Iterator[Path]:
    """`NAME.explain.png` in `out_dir` for each answered file, named like its `NAME.png` view
    (a second `digit` input is `digit.jpg`, then `digit.jpg-2`, ...)."""
    from mnistcnn.photo import preprocess

    taken: set[str] = set()
    for p in predictions:
        if p.error:
            continue
        path = Path(p.path)
        name = next(
            n
            for n in (path.stem, path.name, *(f"{path.name}-{i}" for i in range(2, 10**6)))
            if n not in taken
        )
        taken.add(name)
        yield save_explanation(model, preprocess(path).image, Path(out_dir) / f"{name}.explain.png")
