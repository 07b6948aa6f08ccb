"""What a measurement measured: parameters, mode, layers that couple samples, dropout, precision.

Every report carries a :class:`MeasurementManifest`, so a reader can tell exactly which function was
differentiated, with respect to which parameters, in which precision and under which tolerance rule
(theory/setup.md, theory/alignment.md#numerics)::

    report = check_alignment(model, (X, y))
    print(report.manifest)            # also printed at the end of print(report)
    report.manifest.to_dict()         # the same, as plain Python

The precision policy it states is the toolkit's, applied to every measurement:

- TF32 is off while measuring (CUDA matmul and cuDNN), the user's switches restored afterwards;
- the model is evaluated in the compute dtype (``dtype=``; ``torch.float64`` computes in double
  precision end to end, the model itself is never cast); integer inputs are kept;
- the Gram ``K`` is symmetrised, ``(K + Kᵀ)/2``, and decomposed in float64 (``torch.linalg.eigh``);
- the rank tolerance is ``rank_tol = λ_max · nm · eps(compute dtype)`` (numpy's ``matrix_rank`` rule on
  ``K``) unless the user gives one; the report prints the value and the rule that produced it;
- the smallest eigenvalue is reported, and a ``RuntimeWarning`` is raised when ``λ_min < −rank_tol``
  (``K`` not positive semi-definite beyond round-off).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from . import inputs as _inputs
from .accuracy import ErrorEstimate
from .functional import FunctionalModel
from .measurement import Measurement
from .precision import dtype_name

__all__ = ["LayerNote", "MATRIX_FREE_POLICY", "MeasurementManifest", "PRECONDITIONED_POLICY", "PRECISION_POLICY"]

#: The precision policy, stated in every report (see the module docstring).
PRECISION_POLICY = (
    "Gram symmetrised, (K + Kᵀ)/2, and decomposed in float64 (torch.linalg.eigh)",
    "rank: eigenvalues > rank_tol, default rank_tol = λ_max · nm · eps(compute dtype) (numpy matrix_rank "
    "rule on K); the report gives rank_tol and its rule",
    "smallest eigenvalue reported; RuntimeWarning when λ_min < −rank_tol (K not PSD beyond round-off)",
)

#: The same for the matrix-free path (strategy ``"jvp/vjp"``, :mod:`diagnostics.matrix_free`).
MATRIX_FREE_POLICY = (
    "K never formed: ν = J⁺Q by LSQR, the residual ‖Q − Jν‖, the top eigenpairs of K by Lanczos (scipy)",
    "rank rule applied as LSQR's condition limit sqrt(λ_max / rank_tol), rank_tol = λ_max · nm · eps(compute "
    "dtype); the report gives rank_tol and the solver's summary",
    "rank and λ_min not computed on this path, so K is not checked for positive semi-definiteness",
)

#: The same for the preconditioned matrix-free solvers (:mod:`diagnostics.engine.matrix_free.preconditioned`).
PRECONDITIONED_POLICY = (
    "K never formed: the d × d Gram JᵀJ (or a sparse-sign sketch of it) from one pass over per-sample Jacobian "
    "blocks, in float64; LSQR preconditioned by it on J's own products",
    "the D1 residual certified from J's products: a witness ‖Q − Jν‖ bounds it from above, the damped minimum "
    "(or the restricted problem's) from below at the rank rule, rank_tol = λ_max · nm · eps(compute dtype); "
    "the report gives both bounds and the solver's summary",
    "with the exact Gram the whole non-zero spectrum of K (its rank rule as on the dense path); with the sketch "
    "the top eigenpairs by Rayleigh–Ritz on J's products",
)

_MODE_MEANING = {
    "eval": "every module in eval mode: batch norm uses its running statistics, dropout is off, "
    "samples are independent; per-sample Jacobians",
    "batch": "batch-norm layers normalise with the statistics of the measured batch (running "
    "statistics neither used nor updated), every other module in eval mode, dropout off; the "
    "Jacobian of the whole batch f_X(θ)",
}

_STRATEGY_MEANING = {
    "structured": "per-sample; linear/conv/batch-norm layers from layer inputs and output cotangents, "
    "the other parameters by vmap(jacrev)",
    "jacrev": "per-sample, vmap(jacrev) over samples",
    "structured+vjp": "linear/conv/batch-norm layers from layer inputs and output cotangents, the other "
    "parameters by vmap of the whole-batch vjp over one-hot cotangents (no vmap over samples)",
    "vjp": "whole batch, vmap of vjp over one-hot cotangents",
    "jvp/vjp": "matrix-free: J v by forward mode and Jᵀ u by reverse mode, never forming J or K",
    "rows/vjp": "matrix-free, reverse mode only: J v from rows of J formed chunk by chunk and Jᵀ u by vjp, "
    "never forming all of J or K",
}


@dataclass(frozen=True)
class LayerNote:
    """A layer that matters for what was measured, and how it was handled.

    Attributes
    ----------
    path
        Dotted module path in the model (``""`` for the model itself).
    kind
        The module's class name.
    handling
        What it did during the measurement, in words.
    """

    path: str
    kind: str
    handling: str

    def __str__(self) -> str:
        return f"{self.path or '<model>'} ({self.kind}): {self.handling}"


@dataclass(frozen=True)
class MeasurementManifest:
    """What a measurement measured, attached to every report.

    Attributes
    ----------
    model
        The model's class name.
    device
        Where the computation ran.
    model_dtype, compute_dtype
        The dtype of the model's parameters, and the dtype the measurement computed in.
    inputs
        Structure, dtypes and shapes of the probe inputs, how they were passed, and whether they were
        copied from the CPU to the model's device.
    output
        How the output was selected, its per-sample shape and ``m`` (flattened in C order).
    n_samples, n_outputs
        ``n`` and ``m``: the Jacobian has ``n·m`` rows, row ``i·m + c`` for output ``c`` of sample ``i``.
    parameters
        Which parameters were measured, in words (by default the trainable ones).
    included
        ``(name, count)`` of every measured parameter tensor, in column order.
    excluded
        ``(name, count, reason)`` of every parameter held fixed.
    aliases
        ``(name, measured as)`` for parameters that are the same tensor as a measured one (tied
        weights): their columns are counted once, under the first name.
    notes
        Other facts about the parameters (e.g. ``requires_grad=False`` tensors that were measured).
    mode, mode_meaning
        ``"eval"`` or ``"batch"``, and what it means.
    strategy, strategy_meaning
        The strategy that computed ``J``/``K`` (``"auto"`` resolved), and what it does.
    choice
        Why that strategy: asked for, or what ``auto`` chose, how, and what it ruled out or fell back from.
    structured
        Parameters whose columns the structured path computed from layer inputs and output cotangents
        (``None``: not applicable, or not known for this computation).
    interacting
        Layers through which samples can interact (batch norm, SyncBatchNorm) and how they were handled.
    dropout
        Dropout layers (and modules with a ``dropout`` rate), all inactive while measuring.
    tf32
        TF32 state while measuring, and the user's switches outside.
    precision
        The rest of the precision policy (:data:`PRECISION_POLICY`, or :data:`MATRIX_FREE_POLICY`):
        how ``K`` is decomposed and which rule decides its rank.
    error
        The measurement's own floating-point error (:class:`~diagnostics.engine.accuracy.ErrorEstimate`),
        when estimated.
    """

    model: str
    device: str
    model_dtype: str
    compute_dtype: str
    inputs: str
    output: str
    n_samples: int
    n_outputs: int
    included: tuple[tuple[str, int], ...]
    excluded: tuple[tuple[str, int, str], ...]
    aliases: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]
    mode: str
    mode_meaning: str
    strategy: str
    strategy_meaning: str
    structured: tuple[str, ...] | None
    interacting: tuple[LayerNote, ...]
    dropout: tuple[LayerNote, ...]
    tf32: str
    precision: tuple[str, ...] = PRECISION_POLICY
    parameters: str = ""
    choice: str = ""
    error: ErrorEstimate | None = None

    @property
    def n_params(self) -> int:
        """``d``, the number of measured parameters (columns of ``J``)."""
        return sum(count for _, count in self.included)

    @classmethod
    def build(
        cls,
        fm: FunctionalModel,
        inputs: _inputs.Inputs,
        *,
        strategy: str,
        structured: tuple[str, ...] | None = None,
        n_outputs: int | None = None,
        choice: str = "",
        error: ErrorEstimate | None = None,
        solver: str = "lsqr",
    ) -> MeasurementManifest:
        """Describe a measurement of ``fm`` on ``inputs`` with ``strategy``.

        Parameters
        ----------
        fm
            The functional model that was measured, after :meth:`FunctionalModel.check_forward`
            (which records the output shape) and inside or after :meth:`FunctionalModel.measuring`
            (which records the user's TF32 switches).
        inputs
            The prepared probe inputs.
        strategy
            The resolved strategy (``"structured"``, ``"jacrev"`` or ``"vjp"``).
        structured
            Parameter names covered by the structured path, when known.
        n_outputs
            ``m``, needed only when :meth:`FunctionalModel.check_forward` has not recorded the
            per-sample output shape (the matrix-free path).
        choice
            Why the strategy was used (``Choice.describe()`` of the measurement).
        error
            The estimate of the measurement's floating-point error.
        solver
            On the matrix-free path, the solver (``"lsqr"``, ``"gram"`` or ``"sketch"``), whose policy is stated.
        """
        model = fm.module
        all_named = dict(model.named_parameters())
        first = next(iter(all_named.values()))
        n = _inputs.leaves(inputs)[0].shape[0]
        shape = fm.output_shape
        if shape is None and n_outputs is None:
            raise ValueError("pass n_outputs, or run FunctionalModel.check_forward first")
        m = math.prod(shape) if shape is not None else int(n_outputs)
        seen = f"per-sample shape {shape}" if shape is not None else "per-sample outputs"
        output = f"{_inputs.describe_output(fm.output)}, {seen} flattened in C order → m = {m} (row i·m + c)"
        excluded = tuple((k, v.numel(), fm.excluded[k]) for k, v in all_named.items() if k not in fm.params)
        return cls(
            model=type(model).__name__,
            device=str(fm.device),
            model_dtype=dtype_name(first.dtype),
            compute_dtype=dtype_name(fm.dtype),
            inputs=_inputs.describe(inputs) + (f"; copied from the CPU to {fm.device}" if fm.inputs_moved else ""),
            output=output,
            n_samples=int(n),
            n_outputs=int(m),
            included=tuple((k, fm.params[k].numel()) for k in fm.names),
            excluded=excluded,
            aliases=_aliases(model),
            notes=tuple(
                f"{k} has requires_grad=False but was measured (select parameters with params=)"
                for k in fm.names
                if not all_named[k].requires_grad
            ),
            mode=fm.mode,
            mode_meaning=_MODE_MEANING[fm.mode],
            strategy=strategy,
            strategy_meaning=_meaning(strategy),
            structured=None if structured is None else tuple(structured),
            interacting=_interacting(model, fm.mode),
            dropout=tuple(
                LayerNote(path, type(mod).__name__, "inactive (eval mode while measuring)")
                for path, mod in model.named_modules()
                if isinstance(mod, _DropoutNd) or _rate(mod) > 0
            ),
            tf32=_tf32(fm.tf32_outside),
            precision=_policy(strategy, solver),
            parameters=fm.selection,
            choice=choice,
            error=error,
        )

    @classmethod
    def of(cls, job: Measurement, error: ErrorEstimate | None = None) -> MeasurementManifest:
        """Describe the measurement ``job`` (inside or after its ``with`` block), with its error estimate."""
        return cls.build(job.fm, job.x, strategy=job.strategy, structured=job.structured,
                         choice=job.choice.describe(), error=error)

    def to_dict(self) -> dict:
        """Plain-Python dictionary (lists for tuples), ready for JSON."""
        out = asdict(self)
        out["n_params"] = self.n_params
        return _lists(out)

    def __str__(self) -> str:
        cast = "" if self.model_dtype == self.compute_dtype else " (the model itself is not cast)"
        lines = [
            "Measurement manifest",
            f"  model: {self.model} on {self.device}; parameters {self.model_dtype}, computed in "
            f"{self.compute_dtype}{cast}",
            f"  inputs: {self.inputs}",
            f"  output: {self.output}",
            f"  parameters measured ({self.parameters or 'as selected'}): {len(self.included)} tensors, "
            f"d = {self.n_params:,}: {_listing(self.included)}",
        ]
        for why in dict.fromkeys(reason for _, _, reason in self.excluded):
            held = [(k, c) for k, c, reason in self.excluded if reason == why]
            lines.append(
                f"  parameters excluded ({why}): {len(held)} tensors, {sum(c for _, c in held):,} values: "
                f"{_listing(held)}"
            )
        if not self.excluded:
            lines.append("  parameters excluded: none")
        for alias, target in self.aliases:
            lines.append(f"  tied: {alias} is {target} (its columns are counted once)")
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"  mode: {self.mode}: {self.mode_meaning}")
        lines.append(f"  layers through which samples can interact: {_grouped(self.interacting) or 'none'}")
        lines.append(f"  dropout: {_grouped(self.dropout) or 'no dropout layers'}")
        strategy = f"  strategy: {self.strategy} ({self.strategy_meaning})"
        if self.structured is not None:
            strategy += f"; structured path covered {len(self.structured)} of {len(self.included)} tensors"
        lines.append(strategy)
        if self.choice:
            lines.append(f"    why: {self.choice}")
        lines.append(f"  precision: {self.tf32}")
        lines += [f"    {rule}" for rule in self.precision]
        if self.error is not None:
            lines.append(f"    floating-point error of this measurement {self.error}")
        return "\n".join(lines)


def _policy(strategy: str, solver: str) -> tuple[str, ...]:
    """Return the precision policy of a measurement: dense, matrix-free LSQR, or preconditioned."""
    if strategy not in ("jvp/vjp", "rows/vjp"):
        return PRECISION_POLICY
    return PRECONDITIONED_POLICY if solver in ("gram", "sketch") else MATRIX_FREE_POLICY


def _meaning(strategy: str) -> str:
    """Say what a strategy does; ``"… (chunks of c samples)"`` adds that ``vjp`` runs chunk by chunk."""
    base, _, chunk = strategy.partition(" (chunks of ")
    meaning = _STRATEGY_MEANING.get(base, base)
    if chunk:
        meaning += f"; vjp over chunks of {chunk.rstrip(')')}, each chunk's rows through that chunk only"
    return meaning


def _rate(mod: nn.Module) -> float:
    """Return a module's own dropout rate attribute (``nn.MultiheadAttention.dropout``), 0 if none."""
    rate = getattr(mod, "dropout", None)
    return float(rate) if isinstance(rate, float) else 0.0


def _aliases(model: nn.Module) -> tuple[tuple[str, str], ...]:
    first: dict[int, str] = {}
    found = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            found.append((name, first[id(p)]))
        else:
            first[id(p)] = name
    return tuple(found)


def _interacting(model: nn.Module, mode: str) -> tuple[LayerNote, ...]:
    notes = []
    for path, mod in model.named_modules():
        if not isinstance(mod, _BatchNorm):
            continue
        if mode == "batch":
            handling = (
                "batch statistics of the measured batch (running statistics neither used nor "
                "updated); samples interact, the Jacobian is the whole batch's"
            )
            if isinstance(mod, nn.SyncBatchNorm):
                handling += "; no cross-process synchronisation (one process)"
        elif mod.running_mean is None or mod.running_var is None:
            handling = (
                "no running statistics, so batch statistics even in eval mode: samples interact "
                "(per-sample strategies refuse it; strategy='vjp' measures the whole batch)"
            )
        else:
            handling = "running statistics (eval mode): samples independent"
        notes.append(LayerNote(path, type(mod).__name__, handling))
    return tuple(notes)


def _tf32(outside: tuple[bool, bool] | None) -> str:
    text = "TF32 off while measuring (CUDA matmul and cuDNN)"
    if outside is not None:
        text += f"; the user's switches (matmul={outside[0]}, cudnn={outside[1]}) restored afterwards"
    return text


def _listing(items, limit: int = 6) -> str:
    shown = ", ".join(f"{k} [{c:,}]" for k, c in list(items)[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def _lists(value):
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    return value


def _grouped(notes: tuple[LayerNote, ...]) -> str:
    """``"bn1, bn2 (BatchNorm2d): handling; …"``, one group per kind and handling."""
    groups: dict[tuple[str, str], list[str]] = {}
    for note in notes:
        groups.setdefault((note.kind, note.handling), []).append(note.path or "<model>")
    return "; ".join(f"{', '.join(paths)} ({kind}): {how}" for (kind, how), paths in groups.items())
