"""The columns of a tracker record, and how each tier fills them (:mod:`.tracker`, :mod:`.cheap`).

A full record holds :data:`COLUMNS`, one ``cka_<module>`` column per representation module, then
:data:`TRAILING`. A tracker with a cheap tier appends :data:`CHEAP_COLUMNS` to every record; a cheap
record leaves the full-record columns it does not measure ``nan`` (and ``d1_status``, ``aligned`` empty:
it makes no statement about D1). :data:`CONSTANTS` are the columns that do not change along a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..alignment_report import AlignmentReport
from ..engine.precision import dtype_name
from . import reference as _ref
from .cheap import CheapMeasurement

__all__ = ["CHEAP_COLUMNS", "COLUMNS", "CONSTANTS", "TRAILING", "cheap_record_columns", "report_columns",
           "tier_columns", "trailing_columns"]

#: Columns of every record, in order (``cka_<module>`` columns follow ``kernel_target_alignment``).
COLUMNS = (
    "step", "loss", "grad_norm", "residual", "residual_lower", "aligned", "d1_status", "rank", "n_outputs", "n_params",
    "lambda_max", "lambda_min_kept", "effective_rank", "certificate", "nu_norm", "bound", "bound_ratio",
    "bound_truncation", "decomposition_gap", "output_residual", "data_level_status", "loss_lower_bound",
    "target_loss", "horizon_residual", "horizon_loss_floor", "horizon_note", "kernel_movement_init",
    "kernel_movement_prev", "param_movement", "kernel_target_alignment",
)
#: Columns after the CKA columns: timing, then what makes a record self-describing for :mod:`.verify`.
TRAILING = ("measure_seconds", "wall_time", "n_samples", "target_norm_sq", "residual_tol", "loss_name", "dtype",
            "mode")
#: Columns a tracker with a cheap tier appends to every record (after the trailing ones).
CHEAP_COLUMNS = ("tier", "target_quotient", "pullback_movement_init", "pullback_movement_prev")
#: Columns whose values are fixed by the run's settings and probe (for loggers: hyper-parameters, not metrics).
CONSTANTS = ("n_outputs", "n_params", "n_samples", "target_norm_sq", "residual_tol", "loss_name", "dtype", "mode")


def report_columns(report: AlignmentReport) -> dict[str, Any]:
    """Return the columns of :data:`COLUMNS` that a full record reads off its alignment report."""
    return {
        "loss": report.loss,
        "grad_norm": report.grad_norm,
        "residual": report.residual,
        "residual_lower": report.verdict.details.get("lower", report.residual),
        "aligned": report.aligned,
        "d1_status": report.verdict.status,
        "rank": report.rank,
        "n_outputs": report.n_outputs,
        "n_params": report.n_params,
        "lambda_max": float(report.eigenvalues[0]),
        "lambda_min_kept": report.smallest_kept_eigenvalue,
        "effective_rank": report.effective_rank,
        "certificate": report.certificate,
        "nu_norm": report.nu_norm,
        "bound": report.bound,
        "bound_ratio": report.bound_ratio,
        "bound_truncation": report.verdicts[-1].details.get("truncation", 0.0),
        "decomposition_gap": report.decomposition_gap,
        "output_residual": report.output_residual,
        "data_level_status": report.data_level.status if report.data_level is not None else math.nan,
        "loss_lower_bound": report.loss_lower_bound,
        "target_loss": report.target_loss,
        "horizon_residual": report.horizon_residual,
        "horizon_loss_floor": report.horizon_loss_floor,
        "horizon_note": report.horizon_note,
    }



def trailing_columns(n: int, target_norm_sq: float, residual_tol: float, dtype: torch.dtype, loss: str,
                     mode: str) -> dict[str, Any]:
    """Return :data:`TRAILING` (the timing columns ``nan``, for the tracker to fill)."""
    return {"measure_seconds": math.nan, "wall_time": math.nan, "n_samples": n, "target_norm_sq": target_norm_sq,
            "residual_tol": residual_tol, "loss_name": loss, "dtype": dtype_name(dtype), "mode": mode}


def cheap_record_columns(step: int, cheap: CheapMeasurement, representation: Sequence[str], loss: str,
                         mode: str) -> dict[str, Any]:
    """Return the record of a cheap pass in the full record's columns (those it does not measure ``nan``)."""
    record: dict[str, Any] = dict.fromkeys(COLUMNS, math.nan)
    record.update({
        "step": step, "loss": cheap.loss, "grad_norm": cheap.grad_norm, "aligned": None, "d1_status": None,
        "n_outputs": cheap.n * cheap.m, "n_params": cheap.n_params,
    })
    record.update({f"cka_{name}": math.nan for name in representation})
    record.update(trailing_columns(cheap.n, cheap.target_norm_sq, math.nan, cheap.dtype, loss, mode))
    return record


def tier_columns(cheap: CheapMeasurement, full: bool, previous: torch.Tensor | None,
                 reference: torch.Tensor | None) -> dict[str, Any]:
    """Return :data:`CHEAP_COLUMNS` of a record; ``previous`` and ``reference`` are earlier pullbacks ``JᵀQ``."""
    return {
        "tier": "full" if full else "cheap",
        "target_quotient": cheap.target_quotient,
        "pullback_movement_init": math.nan if reference is None else _ref.relative_distance(cheap.pullback, reference),
        "pullback_movement_prev": math.nan if previous is None else _ref.relative_distance(cheap.pullback, previous),
    }
