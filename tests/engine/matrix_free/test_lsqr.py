"""The resumable LSQR: scipy's iteration sequence, a resume that continues it exactly, stated stops."""

import numpy as np
import pytest
from scipy.sparse.linalg import lsqr as scipy_lsqr

from diagnostics import DiagnosticsError
from diagnostics.engine.matrix_free.lsqr import lsqr
from diagnostics.store import RunStore


def _problem(rows=40, cols=25, rank=12, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols))  # rank-deficient
    return A, rng.standard_normal(rows)


def _solve(A, b, **kwargs):
    settings = {"atol": 1e-12, "btol": 1e-12, "conlim": 1e8, "iter_lim": 200, **kwargs}
    return lsqr(lambda v: A @ v, lambda u: A.T @ u, b, A.shape[1], **settings)


def test_lsqr_follows_scipy_and_reaches_the_least_norm_solution():
    A, b = _problem()
    ours = _solve(A, b)
    theirs = scipy_lsqr(A, b, atol=1e-12, btol=1e-12, conlim=1e8, iter_lim=200)
    assert ours.istop == theirs[1] and ours.iterations == theirs[2]
    np.testing.assert_allclose(ours.x, theirs[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.x, np.linalg.pinv(A) @ b, rtol=0, atol=1e-10)
    assert ours.residual_norm == pytest.approx(np.linalg.norm(b - A @ ours.x), rel=1e-8)
    assert not ours.truncated and "tolerance reached" in ours.reason


def test_an_interrupted_solve_resumes_from_its_checkpoint_and_gives_the_same_answer(tmp_path):
    A, b = _problem(seed=1)
    whole = _solve(A, b)
    checkpoint = RunStore(tmp_path)

    def crash(iteration, residual):
        if iteration == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _solve(A, b, checkpoints=checkpoint, checkpoint_every=3, callback=crash)
    assert checkpoint.read_state("lsqr", "anything") is None and (tmp_path / "runs" / "lsqr.pt").exists()
    resumed = _solve(A, b, checkpoints=checkpoint, checkpoint_every=3)
    assert resumed.resumed_from == 6 and resumed.iterations == whole.iterations
    np.testing.assert_allclose(resumed.x, whole.x, rtol=0, atol=1e-12)
    # a finished solve is read back without iterating
    again = _solve(A, b, checkpoints=checkpoint, callback=crash)
    assert again.resumed_from == whole.iterations and not again.history and again.istop == whole.istop
    np.testing.assert_array_equal(again.x, resumed.x)
    # a solve truncated by its budget goes on from where it stopped when run again
    _solve(A, 3 * b, checkpoints=checkpoint, iter_lim=4)
    longer, straight = _solve(A, 3 * b, checkpoints=checkpoint), _solve(A, 3 * b)
    assert longer.resumed_from == 4 and longer.iterations == straight.iterations
    np.testing.assert_allclose(longer.x, straight.x, rtol=0, atol=1e-12)
    # a checkpoint of another problem is not used
    other = _solve(A, 2 * b, checkpoints=checkpoint, checkpoint_every=3)
    assert other.resumed_from == 0
    np.testing.assert_allclose(other.x, 2 * whole.x, rtol=0, atol=1e-12)


def test_caps_and_time_budgets_are_stated_stops_with_truncated_solutions():
    A, b = _problem(seed=2)
    capped = _solve(A, b, iter_lim=3)
    assert capped.istop == 7 and capped.truncated and capped.iterations == 3 and "iteration cap" in capped.reason
    timed = _solve(A, b, time_budget=0.0)
    assert timed.istop == 8 and timed.truncated and timed.iterations == 1 and "time budget" in timed.reason
    # the residual estimate decreases monotonically and bounds the least-squares residual from above
    history = [r for _, r in _solve(A, b).history]
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in zip(history, history[1:], strict=False))
    best = np.linalg.norm(b - A @ np.linalg.pinv(A) @ b)
    assert capped.residual_norm >= best


def test_a_zero_right_hand_side_is_solved_by_zero_and_bad_limits_are_refused():
    A, _ = _problem()
    zero = _solve(A, np.zeros(A.shape[0]))
    assert zero.istop == 0 and not zero.x.any()
    with pytest.raises(DiagnosticsError, match="positive"):
        _solve(A, np.ones(A.shape[0]), iter_lim=0)


def test_every_process_of_a_group_stops_where_process_0_decides():
    # process 0 goes on to the tolerance; another whose own clock says stop (a spent budget) follows process 0
    A, b = _problem(seed=2)
    decisions = []
    first = _solve(A, b, agree=lambda istop: decisions.append(istop) or istop)
    alone = _solve(A, b, time_budget=0.0)
    assert alone.istop == 8 and alone.iterations == 1 < first.iterations
    follower = iter(decisions)
    other = _solve(A, b, time_budget=0.0, agree=lambda istop: next(follower))
    assert other.istop == first.istop and other.iterations == first.iterations
    np.testing.assert_array_equal(other.x, first.x)
