"""Preconditioned LSQR, certified from ``J``'s own products at any iterate (theory/alignment.md#preconditioned).

A :class:`Preconditioner` ``M`` turns ``min ‖q − Jν‖² + μ‖ν‖²`` (``μ ≥ 0``) into a problem in ``y`` (``ν = My``)
on which LSQR (:func:`~diagnostics.engine.matrix_free.lsqr.lsqr`, checkpointed, with progress) converges fast;
:class:`CertifiedSolver` runs it from a given start and ends every solve with ``r = q − Jν`` and
``g = Jᵀr − μν`` computed explicitly, which bound the answer whatever stopped LSQR:

- ``‖r‖`` is a witness, ``‖(I − P)q‖ ≤ ‖r‖`` (an upper bound on the exact residual);
- damped (``μ > 0``): ``‖r*‖ ≥ ‖r‖ − ‖g‖/√μ`` and ``‖ν*‖ ≤ ‖ν‖ + ‖g‖/μ`` for the minimiser, and the rank rule's
  residual satisfies ``a(τ)²‖q‖² ≥ max(‖r*‖² − (μ/τ)μ‖ν*‖², (φ*(τ + μ) − μ‖q‖²)/τ)`` with ``φ* ≥ φ − ‖g‖²/μ``;
- restricted (``μ = 0``, ``M = V₊Λ₊^{-1/2}``): ``σ_min(JM)² ≥`` the preconditioner's ``floor``, so the residual of
  the restricted problem is at least ``sqrt(‖r‖² − ‖Mᵀg‖²/floor)``.

The products are themselves rounded: ``Jν`` is taken to be off by at most ``nm · eps · √λ_max · ‖ν‖``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ...store import RunStore
from .. import precision
from .lsqr import TRUNCATED, LsqrResult, lsqr
from .operator import JacobianOperator
from .sharded import ShardedJacobian, local_block

__all__ = ["REFINEMENTS", "WITNESS_ITERATIONS", "CertifiedSolve", "CertifiedSolver", "Preconditioner", "default_rtol"]

#: Refinement steps at most per damped solve (LSQR restarted from its iterate with a tighter tolerance).
REFINEMENTS = 3
#: Iterations the undamped witness continuation runs at least (at most as many as its damped solve otherwise).
WITNESS_ITERATIONS = 20


def default_rtol(rows: int, dtype: torch.dtype, damping: float) -> float:
    """LSQR's tolerance for a damping ``damping · rank_tol``: ``0.1 sqrt(damping · nm · eps)``, in ``[1e-12, 1e-6]``.

    The damped bound ``φ* ≥ φ − ‖g‖²/μ`` is within 1 % of ``φ`` once ``‖g‖ ≤ 0.1 sqrt(μφ)``, and LSQR's test on
    ``‖Ãᵀr̃‖/(‖Ã‖‖r̃‖)`` at this tolerance gives that (``‖g‖ ≤ ‖R‖ ‖Ãᵀr̃‖``, ``‖R‖² ≈ λ_max``,
    ``μ = damping · nm · eps · λ_max``); it also keeps ``ν`` to about as many digits.
    """
    return min(max(0.1 * math.sqrt(damping * rows * precision.eps(dtype)), 1e-12), 1e-6)


@dataclass
class Preconditioner:
    """``ν = My``: ``R⁻¹y`` for an upper-triangular ``R`` (with damping ``μ > 0``), or ``V₊Λ₊^{-1/2}y`` (``μ = 0``).

    Attributes
    ----------
    factor
        ``R`` with ``RᵀR = G̃ + μI``, or ``None``.
    basis, scale
        ``V₊`` and ``Λ₊^{-1/2}`` of the exact Gram's kept directions, or ``None``.
    damping
        ``μ``.
    floor
        A lower bound on ``σ_min(JM)²`` for the restricted problem (``1 − δ/λ₊``), or 0 when not known.
    """

    factor: torch.Tensor | None = None
    basis: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    damping: float = 0.0
    floor: float = 0.0

    @property
    def columns(self) -> int:
        """The length of ``y``."""
        return self.scale.shape[0] if self.factor is None else self.factor.shape[0]

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        """``My``."""
        if self.factor is None:
            return self.basis @ (self.scale * y)
        return torch.linalg.solve_triangular(self.factor, y[:, None], upper=True)[:, 0]

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        """``Mᵀx``."""
        if self.factor is None:
            return self.scale * (self.basis.T @ x)
        return torch.linalg.solve_triangular(self.factor.T, x[:, None], upper=False)[:, 0]

    @property
    def norm(self) -> float:
        """``‖M‖`` for the restricted problem (``max Λ₊^{-1/2}``); ``nan`` for a factor (not needed)."""
        return float(self.scale.max()) if self.scale is not None and self.scale.numel() else math.nan


@dataclass
class CertifiedSolve:
    """One preconditioned solve of ``min ‖q − Jν‖² + μ‖ν‖²`` and what it certifies (norms, not relative).

    Attributes
    ----------
    nu, fitted
        ``ν`` and ``Jν`` (float64, ``Jν`` computed explicitly).
    residual
        ``‖q − Jν‖``, explicitly: a witness, ``≥ ‖(I − P)q‖``.
    rounding
        What the evaluation of ``Jν`` may be off by (``nm · eps · √λ_max · ‖ν‖``).
    lower
        A lower bound on the rank-rule residual ``‖(I − P_{>rank_tol})q‖`` (0 when nothing is certified).
    iterations, reason, istop
        LSQR's iterations (those of the witness phase included), why it stopped, and its code.
    witness, witness_rounding
        ``‖q − Jν_w‖`` of the undamped continuation ``ν_w`` (``inf`` when it did not run) and its rounding.
    """

    nu: torch.Tensor
    fitted: torch.Tensor
    residual: float
    rounding: float
    lower: float
    iterations: int
    reason: str
    istop: int
    witness: float = math.inf
    witness_rounding: float = 0.0

    @property
    def upper(self) -> float:
        """The best upper bound on ``‖(I − P)q‖``: the smaller witness, plus its rounding."""
        return min(self.residual + self.rounding, self.witness + self.witness_rounding)

    @property
    def truncated(self) -> bool:
        """Whether LSQR stopped before its tolerance (iteration cap or time budget); the bounds hold regardless."""
        return self.istop in TRUNCATED

    def state(self) -> dict:
        """Return the solve as a checkpointable dictionary."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class CertifiedSolver:
    """Preconditioned LSQR for ``J`` with bounds certified at any iterate.

    Parameters
    ----------
    op
        The Jacobian (in memory, or sharded over processes: call on every process).
    preconditioner
        ``M`` and the damping ``μ``.
    rank_tol, lambda_max
        The rank rule's threshold ``τ`` and ``λ_max`` (the rounding's scale).
    witness_tol
        The relative residual at which a witness shows membership in ``Col J``.
    rtol, max_iter, deadline
        LSQR's tolerance, iteration cap per run, and the :func:`time.perf_counter` time at which runs stop.
    checkpoints, checkpoint_every, fingerprint
        Where LSQR's states are kept, how often, under what problem.
    progress, workspace
        A progress bar per run (process 0); ``length ↦`` a zero float64 array for LSQR's long vectors.
    """

    def __init__(self, op: JacobianOperator | ShardedJacobian, preconditioner: Preconditioner, *, rank_tol: float,
                 lambda_max: float, witness_tol: float, rtol: float, max_iter: int, deadline: float | None,
                 checkpoints: RunStore | None, checkpoint_every: int, fingerprint: str, progress: bool,
                 workspace: Callable[[int], np.ndarray] | None) -> None:
        self.op, self.M = op, preconditioner
        self.rank_tol, self.lambda_max, self.witness_tol = rank_tol, lambda_max, witness_tol
        self.rtol, self.max_iter, self.deadline = rtol, max_iter, deadline
        self.checkpoints, self.checkpoint_every, self.fingerprint = checkpoints, checkpoint_every, fingerprint
        self.progress, self.workspace = progress, workspace

    def matvec(self, v: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``Jv`` in float64 on the CPU."""
        return self.op.matvec(torch.as_tensor(v, dtype=torch.float64)).to(torch.float64).cpu()

    def rmatvec(self, u: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``Jᵀu`` in float64 on the CPU."""
        return self.op.rmatvec(u).to(torch.float64).cpu()

    def rounding(self, v: torch.Tensor) -> float:
        """Return what ``‖Jv‖`` (or ``‖Jᵀv‖``) may be off by in floating point: ``nm · eps · √λ_max · ‖v‖``."""
        return self.op.shape[0] * precision.eps(self.op.dtype) * math.sqrt(self.lambda_max) * float(v.norm())

    def solve(self, q: torch.Tensor, start: torch.Tensor, name: str) -> CertifiedSolve:
        """Run the preconditioned LSQR for ``q`` from ``start``, then certify its iterate.

        When the bounds do not decide ``‖(I − P)q‖ ≤ witness_tol · ‖q‖`` and LSQR's tolerance, not the iterate's
        distance to the minimiser, is what keeps them apart, LSQR goes on from the iterate with the tolerance the
        certificate needs (a refinement step: the right-hand side is the explicit residual), up to
        :data:`REFINEMENTS` times; then an undamped continuation may show membership (:meth:`_witness`).
        """
        N = self.op.shape[0]
        mu = self.M.damping
        nu = start
        fitted = self.matvec(nu) if bool(nu.any()) else torch.zeros(N, dtype=torch.float64)
        target = self.witness_tol * float(q.norm())

        def matvec(y: np.ndarray) -> np.ndarray:
            step = self.M.apply(torch.from_numpy(np.asarray(y, dtype=np.float64)))
            out = self.matvec(step)
            return torch.cat([out, math.sqrt(mu) * step]).numpy() if mu > 0 else out.numpy()

        def rmatvec(u: np.ndarray) -> np.ndarray:
            g = self.rmatvec(torch.from_numpy(np.asarray(u[:N], dtype=np.float64)))
            if mu > 0:
                g = g + math.sqrt(mu) * torch.from_numpy(np.asarray(u[N:], dtype=np.float64))
            return self.M.adjoint(g).numpy()

        atol, iterations, reasons = self.rtol, 0, []
        for refinement in range(REFINEMENTS + 1):
            b = (q - fitted).numpy()
            if mu > 0:
                b = np.concatenate([b, -math.sqrt(mu) * nu.numpy()])
            run = name + (f"-refined-{refinement}" if refinement else "")
            result = self._lsqr(matvec, rmatvec, b, self.M.columns, run, float(q.norm()), atol)
            nu = nu + self.M.apply(torch.from_numpy(result.x))
            fitted = self.matvec(nu)
            r = q - fitted
            g = self.rmatvec(r) - mu * nu
            iterations += result.iterations
            reasons.append(result.reason)
            solve = CertifiedSolve(nu, fitted, float(r.norm()), self.rounding(nu), self._lower_bound(q, nu, r, g),
                                   iterations, "; then ".join(dict.fromkeys(reasons)), result.istop)
            if solve.upper <= target or solve.lower > target or solve.truncated or mu == 0:
                break
            if solve.residual**2 - (mu / self.rank_tol) * mu * float(nu @ nu) <= target**2:
                break  # the damping's leak alone can carry this residual: no refinement refutes it; a witness may hold
            wanted = 0.1 * math.sqrt(mu) * max(solve.residual, target)  # ‖g‖ at which ‖g‖/√μ costs 10 % of ‖r‖
            if float(g.norm()) <= wanted or atol <= 1e-15:
                break
            atol = max(atol * wanted / float(g.norm()), 1e-15)
        if mu > 0 and solve.upper > target >= solve.lower and not solve.truncated:
            self._witness(q, solve, r, name, target)
        return solve

    def _witness(self, q: torch.Tensor, solve: CertifiedSolve, r: torch.Tensor, name: str, target: float) -> None:
        """Continue undamped (``min ‖q − Jν‖`` on ``JM``) from the damped solution, until ``‖q − Jν‖ ≤ target``.

        The damped solution leaves ``μ/(σ² + μ)`` of each component of ``q`` unfitted, so a ``q`` in ``Col J`` with
        weight on small singular values shows a residual above the tolerance; the continuation fits them, and its
        residual is a witness like any other (theory/alignment.md#witness-bounds). Directions far below ``√μ``
        converge slowly here, so it runs at most as many iterations as the damped solve took (at least
        :data:`WITNESS_ITERATIONS`): a witness it does not reach leaves the question open, not wrong.
        """
        def matvec(y: np.ndarray) -> np.ndarray:
            return self.matvec(self.M.apply(torch.from_numpy(np.asarray(y, dtype=np.float64)))).numpy()

        def rmatvec(u: np.ndarray) -> np.ndarray:
            return self.M.adjoint(self.rmatvec(torch.from_numpy(np.asarray(u, dtype=np.float64)))).numpy()

        result = self._lsqr(matvec, rmatvec, r.numpy(), self.M.columns, f"{name}-witness", float(q.norm()), self.rtol,
                            btol=0.5 * target / solve.residual,
                            iter_lim=min(self.max_iter, max(WITNESS_ITERATIONS, solve.iterations)))
        nu = solve.nu + self.M.apply(torch.from_numpy(result.x))
        solve.witness = float((q - self.matvec(nu)).norm())
        solve.witness_rounding = self.rounding(nu)
        solve.iterations += result.iterations
        solve.reason = f"{solve.reason}; undamped witness: {result.reason}"

    def _lsqr(self, matvec: Callable, rmatvec: Callable, b: np.ndarray, cols: int, name: str, q_norm: float,
              atol: float, btol: float | None = None, iter_lim: int | None = None) -> LsqrResult:
        """One LSQR run on the preconditioned problem, with its progress bar, checkpoints and time budget."""
        remaining = None if self.deadline is None else max(self.deadline - time.perf_counter(), 0.0)
        _, processes, _ = local_block(self.op)
        with tqdm(total=self.max_iter, desc=name, unit="it", leave=False,
                  disable=not (self.progress and processes.rank == 0), mininterval=2.0,
                  bar_format="{desc}: {n_fmt} it [{elapsed}, {rate_fmt}{postfix}]") as bar:
            def show(iteration: int, residual: float) -> None:
                bar.update(iteration - bar.n)
                left = "" if self.deadline is None else f", {max(self.deadline - time.perf_counter(), 0):.0f} s left"
                bar.set_postfix_str(f"√φ/‖q‖ ≈ {residual / max(q_norm, 1e-300):.3e}{left}", refresh=False)

            return lsqr(matvec, rmatvec, b, cols, atol=atol, btol=atol if btol is None else btol, conlim=0.0,
                        iter_lim=iter_lim or self.max_iter, time_budget=remaining, checkpoints=self.checkpoints,
                        name=name, checkpoint_every=self.checkpoint_every, fingerprint=self.fingerprint,
                        callback=show, workspace=self.workspace, agree=processes.decide)

    def _lower_bound(self, q: torch.Tensor, nu: torch.Tensor, r: torch.Tensor, g: torch.Tensor) -> float:
        """Return a certified lower bound on ``‖(I − P_{>rank_tol})q‖`` from the iterate ``ν`` (0 if none)."""
        slack = self.rounding(r)  # what ‖Jᵀr‖ may be off by
        r_low = max(float(r.norm()) - self.rounding(nu), 0.0)
        mu, tau = self.M.damping, self.rank_tol
        if mu == 0:  # the restricted problem: σ_min(JM)² ≥ floor
            if self.M.floor <= 0:
                return 0.0
            step = float(self.M.adjoint(g).norm()) + self.M.norm * slack
            return math.sqrt(max(r_low**2 - step**2 / self.M.floor, 0.0))
        if tau <= 0:
            return 0.0
        gap = float(g.norm()) + slack  # ‖g‖ bounds the iterate's distance to the minimiser ν*
        phi_low = r_low**2 + mu * float(nu @ nu) - gap**2 / mu  # φ* ≥ φ − ‖g‖²/μ
        bracket = (phi_low * (tau + mu) - mu * float(q @ q)) / tau
        r_star = max(r_low - gap / math.sqrt(mu), 0.0)  # ‖r*‖ ≥ ‖r‖ − ‖J(ν* − ν)‖, ‖J(ν* − ν)‖² ≤ gᵀH⁻¹g ≤ ‖g‖²/μ
        nu_star = float(nu.norm()) + gap / mu  # ‖ν*‖ ≤ ‖ν‖ + ‖H⁻¹g‖
        leak = r_star**2 - (mu / tau) * mu * nu_star**2  # the kept directions leave at most (μ/τ)·μ‖ν*‖² unfitted
        return math.sqrt(max(bracket, leak, 0.0))
