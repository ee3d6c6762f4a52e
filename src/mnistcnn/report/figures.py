"""Matplotlib figures of a run, each of a fixed pixel size (`SIZES` at `DPI`), built without
pyplot (no global state, no GUI backend); `save` writes a PNG, `to_rgb` renders for TensorBoard."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
Rows = Sequence[Mapping[str, Any]]  # metrics.csv or steps.csv rows
MISTAKES = (3, 8)  # rows and columns of the grid of the most confident mistakes


def _figure(name: str) -> Figure:
    width, height = SIZES[name]
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _per_epoch(ax: Any, title: str) -> None:
    ax.set(title=title, xlabel="epoch")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG of exactly its pixel size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def to_rgb(fig: Figure) -> np.ndarray:
    """The figure rendered as an (H, W, 3) uint8 array (for TensorBoard's add_image)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _column(rows: Rows, key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows])


def curves(rows: Rows, steps: Rows = ()) -> Figure:
    """Loss and accuracy per epoch, train vs validation (plus the logged per-step train loss)."""
    fig = _figure("curves")
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = _column(rows, "epoch")
    if steps:
        per_step = _column(steps, "epoch_float"), _column(steps, "loss")
        loss_ax.plot(*per_step, color=TRAIN, alpha=0.3, lw=1, label="train (per step)")
    for ax, key, title in ((loss_ax, "loss", "Loss"), (acc_ax, "accuracy", "Accuracy (%)")):
        scale = 100 if key == "accuracy" else 1
        train, val = (scale * _column(rows, f"{s}_{key}") for s in ("train", "val"))
        ax.plot(epochs, train, "o-", color=TRAIN, label="train (epoch mean)")
        ax.plot(epochs, val, "s-", color=VAL, label="validation")
        _per_epoch(ax, title)
        ax.legend()
    best = int(np.argmax(_column(rows, "val_accuracy")))
    acc, arrow = 100 * float(rows[best]["val_accuracy"]), {"arrowstyle": "->", "color": VAL}
    where = {"xytext": (-12, -36), "textcoords": "offset points", "ha": "right"}
    acc_ax.annotate(f"best {acc:.2f} %", (epochs[best], acc), **where, color=VAL, arrowprops=arrow)
    return fig


def learning_rate(rows: Rows, steps: Rows = ()) -> Figure:
    """The learning rate over training: per logged step when there are steps, else per epoch."""
    fig = _figure("lr")
    ax = fig.subplots()
    if len(steps) > 1:
        ax.plot(_column(steps, "epoch_float"), _column(steps, "lr"), color=TRAIN)
        ax.set_xlabel("epoch (logged steps)")
    else:
        ax.step(_column(rows, "epoch"), _column(rows, "lr"), "o-", where="post", color=TRAIN)
        ax.set_xlabel("epoch")
    ax.set(title="Learning-rate schedule", ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    return fig


def confusion(matrix: np.ndarray) -> Figure:
    """Counts per (true, predicted) pair on a log colour scale, so single mistakes show."""
    fig = _figure("confusion")
    ax = fig.subplots()
    n, top = len(matrix), max(matrix.max(), 1)
    image = ax.imshow(np.maximum(matrix, 0.5), cmap="Blues", norm=LogNorm(vmin=0.5, vmax=top))
    for t, p in zip(*np.nonzero(matrix), strict=True):
        count = int(matrix[t, p])
        color = "white" if count > math.sqrt(top) else ("#b00" if t != p else "black")
        ax.text(p, t, str(count), ha="center", va="center", fontsize=9, color=color)
    errors = int(matrix.sum() - np.trace(matrix))
    title = f"Confusion matrix (test set): {errors} of {int(matrix.sum())} wrong"
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted digit", ylabel="true digit")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="images (log scale)", shrink=0.85)
    return fig


def mistakes(images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> Figure:
    """The most confident mistakes among `images` (N, 1, 28, 28) in [0, 1], true and predicted."""
    probs = torch.softmax(logits.float().cpu(), 1)
    labels = labels.cpu()
    confidence, preds = probs.max(1)
    wrong = (preds != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][: MISTAKES[0] * MISTAKES[1]]
    fig = _figure("misclassified")
    axes = fig.subplots(*MISTAKES)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, k in zip(axes.flat, worst.tolist(), strict=False):
        true, pred = int(labels[k]), int(preds[k])
        ax.imshow(images[k, 0].cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
        p_pred, p_true = float(probs[k, pred]), float(probs[k, true])
        text = f"true {true}  pred {pred}\np({pred})={p_pred:.2f} p({true})={p_true:.2f}"
        ax.set_title(text, fontsize=9, color="#b00")
    if not len(worst):
        fig.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=16)
    fig.suptitle("The most confident mistakes (test set)", fontsize=13)
    return fig


def kernels(weights: np.ndarray) -> Figure:
    """Conv kernels (C_out, C_in, k, k) in a near-square grid, each on its own +- colour scale."""
    weights = np.asarray(weights)[:, 0]
    fig, count, k = _figure("kernels"), len(weights), weights.shape[-1]
    cols = math.ceil(math.sqrt(count * 1.5))
    for i, ax in enumerate(fig.subplots(math.ceil(count / cols), cols, squeeze=False).flat):
        ax.set_axis_off()
        if i < count:
            limit = float(np.abs(weights[i]).max()) or 1.0
            ax.imshow(weights[i], cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(str(i), fontsize=8)
    about = f"{count} of {k}x{k}; red = positive, blue = negative"
    fig.suptitle(f"First conv layer: learned kernels ({about})", fontsize=13)
    return fig


def feature_maps(image: np.ndarray, maps: Sequence[tuple[str, np.ndarray]], caption: str) -> Figure:
    """One digit and, per conv layer (C, H, W), its 8 most active channels."""
    fig, per_layer = _figure("feature_maps"), 8
    grid = fig.add_gridspec(len(maps) + 1, per_layer)
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(image, cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(caption, fontsize=11)
    ax.set_axis_off()
    for row, (name, acts) in enumerate(maps, 1):
        order = np.argsort(-acts.reshape(len(acts), -1).mean(1))[:per_layer]
        for col in range(per_layer):
            ax = fig.add_subplot(grid[row, col], xticks=[], yticks=[])
            if col < len(order):
                ax.imshow(acts[order[col]], cmap="magma")
                ax.set_title(f"ch {order[col]}", fontsize=8)
            if col == 0:
                c, h, w = acts.shape
                ax.set_ylabel(f"{name}\n{c}x{h}x{w}", fontsize=9)
    fig.suptitle("Feature maps: the most active channels of each conv layer", fontsize=13)
    return fig


def explain(image: np.ndarray, heat: np.ndarray, label: int, probability: float) -> Figure:
    """What the model saw, the occlusion map (red: for the answer, blue: against), both overlaid."""
    fig = _figure("explain")
    titles = ("what the model saw (28x28)", f"occlusion: drop in p({label})", "overlay")
    axes = [
        fig.add_subplot(1, 3, i + 1, xticks=[], yticks=[], title=t) for i, t in enumerate(titles)
    ]
    limit, gray = float(np.abs(heat).max()) or 1.0, {"cmap": "gray_r", "vmin": 0, "vmax": 1}
    axes[0].imshow(image, **gray)
    shown = axes[1].imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(shown, ax=axes[1], shrink=0.8)
    axes[2].imshow(image, **gray)
    axes[2].imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.6)
    fig.suptitle(f"predicted {label} (p={probability:.3f})", fontsize=13)
    return fig


def compare(runs: Mapping[str, Rows]) -> Figure:
    """Validation loss and accuracy per epoch of several runs, overlaid."""
    fig = _figure("compare")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for name, rows in runs.items():
        epochs = _column(rows, "epoch")
        (line,) = loss_ax.plot(epochs, _column(rows, "val_loss"), "o-", ms=5, label=name)
        acc_ax.plot(epochs, 100 * _column(rows, "val_accuracy"), "o-", ms=5, color=line.get_color())
    _per_epoch(loss_ax, "Validation loss")
    _per_epoch(acc_ax, "Validation accuracy (%)")
    loss_ax.legend(fontsize=8)
    return fig
