"""The training of a width run by its recipe, one optimiser step at a time, and the coordinate check of its first steps.

:class:`Trainer` runs a :class:`~diagnostics.width.recipe.Recipe` on one model: :meth:`Trainer.step` draws the next
batch, computes the loss at the current parameters ``θ_k``, back-propagates, records ``‖∇L_k‖²`` (before any
clipping), clips, updates and steps the schedule; between two calls the model sits at ``θ_{k+1}``, where the
caller may measure it. With full-batch SGD this is gradient descent ``θ ← θ − η∇L`` on ``L = (1/2n)‖f_X − Y‖²``.
Time spent in the steps is counted in :attr:`Trainer.seconds` (the report sets it against the measurements).

:class:`CoordinateCheck` is the *coordinate check* of maximal-update parameterisation (Yang & Hu 2021): the mean
absolute output of every layer on the probe, and its change since step 0, at steps ``0…3``; its curves against
width are flat when a parameterisation keeps every layer's coordinates of order one. It runs one forward pass of
the probe in evaluation mode at each of those steps (the same inputs at every step, whatever the batches), and
leaves the model as it was.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..engine import inputs as _inputs
from .recipe import AMP_DTYPES, Recipe

__all__ = ["COORDINATE_STEPS", "CoordinateCheck", "Trainer", "evaluating"]

#: The coordinate check records steps ``0, …, COORDINATE_STEPS``.
COORDINATE_STEPS = 3


class Trainer:
    """Train ``model`` by ``recipe`` on ``batches``, one optimiser step per :meth:`step`.

    Parameters
    ----------
    model
        The model (trained in place).
    recipe
        The training.
    batches
        Training batches ``(x, y)`` on the model's device, without end (:meth:`StudyData.batches`).
    width
        The run's width (for an optimiser factory that scales with it).
    output
        The output selector (as :func:`diagnostics.jacobian`'s) of the training loss.

    Attributes
    ----------
    optimizer, scheduler
        As built by the recipe.
    seconds
        Wall time spent in :meth:`step` and :meth:`loss` so far.
    """

    def __init__(self, model: nn.Module, recipe: Recipe, batches: Iterator[tuple[Any, torch.Tensor]], width: int,
                 output: _inputs.OutputSelector = None) -> None:
        self.model, self.recipe, self.batches, self.output = model, recipe, batches, output
        self.optimizer = recipe.make_optimizer(model, width)
        self.scheduler = recipe.make_scheduler(self.optimizer)
        self.device = next(model.parameters()).device
        self.scaler = torch.amp.GradScaler(self.device.type) if recipe.amp == "fp16" else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.seconds = 0.0
        self.step_count = 0

    def step(self) -> tuple[float, float]:
        """Take one optimiser step from ``θ_k``; return ``(L_k, ‖∇L_k‖²)`` of its batch (``nan`` when unknown).

        Raises
        ------
        FloatingPointError
            The loss is not finite (training diverged).
        """
        start = time.perf_counter()
        batch = next(self.batches)
        if self.recipe.train_step is not None:
            loss, grad_sq = _value(self.recipe.train_step(self.model, batch, self.optimizer)), math.nan
            self._check(loss)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss_tensor = self._loss(batch)
            loss = _value(loss_tensor)
            self._check(loss)
            if self.scaler is not None:
                self.scaler.scale(loss_tensor).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss_tensor.backward()
            grads = [p.grad.detach().double().pow(2).sum() for p in self.params if p.grad is not None]
            grad_sq = float(torch.stack(grads).sum()) if grads else 0.0
            if self.recipe.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.recipe.clip_grad_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step_count += 1
        self.seconds += time.perf_counter() - start
        return loss, grad_sq

    def loss(self) -> float:
        """Return the training loss at the current parameters on the next batch, without a step.

        ``nan`` for a custom step.

        Raises
        ------
        FloatingPointError
            The loss is not finite.
        """
        if self.recipe.train_step is not None:
            return math.nan
        start = time.perf_counter()
        with torch.no_grad():
            loss = _value(self._loss(next(self.batches)))
        self._check(loss)
        self.seconds += time.perf_counter() - start
        return loss

    @property
    def learning_rate(self) -> float:
        """The current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def _loss(self, batch: tuple[Any, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        n = _inputs.batch_size(x)
        amp = AMP_DTYPES.get(self.recipe.amp)
        with torch.autocast(self.device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
            outputs = _inputs.select_output(_inputs.call(self.model, x), self.output, n)
            return self.recipe.loss_value(outputs, y)

    def _check(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {self.step_count} (loss {loss}) with learning rate "
                                     f"{self.learning_rate:g}")


def _value(loss: torch.Tensor | float) -> float:
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


class CoordinateCheck:
    """Mean ``|z|`` and mean ``|z_k − z_0|`` of every watched layer's output ``z`` on the probe at steps ``0…3``.

    Parameters
    ----------
    model
        The model being trained.
    x
        The probe inputs (on the model's device).
    layers
        Names of the modules to watch (``dict(model.named_modules())`` keys); a module that returns a tuple is
        read at its first tensor.

    Attributes
    ----------
    rows
        ``step``, ``layer``, ``mean_abs``, ``mean_abs_change`` (``nan`` when the output changed shape).
    """

    def __init__(self, model: nn.Module, x: _inputs.Inputs, layers: list[str]) -> None:
        self.model, self.x, self.layers = model, x, list(layers)
        self.rows: list[dict[str, float | int | str]] = []
        self._first: dict[str, torch.Tensor] = {}

    def measure(self, step: int) -> None:
        """Record the layer outputs at the model's current parameters as those of ``step`` (steps ``≤ 3`` only)."""
        if step > COORDINATE_STEPS:
            return
        modules = dict(self.model.named_modules())
        outputs: dict[str, torch.Tensor] = {}
        handles = [modules[name].register_forward_hook(_keep(outputs, name)) for name in self.layers]
        try:
            with evaluating(self.model):
                _inputs.call(self.model, self.x)
        finally:
            for handle in handles:
                handle.remove()
        for name in self.layers:
            if name not in outputs:
                continue
            z = outputs[name]
            first = self._first.setdefault(name, z)
            change = float((z - first).abs().mean()) if z.shape == first.shape else math.nan
            self.rows.append({"step": step, "layer": name, "mean_abs": float(z.abs().mean()),
                              "mean_abs_change": change})


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Run forward passes in evaluation mode without gradients, leaving the modes and the random state as they were."""
    modes = {m: m.training for m in model.modules()}
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def _keep(outputs: dict[str, torch.Tensor], name: str):
    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        tensor = _first_tensor(output)
        if tensor is not None and name not in outputs:
            outputs[name] = tensor.detach().double()

    return hook


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        return next((t for t in output if isinstance(t, torch.Tensor)), None)
    return None
