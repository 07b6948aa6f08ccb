"""Exact-answer tests of ``theory.application`` (APP, theory/application.md). The ``rng`` fixture is in
``tests/theory/conftest.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import sq

import theory


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
    # Σ η(4L − η‖∇‖²) = 0.1·3.8 + 0.1·1.9 = 0.57 must equal ‖x_0 − x*‖² − ‖x_K − x*‖² = 2 − 1.43
    v = theory.gd_telescoping_bound([1.0, 0.5], [2.0, 1.0], 0.1, 1.0, 1.0, 1.43)
    assert v.lhs == pytest.approx(0.57) and v.rhs == pytest.approx(0.57) and v.holds
    assert v.details["gamma"] == pytest.approx(0.05)
    assert v.details["average_loss_bound"] == pytest.approx(2 / (4 * 0.95 * 0.1 * 2))
    # the bound Σ ≤ ‖ω_τ‖² + ‖ν‖² alone would hold here; the recorded final distance refutes the identity
    assert theory.gd_telescoping_bound([1.0, 0.5], [2.0, 1.0], 0.1, 1.0, 1.0, 1.9).refuted
    convex = theory.gd_telescoping_bound([1.0, 0.5], [2.0, 1.0], 0.1, 1.0, 1.0, 1.8, target_loss=0.25)
    assert convex.holds and convex.relation == "≤"  # 0.1(1.5 − 0.2) + 0.1(0.5 − 0.1) = 0.17 ≤ 2 − 1.8
    assert theory.gd_telescoping_bound([1.0, 0.5], [2.0, 1.0], 0.1, 1.0, 1.0, 1.9, target_loss=0.25).refuted


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
    tele = theory.gd_telescoping_bound(losses, block_g2, eta, omega_sq, nu_sq, dists[-1] ** 2, rtol=1e-9)
    assert tele.holds and tele.rhs == pytest.approx(omega_sq + nu_sq - dists[-1] ** 2, rel=1e-12)
    identity = theory.gd_distance_identity(np.square(dists), losses, block_g2, [eta] * len(losses))
    assert identity.holds and identity.details["first_failure"] is None
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


def _descent(rng, clip: float | None = None, steps: int = 60):
    """GD on ``x = (ω, u)`` of ``f̃ = Φω + Ψu`` for the squared loss; ``clip`` rescales each gradient to that norm."""
    n, p, q = 8, 3, 8
    Phi, Psi = rng.standard_normal((n, p)), np.tanh(rng.standard_normal((n, q)))
    Y = rng.standard_normal(n)
    nu = np.linalg.solve(Psi, Y)
    x = np.concatenate([rng.standard_normal(p), np.zeros(q)])
    target = np.concatenate([np.zeros(p), nu])
    A = np.hstack([Phi, Psi])
    eta = 0.5 * n / np.linalg.eigvalsh(A @ A.T).max()
    d2, losses, g2 = [sq(x - target)], [], []
    for _ in range(steps):
        r = A @ x - Y
        g = A.T @ r / n
        losses.append(sq(r) / (2 * n))
        if clip is not None and np.linalg.norm(g) > clip:
            g = g * clip / np.linalg.norm(g)
        g2.append(sq(g))
        x = x - eta * g
        d2.append(sq(x - target))
    return np.array(d2), np.array(losses), np.array(g2), eta


def test_the_one_step_identity_holds_for_gradient_steps_and_fails_under_clipping(rng):
    d2, losses, g2, eta = _descent(rng)
    assert theory.gd_distance_identity(d2, losses, g2, [eta] * len(losses)).holds
    d2, losses, g2, eta = _descent(rng, clip=0.05)  # the applied gradient is not ∇L: clipped
    v = theory.gd_distance_identity(d2, losses, g2, [eta] * len(losses))
    assert v.refuted and v.details["first_failure"] == 0 and v.details["max_relative_error"] > 0.1


def test_the_convex_one_step_inequality_on_cross_entropy(rng):
    # ℓ = cross-entropy of logits f̃ = Φω + Ψu; x* = (0, ν) with Ψν = cQ₀ (centred one-hot, scaled)
    n, m, p = 6, 3, 4
    labels = rng.integers(0, m, n)
    Q0 = np.eye(m)[labels] - 1.0 / m
    c = 3.0
    Psi = rng.standard_normal((n, n))
    nu = np.linalg.solve(Psi, c * Q0)  # (n, m): Ψν = cQ₀
    Phi = rng.standard_normal((n, p))
    W, U = rng.standard_normal((p, m)) * 0.3, np.zeros((n, m))

    def loss_and_grads(W, U):
        logits = Phi @ W + Psi @ U
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        loss = -np.mean(np.log(prob[np.arange(n), labels]))
        G = (prob - np.eye(m)[labels]) / n
        return loss, Phi.T @ G, Psi.T @ G

    lq = float(np.log(1 + (m - 1) * np.exp(-c)))  # L(cQ₀) for every sample
    eta = 0.5
    d2, losses, g2 = [np.sum(W**2) + np.sum((U - nu) ** 2)], [], []
    for _ in range(40):
        loss, gW, gU = loss_and_grads(W, U)
        losses.append(loss)
        g2.append(np.sum(gW**2) + np.sum(gU**2))
        W, U = W - eta * gW, U - eta * gU
        d2.append(np.sum(W**2) + np.sum((U - nu) ** 2))
    v = theory.gd_distance_identity(d2, losses, g2, [eta] * 40, target_loss=lq)
    assert v.holds and v.relation == "≤"
    # reversing the recorded distances (the iterates moving away) refutes the inequality
    assert theory.gd_distance_identity(d2[::-1], losses, g2, [eta] * 40, target_loss=lq).refuted


def test_an_undecided_d1_for_the_frozen_block_leaves_a_violation_not_established():
    # the identity with a loss that is not the one the distances follow: refuted when D1 holds for the frozen block,
    # not established when D1 could not be decided (it may be what fails), not applicable when D1 is refuted
    d2, losses, grads, eta = [2.0, 1.0], [1.0], [0.0], [0.1]  # recorded change −1, predicted −0.4
    words = {aligned: theory.gd_distance_identity(d2, losses, grads, eta, aligned=aligned).status
             for aligned in ("holds", "not established", "refuted")}
    assert words == {"holds": "refuted", "not established": "not established", "refuted": "not applicable"}
    assert theory.frozen_d1_premise("not established").undecided
    with pytest.raises(ValueError, match="aligned"):
        theory.frozen_d1_premise("maybe")
