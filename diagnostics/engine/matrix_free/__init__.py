"""The Jacobian without forming it: products ``J v`` and ``Jᵀ u``, and the solvers built on them.

Above the dense engine (it measures with :mod:`~diagnostics.engine.jacobian` and the functional model) and
below the checks: :mod:`~diagnostics.engine.matrix_free.operator` (``JacobianOperator`` on tensors in memory),
:mod:`~diagnostics.engine.matrix_free.streamed` (a ``Dataset`` shard read batch by batch),
:mod:`~diagnostics.engine.matrix_free.sharded` (the shards of all processes as one ``J`` over
``torch.distributed``), :mod:`~diagnostics.engine.matrix_free.lsqr` (LSQR that checkpoints and resumes) and
:mod:`~diagnostics.engine.matrix_free.spectrum` (``OperatorSpectrum``: D1's quantities by LSQR and Lanczos,
``theory/alignment.md#matrix-free``).
"""

from .operator import JacobianOperator
from .spectrum import OperatorSpectrum

__all__ = ["JacobianOperator", "OperatorSpectrum"]
