"""The error estimate every report carries (diagnostics/engine/accuracy.py), held to the real error."""

import pytest
import torch
from cases import CASES
from helpers import ONE_THREAD

from diagnostics import check_cms, reference_gram
from diagnostics.engine import Measurement

F64 = torch.float64
pytestmark = [ONE_THREAD]


@pytest.mark.parametrize(("cid", "mode"), [("mlp", "eval"), ("resnet-bn", "eval"), ("resnet-bn", "batch")])
def test_float32_estimate_is_the_order_of_the_real_error(cid, mode):
    case = CASES[cid]
    model, x = case.model(torch.float32), case.data(20, torch.float32)
    with Measurement(model, x, mode=mode) as job:
        K = job.gram()
        error = job.error(K)
    actual = float((K.double() - reference_gram(model, x, mode=mode, dtype=F64)).abs().max() / K.abs().max())
    assert error.method == "8×8 entries of K recomputed in float64 against float32"
    assert 0 < error.relative <= actual * (1 + 1e-3) and actual <= 100 * error.relative
    assert error.absolute == pytest.approx(error.relative * float(K.abs().max()))


def test_float64_bound_holds_and_reports_print_it():
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(20)
    with Measurement(model, x) as job:
        K = job.gram()
        error = job.error(K)
    actual = float((K - reference_gram(model, x)).abs().max())
    assert error.method.startswith("a-priori bound d·eps·max K_ii") and actual <= error.absolute < 1e-10
    text = str(check_cms(model, x).manifest)
    assert "floating-point error of this measurement ≈" in text and "a-priori bound" in text
