"""Jacobians and empirical NTK Grams of a model on a batch (theory/setup.md, theory/alignment.md#setup).

``J(θ) = ∂f_X(θ)/∂θ ∈ R^{nm×d}`` with rows sample-major (row ``i*m + c`` is ``∂f_c(x_i)/∂θ``) and
columns in ``named_parameters()`` order; ``K = J Jᵀ ∈ R^{nm×nm}``.

Strategies (``strategy=``), all exact and held to the dense reference by the tests:

``"structured"``
    For ``nn.Linear``, ``nn.Conv2d`` and eval-mode ``nn.BatchNorm1d/2d`` layers, derivatives come
    from the layer inputs ``A`` and the output cotangents ``G`` (one forward, ``m`` backward passes,
    no per-sample gradients through the network). For a linear layer on ``(n, d_in)`` inputs the
    Gram block is ``K_l = (A Aᵀ + 1) ⊗ 1_{m×m} ⊙ G Gᵀ`` and its per-sample gradients are never
    formed; for convolutions and sequence inputs each layer takes the cheaper of two exact forms
    (per-sample gradients, or pairs of positions; see
    :meth:`~diagnostics.engine.rules.LayerRule.gram_costs`). Layers it cannot
    cover exactly (shared or tied weights, reused modules, other layer types) go to ``"jacrev"``;
    a random-cotangent check against autograd guards every covered layer.
``"jacrev"``
    ``vmap(jacrev(f))`` over samples (per-sample, ``mode="eval"`` only).
``"vjp"``
    ``vmap`` of the whole-batch ``vjp`` over one-hot cotangents: the exact Jacobian of ``f_X(θ)``
    when samples interact (``mode="batch"``); also valid in eval mode.
``"auto"``
    Always works where one of the above does, and picks the fastest: ``"vjp"`` in batch mode or when
    the samples interact; otherwise, on a first call, ``"structured"`` untimed (``"jacrev"`` for a model
    without layers it covers), and after each measurement the other plans judged within a budget (at
    most 40% of the measurements' time: a bound from their products' FLOPs, timed slices, a run on the
    whole problem), so that later calls take the fastest plan timed; what it learns is kept per model
    structure and inputs' layout, in this process and in the user's cache folder for later ones
    (:mod:`~diagnostics.engine.choice_store`). When ``vmap`` cannot run the model over samples
    (recurrent layers, data-dependent control flow such as a padding mask) it falls back by itself to
    plans without it: the other parameters by ``vjp`` (``"structured+vjp"``, ``"vjp"``), over chunks of
    samples. The manifest says what it chose and why (:mod:`~diagnostics.engine.auto`).

Every strategy accumulates the Gram only on the tiles on and above its diagonal (about half the
FLOPs) and mirrors them, so ``K`` is exactly symmetric. Memory is estimated before allocating: the
Gram is accumulated parameter group by group (``J`` is never materialised whole unless it fits the
budget) and an oversized request raises
:class:`~diagnostics.errors.InsufficientMemoryError` saying how big it is and what to do.
"""

from __future__ import annotations

import torch
from torch import nn

from . import inputs as _inputs
from .functional import ParamSelector
from .measurement import STRATEGIES, Measurement

__all__ = ["STRATEGIES", "jacobian", "ntk_gram"]


def jacobian(
    model: nn.Module,
    inputs: object,
    *,
    params: ParamSelector = None,
    mode: str = "eval",
    output: _inputs.OutputSelector = None,
    dtype: torch.dtype | None = None,
    strategy: str = "auto",
    memory_budget: int | None = None,
) -> torch.Tensor:
    """Compute the Jacobian ``J = ∂f_X/∂θ`` of shape ``(n·m, d)``.

    Parameters
    ----------
    model
        Any ``nn.Module``; it is never modified.
    inputs
        A tensor, a tuple of tensors (positional arguments) or a dict of tensors (keyword
        arguments), batched along dimension 0; numpy arrays are accepted.
    params
        Parameter subset: ``None`` (the trainable ones, ``requires_grad=True``; all of them when none
        is), ``"all"``, names or module prefixes, or a predicate.
    mode
        ``"eval"`` (per-sample, running statistics) or ``"batch"`` (batch norm uses batch statistics).
    output
        Output selector for models that return a dict, tuple or object.
    dtype
        Compute dtype; ``torch.float64`` computes in double precision end to end. Default: the model's,
        at least float32 (half-precision models are measured in float32).
    strategy
        One of :data:`STRATEGIES`.
    memory_budget
        Bytes the computation may use; default half the available memory.

    Returns
    -------
    torch.Tensor
        ``J`` with row ``i*m + c`` equal to ``∂f_c(x_i, θ)/∂θ`` and columns in parameter order.

    Raises
    ------
    InsufficientMemoryError
        ``J`` cannot fit ``memory_budget`` (checked from a forward on one or two samples, before any
        forward on the whole batch).
    DiagnosticsError
        Bad inputs, a model the engine cannot differentiate exactly
        (:class:`~diagnostics.errors.UnsupportedModelError`, naming the module), or entries that
        overflow the compute dtype (advising ``dtype=torch.float64``).
    """
    with Measurement(model, inputs, params=params, mode=mode, output=output, dtype=dtype, strategy=strategy,
                     memory_budget=memory_budget, result="jacobian") as job:
        return job.jacobian_columns(job.fm.names)


def ntk_gram(
    model: nn.Module,
    inputs: object,
    *,
    params: ParamSelector = None,
    mode: str = "eval",
    output: _inputs.OutputSelector = None,
    dtype: torch.dtype | None = None,
    strategy: str = "auto",
    memory_budget: int | None = None,
) -> torch.Tensor:
    """Compute the empirical NTK Gram ``K = J Jᵀ`` of shape ``(n·m, n·m)``, symmetrised.

    Same arguments as :func:`jacobian`. ``J`` is never materialised whole: the Gram is accumulated
    over parameter groups that fit the memory budget, with exact per-layer blocks
    ``(A Aᵀ) ⊙ (G Gᵀ)`` for linear layers (theory/alignment.md#setup).
    """
    with Measurement(model, inputs, params=params, mode=mode, output=output, dtype=dtype, strategy=strategy,
                     memory_budget=memory_budget) as job:
        return job.gram()
