"""What a measured Gram decides about ``Q ∈ Col J`` (``theory/alignment.md#resolution``, ``#subsets``).

The proposition is tested on its own terms: an exact ``K = JJᵀ`` with a known residual, perturbed by a symmetric
``E`` of norm at most the resolution ``δ`` (chosen far above float64 round-off, so the perturbation, not the
arithmetic, is what the bounds must cover).
"""

from __future__ import annotations

import numpy as np
import pytest

import theory

EPS = np.finfo(np.float64).eps


def _measured(K_tilde: np.ndarray, Q: np.ndarray, delta: float, d: int) -> tuple[float, theory.ResidualBounds]:
    """What the dense path computes from ``K̃`` at the cut ``δ``: the residual and its bounds."""
    lam, U = np.linalg.eigh(K_tilde)
    lam, U = lam[::-1], U[:, ::-1]
    kept = lam > delta
    c = U.T @ Q
    residual = float(np.linalg.norm(c[~kept]) / np.linalg.norm(Q))
    r = int(kept.sum())
    bounds = theory.residual_bounds(
        residual, rows=len(Q), n_params=d, kept_rank=r, resolution=delta,
        smallest_kept=float(lam[r - 1]) if r else float("nan"),
        largest_discarded=float(np.abs(lam[~kept]).max()) if r < len(Q) else 0.0,
        pinv_norm=float(np.linalg.norm(c[kept] / lam[kept]) / np.linalg.norm(Q)))
    return residual, bounds


def _perturbation(rng: np.random.Generator, N: int, size: float) -> np.ndarray:
    E = rng.standard_normal((N, N))
    E = E + E.T
    return size * E / np.linalg.norm(E, 2)


def _exact_residual(J: np.ndarray, Q: np.ndarray) -> float:
    coef, *_ = np.linalg.lstsq(J, Q, rcond=None)
    return float(np.linalg.norm(Q - J @ coef) / np.linalg.norm(Q))


@pytest.mark.parametrize("outside", [0.0, 1e-5, 0.3])
def test_bounds_contain_the_exact_residual_for_every_gram_within_the_resolution(rng, outside):
    # d = 8 < nm = 40, J of full column rank: the kept rank reaches min(nm, d), so both bounds are informative
    N, d = 40, 8
    J = rng.standard_normal((N, d))
    null = np.linalg.svd(J)[0][:, d:] @ rng.standard_normal(N - d)
    Y = J @ rng.standard_normal(d)
    Q = Y + outside * np.linalg.norm(Y) * null / np.linalg.norm(null)
    K = J @ J.T
    delta = 1e-6 * np.linalg.norm(K, 2)
    exact = _exact_residual(J, Q)
    for _ in range(20):
        residual, bounds = _measured(K + _perturbation(rng, N, delta * rng.uniform(0, 1)), Q, delta, d)
        assert bounds.lower - 1e-12 <= exact <= bounds.upper + 1e-12
        # at a tolerance this resolution can answer, the answer is the exact one
        verdict = theory.alignment_condition(residual, 1e-3, bounds=bounds)
        assert verdict.status == (theory.REFUTED if outside > 1e-3 else theory.HOLDS)


def test_a_residual_below_the_resolution_with_room_left_in_col_j_is_not_established(rng):
    # a linear model y = [X, 1] w with one feature scaled by 1e-7: the target Y = Jv is in Col J exactly, but
    # its component along the scaled feature lies below the resolution, where the rank rule discards it
    n, d_x = 100, 5
    X = rng.standard_normal((n, d_x))
    X[:, 0] *= 1e-7
    J = np.hstack([X, np.ones((n, 1))])
    v = rng.standard_normal(d_x + 1)
    v[0] = 1e3
    Y = J @ v
    K = J @ J.T
    delta = np.linalg.norm(K, 2) * n * EPS  # the default rank rule
    residual, bounds = _measured(K, Y, delta, d_x + 1)
    assert residual > 1e-8 and _exact_residual(J, Y) < 1e-12  # the rank rule's residual, not the model's
    verdict = theory.alignment_condition(residual, np.sqrt(EPS), bounds=bounds)
    assert verdict.status == theory.NOT_ESTABLISHED and bounds.lower == 0
    assert "may belong to Col J" in verdict.details["reason"]
    assert theory.alignment_condition(residual, np.sqrt(EPS)).refuted  # what the residual alone said


