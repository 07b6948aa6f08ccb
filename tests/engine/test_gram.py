"""The tiled symmetric accumulation of the Gram: every strategy over several tiles, against the dense
reference in float64 (theory/alignment.md#setup). The ``small_tiles`` fixture is in ``tests/engine/conftest.py``."""

import pytest
import torch
from cases import CASES

from diagnostics import jacobian, ntk_gram
from diagnostics.engine import reference_jacobian

ATOL = 1e-10


@pytest.mark.parametrize("strategy", ["auto", "structured", "jacrev", "vjp"])
@pytest.mark.parametrize("cid", list(CASES))
def test_every_strategy_matches_reference_over_several_tiles(cid, strategy, small_tiles):
    case = CASES[cid]
    model, x = case.model(), case.data(7)
    J_ref = reference_jacobian(model, x)
    K = ntk_gram(model, x, strategy=strategy)
    assert torch.equal(K, K.T)
    torch.testing.assert_close(K, J_ref @ J_ref.T, rtol=0, atol=ATOL)
    torch.testing.assert_close(jacobian(model, x, strategy=strategy), J_ref, rtol=0, atol=ATOL)
