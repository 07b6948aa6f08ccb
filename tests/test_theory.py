"""Exact-answer tests of ``theory``: hand-computed numbers and small numpy models with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import theory
from theory import Verdict

# -- helpers -------------------------------------------------------------------------------------


def projector(J: np.ndarray) -> np.ndarray:
    """Orthogonal projector onto Col(J), from an SVD with numpy's rank rule."""
    U, s, _ = np.linalg.svd(J, full_matrices=False)
    rank = int((s > s.max() * max(J.shape) * np.finfo(float).eps).sum())
    return U[:, :rank] @ U[:, :rank].T


def sq(v: np.ndarray) -> float:
    return float(v @ v)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# -- the Verdict type ----------------------------------------------------------------------------


def test_str_format_matches_the_documented_example():
    v = theory.gradient_domination(0.0123, 0.0912, 1.0, aligned=True)
    assert str(v) == "I3 gradient domination: holds  L=0.0123 ≤ ½‖∇L‖B=0.0456  (margin 0.0333)"
    assert bool(v) is True
    assert v.margin == pytest.approx(0.0333)


def test_failing_and_vacuous_str():
    assert str(theory.embedding(0.1, 0.3)).startswith("S2 embedding: FAILS  a_wide=0.3 ≤ a_narrow=0.1")
    assert "holds (vacuous)" in str(theory.gradient_domination(1.0, 1.0, 1.0, aligned=False))


def test_verdict_is_frozen_and_consistent():
    v = theory.embedding(0.3, 0.1)
    with pytest.raises(AttributeError):
        v.holds = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="inconsistent"):
        Verdict("X", "x", True, 1.0, 0.0, -1.0, 0.0)
    with pytest.raises(ValueError, match="vacuous"):
        Verdict("X", "x", False, 1.0, 0.0, math.inf, 0.0, vacuous=True)


def test_to_dict_is_plain_json():
    v = theory.best_convex_bound(1.0, 0.5, [1, 2, 4], [0.8, 0.3, 0.05], [1, 1.5, 4], aligned=True)
    d = v.to_dict()
    assert d["statement"] == "I4.best"
    assert d["details"]["bounds"] == pytest.approx([1.3, 1.05, 2.05])
    assert isinstance(d["details"]["best_index"], int)
    json.loads(json.dumps(d))


# -- (I2) ----------------------------------------------------------------------------------------


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
    v = theory.necessity_at_global_minimum(0.0, 0.0)
    assert v.holds and not v.vacuous and v.margin == 1e-6
    w = theory.necessity_at_global_minimum(0.0, 0.1, residual_tol=1e-3)
    assert not w.holds and w.margin == pytest.approx(-0.099)
    vac = theory.necessity_at_global_minimum(1.0, 0.9, n=2, target_norm_sq=4.0)
    assert vac.holds and vac.vacuous and vac.margin == math.inf
    assert vac.details["asserted"] is False and "not a global minimum" in vac.details["reason"]
    assert vac.details["residual_upper_bound"] == 1.0  # sqrt(2·2·1/4)
    with pytest.raises(ValueError):
        theory.necessity_at_global_minimum(0.0, 0.0, n=2)


# -- (I2), (I3) on a least-squares model with f = J R ----------------------------------------------


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
    assert theory.gradient_domination(loss, np.linalg.norm(grad), B, aligned=False).vacuous
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
    assert not theory.gradient_domination(loss_star, g_star, 0.0, aligned=True).holds

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
    assert not v.holds and v.rhs == 0.5 and v.margin == -0.5 and v.details["bound_ratio"] == 2.0
    z = theory.gradient_domination(0.0, 0.0, 0.0, aligned=True)
    assert z.holds and z.margin == 0.0 and z.details["bound_ratio"] == 0.0


# -- (I4) ----------------------------------------------------------------------------------------


def test_convex_loss_bound_hand_numbers():
    v = theory.convex_loss_bound(1.0, 0.25, 0.5, 2.0, aligned=True)
    assert v.holds and (v.lhs, v.rhs, v.margin) == (0.75, 1.0, 0.25)
    w = theory.convex_loss_bound(1.0, 0.25, 0.1, 2.0, aligned=True)
    assert not w.holds and w.margin == pytest.approx(-0.55)
    assert theory.convex_loss_bound(1.0, 0.25, 0.1, 2.0, aligned=False).vacuous


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


