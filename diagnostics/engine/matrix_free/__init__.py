"""The Jacobian without forming it: products ``J v`` and ``Jᵀ u``, and the solvers built on them.

Above the dense engine (it measures with :mod:`~diagnostics.engine.jacobian` and the functional model) and
below the checks: :mod:`~diagnostics.engine.matrix_free.operator` (``JacobianOperator`` on tensors in memory),
:mod:`~diagnostics.engine.matrix_free.streamed` (a ``Dataset`` shard read batch by batch),
:mod:`~diagnostics.engine.matrix_free.sharded` (the shards of all processes as one ``J`` over
``torch.distributed``), :mod:`~diagnostics.engine.matrix_free.lsqr` (LSQR that checkpoints and resumes),
:mod:`~diagnostics.engine.matrix_free.spectrum` (``OperatorSpectrum``: D1's quantities by LSQR and Lanczos,
``theory/alignment.md#matrix-free``), and for a tall ``J`` the passes over per-sample Jacobian blocks
(:mod:`~diagnostics.engine.matrix_free.sketch`, :mod:`~diagnostics.engine.matrix_free.ritz`),
:mod:`~diagnostics.engine.matrix_free.certified` (LSQR on a preconditioned problem, bounded from both sides at any
iterate) and :mod:`~diagnostics.engine.matrix_free.preconditioned` (``PreconditionedSpectrum``: LSQR preconditioned
by the exact or sketched ``JᵀJ``, ``theory/alignment.md#preconditioned``).
"""

from .operator import JacobianOperator
from .preconditioned import PreconditionedSpectrum
from .spectrum import OperatorSpectrum

__all__ = ["JacobianOperator", "OperatorSpectrum", "PreconditionedSpectrum"]
