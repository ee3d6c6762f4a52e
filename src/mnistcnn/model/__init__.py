"""The CNNs, their name -> class registry, and the self-describing state_dict.

Every model takes images in [0, 1], shaped (N, 1, 28, 28), normalizes them itself and returns
logits (N, 10). Its architecture name, arguments, normalization and training metrics travel in
the state_dict under `_extra_state` as plain data, so a saved `.pth` rebuilds itself.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from mnistcnn.errors import CheckpointError, ConfigError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
NUM_CLASSES = 10
IMAGE_SIZE = 28
# Bumped when the extra state changes meaning; a newer file is refused, not misread.
FORMAT_VERSION = 1
# On a CPU, inference runs 2-2.5x slower once a batch's largest feature map outgrows the caches
# (2-core EPYC: fast.yaml's model 52k -> 23k images/s between 3 and 6 MiB, base.yaml's 10k -> 5k
# between 6 and 10 MiB), so batches are sized to keep that map within this many bytes.
CPU_BATCH_BYTES = 4 * 2**20
# On an accelerator, big batches keep it busy.
DEVICE_BATCH = 1000


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output side of a convolution or pooling layer: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def _check_sizes(
    sizes: list[int] | tuple[int, ...], rates: list[float] | tuple[float, ...]
) -> None:
    """Layer widths must be positive and dropout rates in [0, 1)."""
    if min(sizes) < 1:
        raise ConfigError(f"model: layer sizes must be >= 1, got {list(sizes)}")
    if not all(0 <= rate < 1 for rate in rates):
        raise ConfigError(f"model: dropout rates must be in [0, 1), got {list(rates)}")


class DigitNet(nn.Module):
    """Base of every registered model: normalization in `forward`, identity in extra state."""

    arch = ""

    def __init__(self) -> None:
        super().__init__()
        self.args: dict[str, Any] = {}
        self.mean = MNIST_MEAN
        self.std = MNIST_STD
        self.meta: dict[str, Any] = {}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits((images - self.mean) / self.std)

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "arch": self.arch,
            "args": self.args,
            "mean": self.mean,
            "std": self.std,
            "meta": self.meta,
        }

    def set_extra_state(self, state: Any) -> None:
        describe(state)  # validates
        # A file saved before an option existed lacks its key: compare with defaults filled in.
        args = state["args"]
        if state["arch"] == self.arch and isinstance(args, dict):
            with contextlib.suppress(ConfigError):  # invalid args fail the comparison below
                args = full_args(type(self), args)
        if state["arch"] != self.arch or args != self.args:
            raise CheckpointError(
                f"weights are for {state['arch']}{state['args']}, not {self.arch}{self.args}"
            )
        self.mean, self.std, self.meta = state["mean"], state["std"], dict(state["meta"])


def describe(state: Any) -> dict[str, Any]:
    """Check a `_extra_state` dict written by `DigitNet.get_extra_state` and return it."""
    keys = {"format", "arch", "args", "mean", "std", "meta"}
    if not isinstance(state, dict) or not keys <= state.keys():
        raise CheckpointError("the file's _extra_state is not an mnistcnn model description")
    if not isinstance(state["format"], int) or state["format"] > FORMAT_VERSION:
        raise CheckpointError(
            f"the file uses model format {state['format']}, newer than this mnistcnn "
            f"understands ({FORMAT_VERSION}); upgrade mnistcnn"
        )
    if state["arch"] not in MODELS:
        raise CheckpointError(
            f"unknown architecture {state['arch']!r}; known: {', '.join(sorted(MODELS))}"
        )
    return state


class Baseline(DigitNet):
    """The common PyTorch MNIST example: conv-conv-pool-dropout-fc-dropout-fc."""

    arch = "baseline"

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64),
        hidden: int = 128,
        dropout: tuple[float, ...] = (0.25, 0.5),
    ) -> None:
        super().__init__()
        if len(channels) != 2 or len(dropout) != 2:
            raise ConfigError("model: baseline takes exactly two channels and two dropout rates")
        _check_sizes([*channels, hidden], dropout)
        side = conv_out(conv_out(IMAGE_SIZE, 3), 3) // 2  # two valid 3x3 convs, then 2x2 pool
        self.features = nn.Sequential(
            nn.Conv2d(1, channels[0], 3),  # (N, 32, 26, 26)
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 3),  # (N, 64, 24, 24)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 64, 12, 12)
            nn.Dropout(dropout[0]),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(channels[1] * side * side, hidden),  # 9216 -> 128 with the defaults
            nn.ReLU(),
            nn.Dropout(dropout[1]),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


NORMS = ("batch", "group", "layer", "none")
ATTENTIONS = ("none", "se", "spatial", "both")
POOLS = ("max", "avg", "strided")
ACTIVATIONS = ("relu", "gelu", "silu")
# GroupNorm's group count: the largest divisor of the width up to 8. Wu & He (2018) use 32, but
# these layers are 8-128 channels wide; 8 keeps at least one channel per group at every width.
GROUPS = 8


def _norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, GroupNorm, LayerNorm over (C, H, W) (GroupNorm with one group), or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, GROUPS), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _activation(kind: str) -> nn.Module:
    if kind == "gelu":
        return nn.GELU()
    return nn.SiLU(inplace=True) if kind == "silu" else nn.ReLU(inplace=True)


class ConvBlock(nn.Sequential):
    """Conv -> norm -> activation, 'same' padding (`stride` 2 halves the side); the conv has no
    bias when a norm follows, which subtracts the mean and adds its own shift. A `pool` given
    goes between the conv and the norm."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        norm: str = "batch",
        activation: str = "relu",
        stride: int = 1,
        pool: nn.Module | None = None,
    ) -> None:
        conv = nn.Conv2d(
            cin, cout, kernel_size, stride, padding=kernel_size // 2, bias=norm == "none"
        )
        pooled = [conv] if pool is None else [conv, pool]
        super().__init__(*pooled, _norm(norm, cout), _activation(activation))


