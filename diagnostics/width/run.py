"""One run of a width study: build the model, train it by its recipe, measure it along the way, judge what applies.

A run is a :class:`~diagnostics.width.plan.RunSpec` ``(family, parameterization, width, seed)``: the family's model
built under the seed (:meth:`~diagnostics.width.plan.Family.model`), trained by the family's
:class:`~diagnostics.width.recipe.Recipe` for ``T`` optimiser steps (:class:`~diagnostics.width.training.Trainer`),
and measured on the study's fixed probe of ``n`` samples (``n·m`` is the counting threshold of S1). What is kept:

- ``records``: an :class:`~diagnostics.tracking.AlignmentTracker` record (D1, (I2), (I3)/(I4), certificate ``B``,
  ``‖ν‖``, kernel and parameter movement; the horizon residual of the remaining steps when the recipe is plain
  full-batch gradient descent) at the log-spaced steps of :func:`~diagnostics.width.plan.record_steps`, each with
  the kernel velocity and the distance to the end kernel (:func:`~diagnostics.width.kernels.kernel_path`);
- ``trajectory``: the training loss and ``‖∇L‖²`` of every step's batch and, where it applies, the gradient-descent
  rate bound ``L_0/(1 + 4L_0τ_k/B̄²)`` of :func:`theory.gradient_descent_rate`;
- ``coordinates``: the coordinate check of steps 0–3 (:class:`~diagnostics.width.training.CoordinateCheck`);
- ``layers``: per-layer alignment at the start and the end (:func:`~diagnostics.width.kernels.layer_alignment`);
- ``summary``: final and initial values, the loss predictors, the rate verdict, the test metrics, whether each
  statement about gradient descent applies and why not, the step ratios ``ηλ_max/n`` of ``K_0`` and ``K_T`` with
  their unstable parts (``<init|final>_unstable_directions``, ``_unstable_share``: the directions with ``ηλ/n > 2``
  and their share of ``‖Q‖²``, :func:`theory.unstable_part`), and the time spent training against the time spent
  measuring.

What applies (``theory/recipe.md``). Each statement about gradient descent — the horizon floors of ``K_0`` and
``K_T`` for the run's ``(η, T)``, the loss of the dynamics linearised at ``K_0``, the rate bound — is computed only
where the premises of :func:`~diagnostics.width.recipe.recipe_premises` hold for the run's recipe (the first three
need plain full-batch gradient descent on the squared loss, the linearised loss a stable step as well, while a
horizon floor speaks of the slow directions at any step and its unstable part is named; the rate bound, full-batch
losses and gradients of the squared loss under any update rule); otherwise its value is ``None`` (the rate verdict
*not applicable*), and ``<statement>_applies`` / ``<statement>_reason`` say so and why.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import torch

from theory.verdict import not_applicable
from theory.verdicts import gradient_descent_rate

from ..alignment_spectrum import unstable_directions
from ..engine import inputs as _inputs
from ..engine.precision import verdict_dtype
from ..engine.spectral import Spectrum
from ..targets import Targets
from ..tracking import AlignmentTracker
from ..tracking.meta import describe_optimizer
from .batches import StudyData
from .kernels import horizon_floor, kernel_path, layer_alignment, layer_groups, linearised_loss
from .plan import Plan, RunSpec, record_steps
from .recipe import GD_STATEMENTS, Recipe, applies, premise_reasons, recipe_premises
from .training import CoordinateCheck, Trainer, evaluating

__all__ = ["RATE_RTOL", "run_one"]

#: Relative tolerance of the rate verdict: the training losses are float32 forward passes, whose round-off
#: (about ``100·eps``) must not count as a rise of the loss nor as a violation of the bound.
RATE_RTOL = 1e-5
#: Samples per forward pass of the test metrics.
_CHUNK = 512

_FINAL = (
    "loss", "loss_lower_bound", "residual", "aligned", "d1_status", "rank", "bound_ratio", "certificate", "nu_norm",
    "grad_norm", "kernel_movement_init", "param_movement", "effective_rank", "decomposition_gap", "lambda_max",
    "kernel_target_alignment",
)
_INITIAL = ("loss", "residual", "rank", "lambda_max", "certificate", "nu_norm", "horizon_residual",
            "horizon_loss_floor", "kernel_target_alignment")


def run_one(plan: Plan, spec: RunSpec, data: StudyData) -> dict[str, Any]:
    """Train one model and measure it.

    Returns ``{"summary", "records", "trajectory", "coordinates", "layers", "optimizer"}``. On the CPU it uses one
    ``torch`` thread (restored afterwards), so the numbers do not depend on the executor; the global random state
    is restored too. Raises if the training diverges (non-finite loss) or a measurement
    fails.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    device = torch.device(plan.device or "cpu")
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return _run(plan, spec, data, device)
    finally:
        torch.set_num_threads(threads)


