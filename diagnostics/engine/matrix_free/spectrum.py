"""The alignment condition without the Gram matrix: LSQR and Lanczos on ``J`` (theory/alignment.md#matrix-free).

For probe sets where the dense ``K ∈ R^{nm×nm}`` (and its float64 eigen-decomposition) would not
fit in memory, the quantities of D1 are computed from products with the Jacobian operator
(:class:`~diagnostics.engine.matrix_free.operator.JacobianOperator`), in memory ``O(nm + d)``:

- ``ν = J⁺q`` by LSQR started at zero (:func:`~diagnostics.engine.matrix_free.lsqr.lsqr`, float64, resumable from a
  checkpoint, with a stated stopping rule), which converges to the least-norm least-squares solution;
  then ``‖ν‖² = qᵀK⁺q``, ``Pq = Jν`` and the alignment residual ``‖(I − P)q‖ = ‖q − Jν‖``;
- ``‖Jᵀq‖² = qᵀKq`` by one reverse-mode product;
- the top eigenpairs of ``K`` by Lanczos (:func:`scipy.sparse.linalg.eigsh`) on ``v ↦ J(Jᵀv)``.

The dense path's rank rule (eigenvalues of ``K`` above ``rank_tol = λ_max · nm · eps``) is applied to
``J`` as LSQR's condition limit ``conlim = sqrt(λ_max / rank_tol)``: LSQR stops once its estimate of
``cond(J) = sqrt(λ_max/λ_min)`` passes it. This regularises like the spectral cut-off without being
identical to it, so the two paths agree where the spectrum has a clear gap at the tolerance.

:class:`OperatorSpectrum` offers the methods of :class:`~diagnostics.engine.spectral.Spectrum` that the
alignment report uses, so :func:`~diagnostics.alignment.alignment_from_spectrum` builds the same
report from either. Quantities that need the whole spectrum (rank, ``λ_min``, effective rank,
kernel-target alignment, which needs ``‖K‖_F``) are not computed here: ``rank`` is ``-1`` and the
others ``nan``; the alignment curve covers the top-``k`` eigen-directions only.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from tqdm.auto import tqdm

from ...errors import DiagnosticsError
from ...store import RunStore
from .. import precision
from .lsqr import lsqr
from .operator import JacobianOperator, LinearOperatorMixin
from .sharded import local_block

__all__ = ["OperatorSpectrum"]

#: Eigenpairs of ``K`` computed by Lanczos (the alignment curve and top-k capture use them).
DEFAULT_TOP_K = 10


class OperatorSpectrum:
    """The quantities of :class:`~diagnostics.engine.spectral.Spectrum` that D1 needs, from ``J`` products.

    Parameters
    ----------
    op
        The Jacobian operator at ``θ``.
    rank_tol
        Rank tolerance on the eigenvalues of ``K`` (default ``λ_max · nm · eps(dtype of J)``).
    top_k
        Number of leading eigenpairs computed by Lanczos.
    rtol
        Relative tolerance of LSQR (``atol = btol``); default ``eps^{3/4}`` of the operator's dtype.
    max_iter
        LSQR iteration limit (default ``10 min(nm, d)``: in floating point an ill-conditioned
        ``J`` needs several times ``min(nm, d)`` iterations). A solve that stops there is reported
        in ``rank_rule`` and warned about, since its ``ν`` is then a truncated one.
    time_budget
        Seconds from construction for the whole computation: Lanczos computes ``λ_max`` and then as
        many of the other top eigenpairs as a quarter of the time left allows; every LSQR solve stops
        when the time is spent (each runs at least one iteration), with a truncated ``ν`` reported like
        one stopped by ``max_iter``; ``None``: no limit.
    checkpoints
        Where the solver states are kept (:class:`~diagnostics.store.RunStore`): the Lanczos eigenpairs once
        computed, and each LSQR solve's state every ``checkpoint_every`` iterations and when it stops. A
        job started again on the same operator (same outputs ``f_X``) and right-hand sides resumes from
        them; anything else there is ignored.
    progress
        Show a progress bar per LSQR solve with the current residual estimate and an ETA to the
        iteration cap, or under a time budget the seconds left.
    workspace
        ``length ↦`` a zero float64 array for LSQR's ``nm``-vector (a :class:`numpy.memmap` on disk when
        ``nm`` exceeds the memory budget); default :func:`numpy.zeros`.

    Notes
    -----
    LSQR is linear in its right-hand side in exact arithmetic, so every solve is kept: a vector
    in the span of right-hand sides already solved (``f − cQ`` over a grid of ``c``) is answered
    by combining their solutions, and the report needs two LSQR runs in all.
    """

    # what the full spectrum would give: not computed on the matrix-free path
    rank = -1
    min_eigenvalue = float("nan")
    smallest_kept = float("nan")
    effective_rank = float("nan")

    def __init__(
        self,
        op: JacobianOperator,
        *,
        rank_tol: float | None = None,
        top_k: int = DEFAULT_TOP_K,
        rtol: float | None = None,
        max_iter: int | None = None,
        time_budget: float | None = None,
        checkpoints: RunStore | None = None,
        checkpoint_every: int = 10,
        progress: bool = False,
        workspace: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        self.op = op
        self.deadline = None if time_budget is None else time.perf_counter() + time_budget
        self.checkpoints = checkpoints
        self.checkpoint_every, self.progress, self.workspace = checkpoint_every, progress, workspace
        self.fingerprint = _digest(op.outputs)
        N, d = op.shape
        eps = torch.finfo(op.dtype).eps
        self.top_k = top_k
        self.eigenvalues, self._vectors = self._eigenpairs(top_k, math.sqrt(eps))
        lam_max = max(float(self.eigenvalues[0]), 0.0)
        self.rank_tol, self.rank_rule = precision.rank_rule(rank_tol, lam_max, N, op.dtype)
        self.conlim = math.sqrt(lam_max / self.rank_tol) if self.rank_tol > 0 else 1e300
        self.rtol = rtol if rtol is not None else eps**0.75
        self.max_iter = max_iter or 10 * min(N, d)
        self.iterations: list[int] = []
        self.stops: list[str] = []
        self.unconverged = self.out_of_time = 0
        self._rhs: list[torch.Tensor] = []
        self._solutions: list[torch.Tensor] = []
        self._fitted: list[torch.Tensor] = []

    @property
    def truncated(self) -> bool:
        """Whether a solve stopped before its tolerance (iteration cap or time budget)."""
        return bool(self.unconverged or self.out_of_time)

    @property
    def solver_summary(self) -> str:
        """LSQR runs, their iterations, the condition limit and why each stopped, in words."""
        its = ", ".join(str(i) for i in self.iterations)
        summary = f"LSQR conlim {self.conlim:.3g}, {len(self.iterations)} solves ({its} iterations)"
        if len(self.eigenvalues) < min(self.top_k, self.op.shape[0]):
            summary = f"Lanczos: {len(self.eigenvalues)} of {self.top_k} eigenpairs within the time budget; " + summary
        summary += f"; stopped: {'; '.join(dict.fromkeys(self.stops))}" if self.stops else ""
        summary += f", {self.unconverged} stopped at the iteration limit" if self.unconverged else ""
        return summary + (f", {self.out_of_time} stopped by the time budget" if self.out_of_time else "")

    def _eigenpairs(self, k: int, tol: float) -> tuple[np.ndarray, torch.Tensor]:
        """Return the top eigenpairs, read from the checkpoint folder when this operator's are there."""
        saved = None if self.checkpoints is None else self.checkpoints.read_state(f"lanczos-{k}", self.fingerprint)
        if saved is not None:
            return saved["values"].numpy(), saved["vectors"]
        values, vectors = _top_eigenpairs(self.op, k, tol, self.deadline)
        if self.checkpoints is not None and len(values) == min(k, self.op.shape[0]):  # a budget's partial: not kept
            state = {"values": torch.from_numpy(values.copy()), "vectors": vectors}
            self.checkpoints.write_state(f"lanczos-{k}", self.fingerprint, state)
        return values, vectors

    def _lsqr(self, q: torch.Tensor) -> tuple[torch.Tensor, int, str, int]:
        """One LSQR solve of ``min ‖Jν − q‖`` under the settings: ``(ν, iterations, reason, istop)``."""
        remaining = None if self.deadline is None else max(self.deadline - time.perf_counter(), 0.0)
        index = len(self.iterations)
        scipy_op = self.op.to_scipy()
        budget = {} if self.deadline is None else {"bar_format": "{desc}: {n_fmt} it [{elapsed}, {rate_fmt}{postfix}]"}
        with tqdm(total=self.max_iter, desc=f"LSQR solve {index + 1}", unit="it", disable=not self.progress,
                  leave=False, mininterval=2.0, **budget) as bar:  # under a budget: no ETA to the cap
            def show(iteration: int, residual: float) -> None:
                bar.update(iteration - bar.n)
                left = "" if self.deadline is None else f", {max(self.deadline - time.perf_counter(), 0):.0f} s left"
                bar.set_postfix_str(f"‖q − Jν‖ ≈ {residual:.3e}{left}", refresh=False)

            result = lsqr(scipy_op.matvec, scipy_op.rmatvec, q.numpy(), self.op.shape[1], atol=self.rtol,
                          btol=self.rtol, conlim=self.conlim, iter_lim=self.max_iter, time_budget=remaining,
                          checkpoints=self.checkpoints, name=f"lsqr-{index}", checkpoint_every=self.checkpoint_every,
                          fingerprint=self.fingerprint, callback=show, workspace=self.workspace,
                          agree=local_block(self.op)[1].decide)
        return torch.from_numpy(result.x), result.iterations, result.reason, result.istop

    def least_norm_solution(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ν, Jν)`` with ``ν = J⁺q`` (float64), reusing earlier solves where ``q`` is in their span."""
        q = q.detach().reshape(-1).to(torch.float64).cpu()
        if q.shape[0] != self.op.shape[0]:
            raise ValueError(f"vector has length {q.shape[0]}, the operator has {self.op.shape[0]} rows")
        if self._rhs:
            B = torch.stack(self._rhs, dim=1)
            coef = torch.linalg.lstsq(B, q[:, None]).solution[:, 0]
            if float((B @ coef - q).norm()) <= 1e-12 * max(float(q.norm()), 1e-300):
                nu = torch.stack(self._solutions, dim=1) @ coef
                return nu, torch.stack(self._fitted, dim=1) @ coef
        nu, iterations, reason, istop = self._lsqr(q)
        self.out_of_time += istop == 8
        if istop == 7:
            self.unconverged += 1
            warnings.warn(
                f"LSQR stopped at its iteration limit ({self.max_iter}) before converging: ‖J⁺q‖ and the "
                "residual are those of a truncated solution. Raise max_iter, or use the dense path "
                "where it fits.",
                RuntimeWarning,
                stacklevel=3,
            )
        fitted = self.op.matvec(nu).to(torch.float64).cpu()
        self.iterations.append(iterations)
        self.stops.append(reason)
        self._rhs.append(q)
        self._solutions.append(nu)
        self._fitted.append(fitted)
        return nu, fitted

    def pinv_quadratic(self, q: torch.Tensor) -> float:
        """``qᵀK⁺q = ‖J⁺q‖²``."""
        nu, _ = self.least_norm_solution(q)
        return float(nu @ nu)

    def inside_norm_sq(self, q: torch.Tensor) -> float:
        """``‖Pq‖² = ‖J J⁺q‖²``."""
        _, fitted = self.least_norm_solution(q)
        return float(fitted @ fitted)

    def outside_norm_sq(self, q: torch.Tensor) -> float:
        """``‖(I − P)q‖² = ‖q − J J⁺q‖²``."""
        _, fitted = self.least_norm_solution(q)
        rest = q.detach().reshape(-1).to(torch.float64).cpu() - fitted
        return float(rest @ rest)

    def quadratic(self, q: torch.Tensor) -> float:
        """``qᵀKq = ‖Jᵀq‖²``."""
        g = self.op.rmatvec(q.detach().reshape(-1)).to(torch.float64)
        return float(g @ g)

    def captured_fraction(self, q: torch.Tensor) -> np.ndarray:
        """Fraction of ``‖q‖²`` carried by the top-``k`` eigen-directions, ``k = 1..top_k``."""
        q = q.detach().reshape(-1).to(torch.float64).cpu()
        total = float(q @ q)
        if total == 0:
            raise ValueError("the target vector is zero")
        c = self._vectors.T @ q
        return (torch.cumsum(c**2, 0) / total).numpy()

    def residual_curve(self, q: torch.Tensor) -> np.ndarray:
        """``a(λ_k) = ‖(I − P_{≥λ_k})q‖/‖q‖`` for the top-``k`` directions only (``1 −`` the captured fraction)."""
        return np.sqrt(np.clip(1.0 - self.captured_fraction(q), 0.0, None))

    def energy_below(self, q: torch.Tensor, threshold: float) -> float:
        """Energy of ``q`` in the directions with eigenvalue below ``threshold``; ``nan`` below the top eigenpairs."""
        if threshold <= float(self.eigenvalues[-1]):
            return math.nan
        q = q.detach().reshape(-1).to(torch.float64).cpu()
        c = self._vectors.T @ q
        above = torch.as_tensor(self.eigenvalues >= threshold)
        return max(float(q @ q) - float((c[above] ** 2).sum()), 0.0)

    def outside_inner(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """``⟨(I − P)a, (I − P)b⟩`` from the LSQR fits ``P v = J J⁺v``."""
        parts = []
        for v in (a, b):
            _, fitted = self.least_norm_solution(v)
            parts.append(v.detach().reshape(-1).to(torch.float64).cpu() - fitted)
        return float(parts[0] @ parts[1])

    def kernel_target_alignment(self, q: torch.Tensor) -> float:
        """Not computed matrix-free (it needs ``‖K‖_F``): ``nan``."""
        return float("nan")


def _digest(outputs: torch.Tensor) -> str:
    """Fingerprint the operator by its outputs ``f_X(θ)`` (they change with ``θ`` and the data)."""
    values = outputs.detach().to(torch.float64).cpu().contiguous().numpy()
    return hashlib.sha256(values.tobytes() + repr(values.shape).encode()).hexdigest()


def _top_eigenpairs(op: JacobianOperator | LinearOperatorMixin, k: int, tol: float, deadline: float | None = None
                    ) -> tuple[np.ndarray, torch.Tensor]:
    """Return up to ``k`` largest eigenvalues of ``K`` (descending) and eigenvectors (float64, CPU).

    Lanczos starts from a seeded vector, so every process of a data-parallel job runs the same iteration.
    With a ``deadline`` (a :func:`time.perf_counter` time), ``λ_max`` is computed first, whatever the time;
    the other eigenpairs get at most :data:`LANCZOS_SHARE` of the time left (ARPACK's restarts capped from
    the measured time per product), and only those that converged in it are returned (at least ``λ_max``).
    """
    N = op.shape[0]
    if k < 1:
        raise DiagnosticsError(f"top_k must be at least 1, got {k}")
    if N <= k + 1:  # too small for Lanczos: K column by column
        eye = torch.eye(N, dtype=torch.float64)
        K = torch.stack([op.gram_matvec(e).to(torch.float64).cpu() for e in eye], dim=1)
        vals, vecs = torch.linalg.eigh((K + K.T) / 2)
        return vals.flip(0).numpy()[:k], vecs.flip(1)[:, :k]
    start = np.random.default_rng(0).standard_normal(N)
    if deadline is None:
        return _sorted(*eigsh(op.to_scipy(gram=True), k=k, which="LA", tol=tol, v0=start))
    timed = _Timed(op.to_scipy(gram=True))
    top = _sorted(*eigsh(timed, k=1, which="LA", tol=tol, v0=start))  # λ_max: the rank rule needs it
    per_product = float(np.median(timed.seconds))  # the median: the first product pays one-time set-ups
    ncv = min(N - 1, max(2 * k + 1, 20))
    affordable = int(LANCZOS_SHARE * max(deadline - time.perf_counter(), 0.0) / max(per_product, 1e-12))
    if k == 1 or affordable < ncv:
        return top
    try:  # ARPACK restarts ``maxiter`` times, each costing about ncv − k products
        return _sorted(*eigsh(timed, k=k, which="LA", tol=tol, v0=start, ncv=ncv,
                              maxiter=max(1, (affordable - ncv) // (ncv - k))))
    except ArpackNoConvergence as partial:  # keep the pairs that converged within the budget
        if len(partial.eigenvalues) <= 1:
            return top
        return _sorted(partial.eigenvalues, partial.eigenvectors)


#: The share of the time left that Lanczos may spend on the eigenpairs after ``λ_max`` under a time budget.
LANCZOS_SHARE = 0.25


class _Timed(LinearOperator):
    """A symmetric scipy operator that times each of its products."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(dtype=np.float64, shape=op.shape)
        self.op, self.seconds = op, []

    def _matvec(self, v: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        product = self.op.matvec(v)
        self.seconds.append(time.perf_counter() - start)
        return product

    def _rmatvec(self, v: np.ndarray) -> np.ndarray:
        return self._matvec(v)


def _sorted(vals: np.ndarray, vecs: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Eigenpairs in descending order of the eigenvalues, the vectors as a float64 tensor."""
    order = np.argsort(vals)[::-1]
    return np.asarray(vals)[order].real, torch.from_numpy(np.ascontiguousarray(np.asarray(vecs)[:, order].real))
