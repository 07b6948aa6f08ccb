"""One run of a width sweep: train a model, measure it along the way, and judge its rate.

A run is a ``(family, parameterization, width, seed)``: a model built by
:func:`~diagnostics.width.config.build_run_model`, trained by full-batch gradient descent on
``L = (1/2n)‖f_X − Y‖²`` (one-hot ``Y`` for classes) with step ``η`` for ``T`` steps
(:meth:`~diagnostics.width.config.SweepConfig.step_size`, :meth:`~diagnostics.width.config.SweepConfig.steps_for`).
The probe is the *whole training set*, so the tracked loss is the training loss and the counting threshold
of S1 is ``d = n·m`` with ``n = n_train``. What is kept:

- ``records``: an :class:`~diagnostics.tracking.AlignmentTracker` record (D1, (I2), (I3), certificate ``B``,
  ``‖ν‖``, the horizon residual of the remaining steps, kernel and parameter movement) at the log-spaced
  steps of :func:`~diagnostics.width.config.record_steps`, each with the kernel–target alignment, the kernel
  velocity and the distance to the end kernel (:func:`~diagnostics.width.kernels.kernel_path`);
- ``trajectory``: the training loss and ``‖∇L‖²`` at every step and the gradient-descent rate bound
  ``L_0/(1 + 4L_0τ_k/B̄²)`` of :func:`theory.gradient_descent_rate`;
- ``coordinates``: the coordinate check of steps 0–3 (:class:`~diagnostics.width.training.LayerCapture`);
- ``layers``: per-layer alignment at the start and the end (:func:`~diagnostics.width.kernels.layer_alignment`);
- ``summary``: final and initial values, the loss predictors (the exact (I2) floor, the horizon floors of the
  initial and final kernels for the run's own ``(η, T)``, the loss of the dynamics linearised at ``K_0``, the rate
  bound), the rate verdict and the test metrics.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch

from theory.verdicts import gradient_descent_rate

from ..data import DataSplit
from ..engine.precision import verdict_dtype
from ..engine.spectral import Spectrum
from ..targets import Targets
from ..tracking import AlignmentTracker
from .config import RunSpec, SweepConfig, build_run_model, record_steps
from .kernels import horizon_floor, kernel_path, layer_alignment, layer_groups, linearised_loss
from .training import LayerCapture, gradient_descent

__all__ = ["RATE_RTOL", "run_one"]

#: Relative tolerance of the rate verdict: the training losses are float32 forward passes, whose round-off
#: (about ``100·eps``) must not count as a rise of the loss nor as a violation of the bound.
RATE_RTOL = 1e-5

_FINAL = (
    "loss", "loss_lower_bound", "residual", "aligned", "d1_status", "rank", "bound_ratio", "certificate", "nu_norm",
    "grad_norm", "kernel_movement_init", "param_movement", "effective_rank", "decomposition_gap", "lambda_max",
    "kernel_target_alignment",
)
_INITIAL = ("loss", "residual", "rank", "lambda_max", "certificate", "nu_norm", "horizon_residual",
            "horizon_loss_floor", "kernel_target_alignment")


def run_one(config: SweepConfig, spec: RunSpec, data: DataSplit) -> dict[str, Any]:
    """Train one model and measure it; return ``{"summary", "records", "trajectory", "coordinates", "layers"}``.

    Uses one ``torch`` thread (restored afterwards), so the numbers do not depend on the executor.
    Raises if the training diverges (non-finite loss) or a measurement fails.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(config, spec, data)
    finally:
        torch.set_num_threads(threads)


