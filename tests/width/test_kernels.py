"""Kernel dynamics, linearised loss, horizon floor and per-layer alignment of one run, against exact answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import F64, assert_unchanged
from torch import nn

from diagnostics import reference_jacobian
from diagnostics.engine.spectral import Spectrum
from diagnostics.models import build_model
from diagnostics.tracking.reference import relative_distance
from diagnostics.width.kernels import horizon_floor, kernel_path, layer_alignment, layer_groups, linearised_loss


def test_linearised_loss_is_gradient_descent_on_a_linear_model():
    # f = Jθ: the kernel K = JJᵀ never moves, so gradient descent is exactly the linearised dynamics
    g = torch.Generator().manual_seed(0)
    n, d, steps = 6, 10, 40
    J, Y, theta = (torch.randn(n, d, generator=g, dtype=F64), torch.randn(n, generator=g, dtype=F64),
                   torch.randn(d, generator=g, dtype=F64))
    K = J @ J.T
    lr = 1.5 * n / float(torch.linalg.eigvalsh(K).max())
    r0 = J @ theta - Y
    for _ in range(steps):
        theta = theta - lr * J.T @ (J @ theta - Y) / n
    loss = float(((J @ theta - Y) ** 2).sum()) / (2 * n)
    assert linearised_loss(Spectrum.of(K), r0, lr, steps, n) == pytest.approx(loss, rel=1e-10)
    # a step above 2n/λ_max makes the top direction grow: the linearised loss exceeds the start
    assert linearised_loss(Spectrum.of(K), r0, 3 * lr, steps, n) > float((r0**2).sum()) / (2 * n)


def test_horizon_floor_counts_the_slow_directions():
    K = torch.diag(torch.tensor([10.0, 1.0, 0.1], dtype=F64))
    q = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    # n = 3, η = 0.3, T = 10: ηλT/n = 10, 1, 0.1; only λ = 0.1 is below 1 (λ = 1 is not strictly below)
    assert horizon_floor(Spectrum.of(K), q, 0.3, 10, 3) == pytest.approx(9.0 / 6)
    assert horizon_floor(Spectrum.of(K), q, 0.3, 1000, 3) == 0.0


def test_kernel_path_by_hand():
    grams = [torch.eye(2, dtype=F64), 2 * torch.eye(2, dtype=F64), torch.diag(torch.tensor([4.0, 0.0], dtype=F64))]
    moved = [math.nan] + [relative_distance(b, a) for a, b in zip(grams, grams[1:], strict=False)]
    history = pd.DataFrame({"step": [0, 2, 3, 6], "kernel_movement_prev": [moved[0], moved[1], math.nan, moved[2]],
                            "tier": ["full", "full", "cheap", "full"]})  # a cheap record between: left out
    rows = kernel_path(history, grams).to_dict("records")
    assert [r["step"] for r in rows] == [0, 2, 6]
    assert math.isnan(rows[0]["kernel_velocity"])
    assert rows[1]["kernel_velocity"] == pytest.approx(1.0 / 2)  # ‖K₂ − K₀‖/‖K₀‖ = 1 over 2 steps
    assert rows[2]["kernel_velocity"] == pytest.approx(math.sqrt(8) / math.sqrt(8) / 4)
    assert rows[0]["kernel_distance_end"] == pytest.approx(math.sqrt(10) / 4)
    assert rows[2]["kernel_distance_end"] == 0.0
    assert kernel_path(history)["kernel_distance_end"].isna().all()  # a history read from a file has no Grams


def _cnn():
    digits_like = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return build_model("cnn", 3, input_shape=(1, 8, 8), n_out=4, parameterization="mf", seed=0), digits_like


def _repeated_samples():
    # every sample twice: each layer's Gram has rank at most half its side, whatever its parameter count
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 40), nn.Tanh(), nn.Linear(40, 4))
    return model, torch.randn(6, 2, generator=torch.Generator().manual_seed(1)).repeat(2, 1)


@pytest.mark.parametrize(("build", "layers", "thick_ranks"), [
    (_cnn, ["conv1", "conv2", "head"], "full"),  # conv2 and head: more parameters than rows, Grams of full rank
    (_repeated_samples, ["0", "2"], "deficient"),  # both thick, both rank-deficient: decomposed with eigenvectors
], ids=["cnn", "repeated-samples"])
@pytest.mark.parametrize("given_total", [False, True], ids=["measured", "from-total"])
def test_layer_alignment_splits_the_gram_by_layer(build, layers, thick_ranks, given_total):
    model, digits_like = build()
    q = torch.nn.functional.one_hot(torch.arange(12) % 4, 4).to(F64)
    groups = layer_groups(model)
    jacobians = {layer: reference_jacobian(model, digits_like, params=list(p), dtype=F64)
                 for layer, p in groups.items()}
    # given K of all the parameters, the largest thick layer's Gram is K minus the others' (one Gram fewer)
    K = sum(J @ J.T for J in jacobians.values()) if given_total else None
    rows = assert_unchanged(model, lambda: layer_alignment(model, digits_like, q, F64, total=K))
    assert [r["layer"] for r in rows] == list(groups) == layers
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-12)
    q64 = q.reshape(-1)
    total = sum(float(q64 @ J @ J.T @ q64) for J in jacobians.values())
    for row in rows:
        J = jacobians[row["layer"]]
        assert row["share"] == pytest.approx(float(q64 @ J @ J.T @ q64) / total, rel=1e-10)
        U, s, _ = np.linalg.svd(J.numpy(), full_matrices=False)
        kept = U[:, s**2 > s[0] ** 2 * J.shape[0] * np.finfo(np.float64).eps]  # the rank rule of K = JJᵀ
        residual = np.linalg.norm(q64.numpy() - kept @ (kept.T @ q64.numpy())) / np.linalg.norm(q64.numpy())
        assert row["residual"] == pytest.approx(residual, abs=1e-8)
        assert row["rank"] == kept.shape[1]
        if J.shape[1] > J.shape[0]:  # a thick layer: its Gram's eigenvalues decide (full rank: residual exactly 0)
            assert (row["rank"] == J.shape[0]) == (thick_ranks == "full")
            assert (row["residual"] == 0.0) == (thick_ranks == "full")


def test_layer_alignment_measures_a_layer_its_rounding_in_the_total_would_swamp():
    """A largest layer whose Gram is 10⁻²⁰ of ``K`` (inputs scaled by 10⁻¹⁰ feed its weights): ``K`` minus the
    others' Grams would be rounding, of rank and residual unrelated to the layer's; it is measured on its own."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 40), nn.Tanh(), nn.Linear(40, 4)).double()  # 320 weights, 204 others
    with torch.no_grad():
        model[0].weight.mul_(1e10)  # the pre-activations stay of order 1
    X = 1e-10 * torch.randn(6, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    q = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    groups = {"0.weight": ("0.weight",), "rest": ("0.bias", "2.weight", "2.bias")}
    jacobians = {k: reference_jacobian(model, X, params=list(p), dtype=F64) for k, p in groups.items()}
    K = sum(J @ J.T for J in jacobians.values())
    assert float(torch.linalg.eigvalsh(jacobians["0.weight"] @ jacobians["0.weight"].T)[-1]) < 1e-15 * float(
        torch.linalg.matrix_norm(K))
    measured = layer_alignment(model, X, q, F64, groups)
    assert layer_alignment(model, X, q, F64, groups, total=K) == measured
    # the subtraction it avoided: K minus the other Gram has another rank than the layer's own Gram
    own = jacobians["0.weight"] @ jacobians["0.weight"].T
    rest = K - jacobians["rest"] @ jacobians["rest"].T
    assert not torch.allclose(rest, own, rtol=1e-3, atol=0)
