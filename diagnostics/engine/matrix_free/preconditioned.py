"""D1 for a tall ``J`` by preconditioned LSQR, bounds certified from any iterate (theory/alignment.md#preconditioned).

When ``nm ≥ d`` the parameter-space Gram is small enough to hold, and one streamed pass over the per-sample
Jacobian blocks forms it (:mod:`~diagnostics.engine.matrix_free.sketch`):

- ``method="gram"``: ``G = JᵀJ`` itself. Its eigen-decomposition ``G = VΛVᵀ`` is the non-zero spectrum of
  ``K`` (the same rank rule as the dense path, ``λ > rank_tol``), the coefficients ``u_iᵀq = v_iᵀJᵀq/√λ_i`` give
  the alignment curve and the horizon at every eigenvalue, and ``M = V₊Λ₊^{-1/2}`` (the kept directions)
  preconditions ``min ‖q − JMy‖`` so well (``MᵀJᵀJM = I`` up to the Gram's rounding) that LSQR refines the
  normal-equations solution in a few iterations; ``d ≤`` :data:`EXACT_GRAM_MAX_D`.
- ``method="sketch"``: ``G̃ = (SJ)ᵀ(SJ)`` of a sparse sign embedding with ``s ≈ 2d`` rows (Blendenpik, LSRN).
  ``G̃ + μI = RᵀR`` (Cholesky, ``μ = DAMPING · rank_tol``) preconditions the damped problem
  ``min ‖q − Jν‖² + μ‖ν‖²``, whose operator ``[J; √μI]R⁻¹`` has singular values within a small factor of 1,
  so LSQR, started from the sketch-and-solve solution ``(G̃ + μI)⁻¹(SJ)ᵀSq``, converges in tens of
  iterations where plain LSQR needs thousands. The top eigenpairs of ``K`` come from one more pass:
  Rayleigh–Ritz on the top eigenvectors of ``G̃`` (:mod:`~diagnostics.engine.matrix_free.ritz`), as many as
  ``top_k`` and the horizon threshold ``eigen_floor`` need.

Whatever the preconditioner, the answer is certified from ``J``'s own products, never from the sketch: every
solve ends with ``r = q − Jν`` and ``g = Jᵀr − μν`` computed explicitly, and

- ``‖r‖`` is a witness: ``‖(I − P)q‖ ≤ ‖r‖`` for the exact projector onto ``Col J`` (an upper bound);
- ``‖g‖`` bounds the iterate's distance to the damped minimiser ``ν*`` (``‖J(ν* − ν)‖ ≤ ‖g‖/√μ``,
  ``‖ν* − ν‖ ≤ ‖g‖/μ``: strong convexity), and the minimiser's residual bounds the rank rule's residual
  ``a(λ) = ‖(I − P_{>λ})q‖/‖q‖`` from below, ``a(λ)²‖q‖² ≥ ‖r*‖² − (μ/λ)μ‖ν*‖²`` (the kept directions leave at most
  that unfitted), at ``λ = rank_tol``; with ``method="gram"`` the restricted problem's operator ``JM`` has
  ``σ_min² ≥ 1 − δ/λ₊`` (``δ`` the Gram's rounding), so ``‖r‖² − ‖Mᵀg‖²/(1 − δ/λ₊)`` bounds its residual from
  below.

So a time budget or an iteration cap that stops a solve early still leaves valid bounds: a large residual is
refuted as soon as its lower bound clears the tolerance, long before LSQR converges.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from tqdm.auto import tqdm

from ...errors import DiagnosticsError
from ...store import RunStore
from .. import precision
from .certified import CertifiedSolve, CertifiedSolver, Preconditioner, default_rtol
from .operator import JacobianOperator
from .ritz import ritz_pairs
from .sharded import ShardedJacobian, local_block
from .sketch import ParameterGram, parameter_gram

__all__ = ["DAMPING", "EXACT_GRAM_MAX_D", "METHODS", "PreconditionedSpectrum", "choose_method"]

#: The solvers of ``solver={"method": …}``: ``"auto"`` picks by the shape of ``J`` (:func:`choose_method`).
METHODS = ("auto", "lsqr", "gram", "sketch")
#: Largest ``d`` for which ``method="auto"`` forms and decomposes ``JᵀJ`` itself (``eigh`` of ``d × d``).
EXACT_GRAM_MAX_D = 4096
#: Most ``2·nm·d²`` flops ``method="auto"`` spends on the exact Gram before it sketches instead.
EXACT_GRAM_MAX_FLOPS = 2e12
#: ``μ = DAMPING · rank_tol``: the damping of the sketched solve (the bracket of ``a(rank_tol)`` loses ``DAMPING``).
DAMPING = 1e-2
#: The sketch's premise: it distorts the norms of ``Col J`` by at most this factor (``‖SJx‖/‖Jx‖ ∈ [1/F, F]``); with it,
#: the sketch's smallest eigenvalue can show every singular value of ``J`` above the threshold.
DISTORTION = 2.0
#: Sketch rows per parameter (``s = SKETCH_FACTOR · d``) and non-zeros per row of ``J`` (``ζ``).
SKETCH_FACTOR = 2.0
SKETCH_NONZEROS = 1
#: Rayleigh–Ritz passes of the sketched solver when the horizon needs eigenpairs down to its threshold (the
#: second one on the subspace ``JᵀJV`` of the first: a step of subspace iteration).
HORIZON_PASSES = 2
#: Ritz vectors the sketched solver computes at most for the horizon (``d × p`` per pass).
MAX_EIGENPAIRS = 256


def choose_method(method: str, shape: tuple[int, int]) -> str:
    """Resolve ``method`` (one of :data:`METHODS`) for ``J`` of ``shape = (nm, d)``.

    ``"auto"``: plain LSQR when ``J`` is wide (``nm < d``: ``Col J`` may be all of ``R^{nm}``, and the
    parameter-space Gram would not be smaller than ``K``); the exact ``JᵀJ`` when it is tall and small
    (``d ≤`` :data:`EXACT_GRAM_MAX_D` and ``2·nm·d² ≤`` :data:`EXACT_GRAM_MAX_FLOPS`); the sketch otherwise.
    """
    if method not in METHODS:
        raise DiagnosticsError(f"solver method must be one of {METHODS}, got {method!r}")
    rows, d = shape
    if method != "auto":
        if method != "lsqr" and rows < d:
            raise DiagnosticsError(f"solver method {method!r} needs a tall J (n·m ≥ d), got n·m = {rows:,} < "
                                   f"d = {d:,}; use 'lsqr'")
        return method
    if rows < d:
        return "lsqr"
    return "gram" if d <= EXACT_GRAM_MAX_D and 2.0 * rows * d * d <= EXACT_GRAM_MAX_FLOPS else "sketch"


class PreconditionedSpectrum:
    """The quantities of :class:`~diagnostics.engine.spectral.Spectrum` that D1 needs, for a tall ``J``.

    Parameters
    ----------
    op
        The Jacobian on the data (:class:`~diagnostics.engine.matrix_free.operator.JacobianOperator`, or the
        :class:`~diagnostics.engine.matrix_free.sharded.ShardedJacobian` of a data-parallel job: call on every
        process). ``nm ≥ d``.
    vectors
        The right-hand sides the report will ask about (``Q`` and ``f_X``), each ``(nm,)``: their projections
        come with the Gram pass (the sketch-and-solve start) and their coefficients with the eigenpairs.
        Other vectors are answered when they lie in their span (as the report's combinations do).
    method
        ``"gram"`` or ``"sketch"`` (``"auto"``: :func:`choose_method`).
    rank_tol
        Rank tolerance on the eigenvalues of ``K`` (default ``λ_max · nm · eps(dtype of J)``).
    top_k
        Eigenpairs of ``K`` for the alignment curve (the sketch computes these; the exact Gram has all).
    eigen_floor
        Compute the eigenpairs down to this eigenvalue too (the horizon threshold ``n/(ηT)``), at most
        :data:`MAX_EIGENPAIRS` with the sketch.
    rtol, max_iter
        LSQR's tolerance (default :func:`~diagnostics.engine.matrix_free.certified.default_rtol`) and iteration
        cap per solve (default ``10·d``).
    time_budget
        Seconds from construction; the solves stop when it is spent (their bounds stay valid).
    checkpoints, checkpoint_every
        Where the preconditioner, the eigenpairs and each LSQR state are kept; a job started again on the same
        operator resumes from them.
    progress
        Progress bars for the passes and the solves (process 0).
    workspace
        ``length ↦`` a zero float64 array for LSQR's ``nm``-vectors (a memory map for large ``nm``).
    sketch_rows, nonzeros, seed
        ``s`` (default ``SKETCH_FACTOR·d``, fewer if the memory budget needs), ``ζ`` and the hash seed.
    witness_tol
        The relative residual the undamped continuation of a sketched solve aims for, when the damped one is
        above it and not certified above it (default :data:`~diagnostics.engine.precision.RESIDUAL_TOL`, the
        question's tolerance in every dtype).
    """

    min_eigenvalue = float("nan")
    smallest_kept = float("nan")
    effective_rank = float("nan")
    conlim = math.inf
    distortion = DISTORTION
    rank_resolved = False

    def __init__(
        self,
        op: JacobianOperator | ShardedJacobian,
        vectors: Sequence[torch.Tensor] = (),
        *,
        method: str = "auto",
        rank_tol: float | None = None,
        top_k: int = 10,
        eigen_floor: float | None = None,
        rtol: float | None = None,
        max_iter: int | None = None,
        time_budget: float | None = None,
        checkpoints: RunStore | None = None,
        checkpoint_every: int = 10,
        progress: bool = False,
        workspace: Callable[[int], np.ndarray] | None = None,
        sketch_rows: int | None = None,
        nonzeros: int = SKETCH_NONZEROS,
        seed: int = 0,
        witness_tol: float | None = None,
    ) -> None:
        N, d = op.shape
        self.method = choose_method(method, op.shape)
        if self.method == "lsqr":
            raise DiagnosticsError("PreconditionedSpectrum needs a tall J; use OperatorSpectrum for method='lsqr'")
        if top_k < 1:
            raise DiagnosticsError(f"top_k must be at least 1, got {top_k}")
        self.op, self.top_k = op, top_k
        self.deadline = None if time_budget is None else time.perf_counter() + time_budget
        self.checkpoints, self.checkpoint_every = checkpoints, checkpoint_every
        self.progress, self.workspace = progress, workspace
        self._rtol = rtol
        self.witness_tol = precision.RESIDUAL_TOL if witness_tol is None else witness_tol
        self.max_iter = max_iter or 10 * d
        self.rank = -1
        self.vectors = torch.stack([v.detach().reshape(-1).to(torch.float64).cpu() for v in vectors], dim=1) \
            if len(vectors) else torch.zeros(N, 0, dtype=torch.float64)
        local, _, _ = local_block(op)
        if self.method == "sketch" and sketch_rows is None:
            affordable = (local.budget // 8 - 2 * d * d) // d
            sketch_rows = int(min(SKETCH_FACTOR * d, max(affordable, d + 1)))
        self.sketch_rows = 0 if self.method == "gram" else int(sketch_rows)
        self.nonzeros, self.seed = nonzeros, seed
        self.fingerprint = _digest(op.outputs, self.vectors, (self.method, self.sketch_rows, nonzeros, seed, N, d))
        self.gram_seconds, self.ritz_seconds, self.factor_seconds, self.solve_seconds = (0.0, 0.0), 0.0, 0.0, 0.0
        self.solves: list[CertifiedSolve] = []
        self._rhs: list[torch.Tensor] = []
        self._setup(rank_tol, eigen_floor)

    # -- the preconditioner and the eigenpairs ------------------------------------------------------

    def _setup(self, rank_tol: float | None, eigen_floor: float | None) -> None:
        """Form the Gram, the eigenpairs and the preconditioner, or read them from the checkpoint."""
        N, d = self.op.shape
        saved = None if self.checkpoints is None else self.checkpoints.read_state("preconditioner", self.fingerprint)
        # a checkpoint whose eigenpairs stop above this horizon's threshold: its sketch serves, its pairs do not
        short = saved is not None and self.method == "sketch" and _short_of(saved.get("eigen_floor"), eigen_floor)
        computed = saved is None or short
        if saved is None:
            gram = parameter_gram(self.op, self.vectors, sketch_rows=self.sketch_rows, nonzeros=self.nonzeros,
                                  seed=self.seed, progress=self.progress)
            saved = self._exact(gram) if gram.exact else self._sketched(gram.matrix, gram.projections,
                                                                         gram.seconds, eigen_floor)
        elif short:
            saved = self._sketched(saved["gram"], saved["projections"], saved["gram_seconds"], eigen_floor)
        if computed and self.checkpoints is not None:
            self.checkpoints.write_state("preconditioner", self.fingerprint, saved)
        self.gram_seconds, self.ritz_seconds = tuple(saved["gram_seconds"]), saved["ritz_seconds"]
        self.eigenvalues = saved["eigenvalues"].numpy()
        self._coefficients = saved["coefficients"]  # (p, k): u_iᵀ q_j
        self.ritz_residual = float(saved["ritz_residual"])
        self.projections = saved["projections"]
        lam_max = max(float(self.eigenvalues[0]), 0.0)
        self.lambda_max = lam_max
        self.rank_tol, self.rank_rule = precision.rank_rule(rank_tol, lam_max, N, self.op.dtype)
        self.resolution = precision.default_rank_tol(lam_max, N, self.op.dtype)  # the Gram's rounding δ
        if self.method == "gram":
            kept = torch.as_tensor(self.eigenvalues > self.rank_tol)
            self.rank = int(kept.sum())
            self.damping = 0.0
            self.smallest_kept = float(self.eigenvalues[self.rank - 1]) if self.rank else math.nan
            preconditioner = Preconditioner(  # V₊Λ₊^{-1/2}; σ_min(JM)² ≥ 1 − δ/λ₊ for a Gram within δ of JᵀJ
                basis=saved["basis"][:, kept], scale=torch.from_numpy(self.eigenvalues[kept.numpy()].copy()).rsqrt(),
                floor=max(1.0 - self.resolution / self.smallest_kept, 0.0) if self.rank else 0.0)
            self.min_eigenvalue = 0.0 if N > d else float(self.eigenvalues[-1])
            lam = np.clip(self.eigenvalues, 0, None)
            p = lam[lam > 0] / lam.sum() if lam.sum() > 0 else lam[:0]
            self.effective_rank = float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0
        else:
            self.damping = DAMPING * self.rank_tol
            self._say(f"λ_max ≈ {lam_max:.4g} (Rayleigh–Ritz), rank_tol = {self.rank_tol:.3g}; Cholesky of the "
                      f"sketched Gram + μI (μ = {self.damping:.3g})")
            started = time.perf_counter()
            preconditioner = Preconditioner(factor=self._cholesky(saved["gram"]), damping=self.damping)
            self.rank_resolved = self._resolved(saved["gram"])
            self.factor_seconds = time.perf_counter() - started
        self.largest_discarded = float(np.abs(self.eigenvalues[self.eigenvalues <= self.rank_tol]).max(initial=0.0)) \
            if self.method == "gram" else math.nan
        self._solver = CertifiedSolver(
            self.op, preconditioner, rank_tol=self.rank_tol, lambda_max=lam_max, witness_tol=self.witness_tol,
            rtol=default_rtol(N, self.op.dtype, DAMPING) if self._rtol is None else self._rtol,
            max_iter=self.max_iter, deadline=self.deadline, checkpoints=self.checkpoints,
            checkpoint_every=self.checkpoint_every, fingerprint=self.fingerprint, progress=self.progress,
            workspace=self.workspace)

    def _resolved(self, matrix: torch.Tensor) -> bool:
        """Whether every singular value of ``J`` lies above the threshold, as far as the sketch tells.

        ``σ_min(J)² ≥ λ_min(G̃)/F²`` when the sketch distorts norms by at most a factor ``F`` (:data:`DISTORTION`,
        a premise); the test asks ``λ_min(G̃) > F²(rank_tol + δ)``, ``δ`` the resolution, by a Cholesky factorisation
        of the shifted ``G̃`` (it succeeds exactly for a positive definite matrix, up to rounding far below ``δ``).
        """
        _, processes, _ = local_block(self.op)
        shift = DISTORTION**2 * (max(self.rank_tol, self.resolution) + self.resolution)

        def definite() -> torch.Tensor:
            shifted = matrix.clone()
            shifted.diagonal().sub_(shift)
            return torch.tensor([float(int(torch.linalg.cholesky_ex(shifted, upper=True)[1]) == 0)])

        return bool(processes.share(definite)[0])

    def pinv_norm(self, q: torch.Tensor) -> float:
        """``‖K⁺q‖`` over the kept directions, ``sqrt(Σ_{λ_i > rank_tol} c_i²/λ_i²)`` (the exact Gram only)."""
        if self.method != "gram":
            return math.nan
        c = self.coefficients(q)[: self.rank]
        lam = torch.from_numpy(self.eigenvalues[: self.rank].copy())
        return float(torch.sqrt(((c / lam) ** 2).sum()))

    def _say(self, message: str) -> None:
        """Tell the user what the solver is doing between progress bars (process 0, with ``progress``)."""
        if self.progress and local_block(self.op)[1].rank == 0:
            tqdm.write(message)

    def _exact(self, gram: ParameterGram) -> dict:
        """``JᵀJ = VΛVᵀ``: all of ``K``'s non-zero spectrum, and the coefficients of the right-hand sides."""
        self._say(f"JᵀJ formed ({sum(gram.seconds):.0f} s); its eigen-decomposition (d = {gram.matrix.shape[0]:,})")
        _, processes, _ = local_block(self.op)
        decomposition = processes.share(lambda: _descending(*torch.linalg.eigh(gram.matrix)))
        lam, V = decomposition[0], decomposition[1:]
        scale = torch.where(lam > 0, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
        return {"eigenvalues": lam, "basis": V, "coefficients": (V.T @ gram.projections) * scale[:, None],
                "projections": gram.projections, "ritz_residual": 0.0, "gram_seconds": gram.seconds,
                "ritz_seconds": 0.0}

    def _sketched(self, matrix: torch.Tensor, projections: torch.Tensor, gram_seconds: tuple[float, float],
                  eigen_floor: float | None) -> dict:
        """Keep the sketched Gram, and compute Rayleigh–Ritz eigenpairs of ``K`` on its top eigenvectors (one pass).

        With ``eigen_floor`` (a horizon's threshold), as many as reach it, in :data:`HORIZON_PASSES` passes.
        """
        start = time.perf_counter()
        _, processes, _ = local_block(self.op)
        self._say(f"sketched Gram formed ({gram_seconds[1]:.0f} s); its top eigenvectors for Rayleigh–Ritz")
        basis = processes.share(lambda: _top_eigenvectors(matrix, self.top_k, eigen_floor))
        for _ in range(1 if eigen_floor is None else HORIZON_PASSES):  # each pass a step of subspace iteration
            ritz = ritz_pairs(self.op, basis, self.vectors, progress=self.progress)
            basis = ritz.next_basis
        keep = min(self.top_k, ritz.values.size) if eigen_floor is None else ritz.values.size
        return {"eigenvalues": torch.from_numpy(ritz.values[:keep].copy()), "coefficients": ritz.coefficients[:keep],
                "ritz_residual": float(ritz.residuals[:keep].max()), "gram": matrix, "projections": projections,
                "gram_seconds": gram_seconds, "ritz_seconds": time.perf_counter() - start,
                "eigen_floor": eigen_floor}

    def _cholesky(self, matrix: torch.Tensor) -> torch.Tensor:
        """``R`` with ``RᵀR = G̃ + μI`` (upper triangular), raising ``μ`` tenfold while the factorisation fails."""
        _, processes, _ = local_block(self.op)

        def factor() -> torch.Tensor:  # on process 0: the factor with the damping it needed in its last row
            damping = self.damping
            for _ in range(8):
                shifted = matrix.clone()
                shifted.diagonal().add_(damping)
                upper, info = torch.linalg.cholesky_ex(shifted, upper=True)
                del shifted
                if int(info) == 0:
                    return torch.cat([upper, torch.full((1, matrix.shape[0]), damping, dtype=upper.dtype)])
                damping *= 10
            return torch.full((1, matrix.shape[0]), math.nan, dtype=matrix.dtype)

        shared = processes.share(factor)
        if shared.shape[0] == 1:
            raise DiagnosticsError("the sketched Gram could not be factored even with a damping of "
                                   f"{self.damping * 1e8:.3g}; use solver={{'method': 'lsqr'}}")
        self.damping = float(shared[-1, 0])
        return shared[:-1]

    # -- the solves ------------------------------------------------------------------------------------

    def _start(self, q: torch.Tensor) -> torch.Tensor:
        """Return the sketch-and-solve start ``ν₀ = (G̃ + μI)⁻¹(SJ)ᵀSq``, or 0.

        With the exact Gram it is the normal-equations solution ``V₊Λ₊⁻¹V₊ᵀJᵀq``. Available for ``q`` in the span
        of the right-hand sides given at construction (their projections came with the Gram pass).
        """
        coef, exact = _in_span(self.vectors, q) if self.vectors.shape[1] else (None, False)
        if not exact:
            return torch.zeros(self.op.shape[1], dtype=torch.float64)
        return self._solver.M.apply(self._solver.M.adjoint(self.projections @ coef))

    def solve(self, q: torch.Tensor) -> CertifiedSolve:
        """Solve for ``q`` (reusing earlier solves when ``q`` lies in their span) and certify the result."""
        q = q.detach().reshape(-1).to(torch.float64).cpu()
        if q.shape[0] != self.op.shape[0]:
            raise ValueError(f"vector has length {q.shape[0]}, the operator has {self.op.shape[0]} rows")
        for previous, solve in zip(self._rhs, self.solves, strict=True):
            if torch.equal(previous, q):
                return solve
        if self._rhs:  # a combination of earlier right-hand sides: the same combination of their solutions
            coef, exact = _in_span(torch.stack(self._rhs, dim=1), q)
            if exact:
                nu = torch.stack([s.nu for s in self.solves], dim=1) @ coef
                fitted = torch.stack([s.fitted for s in self.solves], dim=1) @ coef
                residual = float((q - fitted).norm())
                return CertifiedSolve(nu, fitted, residual, self._solver.rounding(nu), 0.0, 0, "combined", 0)
        name = f"preconditioned-{len(self.solves)}"
        saved = None if self.checkpoints is None else self.checkpoints.read_state(f"{name}-result", self.fingerprint)
        started = time.perf_counter()
        result = CertifiedSolve(**saved) if saved is not None else self._solver.solve(q, self._start(q), name)
        self.solve_seconds += time.perf_counter() - started
        if saved is None and self.checkpoints is not None and not result.truncated:
            self.checkpoints.write_state(f"{name}-result", self.fingerprint, result.state())
        self.solves.append(result)
        self._rhs.append(q)
        return result

    # -- the interface of Spectrum ---------------------------------------------------------------

    def least_norm_solution(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ν, Jν)``: the regularised least-norm solution (``V₊Λ₊⁻¹V₊ᵀJᵀq``, or damped at ``μ``)."""
        solve = self.solve(q)
        return solve.nu, solve.fitted

    def residual_bounds(self, q: torch.Tensor) -> tuple[float, float]:
        """Return ``(lower, upper)`` bounds on the residual of ``q``, relative to ``‖q‖``.

        ``lower`` bounds the rank-rule residual ``‖(I − P_{>rank_tol})q‖`` (certified), ``upper`` the residual
        ``‖(I − P)q‖`` (the better witness plus its rounding).
        """
        solve = self.solve(q)
        q_norm = float(q.detach().reshape(-1).to(torch.float64).norm())
        return min(solve.lower, solve.upper) / q_norm, solve.upper / q_norm

    def pinv_quadratic(self, q: torch.Tensor) -> float:
        """``‖ν‖²`` for the regularised least-norm ``ν``."""
        nu, _ = self.least_norm_solution(q)
        return float(nu @ nu)

    def inside_norm_sq(self, q: torch.Tensor) -> float:
        """``‖Jν‖²``."""
        _, fitted = self.least_norm_solution(q)
        return float(fitted @ fitted)

    def outside_norm_sq(self, q: torch.Tensor) -> float:
        """``‖q − Jν‖²`` (a witness: at least the exact ``‖(I − P)q‖²``)."""
        _, fitted = self.least_norm_solution(q)
        rest = q.detach().reshape(-1).to(torch.float64).cpu() - fitted
        return float(rest @ rest)

    def outside_inner(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """Return ``⟨a − Jν_a, b − Jν_b⟩``."""
        parts = [v.detach().reshape(-1).to(torch.float64).cpu() - self.least_norm_solution(v)[1] for v in (a, b)]
        return float(parts[0] @ parts[1])

    def quadratic(self, q: torch.Tensor) -> float:
        """``qᵀKq = ‖Jᵀq‖²``."""
        g = self._solver.rmatvec(q.detach().reshape(-1).to(torch.float64))
        return float(g @ g)

    def coefficients(self, q: torch.Tensor) -> torch.Tensor:
        """``u_iᵀq`` on the computed eigenvectors of ``K`` (``q`` in the span of the right-hand sides given)."""
        q = q.detach().reshape(-1).to(torch.float64).cpu()
        coef, exact = _in_span(self.vectors, q) if self.vectors.shape[1] else (None, False)
        if not exact:
            raise DiagnosticsError("the eigen-coefficients of a vector not given at construction are not computed")
        return self._coefficients @ coef

    def captured_fraction(self, q: torch.Tensor) -> np.ndarray:
        """Fraction of ``‖q‖²`` carried by the top-``k`` eigen-directions, ``k = 1..`` (as many as computed)."""
        q = q.detach().reshape(-1).to(torch.float64).cpu()
        total = float(q @ q)
        if total == 0:
            raise ValueError("the target vector is zero")
        return (torch.cumsum(self.coefficients(q) ** 2, 0) / total).clamp(max=1.0).numpy()

    def residual_curve(self, q: torch.Tensor) -> np.ndarray:
        """``a(λ_k) = sqrt(1 −`` the captured fraction``)`` at the computed eigenvalues."""
        return np.sqrt(np.clip(1.0 - self.captured_fraction(q), 0.0, None))

    def energy_below(self, q: torch.Tensor, threshold: float) -> float:
        """Energy of ``q`` in the eigen-directions below ``threshold``; ``nan`` below the computed eigenpairs."""
        if self.method == "sketch" and threshold <= float(self.eigenvalues[-1]):
            return math.nan
        q = q.detach().reshape(-1).to(torch.float64).cpu()
        c = self.coefficients(q)
        above = torch.as_tensor(self.eigenvalues >= threshold)
        return max(float(q @ q) - float((c[above] ** 2).sum()), 0.0)

    def kernel_target_alignment(self, q: torch.Tensor) -> float:
        """``qᵀKq / (‖K‖_F ‖q‖²)`` with the exact Gram (``‖K‖_F = ‖λ‖₂``); ``nan`` with the sketch."""
        if self.method == "sketch":
            return math.nan
        q = q.detach().reshape(-1).to(torch.float64).cpu()
        denom = float(np.linalg.norm(self.eigenvalues)) * float(q @ q)
        return self.quadratic(q) / denom if denom > 0 else 0.0

    @property
    def truncated(self) -> bool:
        """Whether a solve stopped before its tolerance (iteration cap or time budget); its bounds still hold."""
        return any(s.truncated for s in self.solves)

    @property
    def solver_summary(self) -> str:
        """How the Gram, the eigenpairs and the solves were computed, in words."""
        N, d = self.op.shape
        passed, summed = self.gram_seconds
        if self.method == "gram":
            head = f"preconditioned LSQR on the exact JᵀJ (d = {d:,}; pass {passed:.1f} s, sums {summed:.1f} s)"
        else:
            head = (f"preconditioned LSQR on a sketch of {self.sketch_rows:,} rows (ζ = {self.nonzeros}; pass "
                    f"{passed:.1f} s, Gram {summed:.1f} s, Cholesky {self.factor_seconds:.1f} s), damping "
                    f"μ = {self.damping:.3g}; {len(self.eigenvalues)} Ritz pairs ({self.ritz_seconds:.1f} s, largest "
                    f"residual {self.ritz_residual / max(self.lambda_max, 1e-300):.1e}·λ_max)")
        its = ", ".join(str(s.iterations) for s in self.solves if s.reason != "combined")
        stops = "; ".join(dict.fromkeys(s.reason for s in self.solves if s.reason != "combined"))
        bounds = ", ".join(f"[{min(s.lower, s.upper) / float(q.norm()):.4g}, {s.upper / float(q.norm()):.4g}]"
                           for s, q in zip(self.solves, self._rhs, strict=True) if s.reason != "combined")
        if not its:
            return head
        count = len(its.split(", "))
        return head + (f"; {count} solves ({its} iterations, {self.solve_seconds:.1f} s; certified residuals "
                       f"‖(I − P)q‖/‖q‖ in {bounds}); stopped: {stops}")


def _short_of(computed_floor: float | None, eigen_floor: float | None) -> bool:
    """Whether eigenpairs computed for ``computed_floor`` (``None``: the top ones only) miss ``eigen_floor``."""
    return eigen_floor is not None and (computed_floor is None or computed_floor > eigen_floor)


def _top_eigenvectors(matrix: torch.Tensor, top_k: int, floor: float | None) -> torch.Tensor:
    """Return orthonormal top eigenvectors of a sketched Gram.

    ``2·top_k + 10`` of them (oversampled, so that the Ritz values of the top ``top_k`` come out accurate from one
    pass), or as many as reach down to ``floor/4`` (the sketch's distortion allowance), doubling their number up
    to :data:`MAX_EIGENPAIRS`.
    """
    d = matrix.shape[0]
    op = LinearOperator((d, d), matvec=lambda v: (matrix @ torch.from_numpy(np.asarray(v).reshape(-1))).numpy(),
                        dtype=np.float64)
    start = np.random.default_rng(0).standard_normal(d)
    p = min(max(2 * top_k + 10, 20), d - 1)  # oversampled: the Ritz values of the top_k are the better for it
    while True:
        if p >= d - 1:  # all of them
            lam, V = torch.linalg.eigh(matrix)
            return V.flip(1)[:, : min(d, max(top_k, p))]
        lam, V = eigsh(op, k=p, which="LA", v0=start, tol=1e-6)
        order = np.argsort(lam)[::-1]
        if floor is None or lam[order[-1]] < floor / 4 or p >= MAX_EIGENPAIRS:
            return torch.from_numpy(np.ascontiguousarray(V[:, order]))
        p = min(2 * p, MAX_EIGENPAIRS, d - 1)


def _descending(values: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (first row) and eigenvectors (the rows below, as columns) in descending order, in one matrix."""
    return torch.cat([values.flip(0)[None, :], vectors.flip(1)])


def _in_span(basis: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Coefficients of ``q`` on the columns of ``basis``, and whether ``q`` lies in their span (to 1e-12)."""
    coef = torch.linalg.lstsq(basis, q[:, None]).solution[:, 0]
    return coef, float((basis @ coef - q).norm()) <= 1e-12 * max(float(q.norm()), 1e-300)


def _digest(outputs: torch.Tensor, vectors: torch.Tensor, settings: tuple) -> str:
    """Fingerprint the problem by the outputs ``f_X(θ)``, the right-hand sides and the solver's settings.

    The outputs change with ``θ`` and the data.
    """
    digest = hashlib.sha256(outputs.detach().to(torch.float64).cpu().contiguous().numpy().tobytes())
    digest.update(vectors.contiguous().numpy().tobytes())
    digest.update(repr(settings).encode())
    return digest.hexdigest()
