"""Test-time augmentation: logits averaged over a few fixed small moves of the 28x28 input.

Logits are averaged, not probabilities: a mean of softmaxes is less sure than any one view, so
it needs its own temperature anyway, and one T fitted on the averaged logits of validation
views calibrates as well as without TTA (`calibrate` stores it as `tta_temperature`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mnistcnn.model import inference_batch

# (degrees, zoom, dx px, dy px) per view. One-pixel shifts and +-10 degrees are the jitter a
# centre-of-mass crop and a slanted hand give (MNIST itself is centred to about a pixel); more
# or larger moves start to turn a 1 into a 7 and cost more time than they return.
VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 1.0, 0.0, 0.0),
    (0.0, 1.0, 1.0, 0.0),
    (0.0, 1.0, -1.0, 0.0),
    (0.0, 1.0, 0.0, 1.0),
    (0.0, 1.0, 0.0, -1.0),
    (10.0, 1.0, 0.0, 0.0),
    (-10.0, 1.0, 0.0, 0.0),
)


def views(images: torch.Tensor, count: int = len(VIEWS)) -> torch.Tensor:
    """(N, 1, H, W) float images -> (V * N, 1, H, W): the first `count` views, view-major."""
    n, _, h, w = images.shape
    thetas = []
    for degrees, zoom, dx, dy in VIEWS[:count]:
        angle = math.radians(degrees)
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        # affine_grid works in [-1, 1] coordinates: one pixel is 2 / side.
        thetas.append([[cos, -sin, 2 * dx / w], [sin, cos, 2 * dy / h]])
    theta = torch.tensor(thetas, dtype=images.dtype, device=images.device)  # (V, 2, 3)
    theta = theta.repeat_interleave(n, 0)  # (V * N, 2, 3)
    grid = F.affine_grid(theta, [len(theta), 1, h, w], align_corners=False)
    batch = images.repeat(count, 1, 1, 1)  # (V * N, 1, H, W)
    return F.grid_sample(batch, grid, align_corners=False, padding_mode="zeros")


@torch.inference_mode()
def view_logits(model: nn.Module, images: torch.Tensor, count: int = len(VIEWS)) -> torch.Tensor:
    """Logits (V, N, 10) of the first `count` views of (N, 1, H, W) float images."""
    return model.eval()(views(images, count)).float().reshape(count, len(images), -1)


def images_view_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int, views: int = len(VIEWS)
) -> torch.Tensor:
    """`view_logits` of uint8 images (N, 28, 28), `batch_size` at a time (0: `inference_batch`)."""
    device = next(model.parameters()).device
    batch_size = batch_size or inference_batch(model, device, views)
    chunks = [
        view_logits(model, images[i : i + batch_size].to(device)[:, None].float() / 255, views)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks, 1).cpu()
