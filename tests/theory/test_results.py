"""Exact-answer tests of ``theory.results`` ((I2)–(I4)): hand-computed numbers and small numpy models with
known answers. The ``rng`` fixture is in ``tests/theory/conftest.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import projector, sq

import theory

# -- (I2) --------------------------------------------------------------------------------------------


def test_loss_decomposition_hand_numbers():
    v = theory.loss_decomposition(1.0, 2.0, 2.0, n=2)
    assert (v.holds, v.lhs, v.rhs, v.margin) == (True, 1.0, 1.0, 0.0)
    assert v.details["floor"] == 0.5 and v.details["fitted_part"] == 0.5
    w = theory.loss_decomposition(1.5, 2.0, 2.0, n=2)
    assert not w.holds
    assert w.margin == -0.5 and w.details["gap"] == 0.5
    assert w.details["relative_gap"] == pytest.approx(1 / 3)
    assert w.tolerance == pytest.approx(1.5e-8)


def test_loss_decomposition_zero_loss():
    v = theory.loss_decomposition(0.0, 0.0, 0.0, n=3)
    assert v.holds and v.margin == 0.0
    assert not theory.loss_decomposition(0.0, 1e-3, 0.0, n=3).holds


def test_alignment_lower_bound_hand_numbers():
    v = theory.alignment_lower_bound(1.0, 4.0, n=2)
    assert v.holds and v.lhs == 1.0 and v.margin == 0.0 and v.details["floor_fraction"] == 1.0
    w = theory.alignment_lower_bound(0.5, 4.0, n=2)
    assert not w.holds and w.margin == -0.5


def test_necessity_at_global_minimum():
    v = theory.necessity_at_global_minimum(0.0, 0.0, n=2, target_norm_sq=4.0)
    assert v.holds and v.rhs == 0.0 and v.margin == 0.0
    w = theory.necessity_at_global_minimum(0.0, 0.1, n=2, target_norm_sq=4.0)  # L = 0 forces a = 0
    assert w.refuted and w.margin == pytest.approx(-0.1)
    at = theory.necessity_at_global_minimum(1.0, 0.9, n=2, target_norm_sq=4.0)
    assert at.holds and at.rhs == 1.0 and at.margin == pytest.approx(0.1)  # sqrt(2·2·1/4)


# -- (I2), (I3) on a least-squares model with f = J R ------------------------------------------------


def test_decomposition_and_domination_on_a_linear_model(rng):
    n, m, d = 3, 2, 4
    J = rng.standard_normal((n * m, d))
    R = rng.standard_normal(d)
    f = J @ R  # A1 exactly: f_X = J R
    P = projector(J)
    assert np.linalg.matrix_rank(J) == 4

    # generic target: not aligned (rank 4 < nm = 6)
    Y = rng.standard_normal(n * m)
    r = f - Y
    loss = sq(r) / (2 * n)
    v = theory.loss_decomposition(loss, sq(P @ r), sq(Y - P @ Y), n, rtol=1e-12)
    assert v.holds and abs(v.details["gap"]) < 1e-12
    assert theory.alignment_lower_bound(loss, sq(Y - P @ Y), n).holds
    grad = J.T @ r / n
    B = float(np.linalg.norm(np.linalg.pinv(J) @ r))
    assert theory.gradient_domination(loss, np.linalg.norm(grad), B, aligned=False).status == "not applicable"
    # the excess loss above the floor is always gradient-dominated
    assert theory.excess_gradient_domination(sq(P @ r), n, np.linalg.norm(grad), B).holds

    # at the least-squares stationary point, D1 fails and the loss sits exactly on the floor
    R_star = np.linalg.pinv(J) @ Y
    r_star = J @ R_star - Y
    loss_star = sq(r_star) / (2 * n)
    g_star = np.linalg.norm(J.T @ r_star / n)
    assert g_star < 1e-12 and loss_star > 0.01
    floor = theory.alignment_lower_bound(loss_star, sq(Y - P @ Y), n, rtol=1e-12)
    assert floor.holds and floor.details["floor_fraction"] == pytest.approx(1.0, abs=1e-12)
    # claiming alignment here would be refuted by (I3): L > 0 = ½‖∇L‖B
    assert theory.gradient_domination(loss_star, g_star, 0.0, aligned=True).refuted

    # aligned target Y = J ν: the identity 2L = ⟨∇L, R − ν⟩ is exact and the bound holds
    nu = rng.standard_normal(d)
    Y = J @ nu
    r = f - Y
    loss = sq(r) / (2 * n)
    grad = J.T @ r / n
    assert 2 * loss == pytest.approx(grad @ (R - nu), rel=1e-12)
    B = float(np.linalg.norm(np.linalg.pinv(J) @ r))
    assert B == pytest.approx(np.linalg.norm(R - nu), rel=1e-12)  # null(J) = {0}: ν is unique
    v = theory.loss_decomposition(loss, sq(P @ r), sq(Y - P @ Y), n, rtol=1e-12)
    assert v.holds and v.details["floor"] < 1e-25
    dom = theory.gradient_domination(loss, np.linalg.norm(grad), B, aligned=True)
    assert dom.holds and dom.margin > 0 and dom.details["bound_ratio"] < 1


def test_gradient_domination_is_tight_for_an_eigenvector_residual(rng):
    n, d = 6, 4
    J = rng.standard_normal((n, d))
    _, s, Vt = np.linalg.svd(J, full_matrices=False)
    nu = rng.standard_normal(d)
    R = nu + 0.7 * Vt[0]  # r = J(R − ν) = 0.7 σ₁ u₁: an eigenvector of K = JJᵀ
    r = J @ R - J @ nu
    loss = sq(r) / (2 * n)
    grad = J.T @ r / n
    B = float(np.linalg.norm(np.linalg.pinv(J) @ r))
    assert loss == pytest.approx(0.49 * s[0] ** 2 / (2 * n), rel=1e-12)
    assert np.linalg.norm(grad) == pytest.approx(0.7 * s[0] ** 2 / n, rel=1e-12)
    assert B == pytest.approx(0.7, rel=1e-12)
    dom = theory.gradient_domination(loss, np.linalg.norm(grad), B, aligned=True, rtol=1e-10)
    assert dom.holds and dom.details["bound_ratio"] == pytest.approx(1.0, abs=1e-12)


def test_gradient_domination_hand_numbers():
    v = theory.gradient_domination(1.0, 1.0, 1.0, aligned=True)
    assert v.refuted and v.rhs == 0.5 and v.margin == -0.5 and v.details["bound_ratio"] == 2.0
    # the part of r discarded by the rank tolerance, ‖(I−P)r‖²/2n, is the bound's allowance
    assert theory.gradient_domination(1.0, 1.0, 1.0, aligned=True, truncation=0.5).holds
    assert theory.gradient_domination(1.0, 1.0, 1.0, aligned=True, truncation=0.4).refuted
    z = theory.gradient_domination(0.0, 0.0, 0.0, aligned=True)
    assert z.holds and z.margin == 0.0 and z.details["bound_ratio"] == 0.0


# -- (I4) --------------------------------------------------------------------------------------------


def test_convex_loss_bound_hand_numbers():
    v = theory.convex_loss_bound(1.0, 0.25, 0.5, 2.0, aligned=True)
    assert v.holds and (v.lhs, v.rhs, v.margin) == (0.75, 1.0, 0.25)
    w = theory.convex_loss_bound(1.0, 0.25, 0.1, 2.0, aligned=True)
    assert not w.holds and w.margin == pytest.approx(-0.55)
    assert theory.convex_loss_bound(1.0, 0.25, 0.1, 2.0, aligned=False).status == "not applicable"
    # the truncation of the rank tolerance is added to the tolerance, and only that much
    assert theory.convex_loss_bound(1.0, 0.25, 0.1, 2.0, aligned=True, truncation=0.56).holds
    assert theory.convex_loss_bound(1.0, 0.25, 0.1, 2.0, aligned=True, truncation=0.54).refuted


def test_best_convex_bound_picks_the_smallest():
    v = theory.best_convex_bound(1.0, 0.5, [1, 2, 4], [0.8, 0.3, 0.05], [1, 1.5, 4], aligned=True)
    assert v.details["best_scale"] == 2.0 and v.details["best_index"] == 1
    assert v.rhs == pytest.approx(1.05) and v.margin == pytest.approx(0.05) and v.holds
    with pytest.raises(ValueError, match="same length"):
        theory.best_convex_bound(1.0, 0.5, [1, 2], [0.8], [1, 2], aligned=True)
    with pytest.raises(ValueError, match="positive"):
        theory.best_convex_bound(1.0, 0.5, [0.0], [0.8], [1.0], aligned=True)


def _cross_entropy(F: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of logits F (n, m) and its gradient g = (1/n)(softmax − onehot)."""
    n, m = F.shape
    Z = F - F.max(axis=1, keepdims=True)
    logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    onehot = np.eye(m)[labels]
    return float(-(logp * onehot).sum() / n), (np.exp(logp) - onehot) / n


