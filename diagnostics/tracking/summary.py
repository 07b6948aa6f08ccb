"""A tracker history in readable lines, with the paper's statements judged on it."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

import theory

from .verification import data_alignment_verdicts, full_records, verify_history

__all__ = ["summarize"]


def summarize(history: pd.DataFrame) -> str:
    """Describe a tracker history in readable lines, with the verdicts of :mod:`~diagnostics.tracking.verification`.

    Every record is measured on the probe; when the header (``history.attrs["meta"]``) says the probe was drawn
    from larger data (``data_size``), its D1 counts are labelled the probe's and a line says what they imply for
    that data (:func:`~diagnostics.tracking.verification.data_alignment_verdicts`, ``theory/alignment.md#subsets``).
    """
    if history.empty:
        return "AlignmentTracker history: no records"
    meta = history.attrs.get("meta") or {}
    first, last = history.iloc[0], history.iloc[-1]
    h = full_records(history)
    n, nm, d = int(last.n_samples), int(last.n_outputs), int(last.n_params)
    n_data = meta.get("data_size")
    probe = n_data is not None and n_data > n
    lines = [
        f"AlignmentTracker history: {len(history)} records{_tiers(history)}, "
        f"steps {int(first.step)}..{int(last.step)}; "
        f"{last.loss_name} loss; probe n={n}{f' of {n_data:,} samples' if probe else ''} × m={nm // n} = {nm} rows; "
        f"d={d:,} parameters; mode={last['mode']}, {last['dtype']}",
    ]

    def trend(column: str, label: str, fmt: str = ".4g", frame: pd.DataFrame = h) -> str:
        values = frame[column].to_numpy(dtype=float)
        return (f"  {label:<34} {values[0]:{fmt}} → {values[-1]:{fmt}}   "
                f"(min {np.nanmin(values):{fmt}}, max {np.nanmax(values):{fmt}})")

    lines += [trend("loss", "loss", frame=history), trend("grad_norm", "‖∇L‖", frame=history)]
    if h.empty:
        lines.append("  no full record yet")
    else:
        lines.append(trend("residual", "alignment residual ‖(I−P)Q‖/‖Q‖", ".3e")
                     + ("; D1 on the probe " if probe else "; D1 ") + _d1_counts(h))
        if probe and "d1_status" in h:
            lines.append(_data_line(h, n_data, meta.get("data_target_norm_sq")))
        lines += [
            trend("rank", "rank J", ".0f") + f" of min(nm, d) = {min(nm, d)}",
            trend("lambda_max", "λ_max"),
            trend("effective_rank", "effective rank", ".1f"),
            trend("certificate", "certificate B"),
            trend("kernel_movement_init", "kernel movement ‖K_t−K_0‖/‖K_0‖", ".3f"),
        ]
        lines += [trend(c, f"CKA to reference, {c[4:]}", ".3f") for c in h.columns if c.startswith("cka_")]
    lines.append(trend("param_movement", "parameter movement ‖θ_t−θ_0‖/‖θ_0‖", ".3f", history))
    if "tier" in history.columns:
        lines += [
            "  the cheap tier, at every record:",
            trend("target_quotient", "QᵀKQ/‖Q‖²", ".4g", history),
            trend("pullback_movement_init", "movement of JᵀQ ‖p_t−p_0‖/‖p_0‖", ".3f", history),
        ]
    lines.append(f"  the paper's statements on this trajectory{' (the probe)' if probe else ''} (theory.verdicts):")
    try:
        table = verify_history(h)
    except ValueError as exc:  # non-finite measurements (a diverged run) cannot be judged
        lines.append(f"    not judged: {exc}")
    else:
        for statement, group in table.groupby("statement", sort=False):
            lines.append("    " + _verdict_line(statement, group))
    seconds = history.measure_seconds.to_numpy(dtype=float)
    lines.append(f"  timing: {np.median(seconds):.3g} s per record (median), {seconds.sum():.3g} s in total")
    return "\n".join(lines)


def _verdict_line(statement: str, group: pd.DataFrame) -> str:
    """One statement over the records: how many hold, are refuted, not established or not applicable.

    The headline word is the strongest the evidence allows: *refuted* if any record refutes it, *holds*
    if it holds at every record where it applies (and applies somewhere), *not established* otherwise;
    sanity checks are labelled as such. The record with the least room (or the first refutation) follows.
    """
    verdicts = list(group.verdict)
    counts = {status: sum(v.status == status for v in verdicts) for status in theory.STATUSES}
    decided = [v for v in verdicts if v.status in (theory.HOLDS, theory.REFUTED)]
    if counts[theory.REFUTED]:
        word = "REFUTED"
    elif decided and counts[theory.NOT_ESTABLISHED] == 0:
        word = "holds"
    else:
        word = "not established"
    parts = [f"{counts[s]} {s}" for s in theory.STATUSES if counts[s]]
    tag = " [sanity: checks the measurement]" if verdicts and verdicts[0].sanity else ""
    line = f"{statement:<13} {word}{tag} over {len(verdicts)} records ({', '.join(parts)})"
    refuted = [v for v in verdicts if v.refuted]
    worst = refuted[0] if refuted else min(decided, key=lambda v: v.margin + v.tolerance, default=None)
    if worst is not None:
        label = "first refutation" if refuted else "least room"
        line += f"; {label} at step {int(group.step.iloc[verdicts.index(worst)])}: {worst}"
    return line


def _data_line(h: pd.DataFrame, n_data: int, data_norm_sq: float | None) -> str:
    """Say what the probe's D1 verdicts imply for the ``n_data`` samples it was drawn from, over the records."""
    verdicts = list(data_alignment_verdicts(h, n_data, data_norm_sq))
    refuted = [(step, v) for step, v in zip(h.step, verdicts, strict=True) if v.refuted]
    head = f"  D1 on all {n_data:,} samples the probe was drawn from: "
    if refuted:
        step, v = refuted[0]
        text = (f"{head}REFUTED at {len(refuted)} of {len(verdicts)} records (first at step {int(step)}: "
                f"a ≥ a_probe‖Q_probe‖/‖Q‖ = {v.lhs:.3e} > {v.rhs:.1e})")
    else:
        text = f"{head}not established at every record — {verdicts[-1].details['reason']}"
    return textwrap.fill(text, 116, subsequent_indent="    ", break_on_hyphens=False)


def _tiers(history: pd.DataFrame) -> str:
    """`` (3 full, 27 cheap)`` for a history with a cheap tier, else nothing."""
    if "tier" not in history.columns:
        return ""
    counts = history["tier"].value_counts()
    return f" ({int(counts.get('full', 0))} full, {int(counts.get('cheap', 0))} cheap)"


def _d1_counts(h: pd.DataFrame) -> str:
    """Count the D1 verdicts of a history, e.g. ``holds at 7, not established at 2 of 9 records``."""
    statuses = h["d1_status"] if "d1_status" in h else h["aligned"].map({True: theory.HOLDS, False: theory.REFUTED})
    counts = statuses.value_counts()
    return ", ".join(f"{s} at {int(counts[s])}" for s in theory.STATUSES if s in counts) + f" of {len(h)} records"

