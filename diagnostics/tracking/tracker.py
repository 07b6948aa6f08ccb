"""Per-iteration tracking of the alignment quantities during training (theory/results.md, theory/width.md).

:class:`AlignmentTracker` attaches to any training loop with one call per step and, every
``every`` steps, measures on a fixed probe set everything :func:`~diagnostics.check_alignment`
reports (loss, ``‖∇L‖``, alignment residual, rank and spectrum, certificate ``B``, the (I3)/(I4)
bound ratio, the (I2) decomposition gap and loss floor) plus how far the representation has moved::

    Δ_K^init(t) = ‖K_t − K_0‖_F / ‖K_0‖_F,    Δ_K^prev(t) = ‖K_t − K_t'‖_F / ‖K_t'‖_F,
    Δ_θ(t) = ‖θ_t − θ_0‖ / ‖θ_0‖,

(``t'`` the previous record; theory/width.md#s4-lazy-versus-rich), the kernel–target alignment
``QᵀKQ/(‖K‖_F‖Q‖²)`` and, for chosen modules, the linear CKA between their activations now and at the reference
(:mod:`diagnostics.representation`).

With ``full_every=``, most records are cheap ones (:mod:`~diagnostics.tracking.cheap`: one forward and two
reverse passes over the probe, about a training step, instead of the Gram and its spectrum) and every
``full_every``-th is full.

Records go to a DataFrame (:attr:`AlignmentTracker.history`) and, with ``path=``, to an append-only
JSON-lines file that survives a crash and resumes (:mod:`diagnostics.history`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..alignment import alignment_from_spectrum, data_target_norm_sq
from ..alignment_report import AlignmentReport
from ..engine import inputs as _inputs
from ..engine.functional import FunctionalModel, ParamSelector
from ..engine.measurement import Measurement
from ..engine.precision import RESIDUAL_TOL, dtype_name, verdict_dtype
from ..engine.spectral import Spectrum
from ..errors import DiagnosticsError, renamed_argument
from ..representation import capture_grams, cka_from_grams
from ..targets import Targets
from . import reference as _ref
from .cheap import CheapMeasurement, CheapTier
from .history import History, load_history
from .meta import Tag, check_tags, describe_groups, describe_optimizer
from .records import (
    CHEAP_COLUMNS,
    COLUMNS,
    TRAILING,
    cheap_record_columns,
    report_columns,
    tier_columns,
    trailing_columns,
)
from .settings import check_options
from .summary import summarize

__all__ = ["CHEAP_COLUMNS", "COLUMNS", "TRAILING", "AlignmentTracker"]


class Observation(NamedTuple):
    """What a full measurement sees at the current ``θ``: outputs, Gram, measured parameters, activation Grams."""

    outputs: torch.Tensor
    K: torch.Tensor
    theta: torch.Tensor
    grams: dict[str, torch.Tensor]
    targets: Targets
    n_params: int
    dtype: torch.dtype


class AlignmentTracker:
    r"""Measure the alignment quantities on a fixed probe set during training.

    Create it on the model at the point that serves as reference (usually initialisation): ``K_0``,
    ``θ_0`` and the reference activations are taken then. Call :meth:`step` once per training step;
    it measures when ``step % every == 0``.

    Parameters
    ----------
    model
        Any ``nn.Module``; measuring never changes it (parameters, buffers, batch-norm statistics,
        train/eval mode, ``requires_grad``, ``.grad``) nor the global random state.
    probe
        ``(X, Y)`` tensors or arrays, a map-style ``Dataset`` or a ``DataLoader``; a seeded subset of
        ``probe_size`` samples is drawn once and used for every record.
    every
        Measure every ``every`` steps.
    loss
        ``"mse"`` (I2, I3 of theory/results.md) or ``"ce"`` (cross-entropy on logits, I4).
    params, mode, output, dtype, strategy
        As in :func:`diagnostics.jacobian`: the measured parameter subset, ``"eval"`` (running
        batch-norm statistics, per-sample Jacobians) or ``"batch"`` (the probe is one batch, as in
        training), the output selector, the compute dtype (default as in
        :func:`~diagnostics.check_alignment`: float64 on the CPU) and the Gram strategy.
    probe_size, seed
        Size and seed of the probe subset (``None``: all of ``probe``). The history's header records the size of
        the data the probe was drawn from (``meta["data_size"]``, ``None`` when it cannot be told) and, when known,
        its target's ``‖Q‖²`` (``meta["data_target_norm_sq"]``): every D1 verdict of a record is the probe's, and
        the summary says what it implies for that data (``theory/alignment.md#subsets``).
    target
        Alignment target ``Q`` overriding the default (``Y`` for mse, centred one-hot for ce).
    representation
        Module names (``dict(model.named_modules())`` keys) whose activations are compared with the
        reference by linear CKA, one ``cka_<name>`` column each; each must run once per forward.
    path
        JSON-lines file for the history (plus a reference file ``<path>.ref.pt`` holding ``K_0``,
        ``θ_0`` and the reference activation Grams); ``None`` keeps the history in memory.
    resume
        With an existing history at ``path``: read its finished records and continue after the last
        step (``False``: start a new history in its place). The reference is read back, so
        movements stay relative to the original ``K_0`` and ``θ_0``; the first record after a resume
        has ``kernel_movement_prev = nan`` (the previous Gram is not stored).
    progress
        Show a tqdm progress bar over steps, with the latest record's numbers.
    rank_tol, residual_tol, memory_budget
        Rank tolerance, alignment threshold and memory budget, as in :func:`~diagnostics.check_alignment`.
    horizon
        ``(η, T)``: the training's step size (a number, or the optimiser, whose first parameter group's
        ``lr`` is read at every record so that schedules are followed) and its total number of steps. Each
        record then has the part of ``Q`` that the remaining ``T − step`` steps cannot fit,
        ``horizon_residual``, and its loss floor ``horizon_loss_floor`` (``nan`` without a horizon), and in
        ``horizon_note`` the premises of :func:`theory.gradient_descent_premises`: plain gradient steps (observed
        from an optimiser: momentum, Adam and weight decay make the horizon *not applicable*, its columns
        ``nan``; a number is taken as plain gradient descent, assumed), full batches (assumed: the tracker does
        not see the batches) and the squared loss (not met for ``loss="ce"``); and, at a record whose step is
        beyond the stable step of its kernel, the unstable part (:func:`theory.unstable_part`: the directions
        with ``ηλ/n > 2``, their share of ``‖Q‖²`` and the growth per step of the top one), which the floor does
        not count and does not depend on (``theory/alignment.md#horizon-residual``).
    tol
        Former name of ``rank_tol`` (deprecated).
    full_every
        Turn on the cheap tier: every record is a cheap one (:mod:`~diagnostics.tracking.cheap`: loss, ``‖∇L‖``,
        ``QᵀKQ/‖Q‖²`` and the Jacobian's movement along the target, from one forward and two reverse passes
        over the probe), and every ``full_every``-th record (steps that are multiples of ``every · full_every``)
        is also a full one. Records then have the columns :data:`CHEAP_COLUMNS` too (``tier`` is ``"full"`` or
        ``"cheap"``); the full-record columns of a cheap record are ``nan``. ``None`` (default): every record
        is full.
    tags
        Labels of the run (``{"width": 256, "seed": 3}``: strings, integers, finite floats, booleans), written
        into the history's header as ``meta["tags"]`` (:mod:`~diagnostics.tracking.meta`).
    optimizer
        The training's optimiser, described in the header as ``meta["optimizer"]`` (its class name and the
        scalar hyper-parameters of its first parameter group); default: the optimiser of ``horizon``, if any.
    data_size
        The number of samples of the data the probe was drawn from, when ``probe`` is itself a subset drawn
        elsewhere (the callbacks read their probe once and pass its data's size here); default: the size of
        ``probe``.

    Notes
    -----
    Memory: the tracker holds ``K_0`` and the previous record's ``K``, two ``nm × nm`` matrices in
    the compute dtype on the model's device (``n = probe_size``, ``m`` outputs; e.g. 210 MB each for
    ``n = 512``, ``m = 10`` in float64), plus one copy of the measured parameters (``θ_0``) and an
    ``n × n`` Gram per ``representation`` module; with a cheap tier, two more parameter-sized vectors
    (``J_0ᵀQ`` and the previous record's ``JᵀQ``). A full record costs one Gram (the engine's
    ``ntk_gram``), one float64 eigen-decomposition of it and one extra forward pass; a cheap record one
    forward and two reverse passes over the probe, in the model's dtype unless ``dtype`` is given
    (``bench/bench_tracker.py`` measures both against a training step).

    The reference is measured when the tracker is created; the first record, when the parameters and buffers
    have not changed since, reuses that measurement instead of measuring twice.

    Measuring never runs under autocast (it is switched off around each record) and restores the random
    state afterwards; ``kernel_movement_prev`` compares with the previous *full* record.

    The loss and ``‖∇L‖`` are those of the probe set in the measurement mode (``mode="eval"``: with
    running statistics), which differ from the training loss of a mini-batch in train mode.

    Examples
    --------
    >>> tracker = AlignmentTracker(model, (X, y), every=10, loss="ce", path="run.jsonl")  # doctest: +SKIP
    >>> for step in range(steps):                                                       # doctest: +SKIP
    ...     train_one_step()
    ...     tracker.step(step)
    >>> print(tracker.summary())                                                        # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        probe: object,
        *,
        every: int = 1,
        loss: str = "mse",
        params: ParamSelector = None,
        mode: str = "eval",
        output: _inputs.OutputSelector = None,
        probe_size: int | None = 256,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        strategy: str = "auto",
        target: object = None,
        representation: Sequence[str] | None = None,
        path: str | os.PathLike[str] | None = None,
        resume: bool = True,
        progress: bool = False,
        rank_tol: float | None = None,
        residual_tol: float | None = None,
        memory_budget: int | None = None,
        horizon: tuple[float | torch.optim.Optimizer, int] | None = None,
        tol: float | None = None,
        full_every: int | None = None,
        tags: Mapping[str, Tag] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        data_size: int | None = None,
    ) -> None:
        check_options({"every": every, "full_every": full_every, "loss": loss, "mode": mode, "strategy": strategy,
                       "probe_size": probe_size, "seed": seed, "dtype": dtype, "representation": representation,
                       "rank_tol": rank_tol, "residual_tol": residual_tol, "tol": tol, "memory_budget": memory_budget,
                       "horizon": horizon, "tags": tags, "progress": progress, "resume": resume,
                       "data_size": data_size})
        self.model = model
        self.every = every
        self.full_every = full_every
        self.loss = loss
        self.mode = mode
        self.target = target
        if isinstance(representation, str):
            representation = [representation]
        self.representation = tuple(representation or ())
        self._x, self._y = _inputs.probe_data(probe, probe_size, seed)
        # the cheap tier computes in the model's dtype unless told: it makes no verdict
        self._cheap = None if full_every is None else CheapTier(
            self._x, self._y, loss=loss, target=target, params=params, mode=mode, output=output, dtype=dtype)
        dtype = dtype or verdict_dtype(model)
        self._measure_args = {"params": params, "mode": mode, "output": output, "dtype": dtype,
                              "strategy": strategy, "memory_budget": memory_budget}
        self._horizon = _ref.check_horizon(horizon)
        if optimizer is None and self._horizon is not None and isinstance(self._horizon[0], torch.optim.Optimizer):
            optimizer = self._horizon[0]
        self._rank_tol = renamed_argument(rank_tol, tol, "tol", "rank_tol")
        self._residual_tol = residual_tol
        fm = FunctionalModel(model, params=params, mode=mode, output=output, dtype=dtype)  # validates early
        meta = {
            "loss": loss, "mode": mode, "dtype": dtype_name(fm.dtype), "params": list(fm.names),
            "n_params": fm.n_params, "representation": list(self.representation), "every": every,
            "probe_size": _inputs.batch_size(self._x), "seed": seed, "strategy": strategy,
            "probe_sha256": _ref.fingerprint(self._x, self._y, target), "created": time.time(),
            "residual_tol": RESIDUAL_TOL if residual_tol is None else residual_tol,
            "tags": check_tags(tags), "optimizer": describe_optimizer(optimizer),
            "data_size": data_size if data_size is not None else _inputs.data_size(probe),
        }
        if full_every is not None:
            meta["full_every"] = full_every
        self._ref_path = Path(f"{path}.ref.pt") if path is not None else None
        self._history = History(path, meta=meta, resume=resume)
        #: The measurements taken with the reference, for the first record while the model has not changed.
        self._pending: tuple[list[torch.Tensor], Observation, CheapMeasurement | None, float] | None = None
        if self._history.resumed and self._ref_path.exists():
            _ref.check_compatible(self._history.meta, meta, path)
            self._reference = _ref.load_reference(self._ref_path, fm.device)
        elif self._history.resumed and self._history.records:
            raise DiagnosticsError(
                f"{path} holds {len(self._history.records)} records but its reference file {self._ref_path} "
                "is missing, so movements cannot continue; pass resume=False to start a new history"
            )
        else:
            if self._history.resumed:  # a header without records: start again
                self._history = History(path, meta=meta, resume=False)
            start = time.perf_counter()
            with self._quiet():
                observation = self._observe()
                cheap = self._measure_cheap() if self._tiered else None
            self._reference = {"K0": observation.K, "theta0": observation.theta, "grams": observation.grams,
                               "pullback0": None if cheap is None else cheap.pullback}
            self._record_data_scope(None if data_size is not None else probe, *observation.outputs.shape)
            self._pending = (_state(model), observation, cheap, time.perf_counter() - start)
            if self._ref_path is not None:
                _ref.save_reference(self._ref_path, self._reference)
        self._previous_K: torch.Tensor | None = None
        self._spectrum: Spectrum | None = None
        self._previous_pullback: torch.Tensor | None = None
        #: The report of the last full record (its spectrum and alignment curve feed the sinks).
        self.last_report: AlignmentReport | None = None
        last = self._history.last_step
        self._next_step = 0 if last is None else last + 1
        self._bar = tqdm(desc="AlignmentTracker", unit="step", initial=self._next_step) if progress else None

    # ------------------------------------------------------------------------------------------
    @property
    def history(self) -> pd.DataFrame:
        """The records so far (those read on resume included), one row per record."""
        return self._history.frame()

    @property
    def last_step(self) -> int | None:
        """Step of the last record, or ``None``: after a resume, continue training from here."""
        return self._history.last_step

    @property
    def gram(self) -> torch.Tensor | None:
        """The Gram ``K`` of the last record (compute dtype, model's device), or ``None`` before the first."""
        return self._previous_K

    @property
    def spectrum(self) -> Spectrum | None:
        """The float64 eigendecomposition of :attr:`gram` (its rank rule included), or ``None`` before the first."""
        return self._spectrum

    @staticmethod
    def load(path: str | os.PathLike[str]) -> pd.DataFrame:
        """Load the finished records of a history file (a torn last line is ignored)."""
        return load_history(path)

    def step(self, step: int | None = None) -> dict[str, Any] | None:
        """Advance to ``step`` and measure if it is due.

        ``step`` defaults to one after the previous call (after the last record when resuming); pass
        it explicitly when training restarts from a checkpoint.

        A step is due when ``step % every == 0`` and it is after the last record (so a resumed run
        that replays earlier steps records nothing twice).

        Returns
        -------
        dict or None
            The record, or ``None`` when nothing was measured.
        """
        current = self._next_step if step is None else int(step)
        self._next_step = current + 1
        if self._bar is not None:
            self._bar.update(max(0, self._next_step - self._bar.n))
        last = self.last_step
        if current % self.every or (last is not None and current <= last):
            return None
        return self.measure(current)

    def measure(self, step: int, *, full: bool | None = None) -> dict[str, Any]:
        """Measure now and append the record for ``step`` (which must follow the last record).

        With a cheap tier, the record is full when ``step`` is a multiple of ``every · full_every``, or when
        ``full=True`` (``full=False``: cheap); without one, every record is full.
        """
        step = int(step)
        if self.last_step is not None and step <= self.last_step:
            raise DiagnosticsError(f"step {step} is not after the last recorded step {self.last_step}")
        if full is None or not self._tiered:
            full = not self._tiered or step % (self.every * self.full_every) == 0
        start = time.perf_counter()
        observation, cheap, seconds = self._take_pending()
        with self._quiet():
            if self._tiered and cheap is None:
                cheap = self._measure_cheap()
            if full:
                record = self._full_record(step, observation or self._observe())
            else:
                record = cheap_record_columns(step, cheap, self.representation, self.loss, self.mode)
                record["param_movement"] = _ref.relative_distance(cheap.theta, self._reference["theta0"])
        record.update({"measure_seconds": seconds + time.perf_counter() - start, "wall_time": time.time()})
        if cheap is not None:
            record.update(tier_columns(cheap, full, self._previous_pullback, self._reference.get("pullback0")))
            self._previous_pullback = cheap.pullback
        self._history.append(record)
        if self._bar is not None:
            shown = {"residual": f"{record['residual']:.2e}"} if full else {"grad_norm": f"{record['grad_norm']:.3g}"}
            self._bar.set_postfix(loss=f"{record['loss']:.3g}", **shown, refresh=True)
        return dict(self._history.records[-1])

    def resume_at(self, step: int) -> None:
        """Continue the history from a checkpoint taken at ``step``: forget the records after it.

        A run restarted from an earlier checkpoint than its last record trains the later steps again; the
        records an interrupted run wrote after its checkpoint describe parameters that no longer exist, so
        they are removed from the history (and its file, atomically) and measured again as training reaches them.
        """
        if self._history.drop_after(int(step)):
            self._previous_K = self._previous_pullback = self._spectrum = None
        last = self.last_step
        self._next_step = 0 if last is None else last + 1

    @property
    def settings(self) -> dict[str, Any]:
        """Return the run's fixed settings from the history's header, as scalars (for loggers' hyper-parameters)."""
        keys = ("loss", "mode", "dtype", "n_params", "probe_size", "every", "full_every", "seed", "strategy",
                "residual_tol")
        meta = self._history.meta
        out = {k: meta[k] for k in keys if meta.get(k) is not None}
        out.update({f"tags/{k}": v for k, v in (meta.get("tags") or {}).items()})
        return out

    def _full_record(self, step: int, observation: Observation) -> dict[str, Any]:
        """Build the full record from an observation: its spectrum and every quantity of the alignment report."""
        outputs, K, theta, grams, targets, n_params, dtype = observation
        spectrum = Spectrum.of(K, source_dtype=dtype, rank_tol=self._rank_tol)
        optimizer = self._horizon[0] if self._horizon is not None else None
        groups = describe_groups(optimizer) if isinstance(optimizer, torch.optim.Optimizer) else None
        report = alignment_from_spectrum(
            outputs, targets, spectrum, n_params=n_params, source_dtype=dtype, residual_tol=self._residual_tol,
            horizon=self._horizon_at(step), horizon_optimizer=groups,
        )
        self.last_report = report
        ref = self._reference
        record = {"step": step, **report_columns(report)}
        record.update({
            "kernel_movement_init": _ref.relative_distance(K, ref["K0"]),
            "kernel_movement_prev": math.nan if self._previous_K is None
            else _ref.relative_distance(K, self._previous_K),
            "param_movement": _ref.relative_distance(theta, ref["theta0"]),
            "kernel_target_alignment": _ref.kernel_target_alignment(K, targets.Q),
        })
        for name in self.representation:
            record[f"cka_{name}"] = cka_from_grams(grams[name], ref["grams"][name])
        record.update(trailing_columns(report.n_samples, float((targets.Q**2).sum()), report.residual_tol, dtype,
                                       self.loss, self.mode))
        self._previous_K, self._spectrum = K, spectrum
        return record

    @property
    def _tiered(self) -> bool:
        return self._cheap is not None

    def _measure_cheap(self) -> CheapMeasurement:
        return self._cheap.measure(self.model)

    def _take_pending(self) -> tuple[Observation | None, CheapMeasurement | None, float]:
        """Return the reference's measurements if the model's parameters and buffers are those they were taken at.

        They serve the first record only; afterwards they are dropped.
        """
        pending, self._pending = self._pending, None
        if pending is None or not _same_state(pending[0], _state(self.model)):
            return None, None, 0.0
        return pending[1], pending[2], pending[3]

    def _record_data_scope(self, data: object, n: int, m: int) -> None:
        """Write the ``‖Q‖²`` of the larger data the ``n``-sample probe was drawn from into the header, if known."""
        size = self._history.meta.get("data_size")
        if size is None or size <= n:
            return
        norm = data_target_norm_sq(data, size, m, self.loss, self.target)
        if norm is not None:
            self._history.update_meta({"data_target_norm_sq": norm})

    def summary(self) -> str:
        """Describe the history so far in readable text (see :func:`summarize`)."""
        return summarize(self.history)

    def close(self) -> None:
        """Close the progress bar (records are already on disk)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> AlignmentTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    def _horizon_at(self, step: int) -> tuple[float, int] | None:
        """``(η, T − step)``: the step size now (read from the optimiser: schedules are followed), the steps left."""
        if self._horizon is None:
            return None
        lr, total = self._horizon
        if isinstance(lr, torch.optim.Optimizer):
            lr = float(lr.param_groups[0]["lr"])
        left = total - step
        return (float(lr), left) if left > 0 and lr > 0 else None

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Measure outside autocast and restore the random state afterwards.

        Under mixed precision (a training step inside ``torch.autocast``) the measurement still runs in
        its own dtype; a model that draws random numbers in its forward pass (noise layers) does not
        shift the training run's random stream.
        """
        device = next(self.model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with torch.autocast(device.type, enabled=False):
                yield

    def _observe(self) -> Observation:
        """Measure outputs, Gram, flat measured parameters and activation Grams at the current ``θ``."""
        with Measurement(self.model, self._x, **self._measure_args) as job:
            targets = Targets.build(self._y, job.n, job.m, self.loss, self.target)
            with capture_grams(job.fm.module, self.representation) as grams, torch.no_grad():
                outputs = job.fm(job.fm.params, job.x)
            K = job.gram()
            theta = job.fm.flatten(job.fm.params).detach().clone()
        return Observation(outputs, K, theta, grams, targets, job.fm.n_params, job.fm.dtype)


def _state(model: nn.Module) -> list[torch.Tensor]:
    """Return copies of the model's parameters and buffers (to tell whether it changed since)."""
    return [t.detach().clone() for t in (*model.parameters(), *model.buffers())]


def _same_state(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))