def test_a_gram_within_the_resolution_can_put_the_discarded_part_in_its_column_space(rng):
    # part 4 of the proposition: when the kept rank is below min(nm, d), no Gram-based lower bound exists
    N, d, r = 30, 40, 20
    U = np.linalg.qr(rng.standard_normal((N, N)))[0]
    lam = np.concatenate([np.geomspace(1.0, 1e-3, r), 1e-9 * rng.uniform(-1, 1, N - r)])
    K_tilde = (U * lam) @ U.T
    delta = 1e-8
    Q = rng.standard_normal(N)
    _, bounds = _measured(K_tilde, Q, delta, d)
    assert bounds.lower == 0
    kept = U[:, :r]
    P = kept @ kept.T
    y = Q - P @ Q
    y_hat = y / np.linalg.norm(y)
    tau = np.abs(lam[r:]).max()
    K_prime = P @ K_tilde @ P + (delta - tau) * np.outer(y_hat, y_hat)
    assert np.linalg.norm(K_prime - K_tilde, 2) <= delta * (1 + 1e-9)
    assert np.linalg.matrix_rank(K_prime, tol=1e-12) == r + 1 <= d  # the Gram of an N × d matrix
    coef, *_ = np.linalg.lstsq(K_prime, Q, rcond=1e-14)
    assert np.linalg.norm(K_prime @ coef - Q) < 1e-6 * np.linalg.norm(Q)  # Q ∈ Col K'


def test_float32_and_float64_measurements_never_give_opposite_words(rng):
    # one question (the tolerance is the same), two resolutions: a target with 1e-5 of its norm outside Col J
    N, d = 60, 10
    J = rng.standard_normal((N, d))
    null = np.linalg.svd(J)[0][:, d:] @ rng.standard_normal(N - d)
    Y = J @ rng.standard_normal(d)
    Q = Y + 1e-5 * np.linalg.norm(Y) * null / np.linalg.norm(null)
    K = J @ J.T
    words = {}
    for name in ("float32", "float64"):
        K_tilde = (J.astype(name) @ J.T.astype(name)).astype(np.float64)
        delta = np.linalg.norm(K_tilde, 2) * N * np.finfo(name).eps
        residual, bounds = _measured((K_tilde + K_tilde.T) / 2, Q, delta, d)
        assert np.linalg.norm(K_tilde - K, 2) <= delta  # the premise holds for both
        words[name] = theory.alignment_condition(residual, np.sqrt(EPS), bounds=bounds).status
    assert words == {"float32": theory.NOT_ESTABLISHED, "float64": theory.REFUTED}
    # with the old rule (tolerance sqrt(eps) of the dtype, residual taken as exact) float32 said the opposite
    residual32, _ = _measured(K_tilde, Q, np.linalg.norm(K_tilde, 2) * N * np.finfo(np.float32).eps, d)
    assert theory.alignment_condition(residual32, np.sqrt(np.finfo(np.float32).eps)).holds


def test_witness_bounds_never_refute():
    bounds = theory.witness_bounds(0.5, 1e-12)
    assert bounds.lower == 0 and bounds.upper == pytest.approx(0.5)
    assert theory.alignment_condition(0.5, 1e-8, bounds=bounds).status == theory.NOT_ESTABLISHED
    assert theory.alignment_condition(1e-10, 1e-8, bounds=theory.witness_bounds(1e-10, 1e-12)).holds


def test_residual_bounds_reject_inconsistent_numbers():
    with pytest.raises(ValueError, match="exceeds"):
        theory.residual_bounds(0.1, rows=4, n_params=2, kept_rank=5, resolution=1e-9, smallest_kept=1.0,
                               largest_discarded=0.0, pinv_norm=1.0)
    with pytest.raises(ValueError, match="exceeds"):
        theory.ResidualBounds(0.2, 0.1)


