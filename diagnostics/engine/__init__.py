"""The measurement engine: a user's model as a function of its parameters, and its Jacobian, Gram and spectrum.

Data flows one way through these modules: :mod:`~diagnostics.engine.inputs` normalises what users pass
in, :mod:`~diagnostics.engine.functional` turns the model into ``f(θ, X)``,
:mod:`~diagnostics.engine.measurement` computes Jacobian columns and the NTK Gram by a strategy
(per-layer :mod:`~diagnostics.engine.rules` on the structured path, tiles of :mod:`~diagnostics.engine.gram`;
``"auto"`` chosen by :mod:`~diagnostics.engine.auto` with the plans and cost model of
:mod:`~diagnostics.engine.choice`; its floating-point error estimated by :mod:`~diagnostics.engine.accuracy`),
:mod:`~diagnostics.engine.matrix_free.operator` offers ``J`` matrix-free, and :mod:`~diagnostics.engine.spectral` /
:mod:`~diagnostics.engine.matrix_free.spectrum` decompose ``K`` under the rules of
:mod:`~diagnostics.engine.precision`. :mod:`~diagnostics.engine.manifest` says what was measured;
:mod:`~diagnostics.engine.reference` is the slow, obviously correct autograd loop the tests trust.
"""

from .functional import FunctionalModel
from .jacobian import STRATEGIES, jacobian, ntk_gram
from .manifest import MeasurementManifest
from .matrix_free import JacobianOperator, OperatorSpectrum
from .measurement import Measurement
from .reference import reference_gram, reference_jacobian
from .spectral import Spectrum

__all__ = [
    "STRATEGIES",
    "FunctionalModel",
    "JacobianOperator",
    "Measurement",
    "MeasurementManifest",
    "OperatorSpectrum",
    "Spectrum",
    "jacobian",
    "ntk_gram",
    "reference_gram",
    "reference_jacobian",
]
