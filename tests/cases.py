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


# ----------------------------------------------------------------------------------------------
# Third-party-style models (issue 5): normalisation per sample, dropout, tied weights, and a small
# transformer encoder that takes a HuggingFace-style dict batch and returns a dict.


class GroupNormCNN(nn.Module):
    """Convolutions with GroupNorm (per-sample normalisation: samples stay independent)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.gn1 = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2)
        self.gn2 = nn.GroupNorm(1, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.gn1(self.conv1(x)))
        h = torch.relu(self.gn2(self.conv2(h)))
        return self.head(h.mean((2, 3)))


class DropoutMLP(nn.Module):
    """An MLP with dropout after each hidden layer (measured with dropout off)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(5, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 6), nn.ReLU(), nn.Dropout(0.3)
        )
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class TiedEmbeddingLM(nn.Module):
    """Bag-of-tokens language model whose output projection is the embedding matrix (tied weights)."""

    def __init__(self, vocab: int = 9, dim: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)
        self.out.weight = self.embed.weight  # one tensor, two uses

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.embed(ids).mean(1)))
        return self.out(h)


class TinyEncoder(nn.Module):
    """Token and position embeddings, one ``nn.TransformerEncoderLayer`` (attention + LayerNorm,
    dropout 0.1), a final LayerNorm; called as ``model(input_ids=..., attention_mask=...)`` and
    returning ``{"logits": (n, classes), "token_logits": (n, T, classes)}`` like a HuggingFace model.
    """

    def __init__(
        self, vocab: int = 11, dim: int = 8, heads: int = 2, classes: int = 3, max_len: int = 6
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(max_len, dim))
        self.layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=16, dropout=0.1, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embed(input_ids) + self.pos[: input_ids.shape[1]]
        h = self.norm(self.layer(h, src_key_padding_mask=attention_mask == 0))
        mask = attention_mask.to(h.dtype)[..., None]
        pooled = (h * mask).sum(1) / mask.sum(1)
        return {"logits": self.head(pooled), "token_logits": self.head(h)}


def _token_batch(n: int, vocab: int = 11, length: int = 5) -> dict[str, torch.Tensor]:
    """``input_ids`` and an ``attention_mask`` with trailing padding of varied length."""
    ids = torch.randint(0, vocab, (n, length))
    lengths = torch.randint(2, length + 1, (n,))
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


CASES.update({
    c.id: c
    for c in [
        Case("groupnorm-cnn", GroupNormCNN, lambda n: torch.randn(n, 2, 6, 6)),
        Case("dropout-mlp", DropoutMLP, lambda n: torch.randn(n, 5)),
        Case("tied-embedding", TiedEmbeddingLM, lambda n: torch.randint(0, 9, (n, 4))),
    ]
})


@dataclass(frozen=True)
class IOCase(Case):
    """A case whose model returns a dict/tuple: ``output`` selects the measured tensor."""

    output: object = None


#: Cases that need an output selector (kept apart from CASES, whose users pass none).
IO_CASES = {
    c.id: c
    for c in [
        IOCase("transformer-dict", TinyEncoder, _token_batch, output="logits"),
    ]
}
