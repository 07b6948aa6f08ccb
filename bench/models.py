"""The benchmarked models and data: digits-sized inputs, 10 outputs, seeded."""

from __future__ import annotations

import torch
from torch import nn

M = 10  # outputs


class CNN(nn.Module):
    """Two convolutions (one strided) and a linear head, on 1×8×8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = nn.Linear(32 * 4 * 4, M)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        return self.head(h.flatten(1))


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


class ResNet(nn.Module):
    """Conv stem with batch norm, two residual blocks, global average pooling, linear head."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.blocks = nn.Sequential(Block(channels), Block(channels))
        self.head = nn.Linear(channels, M)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(torch.relu(self.bn(self.stem(x))))
        return self.head(h.mean((2, 3)))


def mlp() -> nn.Module:
    """Width 256, three linear layers, tanh."""
    return nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, M))


MODELS = {"MLP": (mlp, (64,)), "CNN": (CNN, (1, 8, 8)), "ResNet-BN": (ResNet, (1, 8, 8))}


def build(name: str, n: int, device: str = "cpu") -> tuple[nn.Module, torch.Tensor]:
    """The model (eval mode, non-trivial batch-norm statistics) and ``n`` inputs, both seeded."""
    factory, shape = MODELS[name]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = factory()
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.data.uniform_(0.5, 1.5)
                mod.bias.data.uniform_(-0.5, 0.5)
        torch.manual_seed(1)
        x = torch.randn(n, *shape)
    return model.eval().to(device), x.to(device)
