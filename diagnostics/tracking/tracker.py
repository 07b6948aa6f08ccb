r"""Per-iteration tracking of the alignment quantities during training (THEORY §3–§5).

:class:`AlignmentTracker` attaches to any training loop with one call per step and, every
``every`` steps, measures on a fixed probe set everything :func:`~diagnostics.check_alignment`
reports (loss, ``‖∇L‖``, alignment residual, rank and spectrum, certificate ``B``, the (I3)/(I4)
bound ratio, the (I2) decomposition gap and loss floor) plus how far the representation has moved:

.. math::

    \Delta_K^{\mathrm{init}}(t) = \frac{\|K_t - K_0\|_F}{\|K_0\|_F}, \qquad
    \Delta_K^{\mathrm{prev}}(t) = \frac{\|K_t - K_{t'}\|_F}{\|K_{t'}\|_F}, \qquad
    \Delta_\theta(t) = \frac{\|\theta_t - \theta_0\|}{\|\theta_0\|},

(``t'`` the previous record; THEORY §5, S4) and, for chosen modules, the linear CKA between their
activations now and at the reference (:mod:`diagnostics.representation`).

Records go to a DataFrame (:attr:`AlignmentTracker.history`) and, with ``path=``, to an append-only
JSON-lines file that survives a crash and resumes (:mod:`diagnostics.history`).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..alignment import alignment_from_gram
from ..engine import inputs as _inputs
from ..engine.functional import FunctionalModel, ParamSelector
from ..engine.measurement import Measurement
from ..engine.precision import dtype_name, verdict_dtype
from ..errors import DiagnosticsError, renamed_argument
from ..representation import capture_grams, cka_from_grams
from ..store import write_torch
from ..targets import Targets
from .history import History, load_history
from .summary import summarize

__all__ = ["COLUMNS", "TRAILING", "AlignmentTracker"]

#: Columns of every record, in order (``cka_<module>`` columns follow ``param_movement``).
COLUMNS = (
    "step", "loss", "grad_norm", "residual", "aligned", "d1_status", "rank", "n_outputs", "n_params", "lambda_max",
    "lambda_min_kept", "effective_rank", "certificate", "nu_norm", "bound", "bound_ratio", "bound_truncation",
    "decomposition_gap", "output_residual", "loss_lower_bound", "target_loss", "horizon_residual",
    "horizon_loss_floor", "kernel_movement_init",
    "kernel_movement_prev", "param_movement",
)
#: Columns after the CKA columns: timing, then what makes a record self-describing for :mod:`.verify`.
TRAILING = ("measure_seconds", "wall_time", "n_samples", "target_norm_sq", "residual_tol", "loss_name", "dtype",
            "mode")


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
        ``"mse"`` (THEORY I2, I3) or ``"ce"`` (cross-entropy on logits, I4).
    params, mode, output, dtype, strategy
        As in :func:`diagnostics.jacobian`: the measured parameter subset, ``"eval"`` (running
        batch-norm statistics, per-sample Jacobians) or ``"batch"`` (the probe is one batch, as in
        training), the output selector, the compute dtype (default as in
        :func:`~diagnostics.check_alignment`: float64 on the CPU) and the Gram strategy.
    probe_size, seed
        Size and seed of the probe subset (``None``: all of ``probe``).
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
        ``horizon_residual``, and its loss floor ``horizon_loss_floor`` (``nan`` without a horizon).
    tol
        Former name of ``rank_tol`` (deprecated).

    Notes
    -----
    Memory: the tracker holds ``K_0`` and the previous record's ``K``, two ``nm × nm`` matrices in
    the compute dtype on the model's device (``n = probe_size``, ``m`` outputs; e.g. 210 MB each for
    ``n = 512``, ``m = 10`` in float64), plus one copy of the measured parameters (``θ_0``) and an
    ``n × n`` Gram per ``representation`` module. A record costs one Gram (the engine's
    ``ntk_gram``), one float64 eigen-decomposition of it and one extra forward pass.

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
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise DiagnosticsError(f"every must be a positive integer, got {every!r}")
        self.model = model
        self.every = every
        self.loss = loss
        self.mode = mode
        self.target = target
        if isinstance(representation, str):
            representation = [representation]
        self.representation = tuple(representation or ())
        dtype = dtype or verdict_dtype(model)
        self._measure_args = {"params": params, "mode": mode, "output": output, "dtype": dtype,
                              "strategy": strategy, "memory_budget": memory_budget}
        self._horizon = _check_tracker_horizon(horizon)
        self._rank_tol = renamed_argument(rank_tol, tol, "tol", "rank_tol")
        self._residual_tol = residual_tol
        self._x, self._y = _inputs.probe_data(probe, probe_size, seed)
        fm = FunctionalModel(model, params=params, mode=mode, output=output, dtype=dtype)  # validates early
        meta = {
            "loss": loss, "mode": mode, "dtype": dtype_name(fm.dtype), "params": list(fm.names),
            "n_params": fm.n_params, "representation": list(self.representation), "every": every,
            "probe_size": probe_size, "seed": seed, "strategy": strategy,
            "probe_sha256": _fingerprint(self._x, self._y, target), "created": time.time(),
        }
        self._ref_path = Path(f"{path}.ref.pt") if path is not None else None
        self._history = History(path, meta=meta, resume=resume)
        if self._history.resumed and self._ref_path.exists():
            _check_compatible(self._history.meta, meta, path)
            self._reference = _load_reference(self._ref_path, fm.device)
        elif self._history.resumed and self._history.records:
            raise DiagnosticsError(
                f"{path} holds {len(self._history.records)} records but its reference file {self._ref_path} "
                "is missing, so movements cannot continue; pass resume=False to start a new history"
            )
        else:
            if self._history.resumed:  # a header without records: start again
                self._history = History(path, meta=meta, resume=False)
            _, K, theta, grams, _ = self._observe()
            self._reference = {"K0": K, "theta0": theta, "grams": grams}
            if self._ref_path is not None:
                _save_reference(self._ref_path, self._reference)
        self._previous_K: torch.Tensor | None = None
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

    def measure(self, step: int) -> dict[str, Any]:
        """Measure now and append the record for ``step`` (which must follow the last record)."""
        step = int(step)
        if self.last_step is not None and step <= self.last_step:
            raise DiagnosticsError(f"step {step} is not after the last recorded step {self.last_step}")
        start = time.perf_counter()
        outputs, K, theta, grams, (targets, n_params, dtype) = self._observe()
        report = alignment_from_gram(
            outputs, targets, K, n_params=n_params, source_dtype=dtype, rank_tol=self._rank_tol,
            residual_tol=self._residual_tol, horizon=self._horizon_at(step),
        )
        ref = self._reference
        record: dict[str, Any] = {
            "step": step,
            "loss": report.loss,
            "grad_norm": report.grad_norm,
            "residual": report.residual,
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
            "loss_lower_bound": report.loss_lower_bound,
            "target_loss": report.target_loss,
            "horizon_residual": report.horizon_residual,
            "horizon_loss_floor": report.horizon_loss_floor,
            "kernel_movement_init": _relative_distance(K, ref["K0"]),
            "kernel_movement_prev": math.nan if self._previous_K is None
            else _relative_distance(K, self._previous_K),
            "param_movement": _relative_distance(theta, ref["theta0"]),
        }
        for name in self.representation:
            record[f"cka_{name}"] = cka_from_grams(grams[name], ref["grams"][name])
        record.update({
            "measure_seconds": time.perf_counter() - start,
            "wall_time": time.time(),
            "n_samples": report.n_samples,
            "target_norm_sq": float((targets.Q**2).sum()),
            "residual_tol": report.residual_tol,
            "loss_name": self.loss,
            "dtype": dtype_name(dtype),
            "mode": self.mode,
        })
        self._history.append(record)
        self._previous_K = K
        if self._bar is not None:
            self._bar.set_postfix(
                loss=f"{report.loss:.3g}", residual=f"{report.residual:.2e}",
                dK=f"{record['kernel_movement_init']:.2f}", refresh=True,
            )
        return dict(self._history.records[-1])

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

    def _observe(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict, tuple]:
        """Measure outputs, Gram, flat measured parameters and activation Grams at the current ``θ``.

        The random state is restored afterwards, so a model that draws random numbers in its forward
        pass (noise layers) does not shift the training run's random stream.
        """
        device = next(self.model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with Measurement(self.model, self._x, **self._measure_args) as job:
                targets = Targets.build(self._y, job.n, job.m, self.loss, self.target)
                with capture_grams(job.fm.module, self.representation) as grams, torch.no_grad():
                    outputs = job.fm(job.fm.params, job.x)
                K = job.gram()
                theta = job.fm.flatten(job.fm.params).detach().clone()
        return outputs, K, theta, grams, (targets, job.fm.n_params, job.fm.dtype)


def _relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Return ``‖a − b‖ / ‖b‖`` (Frobenius for matrices) in float64; ``nan`` when ``b = 0``."""
    a64, b64 = a.to(torch.float64), b.to(a.device, torch.float64)
    denom = float(b64.norm())
    return float((a64 - b64).norm()) / denom if denom > 0 else math.nan


