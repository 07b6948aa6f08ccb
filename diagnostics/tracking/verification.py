"""The paper's results checked on a measured trajectory (theory/results.md, theory/width.md).

Each function takes a tracker history (the DataFrame of :class:`~diagnostics.tracking.AlignmentTracker`
or :func:`~diagnostics.history.load_history`) and returns one :class:`theory.verdicts.Verdict` per
record, as a ``pandas.Series`` indexed by step. The measured numbers are judged by the pure functions
of :mod:`theory.verdicts`; nothing is re-measured here.

==========================  ===============  =====================================================
function                    statement        on each record
==========================  ===============  =====================================================
``decomposition_verdicts``  I2 (mse)         ``L = (1/2n)‖Pr‖² + (1/2n)‖(I−P)Y‖²``
``lower_bound_verdicts``    I2.lower (mse)   ``L ≥ (1/2n)‖(I−P)Y‖²``
``domination_verdicts``     I3 (mse)         ``L ≤ ½‖∇L‖B``; not applicable where D1 fails
``convex_bound_verdicts``   I4 (ce)          ``L − L(Q) ≤ ‖∇L‖‖J⁺(f_X − Q)‖``; not applicable where D1 fails
``necessity_verdicts``      I2.necessity     ``a ≤ sqrt(2nL)/‖Y‖`` (so ``L = 0 ⇒ Y ∈ Col J``)
``counting_verdicts``       S1 (sanity)      ``rank J ≤ min(nm, d)``: checks the measurement, not the theory
``data_alignment_verdicts`` D1 (the data)    what the probe's D1 says of the data it was drawn from
``verify_history``          all that apply   one long table
==========================  ===============  =====================================================

Only full records are judged: the cheap records of a tracker with a cheap tier (``tier == "cheap"``)
measure no spectrum, so the statements have nothing to rest on there (:func:`full_records`).

``‖Pr‖²`` is not stored; it is recovered from the stored parts of (I2):
``‖Pr‖² = 2n(L − floor − gap)`` with ``floor = (1/2n)‖(I−P)Y‖²`` and the measured ``gap``. The premises
come from the record too: D1 from ``d1_status`` and the data-level condition ``f_X ∈ Col J`` from
``data_level_status``, each decided on the resolution of its measurement (``theory/alignment.md#resolution``);
*not established* leaves the premise undecided, so a violation resting on it is not established either. The
(I2) gap refutes ``f_X ∈ Col J`` only where that premise was decided, and the necessity bound allows the D1
residual to be as low as ``residual_lower``. Histories written before these columns existed fall back to
``output_residual ≤ residual_tol`` and the measured residual.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from theory import verdicts as tv
from theory.verdicts import Verdict

from ..engine.precision import decomposition_rtol
from ..errors import DiagnosticsError

__all__ = [
    "decomposition_verdicts",
    "lower_bound_verdicts",
    "domination_verdicts",
    "convex_bound_verdicts",
    "necessity_verdicts",
    "counting_verdicts",
    "data_alignment_verdicts",
    "full_records",
    "verify_history",
]


def decomposition_verdicts(history: pd.DataFrame, rtol: float | None = None) -> pd.Series:
    """(I2) The loss decomposition at every record of a squared-loss history.

    Parameters
    ----------
    history
        Tracker history.
    rtol
        Relative tolerance on the gap; default ``max(1e-8, 1000·eps)`` of the measurement dtype.
    """
    _require(history, "mse", "loss", "decomposition_gap", "loss_lower_bound", "n_samples")

    def judge(row: pd.Series) -> Verdict:
        n = int(row.n_samples)
        floor_sq = 2 * n * row.loss_lower_bound
        fitted_sq = max(2 * n * (row.loss - row.loss_lower_bound - row.decomposition_gap), 0.0)
        unattributed = abs(row.decomposition_gap) if _cms(row) == tv.NOT_ESTABLISHED else 0.0
        return tv.loss_decomposition(row.loss, fitted_sq, floor_sq, n, rtol=_rtol(row, rtol), uncertainty=unattributed)

    return _per_record(history, "I2", judge)


def lower_bound_verdicts(history: pd.DataFrame, rtol: float | None = None) -> pd.Series:
    """(I2, consequence) ``L ≥ (1/2n)‖(I − P)Y‖²`` at every record of a squared-loss history."""
    _require(history, "mse", "loss", "loss_lower_bound", "n_samples")

    def judge(row: pd.Series) -> Verdict:
        n = int(row.n_samples)
        return tv.alignment_lower_bound(row.loss, 2 * n * row.loss_lower_bound, n, rtol=_rtol(row, rtol),
                                        cms=_cms(row))

    return _per_record(history, "I2.lower", judge)


def domination_verdicts(history: pd.DataFrame, rtol: float = 1e-6) -> pd.Series:
    """(I3) ``L ≤ ½‖∇L‖·B`` at every record, judged to the truncation of the record's rank tolerance.

    Not applicable at records where D1 fails; ``details['bound_ratio']`` is ``L/(½‖∇L‖B)``.
    """
    _require(history, "mse", "loss", "grad_norm", "certificate", "aligned", "decomposition_gap",
             "loss_lower_bound")
    return _per_record(
        history,
        "I3",
        lambda row: tv.gradient_domination(
            row.loss, row.grad_norm, row.certificate, _d1(row), rtol=rtol,
            truncation=max(row.decomposition_gap + row.loss_lower_bound, 0.0), cms=_cms(row),
        ),
    )


def convex_bound_verdicts(history: pd.DataFrame, rtol: float = 1e-6) -> pd.Series:
    """(I4) ``L − L(Q) ≤ ‖∇L‖·‖J⁺(f_X − Q)‖`` at every record of a cross-entropy history.

    ``Q`` is the best-scaled centred one-hot target chosen at each record (``target_loss`` is ``L(Q)``,
    ``certificate`` the distance); not applicable at records where D1 fails.
    """
    _require(history, "ce", "loss", "target_loss", "grad_norm", "certificate", "aligned")
    return _per_record(
        history,
        "I4",
        lambda row: tv.convex_loss_bound(
            row.loss, row.target_loss, row.grad_norm, row.certificate, _d1(row), rtol=rtol,
            truncation=float(row.get("bound_truncation", 0.0)), cms=_cms(row),
        ),
    )


def necessity_verdicts(history: pd.DataFrame, rtol: float = 1e-8) -> pd.Series:
    """(I2, necessity) ``a ≤ sqrt(2nL)/‖Y‖`` at every record: a global minimum forces D1, quantitatively."""
    _require(history, "mse", "loss", "residual", "n_samples", "target_norm_sq")
    return _per_record(
        history,
        "I2.necessity",
        lambda row: tv.necessity_at_global_minimum(
            row.loss, row.residual, int(row.n_samples), row.target_norm_sq, rtol=rtol, cms=_cms(row),
            uncertainty=row.residual - _stored(row, "residual_lower", row.residual),
        ),
    )


def counting_verdicts(history: pd.DataFrame) -> pd.Series:
    """(S1) ``rank J ≤ min(nm, d)``, a sanity check; ``details['underparameterised']`` flags ``d < nm``."""
    _require(history, None, "rank", "n_outputs", "n_params")
    return _per_record(
        history, "S1", lambda row: tv.counting_bound(int(row["rank"]), int(row.n_outputs), int(row.n_params))
    )


def data_alignment_verdicts(history: pd.DataFrame, data_size: int,
                            data_norm_sq: float | None = None) -> pd.Series:
    """(D1 on the data) What the probe's D1 verdict of every record says of the ``data_size`` samples it was drawn from.

    :func:`theory.alignment_from_subset` on the record's own word (``d1_status``) and the lower bound of its
    residual (``residual_lower``): *refuted* where the probe's lower bound, rescaled by ``‖Q_probe‖/‖Q‖``
    (``data_norm_sq`` = ``‖Q‖²``, when known), exceeds the tolerance; otherwise *not established*, with the
    counting bound (``theory/alignment.md#subsets``).
    """
    _require(history, None, "residual", "d1_status", "residual_tol", "n_outputs", "n_params", "n_samples",
             "target_norm_sq")

    def judge(row: pd.Series) -> Verdict:
        status, tol = str(row.d1_status), float(row.residual_tol)
        lower = float(_stored(row, "residual_lower", row.residual if status == tv.REFUTED else 0.0))
        probe = Verdict("D1", "alignment condition Q ∈ Col J", status, float(row.residual), tol,
                        tol - float(row.residual), 0.0, {"lower": lower}, "‖(I−P)Q‖/‖Q‖", "residual_tol")
        m = int(row.n_outputs) // int(row.n_samples)
        return tv.alignment_from_subset(probe, probe_rows=int(row.n_outputs), data_rows=data_size * m,
                                        n_params=int(row.n_params), probe_norm_sq=float(row.target_norm_sq),
                                        data_norm_sq=data_norm_sq)

    return _per_record(history, "D1.data", judge)


def verify_history(history: pd.DataFrame) -> pd.DataFrame:
    """Every statement that applies to the history's loss, judged at every record.

    Returns
    -------
    pandas.DataFrame
        One row per (record, statement): ``step``, ``statement``, ``status`` (*holds*, *refuted*,
        *not established*, *not applicable*), ``sanity`` (a check of the measurement, not evidence),
        ``lhs``, ``rhs``, ``margin``, ``tolerance`` and the ``verdict`` object.
        ``(frame.status != "refuted").all()`` says whether nothing on the trajectory contradicts the theory.
    """
    checks: list[Callable[[pd.DataFrame], pd.Series]]
    if _loss_name(history) == "mse":
        checks = [decomposition_verdicts, lower_bound_verdicts, domination_verdicts, necessity_verdicts]
    else:
        checks = [convex_bound_verdicts]
    checks.append(counting_verdicts)
    rows = []
    for check in checks:
        for step, verdict in check(history).items():
            rows.append({
                "step": step, "statement": verdict.statement, "status": verdict.status, "sanity": verdict.sanity,
                "lhs": verdict.lhs, "rhs": verdict.rhs, "margin": verdict.margin, "tolerance": verdict.tolerance,
                "verdict": verdict,
            })
    columns = ["step", "statement", "status", "sanity", "lhs", "rhs", "margin", "tolerance", "verdict"]
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------------------------


def _loss_name(history: pd.DataFrame) -> str:
    if "loss_name" not in history.columns or history.empty:
        raise DiagnosticsError("the history has no records (or no 'loss_name' column): nothing to verify")
    names = set(history["loss_name"])
    if len(names) != 1:
        raise DiagnosticsError(f"the history mixes losses {sorted(names)}")
    return names.pop()


def _require(history: pd.DataFrame, loss: str | None, *columns: str) -> None:
    missing = [c for c in columns if c not in history.columns]
    if missing:
        raise DiagnosticsError(f"the history lacks the column(s) {missing}; is it a tracker history?")
    name = _loss_name(history)
    if loss is not None and name != loss:
        raise DiagnosticsError(
            f"this statement is about the {loss!r} loss; the history was measured with {name!r}"
        )


def _rtol(row: pd.Series, rtol: float | None) -> float:
    if rtol is not None:
        return rtol
    return decomposition_rtol(getattr(torch, str(row.get("dtype", "float64")), torch.float64))


def _stored(row: pd.Series, column: str, default: object) -> object:
    """Return ``row[column]``, or ``default`` when the history predates the column (absent or ``nan``)."""
    value = row.get(column)
    return default if value is None or (isinstance(value, float) and np.isnan(value)) else value


def _d1(row: pd.Series) -> bool | str:
    """Return D1 at a record: the word of its verdict (*not established* leaves the premise undecided)."""
    return _stored(row, "d1_status", bool(row.aligned))


def _cms(row: pd.Series) -> bool | str | None:
    """Return the data-level premise ``f_X ∈ Col J`` at a record: the word of its verdict.

    Older histories: ``output_residual ≤ residual_tol``; ``None`` when neither was stored.
    """
    status = _stored(row, "data_level_status", None)
    if status is not None:
        return status
    if "output_residual" not in row or "residual_tol" not in row or pd.isna(row.residual_tol):
        return None
    return bool(row.output_residual <= row.residual_tol)


def full_records(history: pd.DataFrame) -> pd.DataFrame:
    """Return the full records of a history (all of them when it has no ``tier`` column)."""
    return history if "tier" not in history.columns else history[history["tier"] != "cheap"]


def _per_record(history: pd.DataFrame, name: str, judge: Callable[[pd.Series], Verdict]) -> pd.Series:
    history = full_records(history)
    verdicts = [judge(row) for _, row in history.iterrows()]
    return pd.Series(verdicts, index=np.asarray(history["step"]), name=name, dtype=object)
