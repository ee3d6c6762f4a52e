"""BatchNorm folding for inference: the same logits (within 1e-5) for less work.

Every model keeps its layers in `nn.Sequential`s (a ConvBlock is Conv2d, BatchNorm2d or
Identity, activation), so a foldable pair is two neighbours in one; the BatchNorm becomes Identity.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

Module = TypeVar("Module", bound=nn.Module)


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers in `model` (what `fuse` folds away)."""
    return sum(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())


def _fold(layer: nn.Module, norm: nn.Module) -> nn.Module | None:
    """`layer` with `norm` folded in, or None when the pair does not fold."""
    if isinstance(layer, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
        folder: Callable[[Any, Any], nn.Module] = fuse_conv_bn_eval
    elif isinstance(layer, nn.Linear) and isinstance(norm, nn.BatchNorm1d):
        folder = fuse_linear_bn_eval
    else:
        return None
    # Folding in float64 keeps the new weights' rounding well below the 1e-5 the fused model's
    # logits may differ by; the layer then runs in its own dtype again.
    dtype = layer.weight.dtype
    return folder(layer.double(), norm.double()).to(dtype)


def fuse(model: Module) -> Module:
    """An eval-mode copy with every BatchNorm folded into the Conv2d or Linear before it."""
    fused = copy.deepcopy(model).eval()
    for seq in fused.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            # A pool between them (`pool_before_norm`) is skipped where it commutes.
            j = i + 2 if i + 2 < len(seq) and _commutes(seq[i + 1], seq[i + 2]) else i + 1
            folded = _fold(seq[i], seq[j])
            if folded is not None:
                seq[i], seq[j] = folded, nn.Identity()
    return fused


def _commutes(pool: nn.Module, norm: nn.Module) -> bool:
    """Whether `norm(pool(x)) == pool(norm(x))` for a BatchNorm2d `norm` in eval mode."""
    # An average commutes with the per-channel affine map; a max only if every scale is positive.
    if not isinstance(norm, nn.BatchNorm2d) or not isinstance(pool, nn.MaxPool2d | nn.AvgPool2d):
        return False
    return isinstance(pool, nn.AvgPool2d) or norm.weight is None or bool((norm.weight > 0).all())
