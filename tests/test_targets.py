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
