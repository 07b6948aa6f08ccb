"""jacobian / ntk_gram against the naive autograd loop on every device, and exact answers
(theory/setup.md#jacobian-and-gram, theory/width.md, theory/alignment.md#setup)."""

import copy

import pytest
import torch
from cases import CASES
from helpers import restore_tf32, set_tf32, tf32_switches
from torch import nn

from diagnostics import STRATEGIES, jacobian, ntk_gram, reference_gram, reference_jacobian

F64 = torch.float64


def _runs():
    for cid, case in CASES.items():
        yield pytest.param(cid, "eval", "structured", id=f"{cid}-eval-structured")
        yield pytest.param(cid, "eval", "jacrev", id=f"{cid}-eval-jacrev")
        yield pytest.param(cid, "eval", "vjp", id=f"{cid}-eval-vjp")
        if case.has_batch_norm:
            yield pytest.param(cid, "batch", "vjp", id=f"{cid}-batch-vjp")
            yield pytest.param(cid, "batch", "auto", id=f"{cid}-batch-auto")


@pytest.mark.parametrize(("cid", "mode", "strategy"), list(_runs()))
def test_jacobian_and_gram_match_autograd_loop(cid, mode, strategy, device):
    case = CASES[cid]
    model, x = case.model().to(device), case.data(5).to(device)
    J_ref = reference_jacobian(model, x, mode=mode)
    J = jacobian(model, x, mode=mode, strategy=strategy)
    K = ntk_gram(model, x, mode=mode, strategy=strategy)
    assert J.shape == J_ref.shape and J.device == K.device == J_ref.device
    torch.testing.assert_close(J, J_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(K, J_ref @ J_ref.T, rtol=0, atol=1e-10)
    torch.testing.assert_close(K, K.T, rtol=0, atol=0)


@pytest.mark.parametrize("cid", ["mlp", "resnet-bn"])
def test_float32_gram_of_every_strategy_is_float32_accurate_with_tf32_switched_on_by_the_user(cid, device):
    """TF32 (a 10-bit mantissa, relative error ~5e-4) would miss this bound by an order of magnitude: the
    engine turns it off while measuring, whatever the user's switches say."""
    case = CASES[cid]
    model, x = case.model(torch.float32).to(device), case.data(5, torch.float32)
    K_ref = reference_gram(copy.deepcopy(model).cpu().double(), x.double())  # the same weights, float64 on the CPU
    before = tf32_switches()
    try:
        set_tf32(True)
        for strategy in STRATEGIES:
            K = ntk_gram(model, x, strategy=strategy)
            assert K.dtype == torch.float32 and K.device.type == device.type, strategy
            assert (K.cpu().double() - K_ref).abs().max() <= 2e-5 * K_ref.abs().max(), strategy
    finally:
        restore_tf32(before)


def test_batch_mode_differs_from_eval_mode_with_batch_norm():
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(6)
    J_eval = jacobian(model, x, mode="eval")
    J_batch = jacobian(model, x, mode="batch")
    assert (J_eval - J_batch).abs().max() > 1e-3  # batch statistics couple the samples


def test_rows_are_sample_major_and_columns_follow_named_parameters():
    model = nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=F64)
    J = jacobian(model, x)
    # f_c(x_i) = W[c] · x_i + b[c]: row (i, c) holds x_i in the block of W[c] and 1 at b[c]
    for i in range(4):
        for c in range(2):
            expected = torch.zeros(8, dtype=F64)
            expected[3 * c : 3 * c + 3] = x[i]
            expected[6 + c] = 1
            torch.testing.assert_close(J[i * 2 + c], expected)


def test_parameter_subset_selects_columns():
    case = CASES["cnn"]
    model, x = case.model(), case.data(4)
    J_all = jacobian(model, x)
    J_head = jacobian(model, x, params=["head"])
    names = [k for k, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    start = sum(s for k, s in zip(names, sizes, strict=True) if not k.startswith("head"))
    torch.testing.assert_close(J_head, J_all[:, start:], rtol=0, atol=1e-12)
    K_head = ntk_gram(model, x, params=lambda name, p: name.startswith("head"))
    torch.testing.assert_close(K_head, J_head @ J_head.T, rtol=0, atol=1e-10)


@pytest.mark.parametrize("n", [3, 7, 20])
def test_linear_model_rank_is_min_of_rows_and_m_times_dx_plus_one(n):
    d_x, m = 4, 3
    model = nn.Linear(d_x, m).double()
    x = torch.randn(n, d_x, dtype=F64)
    rank = torch.linalg.matrix_rank(jacobian(model, x)).item()
    assert rank == min(n * m, m * (d_x + 1))


@pytest.mark.parametrize("width", [2, 8, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_deep_linear_network_never_exceeds_m_times_dx_plus_one(width, bias):
    d_x, m, n = 3, 2, 12
    model = nn.Sequential(
        nn.Linear(d_x, width, bias=bias), nn.Linear(width, width, bias=bias), nn.Linear(width, m, bias=bias)
    ).double()
    x = torch.randn(n, d_x, dtype=F64)
    rank = torch.linalg.matrix_rank(jacobian(model, x)).item()
    bound = m * (d_x + 1) if bias else m * d_x
    assert rank <= bound
    assert rank >= min(bound, width)  # and the bound is attained once the width allows it
    if width >= d_x + 1:
        assert rank == bound


def test_euler_identity_for_bias_free_relu_network():
    depth = 3  # hidden layers: H = depth + 1 weight layers
    layers, d = [], 5
    for _ in range(depth):
        layers += [nn.Linear(d, 9, bias=False), nn.ReLU()]
        d = 9
    model = nn.Sequential(*layers, nn.Linear(d, 2, bias=False)).double()
    x = torch.randn(6, 5, dtype=F64)
    J = jacobian(model, x)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    f = model(x).detach().reshape(-1)
    torch.testing.assert_close(J @ theta, (depth + 1) * f, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cid", ["mlp", "resnet-bn"])
def test_gradient_identity_I1(cid):
    case = CASES[cid]
    model, x = case.model(), case.data(6)
    with torch.no_grad():
        f = model.eval()(x)
    Y = torch.randn_like(f)
    loss = ((model(x) - Y) ** 2).sum() / (2 * x.shape[0])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    grad = torch.cat([g.reshape(-1) for g in grads])
    J = jacobian(model, x)
    torch.testing.assert_close(J.T @ (f - Y).reshape(-1) / x.shape[0], grad, rtol=0, atol=1e-10)


def test_outputs_of_any_shape_are_flattened_in_c_order():
    model = nn.Sequential(nn.Linear(3, 6), nn.Unflatten(1, (2, 3))).double()
    x = torch.randn(4, 3, dtype=F64)
    J = jacobian(model, x)
    J_ref = reference_jacobian(model, x)
    assert J.shape == (4 * 6, 6 * 3 + 6)
    torch.testing.assert_close(J, J_ref, rtol=0, atol=1e-12)