class _Clock:
    """Seconds spent in the ``with clock:`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


def _run(plan: Plan, spec: RunSpec, data: StudyData, device: torch.device) -> dict[str, Any]:
    start, cpu, measuring = time.perf_counter(), time.process_time(), _Clock()
    family = plan.family(spec)
    recipe = family.recipe
    model = family.model(spec.width, spec.seed).to(device)
    torch.manual_seed(spec.seed)  # what the training draws (dropout) follows the seed too
    X, T = data.probe
    n = data.n_probe
    trainer = Trainer(model, recipe, data.batches(recipe.batch_size, spec.seed, device), spec.width, plan.output)
    optimizer, lr, steps = describe_optimizer(trainer.optimizer), trainer.learning_rate, recipe.steps
    dtype = getattr(torch, plan.dtype) if plan.dtype else verdict_dtype(model)
    groups = layer_groups(model)
    with measuring():
        f0 = _outputs(model, _inputs.to(X, device, next(model.parameters()).dtype), plan.output)
        targets = Targets.build(T, n, f0.shape[1], recipe.measure_loss)
        plain = applies(_premises("horizon", optimizer, recipe, data))  # known before training
        tracker = AlignmentTracker(model, (X, T), every=1, loss=recipe.measure_loss, probe_size=None, dtype=dtype,
                                   output=plan.output, horizon=(trainer.optimizer, steps) if plain else None,
                                   optimizer=trainer.optimizer, tags=spec.to_dict(), data_size=data.n_train)
        coordinates = CoordinateCheck(model, _inputs.to(X, device, next(model.parameters()).dtype), list(groups))
    schedule, grams, losses, grads = set(record_steps(steps, plan.records)), [], [], []
    initial: Spectrum | None = None  # the tracker's decomposition of K_0, kept
    # the tracker's K at the first and last records is the sum of the layers' Grams: one of them comes from it
    shares_gram = {k for names in groups.values() for k in names} == {
        k for k, p in model.named_parameters() if p.requires_grad}
    layers = []
    for step in range(steps + 1):
        with measuring():
            if step in schedule:
                tracker.measure(step)
                grams.append(tracker.gram.to("cpu", torch.float64))
                initial = tracker.spectrum if initial is None else initial
            for stage in [stage for stage, at in (("start", 0), ("end", steps)) if at == step]:
                total = tracker.gram if shares_gram else None
                layers += [{"stage": stage, **row} for row in layer_alignment(
                    model, X, targets.Q, dtype, groups, plan.output, total=total)]
            coordinates.measure(step)
        if step == steps:
            losses.append(trainer.loss())
            break
        loss, grad_sq = trainer.step()
        losses.append(loss)
        grads.append(grad_sq)
    with measuring():
        history = tracker.history
        history = history.merge(kernel_path(history, grams), on="step")
        final = tracker.spectrum  # the tracker's decomposition of K_T
        del grams
        kernels = {"horizon": initial, "linearised": initial, "final_horizon": final, "rate": None}
        premises = {s: _premises(s, optimizer, recipe, data, lr, kernels[s], n) for s in GD_STATEMENTS}
        gd = _gradient_descent(premises, history, initial, final, f0.double() - targets.Y.to(f0.device), targets,
                               lr, steps, n, losses, grads)
        metrics = _metrics(model, data, recipe.measure_loss, plan.output, device)
    summary = {
        **spec.to_dict(),
        "run_id": spec.run_id,
        "lr": lr,
        "steps": steps,
        "batch_size": recipe.batch_size,
        "loss_name": recipe.loss_name,
        "measure_loss": recipe.measure_loss,
        "optimizer": optimizer["name"],
        "n_params": int(history["n_params"].iloc[-1]),
        "n_outputs": int(history["n_outputs"].iloc[-1]),
        "n_probe": n,
        "n_train": data.n_train,
        "s4_expect": family.expect,
        **{f"final_{k}": _plain(history[k].iloc[-1]) for k in _FINAL},
        **{f"init_{k}": _plain(history[k].iloc[0]) for k in _INITIAL},
        "certificate_bar": float(history["certificate"].max()),
        **gd["summary"],
        **metrics,
        "train_seconds": trainer.seconds,
        "measure_seconds": measuring.seconds,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
    }
    summary["underparameterised"] = summary["n_params"] < summary["n_outputs"]
    trajectory = {"loss": losses, "grad_norm_sq": grads, "rate_bound": gd["bounds"]}
    return {"summary": summary, "records": history.to_dict("records"), "trajectory": trajectory,
            "coordinates": coordinates.rows, "layers": layers, "optimizer": optimizer}


def _premises(statement: str, optimizer: dict[str, Any] | None, recipe: Recipe, data: StudyData,
              lr: float | None = None, kernel: Spectrum | None = None, n: int | None = None) -> tuple:
    """Return the premises of a statement about gradient descent for this run (before training: no stable step)."""
    scheduler = recipe.scheduler if isinstance(recipe.scheduler, str) or recipe.scheduler is None else getattr(
        recipe.scheduler, "__qualname__", "custom")
    return recipe_premises(statement, optimizer, loss=recipe.loss_name, full_batch=data.full_batch(recipe.batch_size),
                           batches=data.batches_text(recipe.batch_size), custom_step=recipe.train_step is not None,
                           scheduler=scheduler, clip_grad_norm=recipe.clip_grad_norm, step_size=lr,
                           lambda_max=None if kernel is None else float(kernel.eigenvalues[0]), n=n)


def _gradient_descent(premises: dict[str, tuple], history: pd.DataFrame, initial: Spectrum, final: Spectrum,
                      residual0: torch.Tensor, targets: Targets, lr: float, steps: int, n: int, losses: list[float],
                      grads: list[float]) -> dict[str, Any]:
    """Judge the statements about gradient descent: each computed where its premises hold, else *not applicable*."""
    ok = {s: applies(p) for s, p in premises.items()}
    fields: dict[str, Any] = {f"{s}_applies": ok[s] for s in GD_STATEMENTS}
    fields.update({f"{s}_reason": premise_reasons(premises[s]) for s in GD_STATEMENTS})
    for when, kernel in (("init", initial), ("final", final)):  # what a horizon floor of the kernel leaves out
        part = unstable_directions(kernel, targets.Q, lr, n) if ok["horizon"] else None
        fields.update({f"{when}_step_ratio": part.step_ratio if part else None,
                       f"{when}_unstable_directions": part.directions if part else None,
                       f"{when}_unstable_share": part.share if part else None})
    fields.update({
        "linearised_loss": linearised_loss(initial, residual0, lr, steps, n) if ok["linearised"] else None,
        "final_horizon_floor": horizon_floor(final, targets.Q, lr, steps, n) if ok["final_horizon"] else None,
    })
    if not ok["horizon"]:
        fields.update(init_horizon_residual=None, init_horizon_loss_floor=None)
    if not ok["rate"]:
        rate = not_applicable("I3.gd", "gradient-descent rate", losses[-1], math.nan, {}, "L_k",
                              "L_0/(1+4L_0τ_k/B̄²)", premises["rate"])
        fields.update({"rate_status": rate.status, "rate_bound": None, "rate_rising_steps": None, "rate_c": None,
                       "rate_c_bound": None, "rate_largest_rise": None})
        return {"summary": fields, "bounds": [math.nan] * len(losses)}
    rate = gradient_descent_rate(lr, losses, grads, history["certificate"], _over_records(history["d1_status"]),
                                 cms=_data_level(history), rtol=RATE_RTOL, recipe=premises["rate"])
    fields.update({
        "rate_status": rate.status,
        "rate_bound": float(rate.details["bounds"][-1]) if rate.applicable else None,
        "rate_rising_steps": rate.details["rising_steps"],
        "rate_c": rate.details["c"],
        "rate_c_bound": float(rate.details["c_bounds"][-1]) if rate.details["c_bounds"] is not None else None,
        "rate_largest_rise": rate.details["largest_rise"],
    })
    return {"summary": fields, "bounds": rate.details["bounds"].tolist()}


def _over_records(statuses: pd.Series) -> str:
    """Return a condition over the records: *refuted* at one, *holds* at all, else *not established* (undecided)."""
    words = set(statuses)
    if "refuted" in words:
        return "refuted"
    return "holds" if words == {"holds"} else "not established"


def _data_level(history: pd.DataFrame) -> str | bool:
    """Return ``f_X ∈ Col J`` over the records (histories before ``data_level_status``: ``output_residual ≤ tol``)."""
    if "data_level_status" in history:
        return _over_records(history["data_level_status"])
    return bool((history["output_residual"] <= history["residual_tol"]).all())


def _outputs(model: torch.nn.Module, x: _inputs.Inputs, output: _inputs.OutputSelector) -> torch.Tensor:
    """Return the model's ``(n, m)`` outputs in evaluation mode, without gradients, :data:`_CHUNK` samples at once."""
    n = _inputs.batch_size(x)
    parts = []
    with evaluating(model):
        for start in range(0, n, _CHUNK):
            chunk = _inputs.take(x, slice(start, start + _CHUNK))
            parts.append(_inputs.select_output(_inputs.call(model, chunk), output, _inputs.batch_size(chunk)))
    return torch.cat(parts)


def _metrics(model: torch.nn.Module, data: StudyData, loss: str, output: _inputs.OutputSelector,
             device: torch.device) -> dict[str, float]:
    """Accuracy (class-index or one-hot targets) and loss on the probe (``train_``) and the test split (``test_``)."""
    dtype = next(model.parameters()).dtype
    out = {}
    for split, pair in (("train", data.probe), ("test", data.test)):
        if pair is None:
            continue
        x, y = pair
        f = _outputs(model, _inputs.to(x, device, dtype), output).double().cpu()
        targets = Targets.build(y, f.shape[0], f.shape[1], loss)
        if targets.labels is not None:
            out[f"{split}_accuracy"] = float((f.argmax(1) == targets.labels).double().mean())
        out[f"{split}_loss"] = targets.loss_value(f)
    return out


def _plain(value: Any) -> Any:
    """Numpy scalars to Python (JSON) scalars."""
    return value.item() if hasattr(value, "item") else value
