"""One place that normalises what users pass in: model inputs, outputs and data sets.

Model inputs may be a tensor, a tuple of tensors (passed positionally, ``model(*x)``) or a dict of
tensors (passed as keyword arguments, ``model(**x)``, as for HuggingFace-style models), all batched
along dimension 0. Floating tensors are cast to the compute dtype; integer tensors (token ids,
attention masks) are kept as they are.

Outputs may be a tensor or a dict/tuple/object from which ``output=`` selects one tensor: a key or
attribute name (``output="logits"``), an index (``output=0``) or a callable
(``output=lambda o: o["logits"][:, -1]``).
The selected tensor must be batched along dimension 0; each sample's output of shape ``S`` is
flattened in C (row-major) order into ``m = prod(S)`` outputs, so output ``c`` of sample ``i`` is row
``i*m + c`` of the Jacobian: for per-token logits of shape ``(T, V)``, ``c = t*V + v``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import DiagnosticsError
from .precision import dtype_name

Inputs = torch.Tensor | tuple | Mapping[str, torch.Tensor]
OutputSelector = None | str | int | Callable[[Any], torch.Tensor]


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """Convert a numpy array or tensor-like to a tensor, with a clear error otherwise."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, list):
        return torch.as_tensor(np.asarray(x))
    raise DiagnosticsError(f"{name} must be a tensor or numpy array, got {type(x).__name__}")


