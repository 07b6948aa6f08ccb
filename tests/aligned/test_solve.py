"""D1 for the frozen block: the least-norm solution of the linear algebra (theory/application.md)."""

import pytest
import torch

from diagnostics.aligned import solve_alignment

F64 = torch.float64


def test_single_blocks_give_the_least_norm_solution():
    g = torch.Generator().manual_seed(0)
    n, m, p, d = 12, 3, 7, 20
    Phi = torch.randn(n, p, generator=g, dtype=F64)
    Q = torch.randn(n, m, generator=g, dtype=F64)
    sol = solve_alignment(Q, features=Phi)
    expected = torch.linalg.pinv(Phi) @ Q
    torch.testing.assert_close(sol.nu_features, expected.T, rtol=1e-9, atol=1e-12)
    assert sol.residual == pytest.approx(float((Q - Phi @ expected).norm() / Q.norm()), rel=1e-9)
    assert sol.rank == m * p and sol.residual > 0.1  # p < n: generic Q is not in Col(Φ)
    J = torch.randn(n * m, d, generator=g, dtype=F64)  # d < nm: dual (d × d) Gram
    sol = solve_alignment(Q, tangent=J)
    torch.testing.assert_close(sol.nu_tangent, torch.linalg.pinv(J) @ Q.reshape(-1), rtol=1e-8, atol=1e-10)
    wide = torch.randn(n * m, 3 * n * m, generator=g, dtype=F64)  # primal (nm × nm) Gram
    sol = solve_alignment(Q, tangent=wide)
    assert sol.residual < 1e-12 and sol.rank == n * m
    torch.testing.assert_close(sol.nu_tangent, torch.linalg.pinv(wide) @ Q.reshape(-1), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("p", [5, 20])
def test_two_blocks_give_an_exact_solution(p):
    # Q ∈ Col([J, I ⊗ Φ]) by construction; neither block holds it alone when p < n.
    g = torch.Generator().manual_seed(1)
    n, m, d = 15, 2, 12
    J = torch.randn(n * m, d, generator=g, dtype=F64)
    Phi = torch.randn(n, p, generator=g, dtype=F64)
    Q = (J @ torch.randn(d, generator=g, dtype=F64)).reshape(n, m) + Phi @ torch.randn(p, m, generator=g, dtype=F64)
    sol = solve_alignment(Q, features=Phi, tangent=J)
    fit = (J @ sol.nu_tangent).reshape(n, m) + Phi @ sol.nu_features.T
    assert sol.residual < 1e-10
    torch.testing.assert_close(fit, Q, rtol=0, atol=1e-9)
    assert sol.rank == min(n * m, d + m * p) or p >= n
    assert solve_alignment(Q, features=Phi).residual > 1e-3 or p >= n
