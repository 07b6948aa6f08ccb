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


def _d1(sol, tol=1.4901161193847656e-08):
    import theory

    return theory.alignment_condition(sol.residual, tol, bounds=sol.bounds).status


def _block(scales, n=40, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(scales), generator=g, dtype=F64) * torch.tensor(scales, dtype=F64)


def test_a_target_exactly_in_the_block_is_never_refuted_by_directions_below_the_resolution():
    # Q = Φw exactly, with one feature scaled by 1e-7: its direction (eigenvalue ~1e-14 λ_max) lies below the
    # resolution, and the kept rank stays below min(nm, q): not established, never refuted (the residual of the
    # float64 rank rule, ~1e-7, used to be called a failure of D1)
    Phi = _block([1.0, 1.0, 1.0, 1e-7])
    g = torch.Generator().manual_seed(3)
    Q = Phi @ torch.randn(4, 2, generator=g, dtype=F64)
    for dtype in (torch.float64, torch.float32):
        sol = solve_alignment(Q, features=Phi, source_dtype=dtype)
        assert sol.residual + sol.rounding > 1.5e-8 and _d1(sol) == "not established", dtype
        assert "discards" in sol.bounds.reason


def test_float32_and_float64_never_give_opposite_words():
    # Q with 1e-5 of its norm outside Col Φ (p < n, Φ well conditioned, every direction resolved): refuted in
    # float64; float32's tolerance used to be sqrt(eps(float32)) = 3.5e-4, so it said "holds"
    Phi = _block([1.0, 0.5, 0.25])
    g = torch.Generator().manual_seed(4)
    inside = Phi @ torch.randn(3, 2, generator=g, dtype=F64)
    outside = torch.randn(40, 2, generator=g, dtype=F64)
    outside -= Phi @ torch.linalg.lstsq(Phi, outside).solution  # orthogonal to Col Φ
    Q = inside + 1e-5 * inside.norm() * outside / outside.norm()
    words = {dtype: _d1(solve_alignment(Q, features=Phi, source_dtype=dtype)) for dtype in (F64, torch.float32)}
    assert words == {F64: "refuted", torch.float32: "refuted"}
    exact = {dtype: _d1(solve_alignment(inside, features=Phi, source_dtype=dtype)) for dtype in (F64, torch.float32)}
    # exactly inside: float64 shows it; float32's recomputation may move Q out of a p < n block by ~1e-7, above
    # the tolerance: not established, never the opposite word
    assert exact == {F64: "holds", torch.float32: "not established"}
    wide = _block([1.0] * 60)  # p ≥ n: full row rank at either resolution, every target inside
    assert {_d1(solve_alignment(Q, features=wide, source_dtype=d)) for d in (F64, torch.float32)} == {"holds"}


def test_two_blocks_bound_the_residual_from_above_only():
    g = torch.Generator().manual_seed(5)
    n, m, d, p = 15, 2, 6, 4  # d + m·p = 14 < nm = 30: neither block nor both can hold a generic Q
    J = torch.randn(n * m, d, generator=g, dtype=F64)
    Phi = torch.randn(n, p, generator=g, dtype=F64)
    Q = torch.randn(n, m, generator=g, dtype=F64)
    sol = solve_alignment(Q, features=Phi, tangent=J)
    assert sol.bounds.lower == 0 and sol.bounds.upper == pytest.approx(sol.residual + sol.rounding)
    assert _d1(sol) == "not established" and "joint spectrum" in sol.bounds.reason
    assert _d1(solve_alignment(Q, features=Phi)) == "refuted"  # one block: its own spectrum decides
