"""The functional model of any model a user brings (issue 5): third-party-style models, dropout off in
both modes, and the model left exactly as it was by every measurement (theory/setup.md, theory/alignment.md#setup).

Every Jacobian and Gram here is held to ``diagnostics.reference`` in float64 at 1e-10.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from cases import CASES
from helpers import NO_VMAP_FALLBACK_WARNING, ONE_THREAD, assert_matches_reference, assert_unchanged
from torch import nn

from diagnostics import UnsupportedModelError, check_alignment, check_cms, jacobian, ntk_gram, reference_jacobian

F64 = torch.float64
ATOL = 1e-10

pytestmark = [ONE_THREAD, NO_VMAP_FALLBACK_WARNING]


@pytest.mark.parametrize("cid", ["groupnorm-cnn", "tied-embedding", "dropout-mlp"])
def test_third_party_style_models_match_reference(cid):
    case = CASES[cid]
    assert_matches_reference(case.model(), case.data(5))


# -- dropout -----------------------------------------------------------------------------------------


def test_dropout_is_off_in_both_modes_and_the_train_mode_is_restored():
    case = CASES["dropout-mlp"]
    model, x = case.model(), case.data(6)
    model.train()
    J_eval = reference_jacobian(model, x)
    for mode in ("eval", "batch"):
        J = assert_unchanged(model, lambda mode=mode: jacobian(model, x, mode=mode, strategy="vjp"))
        torch.testing.assert_close(J, J_eval, rtol=0, atol=ATOL)
    assert all(m.training for m in model.modules())
    # and by hand: the eval-mode model's Jacobian, via plain autograd on a copy
    frozen = copy.deepcopy(model).eval()
    out = frozen(x)
    row = torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[2, 1], list(frozen.parameters()))])
    torch.testing.assert_close(J_eval[2 * 3 + 1], row, rtol=0, atol=ATOL)


class AlwaysDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return F.dropout(self.lin(x), 0.5, training=True)  # active even in eval mode


def test_randomness_active_in_eval_mode_is_refused_for_every_strategy_and_the_random_state_restored(device):
    model = nn.Sequential(nn.Tanh(), AlwaysDropout()).double().to(device)
    x = torch.randn(5, 4, dtype=F64)
    for strategy in ("structured", "jacrev", "vjp"):
        with pytest.raises(UnsupportedModelError, match="not reproducible"):
            assert_unchanged(model, lambda s=strategy: jacobian(model, x, strategy=s))


# -- the model is unchanged by every measurement -----------------------------------------------------


@pytest.mark.parametrize("mode", ["eval", "batch"])
def test_measuring_never_changes_a_train_mode_resnet(mode, device):
    case = CASES["resnet-bn"]
    model, x = case.model().to(device), case.data(6).to(device)  # the targets stay on the CPU
    model.train()
    model.bn1.eval()  # a mixed state must come back exactly
    model.stem.weight.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    Y = torch.randn(6, 3, dtype=F64)
    assert_unchanged(model, lambda: jacobian(model, x, mode=mode))
    assert_unchanged(model, lambda: ntk_gram(model, x, mode=mode))
    assert_unchanged(model, lambda: check_alignment(model, (x, Y), mode=mode, probe_size=None))
    assert_unchanged(model, lambda: check_cms(model, x, mode=mode))
    assert model.bn0.num_batches_tracked.item() == 0
