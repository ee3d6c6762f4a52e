"""Training steps replayed as CUDA graphs: the same numbers as eager steps, fresh augmentation
each replay, and a run that learns. Needs a CUDA GPU (benchmarks/gpu.py runs them there)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from mnistcnn.config.schema import AugmentConfig
from mnistcnn.data import Split
from mnistcnn.model.nets import build_model
from mnistcnn.train.graphs import WARMUP_STEPS, StepGraph
from mnistcnn.train.loops import train_one_epoch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def batches(split: Split, size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of `size` from the split on the GPU, then a smaller last one."""
    images, labels = split.images.to(CUDA), split.labels.to(CUDA)
    full = [
        (images[i * size : (i + 1) * size], labels[i * size : (i + 1) * size]) for i in range(count)
    ]
    end = count * size
    return [*full, (images[end : end + size // 3], labels[end : end + size // 3])]


def train(
    model: torch.nn.Module, data: list, graph: StepGraph | None, **kwargs: Any
) -> tuple[dict[str, float], torch.optim.Optimizer]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    result = {}
    for epoch in (1, 2):
        result = train_one_epoch(
            model,
            data,
            optimizer,
            torch.nn.CrossEntropyLoss(label_smoothing=0.1),
            device=CUDA,
            channels_last=True,
            graph=graph,
            epoch=epoch,
            **kwargs,
        )
    return result, optimizer


@pytest.fixture
def net() -> Callable[[], torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": (16, 32), "convs_per_stage": (1, 1), "dropout": 0.0})
    model.to(CUDA, memory_format=torch.channels_last)
    return lambda: copy.deepcopy(model)


def test_replayed_steps_compute_what_eager_steps_do(
    net: Callable[[], torch.nn.Module], mnist_test: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In float32 without TF32: cuDNN may pick other kernels inside a capture, whose float32
    # rounding differs far below the 1e-4 allowed here (TF32's would reach ~1e-3).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    data = batches(mnist_test, 64, WARMUP_STEPS + 5)
    eager, graphed = net(), net()
    graph = StepGraph()
    first, _ = train(eager, data, None)
    second, _ = train(graphed, data, graph)
    assert graph.graph is not None  # the steps after the warm-up were replays
    assert first["accuracy"] == second["accuracy"]
    assert first["loss"] == pytest.approx(second["loss"], rel=1e-5)
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        if torch.is_tensor(a) and a.is_floating_point():
            error = ((a - b).norm() / a.norm().clamp_min(1e-12)).item()
            assert error < 1e-4, f"{name}: relative difference {error:.2e}"


def test_each_replay_draws_new_augmentation(
    net: Callable[[], torch.nn.Module], mnist_test: Split
) -> None:
    # One batch over and over: with a fixed draw its loss would only fall; the losses of replays
    # differ from one another by more than a step's change, since each sees other shifts.
    generator = torch.Generator(CUDA).manual_seed(1)
    images, labels = mnist_test.images[:64].to(CUDA), mnist_test.labels[:64].to(CUDA)
    model, graph = net(), StepGraph(generator)
    augment = AugmentConfig(degrees=30.0, translate=0.2, scale=0.2, ink=0.0)
    body = train_body(model, augment, generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: only draws vary
    losses = [graph(body, images, labels, optimizer)[0].item() for _ in range(WARMUP_STEPS + 4)]
    assert graph.graph is not None
    replayed = losses[WARMUP_STEPS:]
    assert len(set(replayed)) == len(replayed)


def train_body(model: torch.nn.Module, augment: AugmentConfig, generator: torch.Generator) -> Any:
    from functools import partial

    from mnistcnn.train.loops import forward_backward

    return partial(
        forward_backward,
        model,
        loss_fn=torch.nn.CrossEntropyLoss(),
        device=CUDA,
        augment=augment,
        generator=generator,
        amp=True,
        memory_format=torch.channels_last,
    )


def test_a_graphed_run_learns(make_cfg: Callable[..., Any], small_splits: Any) -> None:
    from mnistcnn.train.fitting import fit

    cfg = make_cfg("train.device=cuda")  # configs/tiny.yaml: 8k images, 2 epochs
    assert cfg.train.cuda_graphs
    result = fit(cfg, splits=small_splits(cfg), progress=False)
    assert result["device"].startswith("cuda")
    assert result["test_accuracy"] > 0.9
