"""A torch model's calibrated probabilities for 28x28 digits: the temperatures its file carries
(fitted by `calibrate`), test-time augmentation (TTA), and which pixels drove an answer."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnistcnn.model.nets import DigitNet
from mnistcnn.model.summary import inference_batch
from mnistcnn.photo.digit import preprocess
from mnistcnn.predict.files import Answer, Classifier, unique_name

# (degrees, dx px, dy px) per view: the jitter a centre-of-mass crop and a slanted hand give
# (MNIST is centred to about a pixel); larger moves turn a 1 into a 7 and cost more than they give.
VIEWS = ((0, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1), (10, 0, 0), (-10, 0, 0))
# `--explain` blanks a 5x5 patch, about a stroke's width and a third of a digit's height in
# MNIST's 20x20 box: small enough to localize, large enough that blanking it changes the digit.
PATCH = 5


def stored_temperatures(meta: dict[str, Any]) -> dict[str, float] | None:
    """The temperatures a model file carries, or None (trained before calibration existed)."""
    values = {key: meta.get(key) for key in ("temperature", "tta_temperature")}
    if all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values.values()):
        return {key: float(v) for key, v in values.items()}  # type: ignore[arg-type]
    return None


def probabilities(view_logits: torch.Tensor, meta: dict[str, Any], use_tta: bool) -> torch.Tensor:
    """Calibrated probabilities (N, 10) of logits (V, N, 10): view 0's, or with TTA their mean's."""
    # Logits are averaged: a mean of softmaxes is less sure than any one view. No T stored: T = 1.
    temps = stored_temperatures(meta) or {"temperature": 1.0, "tta_temperature": 1.0}
    if use_tta:
        return F.softmax(view_logits.float().mean(0) / temps["tta_temperature"], dim=-1)
    return F.softmax(view_logits[0].float() / temps["temperature"], dim=-1)


def mean_probabilities(logits: list[torch.Tensor], temperatures: list[float]) -> torch.Tensor:
    """The mean of several models' probabilities, each calibrated by its own temperature."""
    pairs = zip(logits, temperatures, strict=True)
    return torch.stack([F.softmax(x.float() / t, dim=-1) for x, t in pairs]).mean(0)


def log_of(probs: torch.Tensor) -> torch.Tensor:
    """log p, finite even where p underflowed to 0."""
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


class Ensemble(nn.Module):
    """Several models as one: the log of the mean of their calibrated probabilities."""

    def __init__(self, models: list[DigitNet], temperatures: list[float] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        stored = [stored_temperatures(m.meta) for m in models]
        # A member without a temperature (none stored, none given) counts with T = 1.
        self.temperatures = temperatures or [1.0 if t is None else t["temperature"] for t in stored]
        calibrated = temperatures is not None or all(t is not None for t in stored)
        # Calibrated members make calibrated averages: T = 1 on the ensemble's output.
        self.meta = {"temperature": 1.0, "tta_temperature": 1.0} if calibrated else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log_of(mean_probabilities([m(x) for m in self.members], self.temperatures))


def views(images: torch.Tensor, count: int = len(VIEWS)) -> torch.Tensor:
    """(N, 1, H, W) float images -> (V * N, 1, H, W): the first `count` views, view-major."""
    n, _, h, w = images.shape
    thetas = []
    for degrees, dx, dy in VIEWS[:count]:
        cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        # affine_grid works in [-1, 1] coordinates: one pixel is 2 / side.
        thetas.append([[cos, -sin, 2 * dx / w], [sin, cos, 2 * dy / h]])
    theta = torch.tensor(thetas, dtype=images.dtype, device=images.device).repeat_interleave(n, 0)
    grid = F.affine_grid(theta, [len(theta), 1, h, w], align_corners=False)  # (V * N, H, W, 2)
    return F.grid_sample(images.repeat(count, 1, 1, 1), grid, align_corners=False)


@torch.inference_mode()
def view_logits(model: nn.Module, images: torch.Tensor, count: int = len(VIEWS)) -> torch.Tensor:
    """Logits (V, N, 10) of the first `count` views of (N, 1, H, W) float images."""
    return model.eval()(views(images, count)).float().reshape(count, len(images), -1)


def images_view_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int, count: int = len(VIEWS)
) -> torch.Tensor:
    """`view_logits` of uint8 images (N, 28, 28), `batch_size` at a time (0: `inference_batch`)."""
    device = next(model.parameters()).device
    batch_size = batch_size or inference_batch(model, device, count)
    chunks = [
        view_logits(model, images[i : i + batch_size].to(device)[:, None].float() / 255, count)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks, 1).cpu()


@torch.inference_mode()
def digit_logits(model: DigitNet, images: np.ndarray, use_tta: bool = False) -> torch.Tensor:
    """Raw logits (V, N, 10) of 28x28 images in [0, 1], (N, 28, 28): V = 1, or the TTA views."""
    device = next(model.parameters()).device
    batch = torch.from_numpy(np.asarray(images, dtype=np.float32)).to(device).unsqueeze(1)
    logits = view_logits(model, batch) if use_tta else model.eval()(batch).float()[None]
    return logits.cpu()


def classify(model: DigitNet, images: np.ndarray, use_tta: bool = False) -> torch.Tensor:
    """Calibrated probabilities (N, 10) for 28x28 images in [0, 1], shaped (N, 28, 28)."""
    return probabilities(digit_logits(model, images, use_tta), model.meta, use_tta)


def classifier(model: DigitNet, use_tta: bool = False) -> Classifier:
    """`classify` as `files.predict_paths` takes it: numpy images in, numpy probabilities out."""
    return lambda images: classify(model, images, use_tta).numpy()


@torch.inference_mode()
def occlusion(model: DigitNet, image: np.ndarray) -> tuple[np.ndarray, int, float]:
    """(28, 28) mean drop of p(label) as patches over each pixel are blanked; label, p(label)."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.asarray(image, np.float32)).to(device)
    side = x.shape[-1]
    probs = probabilities(model.eval()(x[None, None])[None], model.meta, False)[0]
    label = int(probs.argmax())
    # near[i, r]: a patch centred on row (or column) i covers row r; all side^2 in one batch.
    near = (torch.arange(side)[:, None] - torch.arange(side)).abs() <= PATCH // 2
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
    from mnistcnn.report import figures

    taken: set[str] = set()
    for p in answers:
        if not p.error:
            image = preprocess(p.path).image
            name = unique_name(Path(p.path), taken)
            figure = figures.explain(image, *occlusion(model, image))
            yield figures.save(figure, Path(out_dir) / f"{name}.explain.png")