def test_convex_bound_on_a_cross_entropy_linear_model(rng):
    n, m, d = 4, 3, 16
    J = rng.standard_normal((n * m, d))  # full row rank: every Q is in Col(J)
    R = 0.3 * rng.standard_normal(d)
    labels = np.array([0, 2, 1, 2])
    loss, g = _cross_entropy((J @ R).reshape(n, m), labels)
    grad = J.T @ g.reshape(-1)
    Q0 = np.eye(m)[labels] - 1 / m
    Jp = np.linalg.pinv(J)
    scales = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    tl, dist = [], []
    for c in scales:
        Lq, _ = _cross_entropy(c * Q0, labels)
        assert Lq == pytest.approx(math.log(1 + 2 * math.exp(-c)), rel=1e-12)  # closed form, m = 3
        nu = Jp @ (c * Q0).reshape(-1)
        v = theory.convex_loss_bound(loss, Lq, np.linalg.norm(grad), np.linalg.norm(R - nu), aligned=True)
        assert v.holds
        # the best ν (not the least-norm one) gives the distance ‖J⁺(f_X − Q)‖
        best = np.linalg.norm(Jp @ (J @ R - c * Q0.reshape(-1)))
        assert best <= np.linalg.norm(R - nu) + 1e-12
        tl.append(Lq)
        dist.append(best)
    v = theory.best_convex_bound(loss, np.linalg.norm(grad), scales, tl, dist, aligned=True)
    bounds = np.array(tl) + np.linalg.norm(grad) * np.array(dist)
    assert v.holds and v.details["best_index"] == int(np.argmin(bounds))
    assert v.rhs == pytest.approx(bounds.min(), rel=1e-15)