class GlobalAvgPool(nn.Module):
    """(N, C, H, W) -> (N, C, 1, 1), the mean of each map, as AdaptiveAvgPool2d(1) but with a
    backward that keeps the input's layout. On a channels_last input, AdaptiveAvgPool2d's
    gradient comes back NCHW, and the backward of the ReLU before it, on mixed layouts, runs
    30x slower (7 % of a fast.yaml training step on CPU); a mean over the permuted (N, H, W, C)
    view keeps channels_last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _global_mean(x)


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return F.adaptive_avg_pool2d(x, 1)
    return x.permute(0, 2, 3, 1).mean((1, 2))[:, :, None, None]


# Symbolic tracing (int8 export) keeps the layout test above as one opaque call.
torch.fx.wrap("_global_mean")


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): each channel is scaled by a gate in (0, 1) computed
    from the means of all channels, so the network can turn feature maps up or down per image."""

    def __init__(self, channels: int, activation: str = "relu", reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)  # the bottleneck; 4 keeps narrow stages useful
        self.gate = nn.Sequential(
            GlobalAvgPool(),  # (N, C, 1, 1): one mean per channel
            nn.Conv2d(channels, hidden, 1),
            _activation(activation),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SpatialAttention(nn.Module):
    """Single-head self-attention across positions (a non-local block, Wang et al. 2018): every
    pixel of the map mixes in the values of the pixels its query matches. The result is added
    through a learned scale that starts at 0 (as in SAGAN), so the block begins as the identity
    and the network lets global context in only as far as it helps."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 4, 4)  # query/key width: a similarity needs few dimensions
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (N, H*W, inner)
        k = self.key(x).flatten(2).transpose(1, 2)  # (N, H*W, inner)
        v = self.value(x).flatten(2).transpose(1, 2)  # (N, H*W, C)
        mixed = F.scaled_dot_product_attention(q, k, v)  # (N, H*W, C)
        return x + self.scale * mixed.transpose(1, 2).reshape(n, c, h, w)


class Stage(nn.Module):
    """`convs` ConvBlocks at one resolution; with `residual`, blocks after the first add a skip;
    with `se`, a squeeze-excitation gate on the stage's output. `stride` 2 in the first block
    downsamples (the `strided` pool); a `pool` goes inside the last block, after its conv."""

    def __init__(
        self,
        cin: int,
        cout: int,
        convs: int,
        kernel_size: int,
        norm: str = "batch",
        residual: bool = False,
        activation: str = "relu",
        se: bool = False,
        stride: int = 1,
        pool: nn.Module | None = None,
    ) -> None:
        super().__init__()
        blocks = [
            ConvBlock(
                cout if i else cin,
                cout,
                kernel_size,
                norm,
                activation,
                1 if i else stride,
                pool if i == convs - 1 else None,
            )
            for i in range(convs)
        ]
        self.first, self.rest = blocks[0], nn.ModuleList(blocks[1:])
        self.residual = residual
        self.se = SqueezeExcite(cout, activation) if se else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        for block in self.rest:
            x = x + block(x) if self.residual else block(x)
        return self.se(x)


def _pool(kind: str) -> nn.Module:
    return nn.MaxPool2d(2) if kind == "max" else nn.AvgPool2d(2)


def _choose(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"model.{key}: {value!r} is not one of {', '.join(valid)}")


class CNN(DigitNet):
    """The default: stages of conv blocks (conv, norm, activation), a 2x2 downsampling between
    stages, global average pool, dropout, linear. 28 -> 14 -> 7 with three stages.

    Options (defaults = the original network, same state_dict keys and initial weights):
    `norm` batch|group|layer|none; `residual` skips inside stages; `attention` none|se (a
    squeeze-excitation gate per stage)|spatial (self-attention after the last stage)|both;
    `pool` max|avg|strided (stride-2 first conv of the next stage); `pool_before_norm` moves a
    max or avg pool inside the stage before it, between its last conv and that conv's norm and
    activation, which then run on a quarter of the pixels (at inference the same function when
    the norm's scales are positive, see `fuse`); `stem` > 0 puts a stride-2 conv block with that
    many channels before the first stage, which then starts at 14 px: no 28 px feature map but
    that one conv's (fast.yaml uses both; measured in benchmarks/speed.py);
    `activation` relu|gelu|silu.
    `batch_norm: false` is the old spelling of `norm: none` (files saved before `norm` existed).
    """

    arch = "cnn"

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 128),
        convs_per_stage: tuple[int, ...] = (2, 2, 1),
        kernel_size: int = 3,
        batch_norm: bool = True,
        dropout: float = 0.1,
        residual: bool = False,
        norm: str = "batch",
        attention: str = "none",
        pool: str = "max",
        activation: str = "relu",
        pool_before_norm: bool = False,
        stem: int = 0,
    ) -> None:
        super().__init__()
        if not channels or len(convs_per_stage) != len(channels) or min(convs_per_stage) < 1:
            raise ConfigError(
                "model: convs_per_stage needs one count >= 1 per entry of channels "
                f"(got channels={list(channels)}, convs_per_stage={list(convs_per_stage)})"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"model: kernel_size must be odd and positive, not {kernel_size}")
        _check_sizes(channels, [dropout])
        if stem < 0:
            raise ConfigError(f"model: stem must be >= 0 channels (0: no stem), not {stem}")
        if len(channels) > (4 if stem else 5):
            raise ConfigError(
                "model: at most 5 stages, 4 with a stem (each halves the 28-pixel side)"
            )
        for key, value, valid in (
            ("norm", norm, NORMS),
            ("attention", attention, ATTENTIONS),
            ("pool", pool, POOLS),
            ("activation", activation, ACTIVATIONS),
        ):
            _choose(key, value, valid)
        if not batch_norm:
            if norm not in ("batch", "none"):
                raise ConfigError(
                    f"model: batch_norm: false contradicts norm: {norm}; set only model.norm"
                )
            norm = "none"
        if pool_before_norm and (pool == "strided" or residual):
            raise ConfigError(
                "model: pool_before_norm needs pool max or avg and no residual (a skip adds the "
                "unpooled input)"
            )
        se = attention in ("se", "both")
        stages: list[nn.Module] = []
        cin = 1
        if stem:
            stages.append(ConvBlock(1, stem, kernel_size, norm, activation, stride=2))
            cin = stem
        last = len(channels) - 1
        for i, (cout, convs) in enumerate(zip(channels, convs_per_stage, strict=True)):
            if i and pool != "strided" and not pool_before_norm:
                stages.append(_pool(pool))
            stride = 2 if i and pool == "strided" else 1
            inner = _pool(pool) if pool_before_norm and i < last else None
            stages.append(
                Stage(cin, cout, convs, kernel_size, norm, residual, activation, se, stride, inner)
            )
            cin = cout
        if attention in ("spatial", "both"):
            # After the last stage only: attention costs (H*W)^2 per image, 49^2 at 7x7 but
            # 784^2 at 28x28, and a 7x7 map's positions already each see most of the digit.
            stages.append(SpatialAttention(cin))
        # (N, channels[-1], side, side): 28 halved between stages, and once more by a stem.
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Sequential(
            GlobalAvgPool(),  # (N, channels[-1], 1, 1)
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(cin, NUM_CLASSES),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MODELS: dict[str, type[DigitNet]] = {cls.arch: cls for cls in (Baseline, CNN)}


def full_args(cls: type[DigitNet], kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with every default of `cls` filled in, tuples as lists (weights_only-safe)."""
    try:
        bound = inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model: {exc}") from None
    bound.apply_defaults()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in bound.arguments.items()}


def build_model(
    name: str, kwargs: dict[str, Any], mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> DigitNet:
    """Build a registered model; its full arguments (defaults included) are recorded."""
    if name not in MODELS:
        raise ConfigError(f"model: unknown name {name!r}; valid: {', '.join(sorted(MODELS))}")
    args = full_args(MODELS[name], kwargs)
    model = MODELS[name](**args)
    model.args = args
    model.mean, model.std = float(mean), float(std)
    return model


def model_from_state(state_dict: dict[str, Any]) -> DigitNet:
    """Rebuild a model from a state_dict carrying its `_extra_state` description."""
    if "_extra_state" not in state_dict:
        raise CheckpointError(
            "the file has no _extra_state model description (not saved by mnistcnn?)"
        )
    info = describe(state_dict["_extra_state"])
    try:
        model = build_model(info["arch"], info["args"], info["mean"], info["std"])
    except (ConfigError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the file's model description is invalid: {exc}") from None
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise CheckpointError(f"weights do not fit the {info['arch']} model: {detail}") from None
    return model


@torch.no_grad()
def _probe(model: nn.Module, hooks: dict[nn.Module, Callable[..., None]]) -> None:
    """Run one blank image through `model` in eval mode with forward `hooks` on some of its
    modules; the hooks are removed and the mode restored after."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    was_training = model.training
    try:
        device = next(model.parameters()).device
        model.eval()(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def largest_map(model: nn.Module) -> int:
    """Elements of the largest tensor a module of `model` outputs for one image."""
    sizes = [IMAGE_SIZE * IMAGE_SIZE]

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        if torch.is_tensor(output):
            sizes.append(output[0].numel())

    _probe(model, dict.fromkeys(model.modules(), record))
    return max(sizes)


def inference_batch(model: nn.Module, device: torch.device, views: int = 1) -> int:
    """Images per inference batch, each run as `views` copies: on CPU as many as keep the
    batch's largest float32 feature map within CPU_BATCH_BYTES (16 at least), elsewhere
    DEVICE_BATCH."""
    if device.type != "cpu":
        return max(DEVICE_BATCH // views, 1)
    per_image = largest_map(model) * 4 * views
    return max(min(CPU_BATCH_BYTES // per_image, DEVICE_BATCH), 16)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _side_formula(module: nn.Module, side_in: int, side_out: int) -> str:
    """The output-size arithmetic of a conv or pooling layer, e.g. `(14+2*1-3)//2+1 = 7`."""
    if not isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d) or side_in == side_out == 1:
        return ""

    def first(value: Any) -> int:
        return int(value[0] if isinstance(value, tuple) else value)

    k, s, p = first(module.kernel_size), first(module.stride), first(module.padding)
    assert conv_out(side_in, k, s, p) == side_out, (module, side_in, side_out)
    return f"({side_in}+2*{p}-{k})//{s}+1 = {side_out}"


def layer_table(model: DigitNet) -> list[dict[str, Any]]:
    """One row per layer, in definition order: name, type, output shape of a dummy forward
    (batch dimension as N), the side arithmetic of convs and pools, and the layer's own
    parameters (so the column sums to the model's total). Containers and identities are left
    out."""
    rows: dict[str, dict[str, Any]] = {}
    hooks: dict[nn.Module, Callable[..., None]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
            shape = ("N", *output.shape[1:]) if torch.is_tensor(output) else ()
            side_in = inputs[0].shape[-1] if inputs and inputs[0].dim() == 4 else 0
            formula = _side_formula(module, side_in, output.shape[-1]) if side_in else ""
            rows[name].update(shape=shape, arithmetic=formula)

        return hook

    for name, module in model.named_modules():
        if not name or type(module) in (nn.Sequential, nn.ModuleList, ConvBlock, nn.Identity):
            continue
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows[name] = {"name": name, "type": type(module).__name__, "shape": (), "params": params}
        rows[name]["arithmetic"] = ""
        hooks[module] = record(name)
    _probe(model, hooks)
    return list(rows.values())


def format_layer_table(model: DigitNet) -> str:
    """`layer_table` as aligned text with the input shape first and the totals last."""
    rows = layer_table(model)
    lines = [("layer", "type", "output shape", "params", "side: (in+2p-k)//s+1")]
    lines.append(("input", "", f"(N, 1, {IMAGE_SIZE}, {IMAGE_SIZE})", "", ""))
    for row in rows:
        depth = sum(row["name"].startswith(other["name"] + ".") for other in rows)
        indent = "  " * depth
        params = f"{row['params']:,}" if row["params"] else ""
        shape = "(" + ", ".join(map(str, row["shape"])) + ")" if row["shape"] else "-"
        lines.append((indent + row["name"], row["type"], shape, params, row["arithmetic"]))
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    out = [
        "  ".join(
            cell.rjust(w) if i == 3 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    total = sum(p.numel() for p in model.parameters())
    out.append(
        f"{model.arch}: {total:,} parameters ({count_parameters(model):,} trainable); "
        f"args {model.args}"
    )
    return "\n".join(out)


Module = TypeVar("Module", bound=nn.Module)


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers in `model` (what `fuse` folds away)."""
    return sum(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())


def _fold(layer: nn.Module, norm: nn.Module) -> nn.Module | None:
    """`layer` with `norm` folded in, or None when the pair does not fold."""
    if isinstance(layer, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
        fold: Callable[[Any, Any], nn.Module] = fuse_conv_bn_eval
    elif isinstance(layer, nn.Linear) and isinstance(norm, nn.BatchNorm1d):
        fold = fuse_linear_bn_eval
    else:
        return None
    # Folding in float64 keeps the new weights' rounding well below the 1e-5 the fused model's
    # logits may differ by; the layer then runs in its own dtype again.
    dtype = layer.weight.dtype
    return fold(layer.double(), norm.double()).to(dtype)


def fuse(model: Module) -> Module:
    """A copy for inference with every BatchNorm folded into the Conv2d or Linear before it:
    the same logits (within 1e-5) for less work (export, eval and validation use it).

    Every model keeps its layers in `nn.Sequential`s (a ConvBlock is Conv2d, BatchNorm2d or
    Identity, ReLU), so a foldable pair is two neighbours in one; the BatchNorm becomes Identity.
    A pool between them (`pool_before_norm`) commutes with the BatchNorm's per-channel affine
    map when it is an average, or a max and every scale is positive; otherwise the pair stays.
    """
    fused = copy.deepcopy(model).eval()
    for seq in fused.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            j = i + 2 if i + 2 < len(seq) and _commutes(seq[i + 1], seq[i + 2]) else i + 1
            folded = _fold(seq[i], seq[j])
            if folded is not None:
                seq[i], seq[j] = folded, nn.Identity()
    return fused


def _commutes(pool: nn.Module, norm: nn.Module) -> bool:
    """Whether `norm(pool(x)) == pool(norm(x))` for a BatchNorm2d `norm` in eval mode."""
    if not isinstance(norm, nn.BatchNorm2d) or not isinstance(pool, nn.MaxPool2d | nn.AvgPool2d):
        return False
    return isinstance(pool, nn.AvgPool2d) or norm.weight is None or bool((norm.weight > 0).all())
