"""probe_subset: stratified, seeded subsets that leave the global random stream alone."""

import pytest
import torch

from diagnostics.data import probe_subset


def test_probe_subset_stratified_and_deterministic():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    X = torch.arange(100.0)[:, None]
    Xs, ys = probe_subset(X, y, 10, seed=2)
    assert torch.bincount(ys).tolist() == [5, 3, 2]
    assert torch.equal(y[Xs[:, 0].long()], ys)  # rows stay paired
    assert len(set(Xs[:, 0].tolist())) == 10
    Xs2, ys2 = probe_subset(X, y, 10, seed=2)
    assert torch.equal(Xs, Xs2) and torch.equal(ys, ys2)
    assert not torch.equal(probe_subset(X, y, 10, seed=3)[0], Xs)
    # largest remainders get the leftover places: 7 * (0.5, 0.3, 0.2) = (3.5, 2.1, 1.4) -> (4, 2, 1)
    assert torch.bincount(probe_subset(X, y, 7)[1]).tolist() == [4, 2, 1]


def test_probe_subset_regression_targets_and_global_rng():
    X, y = torch.randn(40, 3), torch.randn(40, 2)
    state = torch.get_rng_state()
    Xs, ys = probe_subset(X, y, 15, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert Xs.shape == (15, 3) and ys.shape == (15, 2)
    idx = [int((X == row).all(1).nonzero()) for row in Xs]
    assert len(set(idx)) == 15 and torch.equal(y[idx], ys)
    assert torch.equal(probe_subset(X, y, 40)[1].sort(0).values, y.sort(0).values)


@pytest.mark.parametrize("size", [0, 41, -1, 2.5, True])
def test_probe_subset_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="size"):
        probe_subset(torch.zeros(40, 2), torch.zeros(40, dtype=torch.long), size)


def test_probe_subset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="samples"):
        probe_subset(torch.zeros(40, 2), torch.zeros(39, dtype=torch.long), 5)
