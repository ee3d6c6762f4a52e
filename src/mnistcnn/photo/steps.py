"""The pipeline's intermediate pictures (`--save-preprocessed`) and one panel showing them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from mnistcnn.photo.ink import Box


@dataclass(frozen=True)
class Steps:
    """Intermediate pictures, kept only when asked for."""

    photo: np.ndarray  # (H, W, 3) uint8: the working image
    ink: np.ndarray  # (H, W) the flattened ink map, 1 at the strongest ink
    mask: np.ndarray  # (H, W) bool: what was called ink (lines and specks removed)
    boxes: list[Box] = field(default_factory=list)  # each digit's box
    crops: list[np.ndarray] = field(default_factory=list)  # each digit, stroke-normalized
    images: list[np.ndarray] = field(default_factory=list)  # each digit's 28x28


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(values, 0, 1) * 255).astype(np.uint8), "L")


def _tile(image: Image.Image, title: str, height: int) -> Image.Image:
    scale = height / image.height
    size = (max(1, round(image.width * scale)), height)
    resample = Image.Resampling.NEAREST if scale > 2 else Image.Resampling.BILINEAR
    tile = Image.new("RGB", (max(size[0], 8 * len(title)), height + 16), (40, 40, 40))
    tile.paste(image.convert("RGB").resize(size, resample), (0, 16))
    ImageDraw.Draw(tile).text((2, 2), title, fill=(255, 255, 255))
    return tile


def steps_panel(steps: Steps, height: int = 192) -> Image.Image:
    """One picture of every step: photo, flattened light, ink mask and boxes, crops, 28x28s."""
    mask = _grey(steps.mask.astype(np.float32) * 0.6).convert("RGB")
    draw = ImageDraw.Draw(mask)
    for left, top, right, bottom in steps.boxes:
        draw.rectangle((left, top, right - 1, bottom - 1), outline=(255, 60, 60), width=2)
    tiles = [
        _tile(Image.fromarray(steps.photo, "RGB"), "photo", height),
        _tile(_grey(steps.ink), "flattened light", height),
        _tile(mask, "mask, digit box", height),
    ]
    tiles += [_tile(_grey(c), "crop" if i == 0 else "", height) for i, c in enumerate(steps.crops)]
    tiles += [
        _tile(_grey(m), "28x28" if i == 0 else "", height) for i, m in enumerate(steps.images)
    ]
    gap = 6
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    panel = Image.new("RGB", (width, height + 16), (0, 0, 0))
    x = 0
    for tile in tiles:
        panel.paste(tile, (x, 0))
        x += tile.width + gap
    return panel
