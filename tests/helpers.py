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
        "tf32": (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32),
    }


def assert_unchanged(model: nn.Module, fn):
    """Run ``fn()`` and check the model is exactly as before: parameters, buffers (running statistics,
    ``num_batches_tracked``), tensor identities, every module's train/eval mode, ``requires_grad``
    flags, gradients, hooks, ``track_running_stats``, and the global TF32 switches."""
    before = _snapshot(model)
    result = fn()
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"
    for key in ("objects", "training", "requires_grad", "hooks", "track", "tf32"):
        assert after[key] == before[key], key
    for k, g in before["grads"].items():
        assert (g is None and after["grads"][k] is None) or torch.equal(g, after["grads"][k]), k
    return result


# -- aligned training (diagnostics.aligned) -----------------------------------------------------

MAPS = [("penultimate", "full"), ("penultimate", "rank-one"), ("tangent", "full"), ("tangent", "rank-one")]


def aligned_problem(case="resnet-bn", n=30, seed=0):
    c = CASES[case]
    model = c.model()
    X = c.data(n)
    y = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))
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


def train_aligned(feature_map, coefficients, loss="mse", steps=40, lr=0.02, case="resnet-bn", n=30, **kwargs):
    model, X, y = aligned_problem(case, n)
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


# -- theory: numpy ------------------------------------------------------------------------------


def projector(J: np.ndarray) -> np.ndarray:
    """Orthogonal projector onto Col(J), from an SVD with numpy's rank rule."""
    U, s, _ = np.linalg.svd(J, full_matrices=False)
    rank = int((s > s.max() * max(J.shape) * np.finfo(float).eps).sum())
    return U[:, :rank] @ U[:, :rank].T


def sq(v: np.ndarray) -> float:
    return float(v @ v)
