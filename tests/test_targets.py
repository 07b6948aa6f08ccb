"""Targets and data for the alignment check: bad ones are refused with a message naming the problem,
and the model is left alone."""

import pytest
import torch
from cases import CASES
from helpers import NO_VMAP_FALLBACK_WARNING, ONE_THREAD, assert_unchanged
from torch.utils.data import TensorDataset

from diagnostics import DiagnosticsError, check_alignment

F64 = torch.float64

pytestmark = [ONE_THREAD, NO_VMAP_FALLBACK_WARNING]


def test_bad_data_and_targets_are_refused():
    model, x = CASES["mlp"].model(), CASES["mlp"].data(6)
    cases = [
        ((x, torch.randn(5, 3, dtype=F64)), {}, "targets have shape .5, 3. but the inputs hold 6"),
        ((x, torch.randn(6, 4, dtype=F64)), {}, r"do not fit the model's outputs, which are \(6, 3\)"),
        ((x, torch.tensor([0, 1, 2, 3, 0, 1])), {"loss": "ce"}, r"must lie in \[0, 2\]"),
        ((x, torch.full((6, 3), float("inf"), dtype=F64)), {}, "targets contain NaN or inf"),
        (TensorDataset(torch.zeros(0, 5), torch.zeros(0)), {}, "the data set is empty"),
        ((x, torch.zeros(6, 3, dtype=F64)), {}, "alignment target Q is zero"),
    ]
    for data, kwargs, message in cases:
        with pytest.raises(DiagnosticsError, match=message):
            assert_unchanged(model, lambda d=data, k=kwargs: check_alignment(model, d, probe_size=None, **k))


def test_the_alignment_target_must_have_the_outputs_shape():
    model, x = CASES["mlp"].model(), CASES["mlp"].data(6)
    Y = torch.randn(6, 3, dtype=F64)
    Q = torch.randn(6, 3, dtype=F64)
    cases = [
        (Q.T, r"target= must have shape \(6, 3\).*got \(3, 6\). It looks transposed: pass target.T"),
        (torch.randn(256, 3), r"got \(256, 3\). Its 256 rows do not match the 6 probe samples.*probe_size=None"),
        (torch.randn(18), r"target= must have shape \(6, 3\)"),
        (Q.clone().fill_(float("nan")), "target contains NaN or inf"),
    ]
    for target, message in cases:
        with pytest.raises(DiagnosticsError, match=message):
            assert_unchanged(model, lambda t=target: check_alignment(model, (x, Y), target=t, probe_size=None))
    report = check_alignment(model, (x, Y), target=Q, probe_size=None)
    assert report.residual >= 0  # the exact shape is taken as it is
    one = torch.nn.Linear(5, 1).double()  # m = 1: a vector of n values is the (n, 1) target
    check_alignment(one, (x, torch.randn(6, dtype=F64)), target=torch.randn(6, dtype=F64), probe_size=None)
