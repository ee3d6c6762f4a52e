"""A training step's forward and backward captured once as a CUDA graph and replayed for each
batch of the same shape: a small CNN's step is hundreds of tiny kernels, and on a GPU the host's
launching them, not the arithmetic, is what a step costs; a replay is one launch."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

# A step's batch -> (loss, correct count), with the gradients left in the parameters' .grad.
Body = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
# Eager steps before the capture, on a side stream (as PyTorch's CUDA-graph notes ask): cuDNN,
# cuBLAS and autograd set up their handles and workspaces on first use, which a capture forbids.
WARMUP_STEPS = 3


class StepGraph:
    """Runs `body` eagerly for the first steps, then captures it and replays it for every batch
    of the captured shape (an epoch's smaller last batch runs eagerly)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        # `generator`: a CUDA generator `body` draws from (augmentation); each replay then draws
        # new numbers from it, as the eager step would.
        self.generator = generator
        self.graph: torch.cuda.CUDAGraph | None = None
        self.shape: torch.Size | None = None  # the full batch's, taken from the first step
        self.inputs: tuple[Tensor, Tensor] = ()  # type: ignore[assignment]
        self.outputs: tuple[Tensor, Tensor] = ()  # type: ignore[assignment]
        self.eager_steps = 0

    def __call__(
        self, body: Body, images: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer
    ) -> tuple[Tensor, Tensor]:
        """One batch's (loss, correct) with its gradients in the parameters' .grad."""
        self.shape = self.shape or images.shape
        if self.graph is None and (self.eager_steps < WARMUP_STEPS or images.shape != self.shape):
            self.eager_steps += 1
            return self._warm_up(body, images, labels, optimizer)
        if self.graph is None:
            self._capture(body, images, labels, optimizer)
        if images.shape != self.shape:
            # Zeroed in place: the gradient tensors are the graph's, which its replays write.
            optimizer.zero_grad(set_to_none=False)
            return body(images, labels)
        self.inputs[0].copy_(images)
        self.inputs[1].copy_(labels)
        self.graph.replay()  # type: ignore[union-attr]
        return self.outputs[0].clone(), self.outputs[1].clone()

    def _warm_up(
        self, body: Body, images: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer
    ) -> tuple[Tensor, Tensor]:
        side, main = torch.cuda.Stream(), torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            optimizer.zero_grad(set_to_none=True)
            outputs = body(images, labels)
        main.wait_stream(side)
        return outputs

    def _capture(
        self, body: Body, images: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        # Gradients set to None, so that the captured backward allocates them in the graph's
        # memory and each replay overwrites them (never accumulates).
        optimizer.zero_grad(set_to_none=True)
        self.inputs = (images.clone(), labels.clone())
        self.graph = torch.cuda.CUDAGraph()
        if self.generator is not None and self.generator.device.type == "cuda":
            # Needed by the torch releases of 2025; later ones register a generator on its
            # first use in a capture and deprecate this call.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.graph.register_generator_state(self.generator)
        with torch.cuda.graph(self.graph):
            self.outputs = body(*self.inputs)
