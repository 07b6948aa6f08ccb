"""Exact-answer tests of ``theory.width`` ((S1)–(S4)). The ``rng`` fixture is in
``tests/theory/conftest.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import projector

import theory


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



@pytest.mark.parametrize(("seeds", "reps"), [(3, 2000), (5, 1000)])
def test_the_s4_interval_has_its_coverage_at_the_threshold(seeds, reps):
    # seeded sweeps with the true slope exactly at −slope_tol (bench/s4_coverage.py): a 90 % interval may say
    # "holds" (entirely ≤ −0.25) in 5 % of them
    from bench.s4_coverage import coverage

    rates = coverage(seeds, reps)
    sd = math.sqrt(0.05 * 0.95 / reps)  # binomial standard deviation of the rate at 5 %
    assert abs(rates["holds"] - 0.05) <= 3 * sd, rates
    assert abs(rates["coverage"] - 0.90) <= 3 * math.sqrt(0.9 * 0.1 / reps), rates
    assert rates["bootstrap_holds"] - 0.05 > 3 * sd, rates  # the former percentile bootstrap fails this band


def test_the_s4_slope_and_interval_come_from_the_per_seed_slopes():
    widths = np.repeat([16.0, 64.0, 256.0], 3)
    groups = np.tile([0, 1, 2], 3)
    per_seed = np.array([-0.6, -0.5, -0.4])
    movements = np.exp(per_seed[groups] * np.log(widths) + groups)  # exact lines, one per seed, offsets 0, 1, 2
    v = theory.kernel_movement_trend(widths, movements, groups=groups)
    assert v.details["seed_slopes"] == pytest.approx(per_seed) and v.details["slope"] == pytest.approx(-0.5)
    half = 2.919986 * 0.1 / math.sqrt(3)  # t_{2, 0.95} · sd / √3
    assert v.details["interval"] == pytest.approx((-0.5 - half, -0.5 + half), rel=1e-6)
    assert v.details["interval_method"] == "t-interval over the slopes of 3 seeds" and v.holds