def normalise_inputs(inputs: Any) -> Inputs:
    """Tensors (numpy arrays accepted) in the tensor / tuple / dict structure the model takes."""
    if isinstance(inputs, Mapping):
        return {k: as_tensor(v, f"inputs[{k!r}]") for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(as_tensor(v, f"inputs[{i}]") for i, v in enumerate(inputs))
    return as_tensor(inputs, "inputs")


def leaves(inputs: Inputs) -> list[torch.Tensor]:
    """Return the tensors of an input structure."""
    if isinstance(inputs, Mapping):
        return list(inputs.values())
    if isinstance(inputs, tuple):
        return list(inputs)
    return [inputs]


def map_inputs(fn: Callable[[torch.Tensor], torch.Tensor], inputs: Inputs) -> Inputs:
    """Apply ``fn`` to every tensor, keeping the structure."""
    if isinstance(inputs, Mapping):
        return {k: fn(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(fn(v) for v in inputs)
    return fn(inputs)


def batch_size(inputs: Inputs) -> int:
    """Return the common size of dimension 0, after checking shapes and values."""
    tensors = leaves(inputs)
    if not tensors:
        raise DiagnosticsError("inputs are empty: pass a tensor, a tuple or a dict of tensors")
    sizes = {t.shape[0] if t.ndim else None for t in tensors}
    if None in sizes:
        raise DiagnosticsError("inputs must be batched along dimension 0; got a 0-dimensional tensor")
    if len(sizes) != 1:
        raise DiagnosticsError(f"input tensors disagree on the batch size (dimension 0): {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise DiagnosticsError("inputs are empty (batch size 0): at least one sample is needed")
    for t in tensors:
        if t.device.type == "meta":
            raise DiagnosticsError(
                "the inputs are on meta, a device that holds shapes but no values: put real data on the "
                "model's device (or on the CPU, from where it is copied)"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise DiagnosticsError("inputs contain NaN or inf values; clean the data before measuring")
    return n


def take(inputs: Inputs, index: torch.Tensor | slice) -> Inputs:
    """Select samples along dimension 0."""
    return map_inputs(lambda t: t[index], inputs)


def to(inputs: Inputs, device: torch.device, dtype: torch.dtype) -> Inputs:
    """Put the inputs on ``device`` (the model's); floating tensors are cast to ``dtype``, integer ones kept.

    The device rule (:func:`moved_from_cpu`): inputs on ``device`` stay, inputs on the CPU are copied to
    it, inputs on any other device are refused.
    """
    moved_from_cpu(inputs, device)
    return map_inputs(
        lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype), inputs
    )


def moved_from_cpu(inputs: Inputs, device: torch.device) -> bool:
    """Return whether some inputs are on the CPU and will be copied to ``device``, the model's device.

    Inputs on the model's device are used where they are. Inputs on the CPU, where data sets usually
    live, are copied to the model's device (the report's manifest says so); this is a convenience
    and never changes the result, since the model computes on its own device either way. Inputs on
    any other device (another GPU than the model's, a GPU when the model is on the CPU) are refused:
    moving them would copy data between accelerators, or off one, behind the user's back, and usually
    means the model or the data was left on the wrong device.

    Raises
    ------
    DiagnosticsError
        When an input tensor is neither on ``device`` nor on the CPU, naming both devices.
    """
    moved = False
    for t in leaves(inputs):
        if t.device == device:
            continue
        if t.device.type != "cpu":
            raise DiagnosticsError(
                f"the inputs are on {t.device} but the model is on {device}: put them on one device "
                "(model.to(device) and inputs.to(device)); inputs on the CPU are copied to the model's "
                "device, inputs on another device are not moved"
            )
        moved = True
    return moved


def call(fn: Callable[..., Any], inputs: Inputs) -> Any:
    """Call ``fn`` with the inputs: ``fn(x)``, ``fn(*x)`` or ``fn(**x)``."""
    if isinstance(inputs, Mapping):
        return fn(**inputs)
    if isinstance(inputs, tuple):
        return fn(*inputs)
    return fn(inputs)


def select_output(out: Any, output: OutputSelector, n: int) -> torch.Tensor:
    """Return the selected model output as an ``(n, m)`` matrix (per-sample outputs flattened in C order)."""
    return pick_output(out, output, n).reshape(n, -1)


def pick_output(out: Any, output: OutputSelector, n: int) -> torch.Tensor:
    """Return the selected model output, batched along dimension 0, before flattening."""
    if callable(output):
        out = output(out)
    elif isinstance(output, str) and not isinstance(out, Mapping) and hasattr(out, output):
        out = getattr(out, output)  # an output object with attributes (e.g. a dataclass)
    elif output is not None:
        try:
            out = out[output]
        except (KeyError, IndexError, TypeError) as exc:
            keys = f"; it has keys {list(out)}" if isinstance(out, Mapping) else ""
            raise DiagnosticsError(
                f"cannot select output {output!r} from a {type(out).__name__}{keys}"
            ) from exc
    if hasattr(out, "logits") and not isinstance(out, torch.Tensor):
        raise DiagnosticsError("the model returned an object with .logits: pass output='logits'")
    if not isinstance(out, torch.Tensor):
        raise DiagnosticsError(
            f"the model returned a {type(out).__name__}, not a tensor: pass output= a key, an index "
            "or a callable that selects the tensor to measure"
        )
    if out.ndim == 0 or out.shape[0] != n:
        raise DiagnosticsError(
            f"the model output has shape {tuple(out.shape)}, but the inputs hold {n} samples: "
            "outputs must be batched along dimension 0"
        )
    return out


def describe(inputs: Inputs) -> str:
    """One line naming the structure, dtypes and shapes of the inputs and how the model gets them."""

    def one(t: torch.Tensor) -> str:
        return f"{dtype_name(t.dtype)} {tuple(t.shape)}"

    if isinstance(inputs, Mapping):
        items = ", ".join(f"{k}: {one(v)}" for k, v in inputs.items())
        return f"dict {{{items}}} passed as model(**inputs)"
    if isinstance(inputs, tuple):
        return f"tuple ({', '.join(one(v) for v in inputs)}) passed as model(*inputs)"
    return f"tensor {one(inputs)} passed as model(inputs)"


def describe_output(output: OutputSelector) -> str:
    """How the measured output was selected, in words."""
    if output is None:
        return "the model's output tensor"
    if callable(output):
        return f"output selected by {getattr(output, '__qualname__', type(output).__name__)}"
    return f"output[{output!r}]"


# ----------------------------------------------------------------------------------------------
# Data sets: (X, Y) pairs, Datasets and DataLoaders, reduced to a seeded probe subset.


def selector_key(output: OutputSelector) -> object:
    """Return the output selector as a key that is the same in every process.

    A key or index as it is; a function by where it is defined and the plain values it closes over (a
    lambda written in one place and created anew on every call is one selector).
    """
    if output is None or isinstance(output, (str, int)):
        return output
    code = getattr(output, "__code__", None)
    if code is None:
        return (type(output).__module__, type(output).__qualname__)
    cells = tuple(c.cell_contents for c in output.__closure__ or () if isinstance(c.cell_contents, (str, int, float)))
    return (getattr(output, "__module__", None), output.__qualname__, code.co_filename, code.co_firstlineno, cells)


def probe_data(data: Any, probe_size: int | None, seed: int) -> tuple[Inputs, torch.Tensor]:
    """Return the inputs and targets of a seeded probe subset of ``data``.

    ``data`` may be a pair ``(X, Y)`` of tensors/arrays (``X`` may be a tuple or dict of tensors),
    a map-style :class:`~torch.utils.data.Dataset` of ``(x, y)`` pairs, or a
    :class:`~torch.utils.data.DataLoader` (its data set is sampled when it is map-style, otherwise
    the first ``probe_size`` samples it yields are used). The subset keeps the original order of the
    chosen samples, so the same seed always gives the same probe.
    """
    if probe_size is not None and probe_size < 1:
        raise DiagnosticsError(f"probe_size must be a positive integer or None, got {probe_size}")
    if isinstance(data, DataLoader):
        if is_map_style(data.dataset):
            data = data.dataset
        else:
            return _from_iterable(data, probe_size)
    if isinstance(data, Dataset) and is_map_style(data):
        n = len(data)
        if n == 0:
            raise DiagnosticsError("the data set is empty")
        idx = _choose(n, probe_size, seed)
        X, Y = split_pair(default_collate([data[int(i)] for i in idx]))
        return normalise_inputs(X), as_tensor(Y, "targets")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        X, Y = normalise_inputs(data[0]), as_tensor(data[1], "targets")
        n = batch_size(X)
        if Y.ndim == 0 or Y.shape[0] != n:
            raise DiagnosticsError(
                f"targets have shape {tuple(Y.shape)} but the inputs hold {n} samples"
            )
        idx = torch.as_tensor(_choose(n, probe_size, seed))
        return take(X, idx), Y[idx]
    raise DiagnosticsError(
        "data must be a pair (X, Y), a map-style Dataset of (x, y) pairs or a DataLoader; "
        f"got {type(data).__name__}"
    )


def is_map_style(ds: Any) -> bool:
    """Whether ``ds`` supports ``len`` and indexing (a map-style data set)."""
    return hasattr(ds, "__len__") and hasattr(ds, "__getitem__")


def _choose(n: int, probe_size: int | None, seed: int) -> np.ndarray:
    if probe_size is None or probe_size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=probe_size, replace=False))


def split_pair(batch: Any) -> tuple[Any, Any]:
    """Split a collated sample or batch into its ``(x, y)`` pair, refusing anything else."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise DiagnosticsError("each sample of the data set must be an (x, y) pair")


def _from_iterable(loader: DataLoader, probe_size: int | None) -> tuple[Inputs, torch.Tensor]:
    xs, ys, count = [], [], 0
    for batch in loader:
        x, y = split_pair(batch)
        xs.append(normalise_inputs(x))
        ys.append(as_tensor(y, "targets"))
        count += ys[-1].shape[0]
        if probe_size is not None and count >= probe_size:
            break
    if not xs:
        raise DiagnosticsError("the DataLoader yielded no data")
    Y = torch.cat(ys)
    X = _concat(xs)
    if probe_size is not None:
        X, Y = take(X, slice(0, probe_size)), Y[:probe_size]
    return X, Y


def _concat(parts: list[Inputs]) -> Inputs:
    first = parts[0]
    if isinstance(first, Mapping):
        return {k: torch.cat([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(torch.cat([p[i] for p in parts]) for i in range(len(first)))
    return torch.cat(parts)
