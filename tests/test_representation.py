"""Representation summaries: linear CKA against the feature formula, and capturing centred Grams."""

import math

import pytest
import torch
from cases import CASES

from diagnostics.errors import DiagnosticsError
from diagnostics.representation import capture_grams, centred_gram, cka_from_grams, linear_cka

pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_cka_matches_the_feature_formula_and_its_invariances():
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(30, 7, generator=gen, dtype=torch.float64)
    Y = X @ torch.randn(7, 4, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(30, 4, generator=gen,
                                                                                      dtype=torch.float64)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    direct = float((Yc.T @ Xc).norm() ** 2 / ((Xc.T @ Xc).norm() * (Yc.T @ Yc).norm()))
    assert linear_cka(X, Y) == pytest.approx(direct, rel=1e-12)
    Q, _ = torch.linalg.qr(torch.randn(7, 7, generator=gen, dtype=torch.float64))
    assert linear_cka(3.0 * X @ Q + 5.0, Y) == pytest.approx(direct, rel=1e-10)
    assert linear_cka(X, X) == pytest.approx(1.0, rel=1e-14)
    assert math.isnan(cka_from_grams(centred_gram(torch.ones(5, 3)), centred_gram(X[:5])))


def test_capture_grams_removes_hooks_and_refuses_reused_or_unknown_modules():
    model = CASES["reused-module"].model()
    x = CASES["reused-module"].data(6)
    with capture_grams(model, ["inp"]) as grams:
        model(x)
    assert set(grams) == {"inp"} and grams["inp"].shape == (6, 6)
    with pytest.raises(DiagnosticsError, match="ran 2 times"), capture_grams(model, ["shared"]):
        model(x)
    with pytest.raises(DiagnosticsError, match="no module named 'nope'"), capture_grams(model, ["nope"]):
        pass
    with pytest.raises(RuntimeError, match="boom"), capture_grams(model, ["inp"]):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())


def test_cka_survives_in_place_operations_after_the_module():
    model = CASES["resnet-bn"].model().eval()
    x = CASES["resnet-bn"].data(8)
    with capture_grams(model, ["bn0"]) as grams, torch.no_grad():
        model(x)  # bn0's output goes through ReLU(inplace=True) afterwards
    with torch.no_grad():
        expected = centred_gram(model.bn0(model.stem(x)))
    torch.testing.assert_close(grams["bn0"], expected)
