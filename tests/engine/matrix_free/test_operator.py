"""The matrix-free operator against the dense reference, in float64 (theory/alignment.md#setup)."""

import numpy as np
import pytest
import torch
from cases import CASES

from diagnostics import DiagnosticsError
from diagnostics.engine import JacobianOperator, reference_jacobian

F64 = torch.float64
ATOL = 1e-10


def _modes():
    for cid, case in CASES.items():
        yield pytest.param(cid, "eval", id=f"{cid}-eval")
        if case.has_batch_norm:
            yield pytest.param(cid, "batch", id=f"{cid}-batch")


@pytest.mark.parametrize(("cid", "mode"), list(_modes()))
def test_operator_products_match_reference(cid, mode, device):
    """On a GPU the model is there, the inputs and vectors on the CPU; products come back on the model's device."""
    case = CASES[cid]
    model, x = case.model().to(device), case.data(7)
    J = reference_jacobian(model, x, mode=mode).cpu()
    op = JacobianOperator(model, x, mode=mode, chunk_size=None if mode == "batch" else 3)
    assert op.shape == tuple(J.shape)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(J.shape[1], generator=gen, dtype=F64)
    u = torch.randn(J.shape[0], generator=gen, dtype=F64)
    assert op.matvec(v).device.type == device.type
    torch.testing.assert_close(op.matvec(v).cpu(), J @ v, rtol=0, atol=ATOL)
    torch.testing.assert_close(op.rmatvec(u).cpu(), J.T @ u, rtol=0, atol=ATOL)
    torch.testing.assert_close(op.gram_matvec(u).cpu(), J @ (J.T @ u), rtol=0, atol=ATOL)
    A, G = op.to_scipy(), op.to_scipy(gram=True)
    np.testing.assert_allclose(A.matvec(v.numpy()), (J @ v).numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(A.rmatvec(u.numpy()), (J.T @ u).numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(G.matvec(u.numpy()), (J @ (J.T @ u)).numpy(), rtol=0, atol=ATOL)
    V = torch.randn(J.shape[1], 3, generator=gen, dtype=F64)
    U = torch.randn(J.shape[0], 2, generator=gen, dtype=F64)
    torch.testing.assert_close(op.matmat(V).cpu(), J @ V, rtol=0, atol=ATOL)
    torch.testing.assert_close(op.rmatmat(U).cpu(), J.T @ U, rtol=0, atol=ATOL)


def test_block_products_refuse_blocks_of_the_wrong_shape():
    case = CASES[next(iter(CASES))]
    op = JacobianOperator(case.model(), case.data(4))
    with pytest.raises(DiagnosticsError, match="must be a matrix with"):
        op.matmat(torch.ones(op.shape[1]))
    with pytest.raises(DiagnosticsError, match="must be a matrix with"):
        op.rmatmat(torch.ones(op.shape[0] + 1, 2))


def test_operator_refuses_chunks_in_batch_mode_and_leaves_the_model_alone():
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(6)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DiagnosticsError, match="one chunk"):
        JacobianOperator(model, x, mode="batch", chunk_size=2)
    op = JacobianOperator(model, x, mode="batch")
    op.gram_matvec(torch.ones(op.shape[0], dtype=F64))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_every_strategy_gives_the_same_products_in_reverse_mode():
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(5)
    J = reference_jacobian(model, x)
    v = torch.randn(J.shape[1], generator=torch.Generator().manual_seed(1), dtype=F64)
    for strategy in ("auto", "structured", "jacrev", "vjp"):
        op = JacobianOperator(model, x, strategy=strategy, chunk_size=2)
        assert op.products == ("jvp/vjp" if strategy == "auto" else "rows/vjp")
        torch.testing.assert_close(op.matvec(v), J @ v, rtol=0, atol=ATOL)
    with pytest.raises(DiagnosticsError, match="strategy must be one of"):
        JacobianOperator(model, x, strategy="fast")


def test_auto_falls_back_to_reverse_mode_for_operations_without_a_forward_derivative():
    torch.manual_seed(0)
    head = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(4, 3))  # no forward-mode derivative
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), head).double()
    x = torch.randn(6, 5, dtype=F64)
    J = reference_jacobian(model, x)
    op = JacobianOperator(model, x)
    v = torch.randn(J.shape[1], dtype=F64)
    torch.testing.assert_close(op.matvec(v), J @ v, rtol=0, atol=ATOL)
    assert op.products == "rows/vjp" and "forward mode failed" in op.choice and "(_WeightNorm)" in op.choice