# -- (I3) gradient-flow rate ---------------------------------------------------------------------


def test_gradient_flow_rate_hand_numbers():
    assert theory.gradient_flow_rate(1.0, 2.0, 1.0) == 0.5  # 1/(1 + 4·1·1/4)
    assert theory.gradient_flow_rate(1.0, 2.0, 0.0) == 1.0
    assert theory.gradient_flow_rate(0.0, 0.0, 5.0) == 0.0
    with pytest.raises(ValueError, match="impossible"):
        theory.gradient_flow_rate(1.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        theory.gradient_flow_rate(1.0, 2.0, -1.0)


def test_scalar_gradient_flow_exact_solution():
    # n = m = d = 1, f = a θ: L(t) = L₀ e^{−2a²t}, B = |r₀|/|a| constant, bound L₀/(1 + 2a²t)
    a, theta0, y = 1.5, 0.2, 1.0
    t = np.linspace(0.0, 5.0, 51)
    r = (a * theta0 - y) * np.exp(-(a**2) * t)
    losses = 0.5 * r**2
    B = np.abs(r) / a
    v = theory.convergence_rate_check(t, losses, B)
    expected = losses[0] / (1 + 2 * a**2 * t)
    assert v.holds and v.details["certificate_bar"] == pytest.approx(B[0])
    assert v.details["bounds"] == pytest.approx(expected, rel=1e-12)
    assert v.details["max_ratio"] == 1.0 and v.details["monotone"]  # equality at t = 0 only
    assert np.all(losses[1:] < expected[1:])


def test_linear_model_gradient_flow_exact_solution(rng):
    # f_X = J θ with full row rank J (D1 for every Y): r(t) = exp(−K t / n) r₀
    n, d = 4, 7
    J = rng.standard_normal((n, d))
    Y = rng.standard_normal(n)
    theta0 = rng.standard_normal(d)
    lam, U = np.linalg.eigh(J @ J.T)
    c0 = U.T @ (J @ theta0 - Y)
    t = np.linspace(0.0, 10.0, 101)
    coeff = c0[None, :] * np.exp(-np.outer(t, lam) / n)
    losses = (coeff**2).sum(axis=1) / (2 * n)
    B = np.sqrt((coeff**2 / lam).sum(axis=1))
    assert np.all(np.diff(B) <= 1e-15)  # B(θ_t) is non-increasing here, B̄ = B(0)
    v = theory.convergence_rate_check(t, losses, B)
    assert v.holds and v.details["max_ratio"] <= 1.0 and v.details["monotone"]
    # the true flow is exponential: the O(1/t) bound is loose at late times
    assert losses[-1] / v.details["bounds"][-1] < 0.02


def test_convergence_rate_check_failure():
    v = theory.convergence_rate_check([0.0, 1.0], [1.0, 1.0], 2.0)
    assert not v.holds and v.details["worst_index"] == 1 and v.rhs == 0.5 and v.margin == -0.5
    assert v.details["n_violations"] == 1 and v.details["max_ratio"] == 2.0
    with pytest.raises(ValueError, match="non-decreasing"):
        theory.convergence_rate_check([1.0, 0.0], [1.0, 1.0], 2.0)


# -- (S1)–(S4) -------------------------------------------------------------------------------------


def test_counting_bound():
    v = theory.counting_bound(4, 6, 4)
    assert v.holds and v.rhs == 4 and v.margin == 0 and v.details["underparameterised"]
    assert v.details["generic_interpolation_impossible"] and not v.details["full_row_rank"]
    assert not theory.counting_bound(5, 6, 4).holds
    full = theory.counting_bound(6, 6, 10)
    assert full.holds and full.details["full_row_rank"] and not full.details["underparameterised"]
    with pytest.raises(ValueError):
        theory.counting_bound(2.5, 6, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        theory.counting_bound(-1, 6, 4)


def test_embedding_hand_numbers_and_nested_features(rng):
    v = theory.embedding(0.3, 0.1)
    assert v.holds and v.margin == pytest.approx(0.2) and v.details["improvement"] == pytest.approx(0.2)
    assert not theory.embedding(0.3, 0.31).holds
    # last-layer features: adding units adds columns h_new(x), so the residual cannot grow
    n = 10
    H = np.tanh(rng.standard_normal((n, 4)))
    Hw = np.hstack([H, np.tanh(rng.standard_normal((n, 3)))])
    Y = rng.standard_normal(n)
    res = [np.linalg.norm(Y - projector(M) @ Y) / np.linalg.norm(Y) for M in (H, Hw)]
    w = theory.embedding(res[0], res[1])
    assert w.holds and w.margin > 0.01


def test_deep_linear_rank_bound_on_a_deep_linear_network(rng):
    n, dx, m, h = 10, 3, 2, 20
    X = rng.standard_normal((n, dx))
    shapes = [(h, dx), (h, h), (m, h)]
    sizes = [a * b for a, b in shapes]
    theta = rng.standard_normal(sum(sizes)) / np.sqrt(h)

    def f(th: np.ndarray) -> np.ndarray:
        W1, W2, W3 = (p.reshape(s) for p, s in zip(np.split(th, np.cumsum(sizes)[:-1]), shapes, strict=True))
        return (X @ W1.T @ W2.T @ W3.T).reshape(-1)

    # f is affine in each single coordinate, so central differences are exact up to round-off
    eye = np.eye(theta.size)
    J = np.stack([(f(theta + e) - f(theta - e)) / 2 for e in eye], axis=1)
    rank = int(np.linalg.matrix_rank(J))
    assert rank == m * dx == 6
    v = theory.deep_linear_rank_bound(rank, m, dx, n_samples=n)
    assert v.holds and v.margin == 0 and v.details["width_cannot_help"]
    assert theory.counting_bound(rank, n * m, theta.size).holds


def test_deep_linear_rank_bound_hand_numbers():
    assert theory.deep_linear_rank_bound(8, 2, 3, bias=True).rhs == 8
    assert not theory.deep_linear_rank_bound(9, 2, 3, bias=True).holds
    v = theory.deep_linear_rank_bound(6, 2, 3, bias=True, n_samples=3)
    assert v.rhs == 6 and v.holds and not v.details["width_cannot_help"]
    assert theory.deep_linear_rank_bound(6, 2, 3, bias=True, n_samples=5).details["width_cannot_help"]


def test_kernel_movement_trend():
    w = np.array([100.0, 400.0, 1600.0])
    ntk = theory.kernel_movement_trend(w, 3.0 * w**-0.5)
    assert ntk.holds and ntk.details["slope"] == pytest.approx(-0.5) and ntk.margin == pytest.approx(0.25)
    assert ntk.details["intercept"] == pytest.approx(math.log(3.0))
    assert not theory.kernel_movement_trend(w, 3.0 * w**-0.5, expect="order-one").holds
    mf = theory.kernel_movement_trend(w, [0.4, 0.4, 0.4], expect="order-one")
    assert mf.holds and mf.details["slope"] == pytest.approx(0.0, abs=1e-12)
    assert mf.margin == pytest.approx(0.25)
    assert not theory.kernel_movement_trend(w, [0.4, 0.4, 0.4]).holds
    with pytest.raises(ValueError, match="distinct"):
        theory.kernel_movement_trend([5, 5], [0.1, 0.2])
    with pytest.raises(ValueError, match="positive"):
        theory.kernel_movement_trend([5, 10], [0.0, 0.2])
    with pytest.raises(ValueError, match="expect"):
        theory.kernel_movement_trend([5, 10], [0.1, 0.2], expect="up")


# -- §6 application --------------------------------------------------------------------------------


def test_application_bound_hand_numbers():
    v = theory.application_bound(0.1, 3.0, 1.0, 5.0)
    assert v.holds and v.rhs == pytest.approx(0.2) and v.margin == pytest.approx(0.1)
    c = theory.application_bound(0.1, 3.0, 1.0, 5.0, convex=True, target_loss=0.05)
    assert c.holds and c.lhs == pytest.approx(0.05) and c.rhs == pytest.approx(0.4)
    assert not theory.application_bound(0.3, 3.0, 1.0, 5.0).holds
    zero = theory.application_bound(0.1, 3.0, 1.0, 0.0)
    assert zero.holds and zero.rhs == math.inf
    with pytest.raises(ValueError, match="convex"):
        theory.application_bound(0.1, 3.0, 1.0, 5.0, target_loss=0.05)


def test_distance_non_increasing():
    v = theory.distance_non_increasing([3.0, 2.0, 2.0, 1.0])
    assert v.holds and v.lhs == 0.0 and v.margin == 0.0
    w = theory.distance_non_increasing([3.0, 2.0, 2.5, 1.0])
    assert not w.holds and w.lhs == 0.5 and w.margin == -0.5 and w.details["worst_step"] == 1
    assert w.details["n_increases"] == 1
    with pytest.raises(ValueError):
        theory.distance_non_increasing([1.0])


def test_gd_step_condition_hand_numbers():
    v = theory.gd_step_distance_condition(0.1, 10.0, 0.25)
    assert v.holds and (v.lhs, v.rhs) == pytest.approx((1.0, 1.0))
    assert v.details["max_step"] == pytest.approx(0.1)
    assert v.details["squared_distance_change"] == pytest.approx(0.0, abs=1e-15)
    w = theory.gd_step_distance_condition(0.2, 10.0, 0.25)
    assert not w.holds and w.margin == pytest.approx(-1.0)
    assert w.details["squared_distance_change"] == pytest.approx(0.2)  # −4·0.2·0.25 + 0.04·10
    c = theory.gd_step_distance_condition(0.1, 1.0, 0.25, target_loss=0.05)
    assert c.rhs == pytest.approx(0.4) and c.holds and c.details["exact"] is False
    with pytest.raises(ValueError):
        theory.gd_step_distance_condition(0.0, 1.0, 1.0)


def test_gd_telescoping_hand_numbers():
    v = theory.gd_telescoping_bound([1.0, 0.5], [2.0, 1.0], 0.1, 1.0, 1.0)
    assert v.lhs == pytest.approx(0.57) and v.rhs == 2.0 and v.margin == pytest.approx(1.43) and v.holds
    assert v.details["gamma"] == pytest.approx(0.05)
    assert v.details["average_loss_bound"] == pytest.approx(2 / (4 * 0.95 * 0.1 * 2))


def test_application_gradient_flow_exact_solution(rng):
    # frozen body: f̃_X = Φ ω + Ψ u is linear in x = (ω, u); ẋ = −Aᵀ(Ax − Y)/n solved exactly
    n, p, q = 8, 3, 8
    Phi = rng.standard_normal((n, p))
    Psi = np.tanh(rng.standard_normal((n, q)))
    Y = rng.standard_normal(n)
    nu = np.linalg.pinv(Psi) @ Y
    assert np.allclose(Psi @ nu, Y)
    A = np.hstack([Phi, Psi])
    omega = rng.standard_normal(p)
    x0 = np.concatenate([omega, np.zeros(q)])
    lam, V = np.linalg.eigh(A.T @ A / n)
    x_star = np.linalg.lstsq(A, Y, rcond=None)[0]  # A x* = Y since Ψ has full row rank
    times = np.linspace(0.0, 20.0, 201)
    xs = [x_star + V @ (np.exp(-lam * t) * (V.T @ (x0 - x_star))) for t in times]
    losses = np.array([sq(A @ x - Y) / (2 * n) for x in xs])
    target = np.concatenate([np.zeros(p), nu])
    dist = np.array([np.linalg.norm(x - target) for x in xs])
    assert theory.distance_non_increasing(dist, atol_rel=1e-12).holds
    for t, loss in zip(times[1:], losses[1:], strict=True):
        assert theory.application_bound(loss, sq(omega), sq(nu), t).holds
    # ½ d/dt ‖x − x*‖² = −2L, checked by a centred difference of the exact solution
    k, h = 50, 1e-5
    plus, minus = (x_star + V @ (np.exp(-lam * (times[k] + s)) * (V.T @ (x0 - x_star))) for s in (h, -h))
    ddt = (sq(plus - target) - sq(minus - target)) / (4 * h)
    assert ddt == pytest.approx(-2 * losses[k], rel=1e-6)


def test_application_gradient_descent_with_a_moving_body(rng):
    # f̃(x) = Σ_j w_j tanh(a_j x) + b + Ψ(x) u; GD on everything, the body a included
    n, p, q = 6, 4, 6
    xs = np.linspace(-1.0, 1.0, n)
    Y = np.sin(3 * xs)
    Psi = np.tanh(np.outer(xs, rng.standard_normal(q) * 2) + rng.standard_normal(q))
    nu = np.linalg.solve(Psi, Y)
    a, w, b, u = rng.standard_normal(p), rng.standard_normal(p), 0.3, np.zeros(q)
    omega_sq, nu_sq = sq(w) + b**2, sq(nu)
    eta = 0.9 * 2 * n / np.linalg.eigvalsh(Psi @ Psi.T).max() / 4  # comfortably stable
    losses, block_g2, dists = [], [], [math.sqrt(omega_sq + nu_sq)]
    for _ in range(300):
        H = np.tanh(np.outer(xs, a))
        r = H @ w + b + Psi @ u - Y
        loss = sq(r) / (2 * n)
        gw, gb, gu = H.T @ r / n, r.sum() / n, Psi.T @ r / n
        ga = ((1 - H**2) * xs[:, None] * w[None, :]).T @ r / n
        g2 = sq(gw) + gb**2 + sq(gu)
        before = sq(w) + b**2 + sq(u - nu)
        a, w, b, u = a - eta * ga, w - eta * gw, b - eta * gb, u - eta * gu
        after = sq(w) + b**2 + sq(u - nu)
        step = theory.gd_step_distance_condition(eta, g2, loss)
        # the exact one-step identity, although the body a moved in the same step
        assert after - before == pytest.approx(step.details["squared_distance_change"], rel=1e-9, abs=1e-14)
        assert step.holds
        losses.append(loss)
        block_g2.append(g2)
        dists.append(math.sqrt(after))
    assert sq(ga) > 0  # the body did move
    assert theory.distance_non_increasing(dists, atol_rel=1e-12).holds
    tele = theory.gd_telescoping_bound(losses, block_g2, eta, omega_sq, nu_sq, rtol=1e-9)
    assert tele.holds and tele.margin == pytest.approx(dists[-1] ** 2, rel=1e-8)
    assert tele.details["gamma"] < 1
    assert tele.details["average_loss"] <= tele.details["average_loss_bound"]
    assert theory.application_bound(losses[-1], omega_sq, nu_sq, eta * len(losses)).holds


def test_gd_step_with_too_large_a_step_increases_the_distance(rng):
    n, q = 4, 4
    Psi = rng.standard_normal((n, q))
    Y = rng.standard_normal(n)
    nu = np.linalg.solve(Psi, Y)
    u = np.zeros(q)
    r = Psi @ u - Y
    loss, g = sq(r) / (2 * n), Psi.T @ r / n
    eta = 2 * 4 * loss / sq(g)  # twice the largest admissible step
    step = theory.gd_step_distance_condition(eta, sq(g), loss)
    assert not step.holds and step.details["max_step"] == pytest.approx(eta / 2)
    change = sq(u - eta * g - nu) - sq(u - nu)
    assert change == pytest.approx(step.details["squared_distance_change"], rel=1e-10)
    assert change == pytest.approx(4 * eta * loss, rel=1e-10) and change > 0  # −4ηL + η·8L


# -- A1 ----------------------------------------------------------------------------------------


def test_cms_assessment_hand_numbers():
    ok = theory.cms_assessment(1e-9, 1e-10, 0.5, rank_fit=4, rank_union=6)
    assert ok.holds and ok.details["transfer"] == "failed (inconclusive)" and ok.lhs == 1e-9
    bad = theory.cms_assessment(1e-9, 1e-10, 0.5, rank_fit=6, rank_union=6)
    assert not bad.holds and bad.details["transfer"] == "failed (conclusive)" and bad.lhs == 0.5
    assert ok.details["status"] == "established" and bad.details["status"] == "refuted"
    unknown = theory.cms_assessment(0.1, 1e-10)
    assert not unknown.holds and unknown.details["status"] == "not established"
    assert theory.cms_assessment(1e-9, 0.2).details["status"] == "refuted"
    assert theory.cms_assessment(1e-9, 1e-10).details["transfer"] == "not run"
    with pytest.raises(ValueError):
        theory.cms_assessment(1e-9, 1e-10, 0.5, rank_fit=7, rank_union=6)


def _transfer_error(J: np.ndarray, f: np.ndarray, n_fit: int) -> float:
    R_A = np.linalg.pinv(J[:n_fit]) @ f[:n_fit]
    return float(np.linalg.norm(f[n_fit:] - J[n_fit:] @ R_A) / np.linalg.norm(f[n_fit:]))


def test_transfer_test_fails_for_an_exact_cms_model_when_d_exceeds_the_fitted_rows(rng):
    J = rng.standard_normal((6, 8))
    f = J @ rng.standard_normal(8)  # A1 holds exactly
    err = _transfer_error(J, f, 3)
    assert err > 0.1  # the least-norm R_A is wrong on B: only determined modulo null(J_A)
    ranks = {"rank_fit": int(np.linalg.matrix_rank(J[:3])), "rank_union": int(np.linalg.matrix_rank(J))}
    assert ranks == {"rank_fit": 3, "rank_union": 6}
    v = theory.cms_assessment(0.0, 0.0, err, **ranks)
    assert v.holds and v.details["transfer"] == "failed (inconclusive)"


def test_transfer_test_is_conclusive_when_the_fit_rows_span_the_union(rng):
    J = rng.standard_normal((10, 4))
    f = J @ rng.standard_normal(4)
    assert _transfer_error(J, f, 5) < 1e-12  # rank J_A = rank J = 4: A1 forces a pass
    g = f + 0.5 * rng.standard_normal(10)  # not of the form J R
    err = _transfer_error(J, g, 5)
    P = projector(J)
    data_residual = np.linalg.norm(g - P @ g) / np.linalg.norm(g)
    assert data_residual > 0.01  # test 2 fails as well: 10 rows, rank 4
    v = theory.cms_assessment(0.0, data_residual, err, rank_fit=4, rank_union=4)
    assert not v.holds and v.details["transfer"] == "failed (conclusive)"


# -- input validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: theory.loss_decomposition(float("nan"), 1.0, 1.0, 2),
        lambda: theory.loss_decomposition(1.0, -1.0, 1.0, 2),
        lambda: theory.loss_decomposition(1.0, 1.0, 1.0, 0),
        lambda: theory.loss_decomposition(1.0, 1.0, 1.0, 2, rtol=-1.0),
        lambda: theory.alignment_lower_bound(1.0, float("inf"), 2),
        lambda: theory.necessity_at_global_minimum(0.0, float("nan")),
        lambda: theory.gradient_domination(1.0, -0.1, 1.0, True),
        lambda: theory.gradient_domination(1.0, 0.1, float("nan"), True),
        lambda: theory.gradient_domination(1.0, 0.1, 1.0, "yes"),
        lambda: theory.excess_gradient_domination(1.0, 2, float("nan"), 1.0),
        lambda: theory.convex_loss_bound(1.0, float("nan"), 1.0, 1.0, True),
        lambda: theory.convex_loss_bound(1.0, 0.0, 1.0, -1.0, True),
        lambda: theory.best_convex_bound(1.0, 1.0, [1.0], [float("nan")], [1.0], True),
        lambda: theory.gradient_flow_rate(float("nan"), 1.0, 1.0),
        lambda: theory.convergence_rate_check([0.0, 1.0], [1.0, float("nan")], 1.0),
        lambda: theory.convergence_rate_check([0.0, 1.0], [1.0, 0.5], -1.0),
        lambda: theory.counting_bound(1, 0, 4),
        lambda: theory.embedding(float("nan"), 0.1),
        lambda: theory.embedding(-0.1, 0.1),
        lambda: theory.deep_linear_rank_bound(1, 2, 0),
        lambda: theory.kernel_movement_trend([1.0, float("inf")], [0.1, 0.2]),
        lambda: theory.application_bound(float("nan"), 1.0, 1.0, 1.0),
        lambda: theory.application_bound(0.1, -1.0, 1.0, 1.0),
        lambda: theory.application_bound(0.1, 1.0, 1.0, -1.0),
        lambda: theory.distance_non_increasing([1.0, float("nan")]),
        lambda: theory.distance_non_increasing([1.0, -0.5]),
        lambda: theory.gd_step_distance_condition(0.1, float("inf"), 1.0),
        lambda: theory.gd_telescoping_bound([1.0], [1.0, 2.0], 0.1, 1.0, 1.0),
        lambda: theory.cms_assessment(float("nan"), 0.0),
    ],
)
def test_invalid_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


def test_theory_does_not_import_torch_or_diagnostics():
    import subprocess
    import sys

    code = "import sys, theory; print(any(m in sys.modules for m in ('torch', 'diagnostics')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
