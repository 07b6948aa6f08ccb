"""check_cms: the three tests of THEORY §2 on models with known answers."""

import pytest
import torch
from cases import CASES
from torch import nn

from diagnostics import check_cms

F64 = torch.float64


def _relu_net(depth, bias):
    layers, d = [], 5
    for _ in range(depth):
        layers += [nn.Linear(d, 12, bias=bias), nn.ReLU()]
        d = 12
    return nn.Sequential(*layers, nn.Linear(d, 3, bias=bias)).double()


@pytest.mark.parametrize("cid", ["mlp", "cnn", "resnet-bn"])
def test_linear_head_models_satisfy_cms_as_affine_output(cid):
    case = CASES[cid]
    report = check_cms(case.model(), case.data(16))
    assert report.holds and report.kind == "affine-output"
    assert report.candidates["affine-output"]["fresh"] < 1e-10
    assert report.candidates["affine-output"]["what"].endswith("'head'") or cid == "mlp"
    assert report.column_space_residual < 1e-6
    assert set(report.R) == {k for k, _ in case.model().named_parameters()}


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_bias_free_relu_nets_are_homogeneous_with_the_right_degree(depth):
    model = _relu_net(depth, bias=False)
    report = check_cms(model, torch.randn(20, 5, dtype=F64))
    assert report.holds and report.kind == "homogeneous"
    assert report.degree == pytest.approx(depth + 1, abs=1e-10)
    for p, R in zip(model.parameters(), report.R.values(), strict=True):
        torch.testing.assert_close(R, p.detach() / (depth + 1))


def test_relu_net_with_biases_is_not_homogeneous_but_affine_output():
    report = check_cms(_relu_net(2, bias=True), torch.randn(20, 5, dtype=F64))
    assert report.kind == "affine-output"
    assert not report.candidates["homogeneous"]["passes"]


@pytest.mark.parametrize("head", [nn.Sigmoid(), nn.Tanh(), nn.Softmax(dim=-1)])
def test_nonlinear_heads_violate_cms(head):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3), head).double()
    report = check_cms(model, torch.randn(20, 5, dtype=F64))
    assert not report.holds and report.kind is None and report.R is None
    assert all(c["fresh"] > 1e-3 for c in report.candidates.values())
    assert "VIOLATED" in str(report)


def test_report_is_readable_and_serialisable():
    report = check_cms(CASES["mlp"].model(), CASES["mlp"].data(10))
    text = str(report)
    for phrase in ("test 1", "test 2", "test 3", "affine-output"):
        assert phrase in text
    d = report.to_dict()
    assert d["holds"] is True and "R_norms" in d and "R" not in d
