"""Exact-answer tests of ``theory.cms`` (A1). The ``rng`` fixture is in ``tests/theory/conftest.py``."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import projector

import theory


def test_cms_assessment_hand_numbers():
    ok = theory.cms_assessment(1e-9, 1e-10, 0.5, rank_fit=4, rank_union=6)
    assert ok.holds and ok.details["transfer"] == "failed (inconclusive)" and ok.lhs == 1e-9
    bad = theory.cms_assessment(0.3, 1e-10, 0.5, rank_fit=6, rank_union=6)
    assert bad.refuted and bad.details["transfer"] == "failed (conclusive)" and bad.lhs == 0.5
    assert bad.details["refuted_by"].startswith("test 3")
    unknown = theory.cms_assessment(0.1, 1e-10)
    assert unknown.status == "not established" and "another R" in unknown.details["reason"]
    refuted = theory.cms_assessment(0.4, 0.2)
    assert refuted.refuted and refuted.details["refuted_by"].startswith("test 2")
    # a witnessed identity outranks the rank-rule tests: holds, and the details name the test that disagreed
    torn = theory.cms_assessment(1e-9, 1e-10, 0.5, rank_fit=6, rank_union=6)
    assert torn.holds and torn.details["disagreement"].startswith("test 3 leaves 5.0e-01")
    assert theory.cms_assessment(1e-9, 3.4e-8, data_tol=1.5e-8).details["disagreement"].startswith("test 2")
    assert "disagreement" not in ok.details
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
    v = theory.cms_assessment(None, data_residual, err, rank_fit=4, rank_union=4)
    assert v.refuted and v.details["transfer"] == "failed (conclusive)"