def _fingerprint(x: _inputs.Inputs, y: torch.Tensor, target: object) -> str:
    """SHA-256 of the probe inputs, targets and alignment target, to refuse resuming on other data."""
    digest = hashlib.sha256()
    tensors = _inputs.leaves(x) + [y] + ([torch.as_tensor(target)] if target is not None else [])
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_compatible(old: dict, new: dict, path: object) -> None:
    keys = ("loss", "mode", "dtype", "params", "n_params", "representation", "probe_sha256")
    changed = [k for k in keys if old.get(k) != new.get(k)]
    if changed:
        detail = "; ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in changed if k != "params")
        raise DiagnosticsError(
            f"cannot resume {path}: it was recorded with different settings ({', '.join(changed)}"
            f"{'; ' + detail if detail else ''}); pass resume=False or another path"
        )


def _save_reference(path: Path, reference: dict) -> None:
    """Write the reference atomically: a temporary file, fsynced, then renamed over ``path``."""
    write_torch(path, {
        "K0": reference["K0"].cpu(), "theta0": reference["theta0"].cpu(),
        "grams": {k: v.cpu() for k, v in reference["grams"].items()},
    })


def _load_reference(path: Path, device: torch.device) -> dict:
    raw = torch.load(path, map_location=device, weights_only=True)
    return {"K0": raw["K0"], "theta0": raw["theta0"], "grams": dict(raw["grams"])}


def _check_tracker_horizon(horizon: object) -> tuple[float | torch.optim.Optimizer, int] | None:
    """Validate ``(learning rate or optimiser, total steps)``."""
    if horizon is None:
        return None
    try:
        lr, steps = horizon
    except (TypeError, ValueError) as exc:
        raise DiagnosticsError(
            f"horizon must be a pair (learning rate or optimiser, total steps), got {horizon!r}"
        ) from exc
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DiagnosticsError(f"the horizon's total steps must be a positive integer, got {steps!r}")
    numeric = isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
    if not (numeric or isinstance(lr, torch.optim.Optimizer)):
        raise DiagnosticsError(f"the horizon's learning rate must be a positive number or an optimiser, got {lr!r}")
    return lr, steps
