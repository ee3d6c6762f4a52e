"""Matplotlib figures of a run: curves, schedule, confusion, mistakes, kernels, feature maps.

Each function takes plain arrays and returns a `matplotlib.figure.Figure` of a fixed pixel size
(`SIZES`, at `DPI`), built without pyplot (no global state, no GUI backend). `save` writes a
PNG; `to_rgb` renders one for TensorBoard. Nothing here reads files or imports torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnistcnn.errors import MnistCnnError

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
except ModuleNotFoundError:
    raise MnistCnnError("pictures need matplotlib: pip install 'mnistcnn[viz]'") from None

DPI = 100
# Width x height in pixels of each figure's PNG (the tests check them).
SIZES = {
    "curves": (1200, 450),
    "lr": (900, 380),
    "confusion": (720, 640),
    "misclassified": (1200, 640),
    "kernels": (900, 620),
    "feature_maps": (1400, 960),
    "explain": (1050, 400),
    "compare": (1200, 450),
}
TRAIN, VAL = "#1f77b4", "#d62728"


def _figure(name: str) -> Figure:
    width, height = SIZES[name]
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG of exactly its pixel size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def to_rgb(fig: Figure) -> np.ndarray:
    """The figure rendered as an (H, W, 3) uint8 array (for TensorBoard's add_image)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows])


def curves(rows: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]] = ()) -> Figure:
    """Loss and accuracy per epoch, train vs validation (plus the logged per-step train loss)."""
    fig = _figure("curves")
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = _column(rows, "epoch")
    if steps:
        loss_ax.plot(
            _column(steps, "epoch_float"),
            _column(steps, "loss"),
            color=TRAIN,
            alpha=0.3,
            lw=1,
            label="train (per step)",
        )
    for ax, key, title in ((loss_ax, "loss", "Loss"), (acc_ax, "accuracy", "Accuracy (%)")):
        scale = 100 if key == "accuracy" else 1
        train, val = (scale * _column(rows, f"{s}_{key}") for s in ("train", "val"))
        ax.plot(epochs, train, "o-", color=TRAIN, label="train (epoch mean)")
        ax.plot(epochs, val, "s-", color=VAL, label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    best = int(np.argmax(_column(rows, "val_accuracy")))
    acc_ax.annotate(
        f"best {100 * float(rows[best]['val_accuracy']):.2f} %",
        (epochs[best], 100 * float(rows[best]["val_accuracy"])),
        xytext=(-12, -36),
        textcoords="offset points",
        ha="right",
        color=VAL,
        arrowprops={"arrowstyle": "->", "color": VAL},
    )
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def learning_rate(
    rows: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]] = ()
) -> Figure:
    """The learning rate over training: per logged step when there are steps, else per epoch."""
    fig = _figure("lr")
    ax = fig.subplots()
    if len(steps) > 1:
        ax.plot(_column(steps, "epoch_float"), _column(steps, "lr"), color=TRAIN)
        ax.set_xlabel("epoch (logged steps)")
    else:
        ax.step(_column(rows, "epoch"), _column(rows, "lr"), "o-", where="post", color=TRAIN)
        ax.set_xlabel("epoch")
    ax.set_title("Learning-rate schedule")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    return fig


def confusion(matrix: np.ndarray, title: str = "Confusion matrix (test set)") -> Figure:
    """Counts per (true, predicted) pair on a log colour scale, so single mistakes show."""
    matrix = np.asarray(matrix)
    fig = _figure("confusion")
    ax = fig.subplots()
    n = len(matrix)
    image = ax.imshow(
        np.maximum(matrix, 0.5), cmap="Blues", norm=LogNorm(vmin=0.5, vmax=max(matrix.max(), 1))
    )
    for t in range(n):
        for p in range(n):
            count = int(matrix[t, p])
            if count:
                dark = count > math.sqrt(max(matrix.max(), 1))
                ax.text(
                    p,
                    t,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if dark else ("#b00" if t != p else "black"),
                )
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    errors = int(matrix.sum() - np.trace(matrix))
    ax.set_title(f"{title}: {errors} of {int(matrix.sum())} wrong")
    fig.colorbar(image, ax=ax, label="images (log scale)", shrink=0.85)
    return fig


