"""The baseline to beat: the common PyTorch MNIST example's recipe, reproduced.

Its network (conv32-conv64-pool-dropout-fc128-dropout-fc10, log-softmax + NLL), Adadelta at
lr 1.0, StepLR gamma 0.7 per epoch, batch 64 (test batch 1000), and per-sample torchvision
`ToTensor` + `Normalize` transforms through a standard `DataLoader`. Used by `speed.py`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


class ReferenceNet(nn.Module):
    """The example's network, layer for layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)  # 64 x 12 x 12, as the example hard-codes it
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


CPU = torch.device("cpu")
TRANSFORM = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])


def loaders(root: str) -> tuple[DataLoader, DataLoader]:
    """The example's train (batch 64, shuffled) and test (batch 1000) loaders."""
    train = datasets.MNIST(root, train=True, download=False, transform=TRANSFORM)
    test = datasets.MNIST(root, train=False, download=False, transform=TRANSFORM)
    return DataLoader(train, batch_size=64, shuffle=True), DataLoader(test, batch_size=1000)


@torch.no_grad()
def test_accuracy(model: nn.Module, test_loader: DataLoader, device: torch.device = CPU) -> float:
    """The example's test loop: accuracy over the 10k test images."""
    model.eval()
    correct = 0
    for data, labels in test_loader:
        correct += (model(data.to(device)).argmax(1).cpu() == labels).sum().item()
    return correct / len(test_loader.dataset)


def train_until(
    root: str, target: float, max_epochs: int, seed: int = 1, device: torch.device = CPU
) -> Iterator[dict]:
    """Train epoch by epoch; yield the test accuracy and the cumulative training seconds (data
    loading included, testing excluded) after each epoch; stop at `target` or `max_epochs`.
    On a GPU each batch is copied there, as the example does with --cuda."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    train_loader, test_loader = loaders(root)
    model = ReferenceNet().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    train_seconds = time.perf_counter() - started
    for epoch in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for data, labels in train_loader:
            optimizer.zero_grad()
            F.nll_loss(model(data.to(device)), labels.to(device)).backward()
            optimizer.step()
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - t0
        accuracy = test_accuracy(model, test_loader, device)
        yield {"epoch": epoch, "accuracy": accuracy, "seconds": train_seconds, "model": model}
        if accuracy >= target:
            return
