"""Diagnostics for nonlinear representation learning (Kawaguchi, Zhang & Deng, 2022).

Measure tangent features, empirical NTK Grams and the paper's two conditions on your own model
and data:

>>> from diagnostics import check_alignment, check_cms          # doctest: +SKIP
>>> print(check_alignment(model, (X, y), loss="ce"))           # doctest: +SKIP
"""

from .alignment import AlignmentReport, alignment_from_gram, check_alignment
from .cms import CMSReport, check_cms
from .errors import DiagnosticsError, InsufficientMemoryError, UnsupportedModelError
from .jacobian import STRATEGIES, jacobian, ntk_gram
from .manifest import MeasurementManifest
from .spectral import Spectrum
from .targets import Targets

__all__ = [
    "AlignmentReport",
    "CMSReport",
    "DiagnosticsError",
    "InsufficientMemoryError",
    "MeasurementManifest",
    "STRATEGIES",
    "Spectrum",
    "Targets",
    "UnsupportedModelError",
    "alignment_from_gram",
    "check_alignment",
    "check_cms",
    "jacobian",
    "ntk_gram",
]
__version__ = "0.1.0"