def misclassified(
    images: np.ndarray,
    labels: Sequence[int],
    preds: Sequence[int],
    probs: Sequence[float],
    true_probs: Sequence[float],
    title: str = "The most confident mistakes (test set)",
) -> Figure:
    """A grid of digits (N, 28, 28) in [0, 1] with their true and predicted labels."""
    fig = _figure("misclassified")
    cols, rows = 8, 3
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(images):
            continue
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(
            f"true {labels[i]}  pred {preds[i]}\np({preds[i]})={probs[i]:.2f} "
            f"p({labels[i]})={true_probs[i]:.2f}",
            fontsize=9,
            color="#b00",
        )
    if not len(images):
        fig.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=16)
    fig.suptitle(title, fontsize=13)
    return fig


def kernels(weights: np.ndarray, title: str = "First conv layer: learned kernels") -> Figure:
    """The first conv layer's kernels (C_out, C_in, k, k), each on its own symmetric colour
    scale (red positive, blue negative), in a near-square grid."""
    weights = np.asarray(weights)[:, 0]
    fig = _figure("kernels")
    count = len(weights)
    cols = math.ceil(math.sqrt(count * 1.5))
    rows = math.ceil(count / cols)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < count:
            limit = float(np.abs(weights[i]).max()) or 1.0
            ax.imshow(weights[i], cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(str(i), fontsize=8)
    k = weights.shape[-1]
    fig.suptitle(f"{title} ({count} of {k}x{k}; red = positive, blue = negative)", fontsize=13)
    return fig


def feature_maps(
    image: np.ndarray,
    maps: Sequence[tuple[str, np.ndarray]],
    caption: str,
    per_layer: int = 8,
) -> Figure:
    """One digit and, per conv layer, its `per_layer` most active channels (C, H, W)."""
    fig = _figure("feature_maps")
    grid = fig.add_gridspec(len(maps) + 1, per_layer)
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(image, cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(caption, fontsize=11)
    ax.set_axis_off()
    for row, (name, acts) in enumerate(maps, 1):
        order = np.argsort(-acts.reshape(len(acts), -1).mean(1))[:per_layer]
        for col in range(per_layer):
            ax = fig.add_subplot(grid[row, col])
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(order):
                ax.imshow(acts[order[col]], cmap="magma")
                ax.set_title(f"ch {order[col]}", fontsize=8)
            if col == 0:
                c, h, w = acts.shape
                ax.set_ylabel(f"{name}\n{c}x{h}x{w}", fontsize=9)
    fig.suptitle("Feature maps: the most active channels of each conv layer", fontsize=13)
    return fig


def explain(image: np.ndarray, heat: np.ndarray, label: int, probability: float) -> Figure:
    """What the model saw, the occlusion map (red: pixels that supported the answer, blue:
    pixels that argued against it) and the two overlaid."""
    fig = _figure("explain")
    axes = fig.subplots(1, 3)
    limit = float(np.abs(heat).max()) or 1.0
    axes[0].imshow(image, cmap="gray_r", vmin=0, vmax=1)
    axes[0].set_title("what the model saw (28x28)")
    shown = axes[1].imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit)
    axes[1].set_title(f"occlusion: drop in p({label})")
    fig.colorbar(shown, ax=axes[1], shrink=0.8)
    axes[2].imshow(image, cmap="gray_r", vmin=0, vmax=1)
    axes[2].imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.6)
    axes[2].set_title("overlay")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"predicted {label} (p={probability:.3f})", fontsize=13)
    return fig


def compare(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Validation loss and accuracy per epoch of several runs, overlaid."""
    fig = _figure("compare")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for name, rows in runs.items():
        epochs = _column(rows, "epoch")
        (line,) = loss_ax.plot(epochs, _column(rows, "val_loss"), "o-", ms=5, label=name)
        acc_ax.plot(epochs, 100 * _column(rows, "val_accuracy"), "o-", ms=5, color=line.get_color())
    loss_ax.set_title("Validation loss")
    acc_ax.set_title("Validation accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.legend(fontsize=8)
    return fig
