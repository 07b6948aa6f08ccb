"""check_cms: the three tests of ``theory/cms.md#how-to-test-a1`` on models with known answers."""

import pytest
import torch
import torch.nn.functional as F
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


class FunctionalHead(nn.Module):
    """The head is ``F.linear`` on raw parameters: no ``nn.Linear`` module to find."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 12)
        self.W = nn.Parameter(torch.randn(3, 12) / 4)
        self.b = nn.Parameter(torch.randn(3))

    def forward(self, x):
        return F.linear(torch.tanh(self.body(x)), self.W, self.b)


class TiedEmbedding(nn.Module):
    """Logits ``E h`` with the input embedding ``E`` reused as the output layer (weight tying)."""

    def __init__(self, vocab: int = 7, dim: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens):
        h = self.norm(torch.tanh(self.mix(self.embed(tokens).mean(1))))
        return h @ self.embed.weight.T


@pytest.mark.parametrize("cid", ["mlp", "cnn", "resnet-bn"])
def test_linear_head_models_satisfy_cms_linear_in_the_head(cid, device):
    case = CASES[cid]
    report = check_cms(case.model().to(device), case.data(16))
    assert report.holds and report.status == "holds" and report.kind == "linear-in"
    assert report.candidates["linear-in"]["fresh"] < 1e-10
    assert "'head'" in report.candidates["linear-in"]["what"] or cid == "mlp"
    assert report.column_space_residual < 1e-6
    assert set(report.R) == {k for k, _ in case.model().named_parameters()}


def test_a_functional_head_on_raw_parameters_holds():
    torch.manual_seed(0)
    model = FunctionalHead().double()
    report = check_cms(model, torch.randn(20, 5, dtype=F64))
    assert report.holds, str(report)
    assert "(W, b)" in report.candidates[report.kind]["what"]
    # R is the head's own coordinates, zero elsewhere
    torch.testing.assert_close(report.R["W"], model.W.detach())
    torch.testing.assert_close(report.R["b"], model.b.detach())
    assert report.R["body.weight"].abs().max() == 0


def test_a_tied_embedding_head_holds_through_the_layer_norm_it_is_linear_in():
    torch.manual_seed(0)
    tokens = torch.randint(0, 7, (24, 4))
    report = check_cms(TiedEmbedding().double(), tokens)
    # the logits E·(γ ⊙ x̂ + β) are linear in the final layer norm's (γ, β), whatever E is tied to
    assert report.holds and "'norm'" in report.candidates[report.kind]["what"], str(report)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_bias_free_relu_nets_are_homogeneous_with_the_right_degree(depth):
    model = _relu_net(depth, bias=False)
    report = check_cms(model, torch.randn(20, 5, dtype=F64))
    assert report.holds and report.kind == "homogeneous"
    assert report.degree == pytest.approx(depth + 1, abs=1e-10)
    for p, R in zip(model.parameters(), report.R.values(), strict=True):
        torch.testing.assert_close(R, p.detach() / (depth + 1))


def test_relu_net_with_biases_is_not_homogeneous_but_linear_in_its_head():
    report = check_cms(_relu_net(2, bias=True), torch.randn(20, 5, dtype=F64))
    assert report.kind == "linear-in"
    assert not report.candidates["homogeneous"]["passes"]


@pytest.mark.parametrize("head", [nn.Sigmoid(), nn.Tanh()])
def test_nonlinear_heads_are_not_established_when_nothing_refutes_a1(head):
    # d = 111 parameters > n·m = 60 rows: J has full row rank, so test 2 cannot refute A1, and no candidate
    # reproduces f; the verdict must not say more than that
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3), head).double()
    report = check_cms(model, torch.randn(20, 5, dtype=F64))
    assert report.status == "not established" and report.kind is None and report.R is None
    assert all(c["fresh"] > 1e-3 for c in report.candidates.values())
    assert str(report).startswith("Common model structure A1 (f = J R): not established")


@pytest.mark.parametrize("n", [20, 80])
def test_a_softmax_head_leaves_f_outside_the_kept_directions_but_a_gram_cannot_refute_it(device, n):
    # the outputs of each sample sum to 1, so every Jacobian row block sums to 0: f_X ∉ Col J
    # (theory/cms.md#violations). Test 2 sees it (most of f_X in the discarded directions), but the shift
    # invariance of the softmax also leaves 13 directions of parameter space null, so rank J < min(nm, d) and
    # directions of Col J may hide below the resolution: a Gram cannot refute A1 (theory/alignment.md#resolution)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3), nn.Softmax(dim=-1)).double().to(device)
    report = check_cms(model, torch.randn(n, 5, dtype=F64, device=device))
    assert report.column_space_residual > 0.5 and report.status == "not established"
    assert "may belong to Col J" in report.verdict.details["reason"]
    assert "not shown:" in str(report)


def test_a_sigmoid_head_with_fewer_parameters_than_rows_is_refuted_by_test_2():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 2), nn.Tanh(), nn.Linear(2, 3), nn.Sigmoid()).double()  # d = 21
    report = check_cms(model, torch.randn(40, 5, dtype=F64))  # n·m = 120 rows
    assert report.status == "refuted" and report.column_space_residual > 1e-3
    assert report.verdict.details["refuted_by"].startswith("test 2")
    assert "refuted by test 2: f_X ∉ Col J" in str(report).splitlines()[0]


def test_report_is_readable_and_serialisable():
    report = check_cms(CASES["mlp"].model(), CASES["mlp"].data(10))
    text = str(report)
    for phrase in ("test 1", "test 2", "test 3", "linear-in", "holds"):
        assert phrase in text
    d = report.to_dict()
    assert d["status"] == "holds" and d["verdict"]["status"] == "holds" and "R_norms" in d and "R" not in d