def test_a_refuting_probe_bounds_the_data_residual_from_below(rng):
    # a ≥ a_S ‖Q_S‖/‖Q‖ (alignment.md#subsets), on a linear model with nm > d
    n, d = 200, 6
    J = rng.standard_normal((n, d))
    Q = rng.standard_normal(n)
    probe = rng.choice(n, 40, replace=False)
    a_probe = _exact_residual(J[probe], Q[probe])
    a_data = _exact_residual(J, Q)
    probe_verdict = theory.alignment_condition(a_probe, 1e-8)
    data = theory.alignment_from_subset(probe_verdict, probe_rows=40, data_rows=n, n_params=d,
                                        probe_norm_sq=float(Q[probe] @ Q[probe]), data_norm_sq=float(Q @ Q))
    assert data.refuted and data.lhs <= a_data
    assert data.lhs == pytest.approx(a_probe * np.linalg.norm(Q[probe]) / np.linalg.norm(Q))


def test_a_holding_probe_says_nothing_about_the_data_and_names_the_count():
    holds = theory.alignment_condition(0.0, 1e-8)
    above = theory.alignment_from_subset(holds, probe_rows=1280, data_rows=12970, n_params=3130,
                                         probe_norm_sq=1.0, data_norm_sq=10.0)
    assert above.status == theory.NOT_ESTABLISHED
    assert "12,970 > d = 3,130" in above.details["reason"] and "probe_size=None" in above.details["reason"]
    below = theory.alignment_from_subset(holds, probe_rows=100, data_rows=1000, n_params=5000,
                                         probe_norm_sq=1.0, data_norm_sq=10.0)
    assert below.status == theory.NOT_ESTABLISHED and "may have full row rank" in below.details["reason"]
    unknown = theory.alignment_from_subset(theory.alignment_condition(0.5, 1e-8), probe_rows=100, data_rows=1000,
                                           n_params=50, probe_norm_sq=1.0, data_norm_sq=None)
    assert unknown.status == theory.NOT_ESTABLISHED and "not known" in unknown.details["reason"]


def test_an_undecided_premise_turns_a_violation_into_not_established():
    # L = 1 > ½‖∇L‖B = 0.05: refuted when D1 holds, not established when D1 could not be decided
    assert theory.gradient_domination(1.0, 0.1, 1.0, aligned=theory.HOLDS).refuted
    undecided = theory.gradient_domination(1.0, 0.1, 1.0, aligned=theory.NOT_ESTABLISHED)
    assert undecided.status == theory.NOT_ESTABLISHED and "could not be decided" in undecided.details["reason"]
    assert "undecided" in str(undecided.premises[0])
    assert theory.gradient_domination(1.0, 0.1, 1.0, aligned=theory.REFUTED).status == theory.NOT_APPLICABLE
    assert theory.gradient_domination(0.01, 0.1, 1.0, aligned=theory.NOT_ESTABLISHED).holds
    with pytest.raises(ValueError, match="aligned"):
        theory.gradient_domination(1.0, 0.1, 1.0, aligned="maybe")
    with pytest.raises(ValueError, match="cannot be undecided"):
        theory.Premise("p", True, undecided=True)


def test_cms_test_2_refutes_only_on_a_resolved_residual():
    unresolved = theory.residual_bounds(3e-8, rows=120, n_params=6, kept_rank=5, resolution=1e-12,
                                        smallest_kept=1.0, largest_discarded=1e-13, pinv_norm=1.0)
    v = theory.cms_assessment(None, 3e-8, tol=1e-10, data_tol=1.5e-8, data_bounds=unresolved)
    assert v.status == theory.NOT_ESTABLISHED and "may be as low as" in v.details["reason"]
    resolved = theory.residual_bounds(3e-8, rows=120, n_params=6, kept_rank=6, resolution=1e-12,
                                      smallest_kept=1.0, largest_discarded=1e-13, pinv_norm=1.0)
    assert theory.cms_assessment(None, 3e-8, tol=1e-10, data_tol=1.5e-8, data_bounds=resolved).refuted
    # test 3 counts as conclusive only when the union's rank is exact (it reaches min(nm, d))
    assert theory.cms_assessment(0.5, 0.0, 0.5, 4, 4, rank_bound=6).status == theory.NOT_ESTABLISHED
    assert theory.cms_assessment(0.5, 0.0, 0.5, 4, 4, rank_bound=4).refuted
