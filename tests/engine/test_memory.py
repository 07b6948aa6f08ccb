"""Memory budgets: what would not fit is refused before any work; a small budget still gives the exact
Gram, by chunks."""

import pytest
import torch
from cases import CASES, IO_CASES
from helpers import NO_VMAP_FALLBACK_WARNING, ONE_THREAD, assert_unchanged
from torch import nn

from diagnostics import InsufficientMemoryError, jacobian, ntk_gram
from diagnostics.engine.memory import DEFAULT_FRACTION, available_bytes, resolve_budget


def test_gram_refuses_what_would_not_fit():
    case = CASES["mlp"]
    model, x = case.model(), case.data(50)
    with pytest.raises(InsufficientMemoryError, match=r"NTK Gram \(150 × 150.*probe_size"):
        ntk_gram(model, x, memory_budget=10_000)
    with pytest.raises(InsufficientMemoryError, match="Jacobian"):
        jacobian(model, x, memory_budget=10_000)


def test_small_budget_still_gives_the_exact_gram_by_chunks():
    case = CASES["cnn"]
    model, x = case.model(), case.data(12)
    K_ref = ntk_gram(model, x, strategy="jacrev")
    rows = 12 * 3
    K = ntk_gram(model, x, strategy="jacrev", memory_budget=2 * rows * rows * 8 + 60_000)
    torch.testing.assert_close(K, K_ref, rtol=0, atol=1e-10)


@ONE_THREAD
@NO_VMAP_FALLBACK_WARNING
def test_a_gram_over_the_memory_budget_is_refused_before_any_work():
    case = IO_CASES["transformer-dict"]
    model, batch = case.model(), case.data(40)
    with pytest.raises(InsufficientMemoryError, match=r"NTK Gram \(120 × 120.*memory budget of 1.0 KiB"):
        assert_unchanged(model, lambda: ntk_gram(model, batch, output="logits", memory_budget=1024))
    with pytest.raises(InsufficientMemoryError, match=r"the Jacobian \(120 × \d+\)"):
        jacobian(model, batch, output="logits", memory_budget=1024)


class CountingSamples(nn.Module):
    """An MLP that counts the samples its forward has seen."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 10))
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.net(x)


def test_a_gram_or_jacobian_that_cannot_fit_is_refused_before_any_forward_on_the_whole_batch():
    model = CountingSamples().double()
    x = torch.randn(4000, 5, dtype=torch.float64)
    for fn, what in ((ntk_gram, r"NTK Gram \(40000 × 40000"), (jacobian, r"Jacobian \(40000 × 138\)")):
        model.seen = 0
        with pytest.raises(InsufficientMemoryError, match=what):
            fn(model, x, memory_budget=10**7)
        assert model.seen <= 2  # one forward on at most two samples gave m


def test_the_default_budget_is_half_the_memory_free_on_the_models_device(device):
    """On a GPU the guard reads the GPU's free memory (``torch.cuda.mem_get_info``, not the host's), counting the
    blocks PyTorch's caching allocator keeps for this process but no tensor uses."""
    if device.type == "cuda":
        block = torch.empty(2**28, dtype=torch.uint8, device=device)  # 256 MiB, then cached when freed
        del block
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        assert cached >= 2**28
        free, rtol = torch.cuda.mem_get_info(device)[0] + cached, 0.01  # only this process allocates there
    else:
        free, rtol = available_bytes(device), 0.1  # the host's memory moves with other processes
    budget = resolve_budget(None, device)
    assert abs(budget - DEFAULT_FRACTION * free) <= rtol * free
    model = CountingSamples().double().to(device)
    x = torch.randn(200_000, 5, dtype=torch.float64)  # K would take (2·10⁶)² · 8 bytes = 32 TB
    with pytest.raises(InsufficientMemoryError, match=r"NTK Gram \(2000000 × 2000000.*more than the memory budget"):
        assert_unchanged(model, lambda: ntk_gram(model, x))
    assert model.seen <= 2
