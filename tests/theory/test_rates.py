"""Exact-answer tests of ``theory.rates``: the gradient-flow and gradient-descent rates that D1 gives, on hand
numbers and small numpy models with exact solutions. The ``rng`` fixture is in ``tests/theory/conftest.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import projector, sq

import theory

# -- (I3) gradient-flow rate -------------------------------------------------------------------------


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


# -- (I3) gradient-descent rate ----------------------------------------------------------------------


def linear_gradient_descent(J: np.ndarray, Y: np.ndarray, theta: np.ndarray, eta: float, steps: int):
    """Exact gradient descent on L = (1/2n)‖Jθ − Y‖²: losses, squared gradient norms, certificates ‖J⁺r‖."""
    n = J.shape[0]
    pinv = np.linalg.pinv(J)
    losses, grads, certificates = [], [], []
    for _ in range(steps + 1):
        r = J @ theta - Y
        grad = J.T @ r / n
        losses.append(0.5 * r @ r / n)
        grads.append(grad @ grad)
        certificates.append(np.linalg.norm(pinv @ r))
        theta = theta - eta * grad
    return np.array(losses), np.array(grads[:-1]), np.array(certificates)


def test_gradient_descent_rate_hand_numbers():
    # δ = 0.5, g = 4, η = 0.25: τ₁ = 0.125, bound 1/(1 + 4·0.125) = 2/3; c = 0.5/(0.25·4) = 0.5
    v = theory.gradient_descent_rate(0.25, [1.0, 0.5], [4.0], 1.0)
    assert v.holds and v.details["effective_time"] == pytest.approx([0.0, 0.125])
    assert v.details["bounds"] == pytest.approx([1.0, 2 / 3]) and v.details["c"] == 0.5
    assert v.details["c_bounds"] == pytest.approx([1.0, 2 / 3])  # τ₁ = cη exactly here
    assert v.details["worst_index"] == 0 and v.margin == 0.0
    # a certificate bound below what (I3) allows (‖∇L‖ = 2 < 2L/B̄ = 200) breaks the rate: a counterexample
    w = theory.gradient_descent_rate(1.0, [1.0, 0.99, 0.98], [4.0, 4.0], 0.01)
    assert w.refuted and w.details["worst_index"] == 1 and w.rhs == pytest.approx(1 / (1 + 4 * 0.0025 / 1e-4))
    with pytest.raises(ValueError, match="one value per step"):
        theory.gradient_descent_rate(1.0, [1.0, 0.5], [4.0, 4.0], 1.0)
    with pytest.raises(ValueError, match="impossible"):
        theory.gradient_descent_rate(1.0, [1.0, 0.5], [4.0], 0.0)


def test_gradient_descent_rate_on_an_aligned_linear_model(rng):
    # f_X = Jθ with full row rank J: D1 holds for every Y, ∇L is β-Lipschitz with β = λ_max(K)/n
    n, d, steps = 5, 9, 60
    J, Y, theta = rng.standard_normal((n, d)), rng.standard_normal(n), rng.standard_normal(d)
    beta = np.linalg.eigvalsh(J @ J.T).max() / n
    eta = 1.2 / beta
    losses, grads, certificates = linear_gradient_descent(J, Y, theta, eta, steps)
    v = theory.gradient_descent_rate(eta, losses, grads, certificates, aligned=True, cms=True, rtol=1e-10)
    assert v.holds and v.details["max_ratio"] <= 1.0
    assert v.details["c"] >= 1 - beta * eta / 2 - 1e-12  # the descent lemma's constant
    assert np.all(v.details["effective_time"][1:] >= v.details["c"] * eta * np.arange(1, steps + 1) - 1e-12)
    assert np.all(v.details["c_bounds"] >= v.details["bounds"] - 1e-15)


def test_gradient_descent_rate_fails_without_alignment(rng):
    # d < n: Y ∉ Col J, the loss stops at its (I2) floor while τ_k grows, so the bound falls below the loss
    n, d = 8, 3
    J, Y, theta = rng.standard_normal((n, d)), rng.standard_normal(n), rng.standard_normal(d)
    eta = 0.5 * n / np.linalg.eigvalsh(J.T @ J).max()
    losses, grads, certificates = linear_gradient_descent(J, Y, theta, eta, 400)
    floor = 0.5 * sq(Y - projector(J) @ Y) / n
    assert losses[-1] == pytest.approx(floor, rel=1e-9)
    v = theory.gradient_descent_rate(eta, losses, grads, certificates)
    assert v.refuted and v.lhs == pytest.approx(floor, rel=1e-6) and v.rhs < 0.5 * floor
    measured = theory.gradient_descent_rate(eta, losses, grads, certificates, aligned=False)
    assert measured.status == theory.NOT_APPLICABLE and "D1" in measured.details["reason"]


def test_gradient_descent_rate_accounts_rises_exactly():
    # step 0 raises the loss: ρ₁ = 1 − 1/1.1 and the bound follows the loss; step 1 lowers it with τ = 0.6
    v = theory.gradient_descent_rate(1.0, [1.0, 1.1, 0.5], [1.0, 1.0], 10.0)
    assert v.holds and v.details["rising_steps"] == 1 and v.details["largest_rise"] == pytest.approx(0.1)
    assert v.details["rise"] == pytest.approx([0.0, 1 - 1 / 1.1, 1 - 1 / 1.1])
    assert v.details["bounds"] == pytest.approx([1.0, 1.1, 1 / (1 / 1.1 + 4 * 0.6 / 100)])
    assert v.details["c"] < 0 and v.details["c_bounds"] is None
    # the same rise with a certificate (I3) forbids (‖∇L‖ = 1 < 2L/B̄ = 10 at step 1) is refuted after it
    w = theory.gradient_descent_rate(1.0, [1.0, 1.1, 0.5], [1.0, 1.0], 0.1)
    assert w.refuted and w.details["worst_index"] == 2
    # a rise that gives back more of 1/L than (I3) guaranteed the steps before leaves no bound
    x = theory.gradient_descent_rate(1.0, [1.0, 0.01, 10.0], [1e6, 1.0], 1.0)
    assert x.holds and x.details["bounds"][2] == math.inf and x.details["worst_index"] == 0
