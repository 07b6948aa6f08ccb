"""Helpers shared by several test files (the seeded test models themselves are in ``cases.py``).

Importable from every folder of ``tests/`` as ``from helpers import ...`` (``tests/conftest.py`` puts
``tests/`` on the path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cases import CASES
from torch import nn

from diagnostics import AlignedTraining, jacobian, ntk_gram, reference_jacobian
from diagnostics.width.config import SweepConfig

#: The repository's root folder.
ROOT = Path(__file__).resolve().parents[1]

F64 = torch.float64
ATOL = 1e-10

#: Input shape of the digits images, (channels, height, width).
DIGITS = (1, 8, 8)

#: One intra-op thread while the marked tests run (the ``one_thread`` fixture of ``conftest.py``).
ONE_THREAD = pytest.mark.usefixtures("one_thread")
#: torch.func's warning that an operator has no batching rule (and falls back to a loop).
NO_VMAP_FALLBACK_WARNING = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


# -- measurements: against the reference, and the model left alone -----------------------------


def assert_matches_reference(model, x, strategies=("structured", "jacrev", "vjp"), **kwargs):
    """``J`` and ``K`` of every strategy equal the naive autograd loop in float64 to 1e-10."""
    J_ref = reference_jacobian(model, x, **kwargs)
    for strategy in strategies:
        J = jacobian(model, x, strategy=strategy, **kwargs)
        K = ntk_gram(model, x, strategy=strategy, **kwargs)
        assert J.dtype == F64 and J.shape == J_ref.shape, strategy
        where = lambda s, st=strategy: f"{st}: {s}"  # noqa: E731
        torch.testing.assert_close(J, J_ref, rtol=0, atol=ATOL, msg=where)
        torch.testing.assert_close(K, J_ref @ J_ref.T, rtol=0, atol=ATOL, msg=where)
    return J_ref


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "objects": {k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "hooks": {
            name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for name, m in model.named_modules()
        },
        "track": {name: getattr(m, "track_running_stats", None) for name, m in model.named_modules()},
        "tf32": tf32_switches(),
        "rng": random_states(model),
    }


def tf32_switches() -> tuple:
    """The global TF32 switches as torch holds them: the ``fp32_precision`` strings (generic, CUDA matmul,
    cuDNN, its convolutions and RNNs) from torch 2.9, the legacy ``allow_tf32`` flags before."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision"):
        return tuple(op.fp32_precision for op in (b, b.cuda.matmul, b.cudnn, b.cudnn.conv, b.cudnn.rnn))
    return b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32


def set_tf32(allowed: bool) -> None:
    """Set every TF32 switch the way a user would (``fp32_precision`` from torch 2.9)."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision"):
        for op in (b.cuda.matmul, b.cudnn.conv, b.cudnn.rnn):
            op.fp32_precision = "tf32" if allowed else "ieee"
    else:
        b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = allowed


def restore_tf32(switches: tuple) -> None:
    """Put back switches read by :func:`tf32_switches`."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision"):
        for op, value in zip((b, b.cuda.matmul, b.cudnn, b.cudnn.conv, b.cudnn.rnn), switches, strict=True):
            op.fp32_precision = value
    else:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = switches


def random_states(model: nn.Module) -> list[torch.Tensor]:
    """The CPU's random state and that of every CUDA device holding a parameter of ``model``."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    return [torch.get_rng_state()] + [torch.cuda.get_rng_state(d) for d in devices]


def assert_unchanged(model: nn.Module, fn):
    """Run ``fn()`` and check the model is exactly as before: parameters, buffers (running statistics,
    ``num_batches_tracked``), tensor identities, every module's train/eval mode, ``requires_grad``
    flags, gradients, hooks, ``track_running_stats``, the global TF32 switches, and the random state of
    the CPU and of the model's GPU."""
    before = _snapshot(model)
    try:
        return fn()
    finally:  # also when ``fn`` raises: a refusal changes nothing either
        _assert_same(before, _snapshot(model))


def _assert_same(before: dict, after: dict) -> None:
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"
    for key in ("objects", "training", "requires_grad", "hooks", "track", "tf32"):
        assert after[key] == before[key], key
    assert len(after["rng"]) == len(before["rng"]) and all(map(torch.equal, after["rng"], before["rng"])), "rng"
    for k, g in before["grads"].items():
        assert (g is None and after["grads"][k] is None) or torch.equal(g, after["grads"][k]), k


# -- aligned training (diagnostics.aligned) -----------------------------------------------------

MAPS = [("penultimate", "full"), ("penultimate", "rank-one"), ("tangent", "full"), ("tangent", "rank-one")]


def aligned_problem(case="resnet-bn", n=30, seed=0, device="cpu"):
    c = CASES[case]
    model = c.model().to(device)
    X = c.data(n).to(device)
    y = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed)).to(device)
    return model, X, y


def aligned_closure(trainer, X, y, loss):
    Y = F.one_hot(y, 3).to(F64)

    def closure():
        trainer.optimizer.zero_grad()
        out = trainer.model(X)
        value = ((out - Y) ** 2).sum() / (2 * X.shape[0]) if loss == "mse" else F.cross_entropy(out, y)
        value.backward()
        return value

    return closure


def train_aligned(feature_map, coefficients, loss="mse", steps=40, lr=0.02, case="resnet-bn", n=30, device="cpu",
                  **kwargs):
    model, X, y = aligned_problem(case, n, device=device)
    trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=lr), train_data=(X, y), loss=loss,
                              switch_step=3, feature_map=feature_map, coefficients=coefficients,
                              full_batch=True, **kwargs)
    closure = aligned_closure(trainer, X, y, loss)
    for _ in range(steps):
        trainer.step(closure)
    return trainer


# -- width sweeps (diagnostics.width) -----------------------------------------------------------


def tiny(**overrides) -> SweepConfig:
    """A tiny sweep: n·m = 240; MLP widths 2 (d = 160) below the counting threshold, 8 and 32 above it."""
    values = dict(families=("mlp",), widths={"mlp": (2, 8, 32)}, seeds=(0, 1), n_train=24, n_test=50, steps=4,
                  records=2)
    return SweepConfig(**{**values, **overrides})


class GatedNet(nn.Module):
    """A family the project did not write: LayerNorm, a GELU gate, a bias-free output layer; ``width`` hidden units."""

    def __init__(self, width: int, d_in: int = 64, n_out: int = 10) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, 2 * width)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, n_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.proj(x.flatten(1)).chunk(2, dim=1)
        return self.out(self.norm(a) * F.gelu(b))


def gated(width: int) -> nn.Module:
    """The factory ``width → GatedNet(width)`` (module level, so a process pool can import it)."""
    return GatedNet(width)


# -- theory: numpy ------------------------------------------------------------------------------


def projector(J: np.ndarray) -> np.ndarray:
    """Orthogonal projector onto Col(J), from an SVD with numpy's rank rule."""
    U, s, _ = np.linalg.svd(J, full_matrices=False)
    rank = int((s > s.max() * max(J.shape) * np.finfo(float).eps).sum())
    return U[:, :rank] @ U[:, :rank].T


def sq(v: np.ndarray) -> float:
    return float(v @ v)
