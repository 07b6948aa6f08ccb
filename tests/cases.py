"""A registry of seeded test models and inputs shared by the tests.

Each case builds lazily (float64 by default) and has a readable id, so a failure names the
architecture. Batch sizes are deliberately unequal to the output counts and to each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Case:
    """A model factory and an input factory, both seeded."""

    id: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], object]
    has_batch_norm: bool = False

    def model(self, dtype: torch.dtype = torch.float64) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = self.build().to(dtype)
            for m in model.modules():  # non-trivial running statistics
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        return model

    def data(self, n: int, dtype: torch.dtype = torch.float64) -> object:
        with torch.random.fork_rng():
            torch.manual_seed(1)
            x = self.inputs(n)
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.to(dtype)
        return x


class TinyCNN(nn.Module):
    """Two convolutions (one strided, one padded) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2)
        self.head = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        return self.head(h.flatten(1))


class TinyResNet(nn.Module):
    """Conv stem, one residual block with batch norm and an in-place ReLU, pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn0(self.stem(x)))
        y = self.relu(self.bn1(self.conv1(h)))
        y = self.bn2(self.conv2(y))
        h = self.relu(y + h)
        return self.head(h.mean((2, 3)))


class TiedMLP(nn.Module):
    """A linear layer applied twice (a reused module): the structured path must not cover it."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.head(h)


class ExtraUseMLP(nn.Module):
    """A head weight also used functionally elsewhere (caught by the autograd guard)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 4)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        return self.head(h) + torch.nn.functional.linear(h**2, self.head.weight)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))


CASES = {
    c.id: c
    for c in [
        Case("mlp", _mlp, lambda n: torch.randn(n, 5)),
        Case("cnn", TinyCNN, lambda n: torch.randn(n, 1, 8, 8)),
        Case("resnet-bn", TinyResNet, lambda n: torch.randn(n, 1, 6, 6), has_batch_norm=True),
        Case("reused-module", TiedMLP, lambda n: torch.randn(n, 5)),
        Case("extra-weight-use", ExtraUseMLP, lambda n: torch.randn(n, 5)),
        Case("sequence-linear", lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Flatten(), nn.Linear(8, 2)),
             lambda n: torch.randn(n, 2, 3)),
    ]
}
