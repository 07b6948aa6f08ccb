"""The parameter-space Gram and the Rayleigh–Ritz pass, each one stream over per-sample Jacobian blocks (float64)."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from diagnostics import DiagnosticsError
from diagnostics.engine import JacobianOperator, reference_jacobian
from diagnostics.engine.matrix_free.ritz import ritz_pairs
from diagnostics.engine.matrix_free.sketch import parameter_gram, sketch_hash
from diagnostics.engine.matrix_free.streamed import StreamedJacobianOperator

F64 = torch.float64


def _problem(n=30):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()  # d = 57 < nm = 90
    x = torch.randn(n, 5, dtype=F64)
    q = torch.randn(n * 3, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    return model, x, q, reference_jacobian(model, x)


def test_the_exact_gram_is_jtj_and_projects_the_right_hand_sides():
    model, x, q, J = _problem()
    gram = parameter_gram(JacobianOperator(model, x, chunk_size=7), q)
    assert gram.exact and gram.sketch_rows == 0
    torch.testing.assert_close(gram.matrix, J.T @ J, rtol=0, atol=1e-12)
    torch.testing.assert_close(gram.projections, J.T @ q, rtol=0, atol=1e-12)


def test_the_sketch_is_s_times_j_for_the_hashed_sparse_sign_embedding():
    model, x, q, J = _problem()
    rows, nonzeros = 40, 4
    buckets, signs = sketch_hash(torch.arange(J.shape[0]), rows, nonzeros, seed=3)
    S = torch.zeros(rows, J.shape[0], dtype=F64)
    for k in range(nonzeros):
        S[buckets[k], torch.arange(J.shape[0])] += signs[k]
    # one non-zero ±1/2 per block of 10 rows in every column: a sparse sign embedding
    assert torch.equal((S != 0).sum(0), torch.full((J.shape[0],), nonzeros))
    assert torch.equal(buckets // (rows // nonzeros), torch.arange(nonzeros)[:, None].expand_as(buckets))
    assert torch.allclose(S.abs().sum(0), torch.full((J.shape[0],), 2.0, dtype=F64))
    gram = parameter_gram(JacobianOperator(model, x, chunk_size=7), q, sketch_rows=rows, nonzeros=nonzeros, seed=3)
    torch.testing.assert_close(gram.matrix, (S @ J).T @ (S @ J), rtol=0, atol=1e-12)
    torch.testing.assert_close(gram.projections, (S @ J).T @ (S @ q), rtol=0, atol=1e-12)


def test_the_sketch_is_the_same_whatever_the_batches_and_the_seed_changes_it():
    model, x, q, _ = _problem()
    data = TensorDataset(x, torch.zeros(x.shape[0], 3, dtype=F64))
    grams = [parameter_gram(StreamedJacobianOperator(model, data, batch_size=b), q, sketch_rows=60).matrix
             for b in (4, 30)]
    torch.testing.assert_close(grams[0], grams[1], rtol=0, atol=1e-12)
    other = parameter_gram(StreamedJacobianOperator(model, data, batch_size=4), q, sketch_rows=60, seed=1).matrix
    assert not torch.allclose(other, grams[0])
    with pytest.raises(DiagnosticsError, match="nonzeros"):
        sketch_hash(torch.arange(3), 4, 5, 0)


def test_ritz_pairs_on_the_whole_space_are_the_eigenpairs_of_k():
    model, x, q, J = _problem()
    lam, U = torch.linalg.eigh(J @ J.T)
    lam, U = lam.flip(0), U.flip(1)
    d = J.shape[1]
    ritz = ritz_pairs(JacobianOperator(model, x), torch.eye(d, dtype=F64), q)
    np.testing.assert_allclose(ritz.values[:10], lam[:10].numpy(), rtol=1e-10)
    torch.testing.assert_close(ritz.coefficients[:10] ** 2, (U[:, :10].T @ q) ** 2, rtol=1e-8, atol=1e-10)
    assert ritz.residuals[:10].max() <= 1e-9 * lam[0]


def test_ritz_values_on_a_subspace_are_lower_bounds_that_interlace():
    model, x, q, J = _problem()
    lam = torch.linalg.eigvalsh(J.T @ J).flip(0).numpy()
    basis = torch.linalg.qr(torch.randn(J.shape[1], 6, generator=torch.Generator().manual_seed(2), dtype=F64)).Q
    ritz = ritz_pairs(JacobianOperator(model, x), basis, q)
    assert np.all(ritz.values <= lam[:6] * (1 + 1e-12))
    assert np.all(ritz.values >= lam[-6:] * (1 - 1e-12) - 1e-12)
    # the Ritz vectors of K are orthonormal, so the coefficients never carry more than ‖q‖²
    assert float((ritz.coefficients**2).sum(0).max()) <= float((q**2).sum(0).min()) * (1 + 1e-12)
    # the Ritz residuals are those of J'J on the Ritz vectors
    H = J.T @ J
    z = ritz.vectors[:, 0]
    assert abs(float((H @ z - ritz.values[0] * z).norm()) - ritz.residuals[0]) <= 1e-9 * lam[0]
