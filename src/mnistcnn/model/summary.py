"""A model seen from outside: `model show`'s layer table, sizes, batch sizing, BatchNorm folding.

The table and the sizes come from one image run through forward hooks (`probe`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from mnistcnn.model.layers import ConvBlock, conv_out
from mnistcnn.model.nets import IMAGE_SIZE, DigitNet

# On a CPU, inference slows down severalfold once a batch's largest feature map outgrows the
# caches, so batches are sized to keep that map within this many bytes.
CPU_BATCH_BYTES = 4 * 2**20
DEVICE_BATCH = 1000  # on an accelerator, big batches keep it busy
Module = TypeVar("Module", bound=nn.Module)


@torch.no_grad()
def probe(
    model: nn.Module, hooks: dict[nn.Module, Callable[..., None]], images: Any = None
) -> None:
    """Run `images` (default: one blank image) through `model` in eval mode with forward `hooks`."""
    was_training, device = model.training, next(model.parameters()).device
    if images is None:
        images = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=device)
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        model.eval()(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def largest_map(model: nn.Module) -> int:
    """Elements of the largest tensor a layer of `model` outputs for one image."""
    return max(
        IMAGE_SIZE * IMAGE_SIZE, *(math.prod(row["shape"][1:]) for row in layer_table(model))
    )


def inference_batch(model: nn.Module, device: torch.device, views: int = 1) -> int:
    """Images per batch (`views` copies each): CPU_BATCH_BYTES-sized on CPU, else DEVICE_BATCH."""
    if device.type != "cpu":
        return max(DEVICE_BATCH // views, 1)
    per_image = largest_map(model) * 4 * views  # float32
    return max(min(CPU_BATCH_BYTES // per_image, DEVICE_BATCH), 16)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _arithmetic(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> str:
    """The output-size arithmetic of a conv or pooling layer, e.g. `(14+2*1-3)//2+1 = 7`."""
    if not isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        return ""
    side_in, side_out = inputs[0].shape[-1], output.shape[-1]
    if side_in == side_out == 1:
        return ""
    k, s, p = (
        int(v[0] if isinstance(v, tuple) else v)
        for v in (module.kernel_size, module.stride, module.padding)
    )
    assert conv_out(side_in, k, s, p) == side_out, (module, side_in, side_out)
    return f"({side_in}+2*{p}-{k})//{s}+1 = {side_out}"


def layer_table(model: nn.Module) -> list[dict[str, Any]]:
    """A row per layer but containers: name, type, output shape, side arithmetic, own params."""
    rows: dict[nn.Module, dict[str, Any]] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        shape = ("N", *output.shape[1:]) if torch.is_tensor(output) else ()
        rows[module].update(shape=shape, arithmetic=_arithmetic(module, inputs, output))

    for name, module in model.named_modules():
        if name and type(module) not in (nn.Sequential, nn.ModuleList, ConvBlock, nn.Identity):
            params = sum(p.numel() for p in module.parameters(recurse=False))  # sums to the total
            row = {"name": name, "type": type(module).__name__, "shape": (), "params": params}
            rows[module] = {**row, "arithmetic": ""}
    probe(model, dict.fromkeys(rows, record))
    return list(rows.values())


def format_layer_table(model: DigitNet) -> str:
    """`layer_table` as aligned text with the input shape first and the totals last."""
    rows = layer_table(model)
    lines = [("layer", "type", "output shape", "params", "side: (in+2p-k)//s+1")]
    lines.append(("input", "", f"(N, 1, {IMAGE_SIZE}, {IMAGE_SIZE})", "", ""))
    for row in rows:
        depth = sum(row["name"].startswith(other["name"] + ".") for other in rows)
        params = f"{row['params']:,}" if row["params"] else ""
        shape = "(" + ", ".join(map(str, row["shape"])) + ")" if row["shape"] else "-"
        lines.append(("  " * depth + row["name"], row["type"], shape, params, row["arithmetic"]))
    widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
    justify = (str.ljust, str.ljust, str.ljust, str.rjust, str.ljust)  # params to the right
    cells = [[pad(c, w) for pad, c, w in zip(justify, line, widths, strict=True)] for line in lines]
    out = ["  ".join(line).rstrip() for line in cells]
    total = sum(p.numel() for p in model.parameters())
    trainable = count_parameters(model)
    out.append(f"{model.arch}: {total:,} parameters ({trainable:,} trainable); args {model.args}")
    return "\n".join(out)


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers in `model` (what `fuse` folds away)."""
    return sum(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())


def fuse(model: Module) -> Module:
    """An eval-mode copy with every BatchNorm folded into the Conv2d or Linear before it.

    Every model keeps its layers in `nn.Sequential`s, so a foldable pair is two neighbours in one
    (or two apart around a pool that commutes with the norm); the BatchNorm becomes Identity.
    """
    fused = copy.deepcopy(model).eval()
    for seq in (m for m in fused.modules() if isinstance(m, nn.Sequential)):
        for i in range(len(seq) - 1):
            j = i + 2 if i + 2 < len(seq) and _commutes(seq[i + 1], seq[i + 2]) else i + 1
            layer, norm = seq[i], seq[j]
            pair = type(layer), type(norm)
            if pair not in ((nn.Conv2d, nn.BatchNorm2d), (nn.Linear, nn.BatchNorm1d)):
                continue
            folder = fuse_conv_bn_eval if pair[0] is nn.Conv2d else fuse_linear_bn_eval
            # Folding in float64 keeps the new weights' rounding well below the 1e-5 the fused
            # model's logits may differ by; the layer then runs in its own dtype again.
            dtype = layer.weight.dtype
            seq[i], seq[j] = folder(layer.double(), norm.double()).to(dtype), nn.Identity()
    return fused


def _commutes(pool: nn.Module, norm: nn.Module) -> bool:
    """Whether `norm(pool(x)) == pool(norm(x))` for a BatchNorm2d `norm` in eval mode."""
    # An average commutes with the per-channel affine map; a max only if every scale is positive.
    if not isinstance(norm, nn.BatchNorm2d) or not isinstance(pool, nn.MaxPool2d | nn.AvgPool2d):
        return False
    return isinstance(pool, nn.AvgPool2d) or norm.weight is None or bool((norm.weight > 0).all())
