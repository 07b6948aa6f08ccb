"""Measurement: the strategies it accepts, and those it refuses in batch mode."""

import pytest
from cases import CASES

from diagnostics import DiagnosticsError, jacobian


def test_unknown_strategy_and_per_sample_strategy_in_batch_mode_are_refused():
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(4)
    with pytest.raises(DiagnosticsError, match="strategy must be one of"):
        jacobian(model, x, strategy="fast")
    with pytest.raises(DiagnosticsError, match="samples interact"):
        jacobian(model, x, mode="batch", strategy="jacrev")