def _run(config: SweepConfig, spec: RunSpec, data: DataSplit) -> dict[str, Any]:
    start = time.perf_counter()
    model = build_run_model(spec.family, spec.width, data, spec.parameterization, spec.seed, config.mlp_depth)
    X, T = data.X_train, data.y_train
    n = X.shape[0]
    targets = Targets.build(T, n, data.n_outputs, "mse")
    Y = targets.Y.to(X.dtype)
    lr, steps = config.step_size(spec), config.steps_for(spec.family, spec.parameterization)
    dtype = getattr(torch, config.dtype) if config.dtype else verdict_dtype(model)
    groups = layer_groups(model)
    layers = [{"stage": "start", **row} for row in layer_alignment(model, X, targets.Q, dtype, groups)]
    with torch.no_grad():
        residual0 = model(X).double() - targets.Y
    tracker = AlignmentTracker(model, (X, T), every=1, loss="mse", probe_size=None, dtype=dtype,
                               horizon=(lr, steps))
    schedule, grams, losses, grads = set(record_steps(steps, config.records)), [], [], []
    with LayerCapture(model, list(groups)) as capture:
        for step, loss, grad_sq in gradient_descent(model, X, Y, lr, steps, capture):
            losses.append(loss)
            if step < steps:
                grads.append(grad_sq)
            if step in schedule:
                tracker.measure(step)
                grams.append(tracker.gram.to("cpu", torch.float64))
    history = tracker.history
    kernels = pd.DataFrame(kernel_path(history["step"].tolist(), grams, targets.Q))
    history = history.merge(kernels, on="step")
    layers += [{"stage": "end", **row} for row in layer_alignment(model, X, targets.Q, dtype, groups)]
    rate = gradient_descent_rate(lr, losses, grads, history["certificate"], _over_records(history["d1_status"]),
                                 cms=_over_records(history["data_level_status"]), rtol=RATE_RTOL)
    initial = Spectrum.of(grams[0], source_dtype=dtype)
    final = Spectrum.of(grams[-1], source_dtype=dtype)
    del grams
    summary = {
        **spec.to_dict(),
        "run_id": spec.run_id,
        "lr": lr,
        "steps": steps,
        "n_params": int(history["n_params"].iloc[-1]),
        "n_outputs": int(history["n_outputs"].iloc[-1]),
        **{f"final_{k}": _plain(history[k].iloc[-1]) for k in _FINAL},
        **{f"init_{k}": _plain(history[k].iloc[0]) for k in _INITIAL},
        "certificate_bar": float(history["certificate"].max()),
        "linearised_loss": linearised_loss(initial, residual0, lr, steps, n),
        "final_horizon_floor": horizon_floor(final, targets.Q, lr, steps, n),
        "rate_status": rate.status,
        "rate_bound": float(rate.details["bounds"][-1]) if rate.applicable else None,
        "rate_rising_steps": rate.details["rising_steps"],
        "rate_c": rate.details["c"],
        "rate_c_bound": float(rate.details["c_bounds"][-1]) if rate.details["c_bounds"] is not None else None,
        "rate_largest_rise": rate.details["largest_rise"],
        **_test_metrics(model, data),
        "seconds": time.perf_counter() - start,
    }
    summary["underparameterised"] = summary["n_params"] < summary["n_outputs"]
    trajectory = {"loss": losses, "grad_norm_sq": grads, "rate_bound": rate.details["bounds"].tolist()}
    return {"summary": summary, "records": history.to_dict("records"), "trajectory": trajectory,
            "coordinates": capture.rows, "layers": layers}


def _over_records(statuses: pd.Series) -> str:
    """Return a condition over the records: *refuted* at one, *holds* at all, else *not established* (undecided)."""
    words = set(statuses)
    if "refuted" in words:
        return "refuted"
    return "holds" if words == {"holds"} else "not established"


def _test_metrics(model: torch.nn.Module, data: DataSplit) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = {}
        for split, X, y in (("train", data.X_train, data.y_train), ("test", data.X_test, data.y_test)):
            f = model(X)
            if data.task == "classification":
                out[f"{split}_accuracy"] = float((f.argmax(1) == y).double().mean())
                y = torch.nn.functional.one_hot(y, data.n_outputs).to(f.dtype)
            out[f"{split}_loss"] = float(0.5 * ((f - y) ** 2).sum() / X.shape[0])
    model.train(was_training)
    return out


def _plain(value: Any) -> Any:
    """Numpy scalars to Python (JSON) scalars."""
    return value.item() if hasattr(value, "item") else value
