"""Full-batch gradient descent on the squared loss, and the coordinate check of its first steps.

:func:`gradient_descent` is the training of every width run and of ``--lr-sweep``; it stops at each step so
that the caller can measure ``θ_k`` before the update. :class:`LayerCapture` records, during the training
forward passes of the first steps, the mean absolute output of every layer and its change since step 0:
the *coordinate check* of maximal-update parameterisation (Yang & Hu 2021), whose curves against width are
flat when a parameterisation keeps every layer's coordinates of order one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["COORDINATE_STEPS", "LayerCapture", "gradient_descent"]

#: The coordinate check records steps ``0, …, COORDINATE_STEPS``.
COORDINATE_STEPS = 3


def gradient_descent(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, lr: float, steps: int,
                     capture: LayerCapture | None = None) -> Iterator[tuple[int, float, float]]:
    """Train ``model`` by ``θ ← θ − η∇L`` on ``L = (1/2n)‖f_X − Y‖²``, yielding at every step before its update.

    Yields ``(k, L_k, ‖∇L_k‖²)`` for ``k = 0, …, steps`` with the model at ``θ_k`` (the gradient of step
    ``steps`` is not computed: ``nan``). The caller may measure the model at each yield (it is not
    changed until the generator resumes) or stop early.

    Raises
    ------
    FloatingPointError
        The loss is not finite (training diverged).
    """
    n = X.shape[0]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    for step in range(steps + 1):
        optimizer.zero_grad(set_to_none=True)
        with capture.during(step) if capture is not None else contextlib.nullcontext():
            loss = 0.5 * ((model(X) - Y) ** 2).sum() / n
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {loss.item()}) with lr {lr:g}")
        if step == steps:
            yield step, loss.item(), float("nan")
            return
        loss.backward()
        grad_sq = sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None)
        yield step, loss.item(), grad_sq
        optimizer.step()


class LayerCapture:
    """Mean ``|z|`` and mean ``|z_k − z_0|`` of every layer's output ``z`` in the training forward of steps ``0…3``.

    Forward hooks on the given modules record only inside :meth:`during` (so measurements of the model in
    between are not seen) and are removed by :meth:`close` or on leaving the ``with`` block.

    Parameters
    ----------
    model
        The model being trained.
    layers
        Names of the modules to watch (``dict(model.named_modules())`` keys).
    """

    def __init__(self, model: nn.Module, layers: list[str]) -> None:
        modules = dict(model.named_modules())
        self.rows: list[dict[str, float | int | str]] = []
        self._first: dict[str, torch.Tensor] = {}
        self._step: int | None = None
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if self._step is None:
                return
            z = output.detach().double()
            first = self._first.setdefault(name, z)
            self.rows.append({"step": self._step, "layer": name, "mean_abs": float(z.abs().mean()),
                              "mean_abs_change": float((z - first).abs().mean())})

        return hook

    @contextlib.contextmanager
    def during(self, step: int) -> Iterator[None]:
        """Record the forward passes run inside this block as those of ``step`` (steps ``≤ 3`` only)."""
        self._step = step if step <= COORDINATE_STEPS else None
        try:
            yield
        finally:
            self._step = None
        if step >= COORDINATE_STEPS:
            self.close()

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> LayerCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
