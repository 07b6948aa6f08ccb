"""Diagnostics for nonlinear representation learning (Kawaguchi, Zhang & Deng, 2022).

Measure tangent features, empirical NTK Grams and the paper's two conditions on your own model
and data:

>>> from diagnostics import check_alignment, check_cms          # doctest: +SKIP
>>> print(check_alignment(model, (X, y), loss="ce"))           # doctest: +SKIP

The layers, from the bottom up (``docs/ARCHITECTURE.md``): :mod:`diagnostics.engine` (inputs, the
functional model, Jacobians, Grams, operators, spectra), the checks :mod:`diagnostics.alignment` and
:mod:`diagnostics.cms`, :mod:`diagnostics.tracking` (during training), :mod:`diagnostics.aligned`
(training that keeps the alignment condition), :mod:`diagnostics.width` (width-scaling reports) and
:mod:`diagnostics.cli`. The mathematics and the verdict functions are in the package :mod:`theory`.
"""

from .aligned import AlignedTraining, GuaranteeReport, SwitchReport
from .alignment import AlignmentReport, alignment_from_gram, check_alignment
from .cms import CMSReport, check_cms
from .engine import (
    STRATEGIES,
    JacobianOperator,
    MeasurementManifest,
    Spectrum,
    jacobian,
    ntk_gram,
    reference_gram,
    reference_jacobian,
)
from .errors import DiagnosticsError, InsufficientMemoryError, UnsupportedModelError
from .targets import Targets
from .tracking import AlignmentTracker

__all__ = [
    "STRATEGIES",
    "AlignedTraining",
    "AlignmentReport",
    "AlignmentTracker",
    "CMSReport",
    "DiagnosticsError",
    "GuaranteeReport",
    "InsufficientMemoryError",
    "JacobianOperator",
    "MeasurementManifest",
    "Spectrum",
    "SwitchReport",
    "Targets",
    "UnsupportedModelError",
    "alignment_from_gram",
    "check_alignment",
    "check_cms",
    "jacobian",
    "ntk_gram",
    "reference_gram",
    "reference_jacobian",
]
__version__ = "0.1.0"
