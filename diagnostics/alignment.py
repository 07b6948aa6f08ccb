"""The data-architecture alignment condition D1 and the results it gives (theory/alignment.md#d1, theory/results.md).

``check_alignment(model, data)`` measures, at the current parameters ``θ`` and on a probe set:

- whether the target lies in the column space of the Jacobian, ``Q ∈ Col(J(θ))``, through the
  alignment residual ``a(θ) = ‖(I − P)Q‖/‖Q‖`` and the spectrum of ``K = J Jᵀ``;
- the certificate ``B(θ) = ‖J⁺r‖`` and the least-norm coefficients ``‖ν‖ = ‖J⁺Q‖``;
- the gradient-domination bound (I3) ``L ≤ ½‖∇L‖B`` (squared loss) or (I4)
  ``L − L(Q) ≤ ‖∇L‖‖J⁺(f_X − Q)‖`` (cross-entropy, best scale of ``Q``), as a ratio that must be
  ``≤ 1`` for a model satisfying the common model structure assumption A1;
- the loss decomposition (I2) ``L = (1/2n)‖Pr‖² + (1/2n)‖(I−P)Y‖²`` and its measured gap.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import theory

from .alignment_report import AlignmentReport
from .alignment_spectrum import alignment_from_gram, alignment_from_operator, alignment_from_spectrum, validate_horizon
from .distributed import check_alignment_distributed
from .engine import inputs as _inputs
from .engine import memory, precision
from .engine.accuracy import jacobian_error
from .engine.functional import ParamSelector
from .engine.manifest import MeasurementManifest
from .engine.matrix_free.operator import JacobianOperator
from .engine.matrix_free.preconditioned import METHODS
from .engine.measurement import Measurement
from .errors import DiagnosticsError, InsufficientMemoryError, renamed_argument
from .store import RunStore
from .targets import Targets

__all__ = [
    "PATHS",
    "AlignmentReport",
    "alignment_from_gram",
    "alignment_from_operator",
    "alignment_from_spectrum",
    "check_alignment",
    "choose_path",
    "dense_alignment_bytes",
]

PATHS = ("auto", "dense", "matrix-free")
def check_alignment(
    model: nn.Module,
    data: object,
    *,
    target: object = None,
    loss: str = "mse",
    rank_tol: float | None = None,
    residual_tol: float | None = None,
    params: ParamSelector = None,
    mode: str = "eval",
    output: _inputs.OutputSelector = None,
    probe_size: int | None = 256,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    strategy: str = "auto",
    memory_budget: int | None = None,
    path: str = "auto",
    horizon: tuple[float, int] | None = None,
    solver: dict[str, Any] | None = None,
    tol: float | None = None,
) -> AlignmentReport:
    """Test the data-architecture alignment condition D1 at the model's current parameters.

    Parameters
    ----------
    model
        Any ``nn.Module`` with ``m`` outputs (logits for classification); never modified.
    data
        ``(X, Y)`` tensors or arrays, a map-style ``Dataset`` of ``(x, y)`` or a ``DataLoader``.
        Targets may be class indices, one-hot rows or real values of the output's shape.
    target
        Alignment target ``Q`` of shape ``(n, m)`` overriding the default (``Y`` for mse, centred
        one-hot for ce); it must match the probe subset, so use it with ``probe_size=None``.
    loss
        ``"mse"`` (the squared loss: I2, I3) or ``"ce"`` (cross-entropy on logits: I4).
    rank_tol
        Rank tolerance on the eigenvalues of ``K``; default ``λ_max · nm · eps`` of the Jacobian dtype.
    residual_tol
        Residual below which the condition is declared to hold; default ``sqrt(eps(float64))`` whatever the
        dtype (it belongs to the question; the dtype decides whether the measurement can answer it, and the D1
        verdict is *not established* where it cannot, ``theory/alignment.md#resolution``).
    params, mode, output, strategy, memory_budget
        As in :func:`diagnostics.jacobian` (on the matrix-free path ``strategy`` goes to the
        :class:`~diagnostics.engine.matrix_free.operator.JacobianOperator`). The manifest says which strategy
        ``"auto"`` chose, why, and the measurement's estimated floating-point error.
    dtype
        Compute dtype. Default: float64 on the CPU, where it costs about 1–2× float32 and gives the
        answer double precision gives; on an accelerator the model's dtype (at least float32), and when
        that cannot decide D1 the dense measurement is repeated in float64 (the report's
        ``precision_note`` says so), falling back to *not established* when float64 would not fit
        ``memory_budget``; on the matrix-free path the report says *not established* and how to re-run.
    probe_size, seed
        Size and seed of the probe subset (``None``: all the data). When the probe is a strict subset, the report
        also gives D1 on the data given (``data_verdict``, ``theory/alignment.md#subsets``).
    path
        ``"dense"`` (the Gram and its eigen-decomposition), ``"matrix-free"`` (LSQR and Lanczos on
        Jacobian products, memory ``O(nm + d)``,
        :class:`~diagnostics.engine.matrix_free.spectrum.OperatorSpectrum`) or ``"auto"``:
        dense when it fits ``memory_budget``; the report's ``path`` says which was used.
    horizon
        ``(η, T)``: a training horizon, full-batch gradient descent with step ``η`` for ``T`` steps on
        ``(1/2n)‖f − Q‖²``; the report then gives the part of ``Q`` that horizon cannot fit,
        ``horizon_residual``, and its loss floor ``horizon_loss_floor`` (``theory/alignment.md``).
    solver
        Options of the matrix-free path: ``method`` (``"auto"``, ``"lsqr"``, ``"gram"``, ``"sketch"``: LSQR and
        Lanczos on ``J``, or LSQR preconditioned by the exact or sketched ``JᵀJ`` with certified bounds,
        :class:`~diagnostics.engine.matrix_free.preconditioned.PreconditionedSpectrum`; ``"auto"`` picks by the
        shape of ``J``: LSQR when ``nm < d``, else the exact Gram for small ``d`` and the sketch beyond),
        ``top_k`` (eigenpairs), ``max_iter`` (LSQR's cap per solve),
        ``time_budget`` (seconds for the eigenpairs and the solves; a solve it stops is truncated and the report
        says so), ``checkpoint_dir`` (solver checkpoints: a rerun resumes from them), ``checkpoint_every``,
        ``progress``; for a streamed data set also ``batch_size``, ``work_dir`` and ``vector_budget``
        (:func:`~diagnostics.distributed.check_alignment_distributed`). With ``path="matrix-free"``,
        ``probe_size=None`` and a ``Dataset`` or ``DataLoader``, the data are streamed batch by batch and
        never held whole (theory/alignment.md#data-parallel), in memory ``O(nm + d)``; in a
        ``torch.distributed`` group, call it on every process.
    tol
        Former name of ``rank_tol`` (deprecated).

    Returns
    -------
    AlignmentReport
        Print it for a readable verdict; ``to_dict()`` for the numbers.

    Examples
    --------
    >>> report = check_alignment(model, (X, y), loss="ce")   # doctest: +SKIP
    >>> print(report)                                        # doctest: +SKIP
    """
    start = time.perf_counter()
    rank_tol = renamed_argument(rank_tol, tol, "tol", "rank_tol")
    if horizon is not None:
        validate_horizon(horizon)
    streamed = path == "matrix-free" and probe_size is None and isinstance(data, Dataset | DataLoader)
    solver = _solver_options(solver, path, streamed)
    if streamed:
        if mode != "eval":
            raise DiagnosticsError("a streamed data set is measured in mode='eval' (batches are differentiated "
                                   "one at a time, so batch statistics would change from batch to batch)")
        report = check_alignment_distributed(
            model, data, loss=loss, target=target, rank_tol=rank_tol, residual_tol=residual_tol, params=params,
            output=output, dtype=dtype, strategy=strategy, memory_budget=memory_budget, horizon=horizon, **solver)
        report.elapsed_s = time.perf_counter() - start
        return report
    X, T = _inputs.probe_data(data, probe_size, seed)
    settings = {"target": target, "loss": loss, "rank_tol": rank_tol, "residual_tol": residual_tol,
                "params": params, "mode": mode, "output": output, "strategy": strategy,
                "memory_budget": memory_budget, "path": path, "horizon": horizon, "solver": solver}
    dtype = dtype or precision.verdict_dtype(model)
    report = _measure(model, X, T, dtype=dtype, **settings)
    if (report.verdict.status == theory.NOT_ESTABLISHED and dtype != torch.float64 and rank_tol is None
            and report.path == "dense"):  # matrix-free in float64 can take many LSQR iterations: the user decides
        try:
            again = _measure(model, X, T, dtype=torch.float64, **settings)
        except InsufficientMemoryError:
            report.precision_note += " (a float64 re-measurement would not fit the memory budget)"
        else:
            again.precision_note = (
                f"{report.dtype} could not decide D1 (a = {report.residual:.3e}, the exact residual within "
                f"[{report.verdict.details['lower']:.2e}, {report.verdict.details['upper']:.2e}] at its resolution); "
                f"re-measured in float64: a = {again.residual:.3e}")
            report = again
    _scope(report, data, loss=loss, target=target)
    report.elapsed_s = time.perf_counter() - start
    return report


def _scope(report: AlignmentReport, data: object, *, loss: str, target: object) -> None:
    """When a probe of larger data was measured, add D1 on the data given (``theory/alignment.md#subsets``)."""
    n_data = _inputs.data_size(data)
    if n_data is None or n_data <= report.n_samples:
        return
    m = report.n_outputs // report.n_samples
    report.n_data = n_data
    report.data_verdict = theory.alignment_from_subset(
        report.verdict, probe_rows=report.n_outputs, data_rows=n_data * m, n_params=report.n_params,
        probe_norm_sq=report.target_norm_sq, data_norm_sq=data_target_norm_sq(data, n_data, m, loss, target))


def data_target_norm_sq(data: object, n_data: int, m: int, loss: str, target: object) -> float | None:
    """Return ``‖Q‖²`` of the default target on all ``n_data`` samples of ``data``; ``None`` when it is not known.

    Known for a pair ``(X, Y)`` (its targets are read) and for cross-entropy's centred one-hot target, each of whose
    rows has ``‖e_y − 1/m‖² = 1 − 1/m``; ``data=None`` when only the size of the data is known.
    """
    if target is None and isinstance(data, tuple | list):
        return float((Targets.build(_inputs.as_tensor(data[1], "targets"), n_data, m, loss).Q ** 2).sum())
    if target is None and loss == "ce":
        return n_data * (1 - 1 / m)
    return None


def _measure(model: nn.Module, X: _inputs.Inputs, T: torch.Tensor, *, dtype: torch.dtype | None, target: object,
             loss: str, rank_tol: float | None, residual_tol: float | None, params: ParamSelector, mode: str,
             output: _inputs.OutputSelector, strategy: str, memory_budget: int | None, path: str,
             horizon: tuple[float, int] | None, solver: dict[str, Any]) -> AlignmentReport:
    """One measurement of :func:`check_alignment` in ``dtype``, on the dense or the matrix-free path."""
    path, op = choose_path(
        path, model, X, params=params, mode=mode, output=output, dtype=dtype, memory_budget=memory_budget,
        strategy=strategy,
    )
    if op is not None:
        options = dict(solver)
        folder = options.pop("checkpoint_dir", None)
        report = alignment_from_operator(
            op, T, loss=loss, target=target, rank_tol=rank_tol, residual_tol=residual_tol, horizon=horizon,
            checkpoints=None if folder is None else RunStore(folder), **options,
        )
        report.mode, report.strategy = mode, op.products
        error = jacobian_error(op.fm, op.x, m=op.m, per_sample=False)
        report.manifest = MeasurementManifest.build(op.fm, op.x, strategy=op.products, n_outputs=op.m,
                                                    choice=op.choice, error=error, solver=report.solver)
        return report
    with Measurement(model, X, params=params, mode=mode, output=output, dtype=dtype, strategy=strategy,
                     memory_budget=memory_budget) as job:
        targets = Targets.build(T, job.n, job.m, loss, target)
        outputs = job.outputs()
        K = job.gram()
        error = job.error(K)
    report = alignment_from_gram(
        outputs, targets, K, n_params=job.fm.n_params, source_dtype=job.fm.dtype, rank_tol=rank_tol,
        residual_tol=residual_tol, horizon=horizon,
    )
    report.mode, report.strategy = mode, job.strategy
    report.manifest = MeasurementManifest.of(job, error)
    return report


#: Options of ``solver=`` for the matrix-free path in memory; a streamed data set takes :data:`STREAMED_SOLVER`.
IN_MEMORY_SOLVER = ("method", "top_k", "max_iter", "time_budget", "checkpoint_dir", "checkpoint_every", "progress")
STREAMED_SOLVER = (*IN_MEMORY_SOLVER, "batch_size", "work_dir", "vector_budget")


def _solver_options(solver: dict[str, Any] | None, path: str, streamed: bool) -> dict[str, Any]:
    """Validate ``solver=``: known options, only with a path that can be matrix-free, streaming ones on a stream."""
    solver = dict(solver or {})
    unknown = set(solver) - set(STREAMED_SOLVER)
    if unknown:
        raise DiagnosticsError(f"unknown solver options {sorted(unknown)}; the options are {list(STREAMED_SOLVER)}")
    if solver and path == "dense":
        raise DiagnosticsError("solver options apply to the matrix-free path; path='dense' uses none")
    streaming_only = set(solver) - set(IN_MEMORY_SOLVER)
    if streaming_only and not streamed:
        raise DiagnosticsError(f"solver options {sorted(streaming_only)} apply to a streamed data set only "
                               "(path='matrix-free', probe_size=None and a Dataset or DataLoader)")
    if solver.get("method", "auto") not in METHODS:
        raise DiagnosticsError(f"solver method must be one of {METHODS}, got {solver['method']!r}")
    return solver


def dense_alignment_bytes(rows: int, dtype: torch.dtype) -> int:
    """Peak memory of the dense path: the Gram and its working copy, plus a float64 ``eigh``.

    ``eigh`` holds the float64 Gram, its eigenvectors and a workspace of about ``2N²`` doubles.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    return rows * rows * (2 * itemsize + 4 * 8)


def choose_path(
    path: str,
    model: nn.Module,
    inputs: object,
    *,
    params: ParamSelector = None,
    mode: str = "eval",
    output: _inputs.OutputSelector = None,
    dtype: torch.dtype | None = None,
    memory_budget: int | None = None,
    chunk_size: int | None = None,
    strategy: str = "auto",
) -> tuple[str, JacobianOperator | None]:
    """Resolve ``path`` (one of :data:`PATHS`); the operator is returned when the path is matrix-free.

    ``"auto"`` is dense when :func:`dense_alignment_bytes` fits the memory budget, matrix-free
    otherwise.
    """
    if path not in PATHS:
        raise DiagnosticsError(f"path must be one of {PATHS}, got {path!r}")
    if path == "dense":
        return path, None
    op = JacobianOperator(
        model, inputs, params=params, mode=mode, output=output, dtype=dtype, chunk_size=chunk_size,
        strategy=strategy, memory_budget=memory_budget,
    )
    budget = memory.resolve_budget(memory_budget, op.fm.device)
    if path == "auto" and dense_alignment_bytes(op.shape[0], op.dtype) <= budget:
        return "dense", None
    return "matrix-free", op
