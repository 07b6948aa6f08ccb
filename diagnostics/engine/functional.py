"""The model as a pure function of its parameters: ``f(θ, X) ∈ R^{n×m}`` (theory/setup.md, theory/alignment.md#setup).

:class:`FunctionalModel` is the one place where a user's ``nn.Module`` is turned into something
``torch.func`` can transform. It copies parameters and buffers (the model is never touched), chooses
the measured parameter subset, and fixes the mode in which the model is evaluated:

``mode="eval"``
    every module in evaluation mode: batch norm uses its running statistics, dropout is off, and
    samples are independent, so per-sample Jacobians apply.
``mode="batch"``
    batch-norm layers normalise with the statistics of the measured batch, as in training (their
    running statistics are neither used nor updated); every other module, dropout included, stays in
    eval mode. Samples interact, so the Jacobian is that of the whole batch ``f_X(θ)``.

The modes are set only for the duration of a call and restored afterwards, together with the
TF32 switches, which are turned off while measuring (:func:`~diagnostics.engine.precision.tf32_off`),
and the random state.

Dropout is off in both modes and there is no option to turn it on: a Jacobian taken with random
masks is a different random matrix at every call, so nothing measured with it could be
reproduced. Randomness that stays active in eval mode (``F.dropout(h, training=True)``, noise drawn
in ``forward``) is detected by :meth:`FunctionalModel.check_forward` (two forwards differ) and
refused. To measure one fixed dropout sub-network, pass the mask as an input or a buffer.

Nothing is skipped silently. Before measuring, :meth:`FunctionalModel.check_forward` refuses a
forward that fails on the inputs, returns NaN/inf, updates parameters, buffers or tensor attributes
in place, is not deterministic, or (for per-sample strategies) mixes samples; while measuring, an
operation ``torch.func`` cannot transform raises :class:`~diagnostics.errors.UnsupportedModelError`
naming the module whose forward was running (recorded by forward pre-hooks) and what to do.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import DiagnosticsError, UnsupportedModelError
from . import inputs as _inputs
from .precision import all_finite, forwards_agree, tf32_off
from .refusals import ModuleTrace, refusal

ParamSelector = None | str | Sequence[str] | Callable[[str, torch.Tensor], bool]
MODES = ("eval", "batch")
#: Why a parameter is held fixed, by how it was left out.
FROZEN = "requires_grad=False: training does not move it (params='all' measures it)"
UNSELECTED = "not selected by params="
RANDOM_FORWARD = (
    "the model draws random numbers in eval mode (e.g. F.dropout(h, training=True) or noise in forward). "
    "Measurements with random masks are not reproducible, so they are refused; make the forward deterministic "
    "in eval mode, or pass a fixed mask as an input."
)
#: Attribute values that configure a module (``eps``, ``stride``, ``track_running_stats``); with its type,
#: parameters, buffers and hooks they make up its structure (:func:`survey`).
CONFIGURATION = (bool, int, float, str, type(None))
_SCALARS = frozenset(CONFIGURATION)


class FunctionalModel:
    """A frozen, functional view of ``model`` for measurement.

    Parameters
    ----------
    model
        Any ``nn.Module``.
    params
        Which parameters to differentiate: ``None`` (the trainable ones, ``requires_grad=True``; all
        of them when none is trainable, e.g. a frozen feature map), ``"all"``, a sequence of parameter
        names or module prefixes (``"head"`` selects ``head.weight`` and ``head.bias``), or a predicate
        ``(name, tensor) -> bool``. The others are held fixed (:attr:`excluded` says why).
    mode
        ``"eval"`` or ``"batch"`` (see module docstring).
    output
        Selects the measured output when the model returns a dict/tuple/object: a key, an index
        or a callable.
    dtype
        Compute dtype (e.g. ``torch.float64`` for end-to-end double precision); default: the
        dtype of the model's parameters, at least float32 (a bfloat16 or float16 model is measured
        in float32). The model itself is never cast.

    Notes
    -----
    A call inside ``torch.inference_mode()`` works: the copies of parameters, buffers and inputs are
    ordinary tensors, and measuring leaves inference mode for its duration.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        params: ParamSelector = None,
        mode: str = "eval",
        output: _inputs.OutputSelector = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise DiagnosticsError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if mode not in MODES:
            raise DiagnosticsError(f"mode must be one of {MODES}, got {mode!r}")
        found = survey(model)
        named = found.parameters
        if not named:
            raise DiagnosticsError("the model has no parameters: there is no Jacobian to measure")
        first = next(iter(named.values()))
        self.device = first.device
        self.dtype = dtype or default_dtype(first.dtype)
        if not self.dtype.is_floating_point:
            raise DiagnosticsError(f"dtype must be a floating dtype, got {self.dtype}")
        floating = {k: p.detach() for k, p in named.items() if p.is_floating_point()}
        if not all_finite(list(floating.values())):
            bad = next(k for k, p in floating.items() if not torch.isfinite(p).all())
            raise DiagnosticsError(f"parameter {bad!r} contains NaN or inf values")
        self.module = model
        self.mode = mode
        self.output = output
        self.names, self.selection = _select(named, params)
        #: ``{name: why}`` for every parameter held fixed.
        self.excluded = {
            k: FROZEN if params is None and not v.requires_grad else UNSELECTED
            for k, v in named.items() if k not in self.names
        }
        with torch.inference_mode(False):
            copies = {k: _ordinary(v.detach(), self.dtype) for k, v in named.items()}
            self.buffers = {
                k: _ordinary(v.detach(), self.dtype if v.is_floating_point() else v.dtype, copy=True)
                for k, v in found.buffers.items()
            }
        self.params = {k: copies[k] for k in self.names}
        self.fixed = {k: v for k, v in copies.items() if k not in self.params}
        self.shapes = {k: tuple(v.shape) for k, v in self.params.items()}
        self.n_params = sum(v.numel() for v in self.params.values())
        #: Per-sample shape of the selected output, recorded by :meth:`check_forward`.
        self.output_shape: tuple[int, ...] | None = None
        #: The user's TF32 switches ``(matmul, cudnn)`` found on entering :meth:`measuring`.
        self.tf32_outside: tuple[bool, bool] | None = None
        #: Whether :meth:`prepare` copied inputs from the CPU to the model's device.
        self.inputs_moved = False
        #: The model's structure (:attr:`Survey.structure`): what the engine's memory of a model is keyed on.
        self.structure, self._attributes = found.structure, found.attributes
        self._trace = ModuleTrace(model)
        if mode == "batch":
            _refuse_synchronised_batch_norm(model)

    # ------------------------------------------------------------------------------------------
    def prepare(self, inputs: object) -> tuple[_inputs.Inputs, int]:
        """Return the validated inputs on the model's device in the compute dtype, and their batch size.

        Inputs on the CPU are copied to the model's device (recorded in :attr:`inputs_moved`), inputs on
        another device refused (:func:`~diagnostics.engine.inputs.moved_from_cpu`).
        """
        x = _inputs.normalise_inputs(inputs)
        self.inputs_moved = _inputs.moved_from_cpu(x, self.device)
        n = _inputs.batch_size(x)
        with torch.inference_mode(False):
            x = _inputs.map_inputs(lambda t: _ordinary(t, t.dtype), x)
            return _inputs.to(x, self.device, self.dtype), n

    def __call__(self, params: dict[str, torch.Tensor], inputs: _inputs.Inputs) -> torch.Tensor:
        """``f(θ, X)`` as an ``(n, m)`` matrix; ``params`` may hold any subset of the measured ones."""
        n = _inputs.leaves(inputs)[0].shape[0]
        return _inputs.select_output(self._raw(params, inputs), self.output, n)

    def _raw(self, params: dict[str, torch.Tensor], inputs: _inputs.Inputs) -> object:
        state = {**self.fixed, **self.params, **params, **self.buffers}
        return _inputs.call(lambda *a, **k: functional_call(self.module, state, a, k), inputs)

    def check_forward(self, x: _inputs.Inputs, *, per_sample: bool) -> torch.Tensor:
        """Run the validation forward ``f(θ, X)`` (``(n, m)``), refusing what would make a measurement wrong.

        Run inside :meth:`measuring`, before any Jacobian work, at the cost of two or three forwards:

        - the forward fails on these inputs (wrong shapes, dtypes) → :class:`DiagnosticsError` naming
          the module that raised; its outputs contain NaN or inf → :class:`DiagnosticsError`;
        - it updates a parameter, buffer or tensor attribute in place → :class:`UnsupportedModelError`
          (the measured function would change between calls; a tensor attribute of the user's model
          is put back);
        - two forwards differ (random operations active in eval mode) → :class:`UnsupportedModelError`;
        - ``per_sample`` (strategies that differentiate one sample at a time): the outputs of the two
          halves of the batch, run separately, differ from those of the whole batch, so samples
          interact (normalisation over the batch dimension, batch norm without running statistics)
          → :class:`UnsupportedModelError` advising ``strategy="vjp"``.

        Outputs are compared to ``sqrt(eps) · max|f|`` (reduction order may differ between batch sizes).
        Also records the per-sample shape of the selected output in :attr:`output_shape`.
        """
        n = _inputs.leaves(x)[0].shape[0]
        with torch.no_grad():
            with self.unchanged():
                selected = _inputs.pick_output(self._forward_or_explain(x, "these inputs"), self.output, n)
            self.output_shape = tuple(selected.shape[1:])
            out = selected.reshape(n, -1)
            if not torch.isfinite(out).all():
                raise DiagnosticsError("the model's outputs contain NaN or inf on these inputs")
            if not forwards_agree(self(self.params, x), out):
                raise UnsupportedModelError(
                    f"two forward passes on the same inputs give different outputs: {RANDOM_FORWARD}")
            if per_sample:
                problem = self.per_sample_problem(x, out)
                if problem:
                    raise UnsupportedModelError(problem)
        return out

    @contextlib.contextmanager
    def unchanged(self) -> Iterator[None]:
        """Refuse a forward inside that updates the model's state in place.

        Checked on exit, at the cost of reading version counters: a parameter, buffer or tensor attribute
        updated in place → :class:`UnsupportedModelError` (the measured function would change between
        calls), the user's tensor attributes put back first. The check :meth:`check_forward` makes on its
        forward, cheap enough to guard every later measurement of a model already validated.
        """
        attributes = self._attributes
        saved = {key: t.clone() for key, t in attributes.items()}
        versions = {key: t._version for key, t in attributes.items()}
        state = {**self.fixed, **self.params, **self.buffers}
        state_versions = {k: v._version for k, v in state.items()}
        try:
            yield
        finally:
            changed = [k for k, t in attributes.items() if t._version != versions[k]]
            with torch.no_grad():
                for key in changed:
                    attributes[key].copy_(saved[key])
        changed += [k for k, v in state.items() if v._version != state_versions[k]]
        if changed:
            raise UnsupportedModelError(
                f"the model's forward updates {', '.join(repr(k) for k in changed)} in place (in "
                f"{_owners(changed)}), so the measured function would change from one call to the "
                "next. Compute a new tensor instead of updating a buffer or attribute, or update it "
                "only when self.training is True (measurements run in eval mode)."
            )

    def random_states(self) -> list[torch.Tensor]:
        """Return the states of the global random generators: the CPU's, and the model's CUDA device's."""
        states = [torch.get_rng_state()]
        if self.device.type == "cuda":
            states.append(torch.cuda.get_rng_state(self.device))
        return states

    def per_sample_problem(self, x: _inputs.Inputs, out: torch.Tensor) -> str:
        """Why a per-sample strategy cannot measure this model on ``x`` (``""`` when it can).

        The two halves of the batch, run separately, must give the outputs ``out`` of the whole batch;
        otherwise the samples interact (a normalisation over the batch dimension, batch norm without
        running statistics) or the model cannot run on a sub-batch. Run inside :meth:`measuring`.
        """
        n = out.shape[0]
        if n < 2:
            return ""
        halves = (slice(0, n // 2), slice(n // 2, n))
        with torch.no_grad():
            try:
                apart = torch.cat([
                    _inputs.select_output(
                        self._forward_or_explain(_inputs.take(x, h), "a sub-batch", UnsupportedModelError),
                        self.output,
                        h.stop - h.start,
                    )
                    for h in halves
                ])
            except UnsupportedModelError as exc:
                return str(exc)
        if forwards_agree(apart, out):
            return ""
        return (
            "the samples interact: the outputs of the two halves of the batch, run "
            "separately, differ from those of the whole batch (a normalisation over the "
            "batch dimension, or batch norm without running statistics). A per-sample "
            "strategy would measure a different function; use strategy='vjp' or 'auto', which "
            "differentiate the whole batch f_X(θ) as the model computes it (as does mode='batch')."
        )

    def _forward_or_explain(
        self, x: _inputs.Inputs, what: str, error: type[DiagnosticsError] = DiagnosticsError
    ) -> object:
        """Return the raw model output on ``x``; a failure is re-raised as ``error`` naming the module."""
        try:
            return self._raw(self.params, x)
        except (DiagnosticsError, MemoryError):
            raise
        except Exception as exc:
            advice = (
                " Per-sample strategies run the model on sub-batches; a model that needs a fixed batch "
                "size can only be measured with strategy='vjp'."
                if error is UnsupportedModelError
                else ""
            )
            raise error(
                f"the model's forward failed on {what} in {self.running_module()}: "
                f"{type(exc).__name__}: {exc}.{advice}"
            ) from exc

    def running_module(self) -> str:
        """Name the module whose forward is running right now (while measuring), in words."""
        return self._trace.where()

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors (in ``self.names`` order) into one vector/matrix.

        Leading dimensions beyond the parameter shape are kept: a dict of ``(r, *shape)`` blocks
        becomes an ``(r, d)`` matrix.
        """
        parts = []
        for k in self.names:
            t = tensors[k]
            lead = t.shape[: t.ndim - len(self.shapes[k])]
            parts.append(t.reshape(*lead, -1))
        return torch.cat(parts, dim=-1)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a length-``d`` vector into per-parameter tensors."""
        if vector.shape != (self.n_params,):
            raise DiagnosticsError(f"expected a vector of length {self.n_params}, got {tuple(vector.shape)}")
        out, start = {}, 0
        for k in self.names:
            size = self.params[k].numel()
            out[k] = vector[start : start + size].reshape(self.shapes[k])
            start += size
        return out

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        """Set the measurement mode and TF32 off; restore both, and the random state, on exit, whatever happens.

        While inside, forward hooks record which module is running, so that an operation
        ``torch.func`` cannot transform is refused with :class:`UnsupportedModelError` naming it. The
        random state of the CPU and of the model's device is restored on exit, so a model that draws
        random numbers in its forward leaves the user's random stream where it was.
        """
        flags = [(m, m.training) for m in self.module.modules()]
        norms = [(m, m.track_running_stats) for m in self.module.modules() if isinstance(m, _BatchNorm)]
        devices = [self.device] if self.device.type == "cuda" else []
        restore = contextlib.ExitStack()
        self.tf32_outside = restore.enter_context(tf32_off())
        restore.enter_context(torch.random.fork_rng(devices=devices))
        try:
            self.module.eval()
            if self.mode == "batch":
                for m, _ in norms:  # batch statistics, and no running-statistics update
                    m.train()
                    m.track_running_stats = False
            with self._trace.attached(), torch.inference_mode(False):
                try:
                    yield
                except (RuntimeError, NotImplementedError) as exc:
                    refused = refusal(exc, self.running_module())
                    if refused is None:
                        raise
                    raise refused from exc
        finally:
            for m, training in flags:
                m.training = training
            for m, track in norms:
                m.track_running_stats = track
            restore.close()


class PerModel:
    """What the engine remembers between calls, per model (weakly referenced: never keeps a model alive) and key."""

    def __init__(self) -> None:
        self._facts: weakref.WeakKeyDictionary[nn.Module, dict[Hashable, Any]] = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module, key: Hashable) -> Any:
        """Return what is remembered for ``model`` and ``key``, or ``None``."""
        return self._facts.get(model, {}).get(key)

    def put(self, model: nn.Module, key: Hashable, value: Any) -> None:
        """Remember ``value`` for ``model`` and ``key``."""
        self._facts.setdefault(model, {})[key] = value

    def forget(self, model: nn.Module, key: Hashable) -> None:
        """Forget what is remembered for ``model`` and ``key``."""
        self._facts.get(model, {}).pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._facts.clear()


def default_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """Return the compute dtype when none is asked for: the model's, at least float32 (never half precision)."""
    if model_dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return model_dtype


def _ordinary(t: torch.Tensor, dtype: torch.dtype, copy: bool = False) -> torch.Tensor:
    """``t`` in ``dtype`` as an ordinary tensor: an inference-mode tensor (or, with ``copy``, any) is copied."""
    if t.is_inference() or copy:
        return t.clone().to(dtype)
    return t.to(dtype)


def _select(named: dict[str, torch.Tensor], params: ParamSelector) -> tuple[tuple[str, ...], str]:
    """Return the measured names in model order, and the selection in words (for the manifest)."""
    if params is None:
        names = [k for k, v in named.items() if v.requires_grad]
        if names:
            return tuple(names), "the trainable parameters (requires_grad=True)"
        return tuple(named), "all parameters (none has requires_grad=True)"
    if isinstance(params, str) and params == "all":
        return tuple(named), "all parameters (params='all')"
    if callable(params):
        names = [k for k, v in named.items() if params(k, v)]
    else:
        if isinstance(params, str):
            params = [params]
        names = []
        for sel in params:
            hits = [k for k in named if k == sel or k.startswith(sel + ".")]
            if not hits:
                raise DiagnosticsError(
                    f"no parameter named or under {sel!r}; parameters are: {', '.join(named)}"
                )
            names.extend(h for h in hits if h not in names)
        names = [k for k in named if k in names]  # model order
    if not names:
        raise DiagnosticsError("the parameter selection is empty")
    return tuple(names), "selected by params="


@dataclass(frozen=True)
class Survey:
    """What one pass over a model's modules finds (:func:`survey`).

    Attributes
    ----------
    structure
        What a measurement's function depends on other than the values of its tensors: for every module
        its name, type, configuration (attribute values of :data:`CONFIGURATION` types and tuples of them,
        the names of functions it holds) and number of forward hooks; the names, shapes, dtypes and
        ``requires_grad`` of the parameters; the names, shapes and dtypes of the buffers. It is hashable
        and its ``repr`` is the same in every process (no object ids). Training changes none of it;
        replacing a layer, an activation or a hook, or setting ``track_running_stats``, changes it.
    parameters, buffers
        As ``named_parameters()`` and ``named_buffers()`` give them (each tensor once).
    attributes
        The modules' tensors that are neither parameters nor buffers, by dotted path; inference-mode tensors
        are left out (they have no version counter, and outside inference mode, where measurements run, an
        in-place update of one is an error anyway).
    """

    structure: tuple
    parameters: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    attributes: dict[str, torch.Tensor]


def survey(model: nn.Module) -> Survey:
    """Return the model's structure, parameters, buffers and plain tensor attributes, in one pass over its modules."""
    modules, parameters, buffers, attributes, seen = [], {}, {}, {}, set()
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for kind, found in ((mod._parameters, parameters), (mod._buffers, buffers)):
            for k, t in kind.items():
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    found[prefix + k] = t
        config = []
        for attr, value in vars(mod).items():
            if type(value) in _SCALARS:
                if attr != "training":
                    config.append((attr, value))
            elif isinstance(value, torch.Tensor):
                if not isinstance(value, nn.Parameter) and not value.is_inference():
                    attributes[prefix + attr] = value
            elif isinstance(value, tuple) and all(isinstance(v, CONFIGURATION) for v in value):
                config.append((attr, value))
            elif callable(value) and not isinstance(value, nn.Module) and hasattr(value, "__qualname__"):
                config.append((attr, value.__qualname__))
        hooks = (len(mod._forward_pre_hooks), len(mod._forward_hooks))
        modules.append((mod_name, f"{type(mod).__module__}.{type(mod).__qualname__}", tuple(config), hooks))
    structure = (
        tuple(modules),
        tuple((k, tuple(p.shape), str(p.dtype), p.requires_grad) for k, p in parameters.items()),
        tuple((k, tuple(b.shape), str(b.dtype)) for k, b in buffers.items()),
    )
    return Survey(structure, parameters, buffers, attributes)


def _owners(paths: list[str]) -> str:
    mods = sorted({p.rpartition(".")[0] for p in paths})
    return ", ".join(f"module {m!r}" if m else "the top-level module" for m in mods)


def _refuse_synchronised_batch_norm(model: nn.Module) -> None:
    """Batch mode with ``SyncBatchNorm`` across processes would mix in other processes' samples."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    synced = [name for name, m in model.named_modules() if isinstance(m, nn.SyncBatchNorm)]
    if synced:
        raise UnsupportedModelError(
            f"mode='batch' with SyncBatchNorm layers ({', '.join(synced)}) in a distributed run would "
            "normalise with the statistics of every process's batch, which this process cannot "
            "differentiate. Measure on one process, or use mode='eval' (running statistics)."
        )
