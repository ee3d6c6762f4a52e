"""The loops, functions of their inputs that return metric dicts: `train_one_epoch` over
batches, `predict_logits` and `evaluate` over a split; `recount_batchnorm` after training."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnistcnn.config.schema import AugmentConfig
from mnistcnn.data import Split, augment_batch, eval_batches, to_float
from mnistcnn.errors import TrainingError
from mnistcnn.model.nets import DigitNet
from mnistcnn.model.summary import count_batchnorms, fuse, inference_batch
from mnistcnn.train.build import autocast
from mnistcnn.train.graphs import StepGraph


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    device: torch.device,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    scheduler: Any = None,
    amp: bool = False,
    channels_last: bool = False,
    log_every: int = 50,
    progress: tqdm | None = None,
    epoch: int = 1,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    graph: StepGraph | None = None,
) -> dict[str, float]:
    """One pass over `batches` of (uint8 images, labels); returns mean loss and accuracy."""
    # Losses stay on the device and are checked (and shown) every `log_every` steps, so the
    # loop does not sync each batch; `on_log(step, {loss, accuracy, lr, grad_norm})` then gets
    # the window's means and that step's gradient norm. `scheduler` steps after every batch.
    # `graph` (CUDA) replays each batch's forward and backward as one captured graph.
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    body = functools.partial(
        forward_backward,
        model,
        loss_fn=loss_fn,
        device=device,
        augment=augment,
        generator=generator,
        amp=amp,
        memory_format=memory_format,
    )
    losses: list[torch.Tensor] = []
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = checked = 0
    window = (0, 0)  # (correct, seen) at the last check, for the window's accuracy
    grad_norm = torch.zeros(())

    def check(upto: int, log: bool) -> None:
        nonlocal window, checked
        recent = torch.stack(losses[checked:upto])
        bad = ~torch.isfinite(recent)
        if bad.any():
            first = int(bad.nonzero()[0])
            raise TrainingError(
                f"loss became {recent[first].item()} at epoch {epoch}, batch "
                f"{checked + first + 1}; training stopped. Try a smaller learning rate (optim.lr)"
            )
        loss, right = recent.mean().item(), correct.item()
        if progress is not None:
            progress.set_postfix(loss=f"{loss:.4f}", acc=f"{right / seen:.4f}")
            progress.update(upto - checked)
        if log and on_log is not None:
            accuracy = (right - window[0]) / max(seen - window[1], 1)
            lr, norm = optimizer.param_groups[0]["lr"], grad_norm.item()
            on_log(upto, {"loss": loss, "accuracy": accuracy, "lr": lr, "grad_norm": norm})
            window = (right, seen)
        checked = upto

    for step, (images, labels) in enumerate(batches, 1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if graph is None:
            optimizer.zero_grad(set_to_none=True)
            loss, right = body(images, labels)
        else:
            loss, right = graph(body, images, labels, optimizer)
        if on_log is not None and step % log_every == 0:
            grad_norm = nn.utils.get_total_norm(
                [p.grad for p in model.parameters() if p.grad is not None]
            )
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss)
        correct += right
        seen += len(labels)
        if step % log_every == 0:
            check(step, log=True)
    if len(losses) > checked:
        check(len(losses), log=False)
    return {"loss": torch.stack(losses).mean().item(), "accuracy": correct.item() / seen}


def forward_backward(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss_fn: nn.Module,
    device: torch.device,
    augment: AugmentConfig | None,
    generator: torch.Generator | None,
    amp: bool,
    memory_format: torch.memory_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of uint8 images augmented, scored and back-propagated (gradients accumulate into
    the parameters'); its loss and number of right answers, on the device."""
    images = to_float(images)
    if augment is not None:
        images = augment_batch(images, augment, generator)
    images = images.contiguous(memory_format=memory_format)
    # No cast-weight cache: a CUDA graph cannot capture one, and each weight is cast once a step.
    with autocast(device, amp, cache=False):
        logits = model(images)
        loss = loss_fn(logits.float(), labels)
    loss.backward()
    return loss.detach(), (logits.argmax(1) == labels).sum()


@torch.no_grad()
def recount_batchnorm(
    model: nn.Module,
    split: Split,
    count: int,
    batch_size: int,
    device: torch.device,
    *,
    channels_last: bool = False,
) -> None:
    """Set each BatchNorm's running mean and variance to their average over the first `count`
    images of `split`, the weights as they are."""
    # During training the running statistics are a moving average (mostly of the last twenty
    # batches), taken while the weights still moved; a precise count on the final weights
    # ("PreciseBN") removes that noise.
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    model.eval()  # dropout off; only the BatchNorms count
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, _ in eval_batches(Split(split.images[:count], split.labels[:count]), batch_size):
        images = to_float(images.to(device, non_blocking=True))
        model(images.contiguous(memory_format=memory_format))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    split: Split,
    batch_size: int,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits (N, 10) for a whole split in batches of `batch_size` (0: `inference_batch`)."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # BatchNorms folded into the layers before them: same logits, less work.
    if isinstance(model, DigitNet) and count_batchnorms(model):
        model = fuse(model).to(memory_format=memory_format)
    batch_size = batch_size or inference_batch(model, device)
    outputs = []
    for images, _ in eval_batches(split, batch_size):
        images = to_float(images.to(device, non_blocking=True))
        with autocast(device, amp):
            outputs.append(model(images.contiguous(memory_format=memory_format)).float())
    return torch.cat(outputs)


def evaluate(
    model: nn.Module, split: Split, batch_size: int, device: torch.device, **kwargs: Any
) -> dict[str, float]:
    """Cross-entropy loss and accuracy of `model` on `split`."""
    return scores(predict_logits(model, split, batch_size, device, **kwargs), split.labels)


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Cross-entropy loss and accuracy of `logits` against `labels`."""
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item()
    return {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean().item()}
