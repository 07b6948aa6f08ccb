"""Measurement: the strategies it accepts, and those it refuses in batch mode."""

import pytest
import torch
from cases import CASES

from diagnostics import DiagnosticsError, jacobian

F64 = torch.float64


def test_unknown_strategy_and_per_sample_strategy_in_batch_mode_are_refused():
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(4)
    with pytest.raises(DiagnosticsError, match="strategy must be one of"):
        jacobian(model, x, strategy="fast")
    with pytest.raises(DiagnosticsError, match="samples interact"):
        jacobian(model, x, mode="batch", strategy="jacrev")


def test_every_public_function_accepts_the_same_strategies():
    from diagnostics import STRATEGIES, AlignmentTracker, JacobianOperator, check_alignment, check_cms, ntk_gram

    case = CASES["mlp"]
    model, x = case.model(), case.data(6)
    y = torch.arange(6) % 3
    calls = {
        "jacobian": lambda s: jacobian(model, x, strategy=s),
        "ntk_gram": lambda s: ntk_gram(model, x, strategy=s),
        "check_alignment": lambda s: check_alignment(model, (x, y), loss="ce", probe_size=None, strategy=s),
        "check_cms": lambda s: check_cms(model, x, strategy=s),
        "JacobianOperator": lambda s: JacobianOperator(model, x, strategy=s).matvec(torch.ones(111, dtype=F64)),
        "AlignmentTracker": lambda s: AlignmentTracker(model, (x, y), loss="ce", probe_size=None, strategy=s),
    }
    assert STRATEGIES == ("auto", "structured", "jacrev", "vjp")
    for call in calls.values():
        for strategy in STRATEGIES:
            call(strategy)
        with pytest.raises(DiagnosticsError, match="strategy must be one of"):
            call("fast")
