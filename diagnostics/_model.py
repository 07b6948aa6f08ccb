"""The model as a pure function of its parameters: ``f(θ, X) ∈ R^{n×m}`` (THEORY §1).

:class:`FunctionalModel` is the one place where a user's ``nn.Module`` is turned into something
``torch.func`` can transform. It copies parameters and buffers (the model is never touched), chooses
the measured parameter subset, and fixes the mode in which the model is evaluated:

``mode="eval"``
    every module in evaluation mode: batch norm uses its running statistics, dropout is off, and
    samples are independent, so per-sample Jacobians apply.
``mode="batch"``
    batch-norm layers normalise with the statistics of the measured batch, as in training; dropout
    stays off. Samples interact, so the Jacobian is that of the whole batch ``f_X(θ)``.

The modes are set only for the duration of a call and restored afterwards, together with the
TF32 switches, which are turned off while measuring.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Union

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from . import _inputs
from .errors import DiagnosticsError, UnsupportedModelError

ParamSelector = Union[None, Sequence[str], Callable[[str, torch.Tensor], bool]]
MODES = ("eval", "batch")


class FunctionalModel:
    """A frozen, functional view of ``model`` for measurement.

    Parameters
    ----------
    model
        Any ``nn.Module``.
    params
        Which parameters to differentiate: ``None`` (all), a sequence of parameter names or module
        prefixes (``"head"`` selects ``head.weight`` and ``head.bias``), or a predicate
        ``(name, tensor) -> bool``. The others are held fixed.
    mode
        ``"eval"`` or ``"batch"`` (see module docstring).
    output
        Selects the measured output when the model returns a dict/tuple/object: a key, an index
        or a callable.
    dtype
        Compute dtype (e.g. ``torch.float64`` for end-to-end double precision); default: the
        dtype of the model's parameters. The model itself is never cast.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        params: ParamSelector = None,
        mode: str = "eval",
        output: _inputs.OutputSelector = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise DiagnosticsError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if mode not in MODES:
            raise DiagnosticsError(f"mode must be one of {MODES}, got {mode!r}")
        named = dict(model.named_parameters())
        if not named:
            raise DiagnosticsError("the model has no parameters: there is no Jacobian to measure")
        first = next(iter(named.values()))
        self.device = first.device
        self.dtype = dtype or first.dtype
        if not self.dtype.is_floating_point:
            raise DiagnosticsError(f"dtype must be a floating dtype, got {self.dtype}")
        for name, p in named.items():
            if not torch.isfinite(p).all():
                raise DiagnosticsError(f"parameter {name!r} contains NaN or inf values")
        self.module = model
        self.mode = mode
        self.output = output
        self.names = _select(named, params)
        copies = {k: v.detach().to(self.dtype) for k, v in named.items()}
        self.params = {k: copies[k] for k in self.names}
        self.fixed = {k: v for k, v in copies.items() if k not in self.params}
        self.buffers = {
            k: v.detach().clone().to(self.dtype if v.is_floating_point() else v.dtype)
            for k, v in model.named_buffers()
        }
        self.shapes = {k: tuple(v.shape) for k, v in self.params.items()}
        self.n_params = sum(v.numel() for v in self.params.values())

    # ------------------------------------------------------------------------------------------
    def prepare(self, inputs: object) -> tuple[_inputs.Inputs, int]:
        """Validated inputs on the model's device in the compute dtype, and their batch size."""
        x = _inputs.normalise_inputs(inputs)
        n = _inputs.batch_size(x)
        return _inputs.to(x, self.device, self.dtype), n

    def __call__(self, params: dict[str, torch.Tensor], inputs: _inputs.Inputs) -> torch.Tensor:
        """``f(θ, X)`` as an ``(n, m)`` matrix; ``params`` may hold any subset of the measured ones."""
        state = {**self.fixed, **self.params, **params, **self.buffers}
        out = _inputs.call(lambda *a, **k: functional_call(self.module, state, a, k), inputs)
        n = _inputs.leaves(inputs)[0].shape[0]
        return _inputs.select_output(out, self.output, n)

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors (in ``self.names`` order) into one vector/matrix.

        Leading dimensions beyond the parameter shape are kept: a dict of ``(r, *shape)`` blocks
        becomes an ``(r, d)`` matrix.
        """
        parts = []
        for k in self.names:
            t = tensors[k]
            lead = t.shape[: t.ndim - len(self.shapes[k])]
            parts.append(t.reshape(*lead, -1))
        return torch.cat(parts, dim=-1)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a length-``d`` vector into per-parameter tensors."""
        if vector.shape != (self.n_params,):
            raise DiagnosticsError(f"expected a vector of length {self.n_params}, got {tuple(vector.shape)}")
        out, start = {}, 0
        for k in self.names:
            size = self.params[k].numel()
            out[k] = vector[start : start + size].reshape(self.shapes[k])
            start += size
        return out

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        """Set the measurement mode and TF32 off; restore both on exit, whatever happens."""
        flags = [(m, m.training) for m in self.module.modules()]
        norms = [(m, m.track_running_stats) for m in self.module.modules() if isinstance(m, _BatchNorm)]
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            self.module.eval()
            if self.mode == "batch":
                for m, _ in norms:  # batch statistics, and no running-statistics update
                    m.train()
                    m.track_running_stats = False
            yield
        except RuntimeError as exc:
            if "vmap" in str(exc) or "functorch" in str(exc) or "torch.func" in str(exc):
                raise UnsupportedModelError(
                    f"torch.func could not transform this model: {exc}. Operations with data-dependent "
                    "control flow, in-place updates of buffers, or .item() calls inside forward cannot be "
                    "differentiated per sample; try mode='batch' or strategy='vjp'."
                ) from exc
            raise
        finally:
            for m, training in flags:
                m.training = training
            for m, track in norms:
                m.track_running_stats = track
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _select(named: dict[str, torch.Tensor], params: ParamSelector) -> tuple[str, ...]:
    if params is None:
        names = list(named)
    elif callable(params):
        names = [k for k, v in named.items() if params(k, v)]
    else:
        if isinstance(params, str):
            params = [params]
        names = []
        for sel in params:
            hits = [k for k in named if k == sel or k.startswith(sel + ".")]
            if not hits:
                raise DiagnosticsError(
                    f"no parameter named or under {sel!r}; parameters are: {', '.join(named)}"
                )
            names.extend(h for h in hits if h not in names)
        names = [k for k in named if k in names]  # model order
    if not names:
        raise DiagnosticsError("the parameter selection is empty")
    return tuple(names)
