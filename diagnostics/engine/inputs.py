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

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

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
    a map-style :class:`~torch.utils.data.Dataset` (or any object with ``len`` and indexing, or a list of dict
    samples) of samples, or a
    :class:`~torch.utils.data.DataLoader` (its data set is sampled when it is map-style and its samples are
    collated with the loader's ``collate_fn``, e.g. a padding collator; otherwise the first ``probe_size``
    samples it yields are used). A sample is an ``(x, y)`` pair or, as in Hugging Face data sets, a dict
    whose ``"labels"`` (or ``"label"``) entry is ``y`` and whose other entries are the model's inputs.
    The subset keeps the original order of the chosen samples, so the same seed always gives the same probe.

    Reading the data leaves the global random state (torch, numpy, Python) as it was: a DataLoader draws
    its workers' seed from it, a data set may shuffle with it, and training must not see the difference.
    """
    if probe_size is not None and probe_size < 1:
        raise DiagnosticsError(f"probe_size must be a positive integer or None, got {probe_size}")
    with random_state_kept():
        collate = default_collate
        samples = _is_samples(data)
        if isinstance(data, DataLoader):
            if not is_map_style(data.dataset):
                return _from_iterable(data, probe_size)
            data, collate, samples = data.dataset, data.collate_fn, True
        if samples:
            n = len(data)
            if n == 0:
                raise DiagnosticsError("the data set is empty")
            idx = _choose(n, probe_size, seed)
            try:
                batch = collate([data[int(i)] for i in idx])
            except (RuntimeError, TypeError, ValueError) as exc:
                raise DiagnosticsError(
                    f"the probe's samples cannot be stacked into one batch ({exc}); if they have different lengths, "
                    "pass a DataLoader over the data set with a padding collate_fn (e.g. the trainer's data "
                    "collator)"
                ) from exc
            X, Y = split_pair(batch)
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
        "data must be a pair (X, Y), a map-style Dataset of (x, y) pairs or of dicts with 'labels', or a "
        f"DataLoader; got {type(data).__name__}"
    )


def data_size(data: Any) -> int | None:
    """Return the number of samples in ``data`` (as :func:`probe_data` reads it); ``None`` when it cannot tell."""
    if isinstance(data, DataLoader):
        return len(data.dataset) if is_map_style(data.dataset) else None
    if _is_samples(data):
        return len(data)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return batch_size(normalise_inputs(data[0]))
    return None


def _is_samples(data: Any) -> bool:
    """Whether ``data`` is a collection of samples (a map-style data set, a list of dict samples), not a pair."""
    return (is_map_style(data) and not isinstance(data, (tuple, list, Mapping, torch.Tensor, np.ndarray))
            or isinstance(data, list) and len(data) > 0 and all(isinstance(s, Mapping) for s in data))


@contextlib.contextmanager
def random_state_kept() -> Iterator[None]:
    """Restore the global random states of torch (CPU and CUDA), numpy and Python on exit."""
    python, numpy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def is_map_style(ds: Any) -> bool:
    """Whether ``ds`` supports ``len`` and indexing (a map-style data set)."""
    return hasattr(ds, "__len__") and hasattr(ds, "__getitem__")


def _choose(n: int, probe_size: int | None, seed: int) -> np.ndarray:
    if probe_size is None or probe_size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=probe_size, replace=False))


#: Keys of a dict sample that hold its label (the Hugging Face conventions).
LABEL_KEYS = ("labels", "label")


def split_pair(batch: Any) -> tuple[Any, Any]:
    """Split a collated sample or batch into its ``(x, y)`` pair, refusing anything else.

    A dict with a ``"labels"`` (or ``"label"``) entry is split into the other entries (the model's keyword
    inputs) and that entry.
    """
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        if key is not None:
            return {k: v for k, v in batch.items() if k != key}, batch[key]
    raise DiagnosticsError("each sample of the data set must be an (x, y) pair, or a dict with a 'labels' entry")


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
