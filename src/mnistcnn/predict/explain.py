"""`predict --explain`: which pixels drove the answer, by occlusion. A small patch of the 28x28
input is blanked at every position (one batch of 784 images) and the drop in the predicted
class's probability recorded at its pixels: "without these the model would be less sure"."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from mnistcnn.model import DigitNet
from mnistcnn.predict.files import Answer, unique_name
from mnistcnn.temperature import probabilities

# A 5x5 patch is about a stroke's width and a third of a digit's height in MNIST's 20x20 box:
# small enough to localize, large enough that blanking it changes the digit.
PATCH = 5


@torch.inference_mode()
def occlusion(
    model: DigitNet, image: np.ndarray, patch: int = PATCH
) -> tuple[np.ndarray, int, float]:
    """(28, 28) mean drop of p(label) as patches over each pixel are blanked; label, p(label)."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.asarray(image, np.float32)).to(device)
    side = x.shape[-1]
    # The calibrated probability, as `predict` prints it (T = 1 for an uncalibrated model).
    probs = probabilities(model.eval()(x[None, None])[None], model.meta, False)[0]
    label = int(probs.argmax())
    # near[i, r]: a patch centred on row (or column) i covers row r.
    near = (torch.arange(side)[:, None] - torch.arange(side)).abs() <= patch // 2
    masks = (near[:, None, :, None] & near[None, :, None, :]).reshape(-1, side, side).to(device)
    batch = x.repeat(side * side, 1, 1)
    batch[masks] = 0.0
    occluded = probabilities(model(batch[:, None])[None], model.meta, False)[:, label]
    drop = probs[label] - occluded
    # Each pixel gets the mean drop over the patches that covered it.
    heat = (drop[:, None, None] * masks).sum(0) / masks.sum(0)
    return heat.cpu().numpy(), label, float(probs[label])


def explain_predictions(
    model: DigitNet, answers: Iterable[Answer], out_dir: str | Path
) -> Iterator[Path]:
    """Each answered file's input, occlusion map and overlay as `out_dir/NAME.explain.png`."""
    from mnistcnn.photo import preprocess
    from mnistcnn.report import figures

    taken: set[str] = set()
    for p in answers:
        if p.error:
            continue
        path = Path(p.path)
        image = preprocess(path).image
        heat, label, probability = occlusion(model, image)
        figure = figures.explain(image, heat, label, probability)
        yield figures.save(figure, Path(out_dir) / f"{unique_name(path, taken)}.explain.png")
