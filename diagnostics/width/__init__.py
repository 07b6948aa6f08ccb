"""Width studies (theory/width.md): a model family trained over widths and seeds, measured, and reported.

:func:`study` trains any family (a factory ``width → nn.Module``) by any recipe and returns a :class:`Study` (its
tidy ``history``, its ``runs``, its figures, :meth:`Study.report`); :func:`from_runs` builds the same study from the
tagged tracker histories of runs trained elsewhere; ``python -m diagnostics width-report`` does either from the
command line, or the project's own sweep of its bundled families.
"""

from .histories import from_runs
from .plan import Family
from .recipe import Recipe, optimizer_factory
from .study import Study, study

__all__ = ["Family", "Recipe", "Study", "from_runs", "optimizer_factory", "study"]
