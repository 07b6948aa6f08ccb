"""The cheap tier of the tracker: a record from one forward and two reverse passes over the probe.

A full record forms the Gram ``K = JJᵀ`` (``nm × nm``) and decomposes it, which costs hundreds of training
steps. A cheap record costs about as much as one training step on a batch of the probe's size: one forward
pass over the probe and two reverse passes from it (``torch.func.vjp``, the same reverse mode the full
records use, so every model the full records measure is measured here too), in the model's own dtype. It
pulls back two output vectors, the loss gradient ``g = ∂L/∂f_X`` and the alignment target ``Q``
(theory/alignment.md#setup)::

    ∇L = Jᵀg,        p = JᵀQ ∈ R^d    (the target pulled back to parameter space),

and reads off, exactly (no sketch, no estimate):

- the loss and ``‖∇L‖`` on the probe, as the full record gives them;
- ``QᵀKQ / ‖Q‖² = ‖p‖² / ‖Q‖²``, the Rayleigh quotient of the kernel at the target: the rate at which
  gradient flow on the squared loss moves the outputs along ``Q`` (``d f/dt = −K(f − Y)``,
  theory/results.md); it grows as the kernel aligns with the target;
- how far the Jacobian has moved along the target, ``‖p_t − p_0‖ / ‖p_0‖`` since the reference and
  ``‖p_t − p_t'‖ / ‖p_t'‖`` since the previous record: ``p_t − p_0 = (J_t − J_0)ᵀQ``, so it is zero while
  training stays linear in its parameters along ``Q`` (lazy, theory/width.md#s4-lazy-versus-rich) and grows
  when the features that fit ``Q`` change.

A cheap record makes no statement about D1 (its ``d1_status`` is empty): whether ``Q`` lies in ``Col J``
needs the spectrum of ``K``, which only a full record has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..engine import inputs as _inputs
from ..engine.functional import FunctionalModel, ParamSelector
from ..errors import DiagnosticsError
from ..targets import Targets

__all__ = ["CheapMeasurement", "CheapTier"]


@dataclass(frozen=True)
class CheapMeasurement:
    """What one cheap pass measured (numbers as Python floats; vectors in the compute dtype, model's device).

    Attributes
    ----------
    loss, grad_norm
        ``L`` and ``‖∇L‖`` on the probe set.
    target_quotient
        ``QᵀKQ / ‖Q‖²``.
    pullback
        ``p = JᵀQ``, flattened (``d``).
    theta
        The measured parameters, flattened (for the parameter movement).
    n, m, n_params, target_norm_sq, dtype
        Probe size, outputs per sample, measured parameters, ``‖Q‖²`` and the compute dtype.
    """

    loss: float
    grad_norm: float
    target_quotient: float
    pullback: torch.Tensor
    theta: torch.Tensor
    n: int
    m: int
    n_params: int
    target_norm_sq: float
    dtype: torch.dtype


class CheapTier:
    """The cheap pass on a fixed probe: its targets and prepared inputs are made once, the passes at every record.

    Parameters
    ----------
    x, y
        The probe inputs and their labels.
    loss, target
        The loss (``"mse"`` or ``"ce"``) and the alignment target overriding the default, as in
        :class:`~diagnostics.targets.Targets`.
    params, mode, output, dtype
        As in :func:`diagnostics.jacobian`; ``dtype=None`` computes in the model's dtype (at least float32).
    """

    def __init__(self, x: _inputs.Inputs, y: torch.Tensor, *, loss: str, target: object = None,
                 params: ParamSelector = None, mode: str = "eval", output: _inputs.OutputSelector = None,
                 dtype: torch.dtype | None = None) -> None:
        self.x, self.y, self.loss, self.target = x, y, loss, target
        self.options = {"params": params, "mode": mode, "output": output, "dtype": dtype}
        self._prepared: tuple[torch.device, torch.dtype, _inputs.Inputs, int] | None = None
        self._targets: Targets | None = None

    def measure(self, model: nn.Module) -> CheapMeasurement:
        """One cheap pass at the model's current parameters (see the module docstring)."""
        fm = FunctionalModel(model, **self.options)
        if self._prepared is None or self._prepared[:2] != (fm.device, fm.dtype):
            self._prepared = (fm.device, fm.dtype, *fm.prepare(self.x))
        x, n = self._prepared[2:]
        theta = {k: v.detach().requires_grad_(True) for k, v in fm.params.items()}  # copies: the model is untouched
        with fm.measuring(), torch.enable_grad():
            outputs = fm(theta, x)
            f = outputs.detach()
            if not torch.isfinite(f).all():
                raise DiagnosticsError("the model's outputs contain NaN or inf on the probe")
            m = f.shape[1]
            if self._targets is None or self._targets.Q.shape != (n, m):
                self._targets = Targets.build(self.y, n, m, self.loss, self.target)
            targets, f64 = self._targets, f.to(torch.float64).cpu()
            gradient, pullback = (
                fm.flatten(dict(zip(theta, torch.autograd.grad(outputs, list(theta.values()), v.to(f),
                                                               retain_graph=True, allow_unused=True), strict=True)))
                for v in (targets.loss_gradient(f64), targets.Q))
        q_sq = float((targets.Q**2).sum())
        return CheapMeasurement(
            loss=targets.loss_value(f64),
            grad_norm=float(gradient.to(torch.float64).norm()),
            target_quotient=float(pullback.to(torch.float64).norm()) ** 2 / q_sq if q_sq > 0 else float("nan"),
            pullback=pullback,
            theta=fm.flatten(fm.params).detach().clone(),
            n=n, m=m, n_params=fm.n_params, target_norm_sq=q_sq, dtype=fm.dtype,
        )
