"""The CNN's building blocks: conv blocks, pools, attention and stages, chosen by name."""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group", "layer", "none")
ATTENTIONS = ("none", "se", "spatial", "both")
POOLS = ("max", "avg", "strided")
POOL = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}  # 2x2; "strided" downsamples in the conv
ACTIVATION = {
    "relu": partial(nn.ReLU, inplace=True),
    "gelu": nn.GELU,
    "silu": partial(nn.SiLU, inplace=True),
}
ACTIVATIONS = tuple(ACTIVATION)
CHOICES = {"norm": NORMS, "attention": ATTENTIONS, "pool": POOLS, "activation": ACTIVATIONS}
# GroupNorm's group count: the largest divisor of the width up to 8. Wu & He (2018) use 32, but
# these layers are 8-128 channels wide; 8 keeps at least one channel per group at every width.
GROUPS = 8


class Spec(NamedTuple):
    """What every stage of a CNN shares: conv blocks, skips between them (`residual`), SE gates."""

    kernel_size: int
    norm: str
    activation: str
    residual: bool = False
    se: bool = False


Pool = nn.Module | None


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output side of a convolution or pooling layer: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, GroupNorm, LayerNorm over (C, H, W) (GroupNorm with one group), or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind in ("group", "layer"):
        return nn.GroupNorm(math.gcd(channels, GROUPS) if kind == "group" else 1, channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Conv -> [pool] -> norm -> activation with 'same' padding; no conv bias before a norm."""

    def __init__(self, cin: int, cout: int, spec: Spec, stride: int = 1, pool: Pool = None) -> None:
        # A norm subtracts the mean and adds its own shift, so a conv bias before it is wasted.
        conv = nn.Conv2d(
            cin, cout, spec.kernel_size, stride, spec.kernel_size // 2, bias=spec.norm == "none"
        )
        pooled = [conv] if pool is None else [conv, pool]
        super().__init__(*pooled, norm_layer(spec.norm, cout), ACTIVATION[spec.activation]())


class GlobalAvgPool(nn.Module):
    """(N, C, H, W) -> (N, C, 1, 1), as AdaptiveAvgPool2d(1) but keeping a channels_last layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _global_mean(x)


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    # AdaptiveAvgPool2d's gradient comes back NCHW for a channels_last input, and the backward of
    # the activation before it then runs on mixed layouts, many times slower; a mean over the
    # permuted (N, H, W, C) view keeps channels_last.
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return F.adaptive_avg_pool2d(x, 1)
    return x.permute(0, 2, 3, 1).mean((1, 2))[:, :, None, None]


# Symbolic tracing (int8 export) keeps the layout test above as one opaque call.
torch.fx.wrap("_global_mean")


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): each channel scaled by a gate from all the means."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        hidden = max(channels // 4, 4)  # the bottleneck; 4 keeps narrow stages useful
        self.gate = nn.Sequential(
            GlobalAvgPool(),
            nn.Conv2d(channels, hidden, 1),
            ACTIVATION[activation](),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SpatialAttention(nn.Module):
    """Single-head self-attention across positions (a non-local block, Wang et al. 2018)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 4, 4)  # query/key width: a similarity needs few dimensions
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        # Starts at 0 (as in SAGAN): the block begins as the identity and lets global context
        # in only as far as it helps.
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = (
            layer(x).flatten(2).transpose(1, 2) for layer in (self.query, self.key, self.value)
        )
        mixed = F.scaled_dot_product_attention(q, k, v)  # (N, H*W, C)
        return x + self.scale * mixed.transpose(1, 2).reshape(n, c, h, w)


class Stage(nn.Module):
    """`convs` ConvBlocks at one resolution: the first widens and strides, the last pools."""

    def __init__(
        self, cin: int, cout: int, convs: int, spec: Spec, stride: int, pool: Pool
    ) -> None:
        super().__init__()
        self.first = ConvBlock(cin, cout, spec, stride, pool if convs == 1 else None)
        self.rest = nn.ModuleList(
            ConvBlock(cout, cout, spec, 1, pool if i == convs - 1 else None)
            for i in range(1, convs)
        )
        self.residual = spec.residual
        self.se = SqueezeExcite(cout, spec.activation) if spec.se else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        for block in self.rest:
            x = x + block(x) if self.residual else block(x)
        return self.se(x)
