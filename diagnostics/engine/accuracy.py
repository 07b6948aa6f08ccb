r"""How accurate a measurement is: an estimate of its own floating-point error, stated in every manifest.

When the compute dtype is below float64, a few entries of ``K`` (rows of ``J`` for the matrix-free
path) are recomputed in float64 by the autograd loop of :mod:`~diagnostics.engine.reference` and
compared with what was measured: the difference includes every rounding on the way (forward pass,
derivatives, products). In float64 there is nothing more precise to compare with, and the estimate is
the a-priori bound of the products (``theory/alignment.md#numerics``),

.. math::

    |\hat K_{ij} - K_{ij}| \le \gamma_d \sqrt{K_{ii} K_{jj}}, \qquad \gamma_d \approx d\,\varepsilon,

which leaves out the rounding of the forward pass and its derivatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import inputs as _inputs
from .functional import FunctionalModel
from .precision import dtype_name, eps
from .reference import reference_jacobian

__all__ = ["ENTRIES", "ErrorEstimate", "gram_error", "jacobian_error"]

#: Rows recomputed in float64 (spread evenly over the rows of ``J``).
ENTRIES = 8


@dataclass(frozen=True)
class ErrorEstimate:
    """Estimated floating-point error of a measurement.

    Attributes
    ----------
    relative
        Largest error found (or bounded) in the entries compared, relative to the largest entry
        (``max|K|``, or ``max|J|`` for rows of ``J``).
    absolute
        The same in absolute terms (``None`` for a bound that is relative only).
    method
        How it was estimated, in words.
    """

    relative: float
    absolute: float | None
    method: str

    def __str__(self) -> str:
        absolute = f" ({self.absolute:.1e} absolute)" if self.absolute is not None else ""
        return f"≈ {self.relative:.1e} relative{absolute}: {self.method}"


def gram_error(fm: FunctionalModel, x: _inputs.Inputs, K: torch.Tensor, *, m: int, per_sample: bool
               ) -> ErrorEstimate:
    """Estimate the floating-point error of the Gram ``K`` measured with ``fm`` on the prepared inputs ``x``.

    Parameters
    ----------
    fm, x
        The functional model and inputs of the measurement.
    K
        The measured Gram.
    m
        Outputs per sample.
    per_sample
        Whether samples are independent (then only the samples of the recomputed rows are run).
    """
    scale = float(K.abs().max())
    if fm.dtype == torch.float64:
        bound = fm.n_params * eps(torch.float64) * float(K.diagonal().max())
        return ErrorEstimate(bound / scale if scale else 0.0, bound,
                             "a-priori bound d·eps·max K_ii of the float64 products (forward rounding not included)")
    rows = _spread(K.shape[0])
    J = _rows(fm, x, rows, m, per_sample, torch.float64)
    measured = K[rows][:, rows].to(torch.float64)
    absolute = float((measured - (J @ J.T).to(measured.device)).abs().max())
    return ErrorEstimate(absolute / scale if scale else 0.0, absolute,
                         f"{len(rows)}×{len(rows)} entries of K recomputed in float64 against {dtype_name(fm.dtype)}")


def jacobian_error(fm: FunctionalModel, x: _inputs.Inputs, *, m: int, per_sample: bool) -> ErrorEstimate:
    """Estimate the floating-point error of ``J``'s entries in ``fm``'s dtype (the matrix-free path's products)."""
    if fm.dtype == torch.float64:
        return ErrorEstimate(eps(torch.float64), None,
                             "float64: one rounding per derivative, eps (forward rounding not included)")
    n = _inputs.leaves(x)[0].shape[0]
    rows = _spread(n * m)
    exact = _rows(fm, x, rows, m, per_sample, torch.float64)
    measured = _rows(fm, x, rows, m, per_sample, fm.dtype).to(exact)
    absolute = float((measured - exact).abs().max())
    scale = float(exact.abs().max())
    return ErrorEstimate(absolute / scale if scale else 0.0, absolute,
                         f"{len(rows)} rows of J recomputed in float64 against {dtype_name(fm.dtype)}")


def _spread(count: int) -> list[int]:
    """Up to :data:`ENTRIES` indices spread evenly over ``range(count)``."""
    k = min(count, ENTRIES)
    return sorted({round(i * (count - 1) / max(k - 1, 1)) for i in range(k)})


def _rows(fm: FunctionalModel, x: _inputs.Inputs, rows: list[int], m: int, per_sample: bool, dtype: torch.dtype
          ) -> torch.Tensor:
    """Rows ``rows`` of ``J`` in ``dtype`` by the autograd loop; only their samples when samples are independent."""
    if per_sample:
        samples = sorted({r // m for r in rows})
        local = {s: i for i, s in enumerate(samples)}
        x = _inputs.take(x, torch.tensor(samples, device=_inputs.leaves(x)[0].device))
        rows = [local[r // m] * m + r % m for r in rows]
    return reference_jacobian(fm.module, x, params=list(fm.names), mode=fm.mode, output=fm.output, dtype=dtype,
                              rows=rows)
