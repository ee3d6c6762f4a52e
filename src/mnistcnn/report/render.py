"""A run's pictures: the model re-scored on the MNIST test set, every figure saved as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistcnn import config as config_mod
from mnistcnn.checkpoint import load_model
from mnistcnn.errors import MnistCnnError
from mnistcnn.report import figures
from mnistcnn.report.runs import Run, read_rows

# The report's pictures, in page order: file stem -> caption.
FIGURES = {
    "curves": "Loss and accuracy per epoch: training vs validation",
    "lr": "Learning-rate schedule",
    "confusion": "Confusion matrix on the 10k test digits",
    "misclassified": "The test digits the model got wrong most confidently",
    "kernels": "The first convolution layer's learned kernels",
    "feature_maps": "One test digit through the convolution layers",
}


def _activations(model: nn.Module, images: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """The output of every activation after a conv layer (C, H, W) for one image."""
    maps: list[tuple[str, np.ndarray]] = []

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if output.dim() == 4:
            maps.append((f"conv {len(maps) + 1}", output[0].detach().float().cpu().numpy()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.inference_mode():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return maps


def _first_conv(model: nn.Module) -> nn.Conv2d:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise MnistCnnError("the model has no convolution layer to draw")
    return conv


def render(run: Run, out_dir: Path, data_dir: str | Path | None = None) -> dict[str, Path]:
    """Write every figure of `run` as a PNG in `out_dir`; their paths by figure name."""
    from mnistcnn.data import default_cache_dir, load_mnist, to_float
    from mnistcnn.metrics import confusion_matrix
    from mnistcnn.model import fuse

    cfg = config_mod.from_dict(config_mod.read_yaml_file(run.config))
    rows = read_rows(run.metrics)
    steps = read_rows(run.steps) if run.steps is not None else []
    model = load_model(run.model)
    root = data_dir or cfg.data.root
    test = load_mnist(root, train=False, download=False, cache=default_cache_dir())
    images = to_float(test.images)
    with torch.inference_mode():  # BatchNorm folded in, as eval does: same logits, less work
        fused = fuse(model.eval())
        logits = torch.cat([fused(batch) for batch in images.split(2000)])
    probs = torch.softmax(logits, 1)
    p = probs[0]
    caption = (
        f"input: test digit #0, a {int(test.labels[0])} "
        f"(predicted {int(p.argmax())}, p={float(p.max()):.3f})"
    )
    made = {
        "curves": figures.curves(rows, steps),
        "lr": figures.learning_rate(rows, steps),
        "confusion": figures.confusion(confusion_matrix(probs.argmax(1), test.labels).numpy()),
        "misclassified": figures.mistakes(images, test.labels, logits),
        "kernels": figures.kernels(_first_conv(model).weight.detach().numpy()),
        "feature_maps": figures.feature_maps(
            images[0, 0].numpy(), _activations(model, images[:1]), caption
        ),
    }
    return {name: figures.save(fig, out_dir / f"{name}.png") for name, fig in made.items()}
