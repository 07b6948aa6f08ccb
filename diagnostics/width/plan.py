"""What a width study runs: model families (a factory ``width → nn.Module`` each), their recipes, seeds and records.

A :class:`Family` is the user's model family or one of the project's (``mlp``/``cnn`` under the NTK and mean-field
parameterisations, registered by :func:`~diagnostics.width.config.config_plan` as factories of this same kind).
Every run is a :class:`RunSpec` ``(family, parameterization, width, seed)``: the family's factory is called with
the width under ``torch.manual_seed(seed)`` (the global random state is restored afterwards), so the seed fixes the
initialisation of any model whose constructor draws from torch's generator; the seed also fixes the order of the
training batches (:mod:`~diagnostics.width.batches`).

Widths. Left out, a family gets :func:`widths_around_threshold`: powers of two spanning the counting threshold
``d = n·m`` of S1 (``theory/width.md#s1-counting``), found by counting the parameters of the factory's models.
A family whose parameter count does not grow with the width is refused (:func:`check_growth`): a width study of it
has nothing to compare.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DiagnosticsError
from ..models import count_parameters
from .recipe import Recipe, setting_key

__all__ = ["Family", "Plan", "RunSpec", "as_families", "check_growth", "family_name", "record_steps",
           "widths_around_threshold"]

#: Largest width of the default grid: the first power of two with ``d ≥ _MAX_OVER · n·m``.
_MAX_OVER = 15
#: The S4 expectations of the kernel movement against width (``theory.kernel_movement_trend``).
EXPECTATIONS = ("decreasing", "order-one")


@dataclass(frozen=True, order=True)
class RunSpec:
    """One run of a study: a model family, its parameterisation, a width and a seed."""

    family: str
    parameterization: str
    width: int
    seed: int

    @property
    def run_id(self) -> str:
        """File-name-safe identifier, e.g. ``"mlp_ntk_w32_s0"``."""
        return f"{self.family}_{self.parameterization}_w{self.width}_s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """Return the four fields as a plain dictionary."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Family:
    """A model family: its factory, widths, parameterisation label, recipe and S4 expectation.

    Parameters
    ----------
    name
        Name in tables, figures and run ids (letters, digits, ``-`` and ``.``).
    build
        ``width → nn.Module``; called under ``torch.manual_seed(seed)``.
    widths
        Widths to run (``None``: :func:`widths_around_threshold`, resolved by the study).
    parameterization
        A label of how the family scales with width (``"ntk"``, ``"mf"``, ``"standard"`` or any word), the second
        key of every table; families of one name with different labels are compared in the same panels.
    recipe
        Its training; ``None`` takes the study's.
    expect
        What S4 expects of the kernel movement against width: ``"decreasing"`` (lazy), ``"order-one"`` (rich) or
        ``None``: the slope is measured and not judged.
    key
        What identifies the factory in run fingerprints (default: its qualified name and source).
    """

    name: str
    build: Callable[[int], nn.Module]
    widths: tuple[int, ...] | None = None
    parameterization: str = "standard"
    recipe: Recipe | None = None
    expect: str | None = None
    key: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for what, value in (("name", self.name), ("parameterization", self.parameterization)):
            if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9.-]+", value):
                raise DiagnosticsError(f"a family's {what} must be letters, digits, '-' or '.', got {value!r}")
        if not callable(self.build):
            raise DiagnosticsError(f"family {self.name!r}: build must be a callable width → nn.Module")
        if self.widths is not None:
            widths = tuple(self.widths)
            if not widths or len(set(widths)) != len(widths) or any(
                    isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
                raise DiagnosticsError(f"family {self.name!r}: widths must be distinct positive integers, got "
                                       f"{list(widths)}")
            object.__setattr__(self, "widths", tuple(sorted(widths)))
        if self.expect is not None and self.expect not in EXPECTATIONS:
            raise DiagnosticsError(f"expect must be one of {EXPECTATIONS} or None, got {self.expect!r}")

    def model(self, width: int, seed: int) -> nn.Module:
        """Build the model of one run: ``build(width)`` under ``torch.manual_seed(seed)``, global state restored."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.build(width)
        if not isinstance(model, nn.Module):
            raise DiagnosticsError(f"family {self.name!r}: the factory returned a {type(model).__name__} for width "
                                   f"{width}, not an nn.Module")
        return model

    def identity(self) -> Any:
        """Return what identifies the factory in fingerprints."""
        return dict(self.key) if self.key is not None else setting_key(self.build)


@dataclass(frozen=True)
class _FromDict:
    """The factory of a ``{width: callable}`` mapping: ``width → mapping[width]()``."""

    factories: tuple[tuple[int, Callable[[], nn.Module]], ...]

    def __call__(self, width: int) -> nn.Module:
        return dict(self.factories)[width]()

    def key(self) -> dict[str, Any]:
        return {str(w): setting_key(f) for w, f in self.factories}


def family_name(factory: Any) -> str:
    """Name a family after its factory: ``__name__`` with ``_`` as ``-`` when that is a valid name, else ``"model"``."""
    name = getattr(factory, "__name__", "").replace("_", "-")
    return name if re.fullmatch(r"[A-Za-z0-9.-]+", name) else "model"


def as_families(models: Any, *, name: str | None = None, widths: Sequence[int] | None = None,
                parameterization: str = "standard", expect: str | None = None) -> tuple[Family, ...]:
    """Normalise ``models`` to families.

    ``models`` may be a callable ``width → nn.Module`` (``widths`` its widths), a mapping ``{width: callable}`` of
    factories without arguments (the widths are its keys), a :class:`Family` or a sequence of families. ``name``
    names the family of a callable or mapping (default :func:`family_name` of the callable, ``"model"`` for a
    mapping).
    """
    if isinstance(models, Family):
        return (models,)
    if isinstance(models, Mapping):
        keys = list(models)
        if not keys or any(isinstance(w, bool) or not isinstance(w, int) for w in keys):
            raise DiagnosticsError(f"a dict of models maps widths (integers) to factories, got keys {keys}")
        if widths is not None and set(widths) != set(keys):
            raise DiagnosticsError(f"widths {list(widths)} differ from the dict's widths {sorted(keys)}")
        bad = [w for w in keys if not callable(models[w])]
        if bad:
            raise DiagnosticsError(f"the models of widths {bad} are not callables returning an nn.Module")
        build = _FromDict(tuple(sorted(models.items())))
        return (Family(name or "model", build, tuple(keys), parameterization, expect=expect),)
    if isinstance(models, Iterable) and not isinstance(models, nn.Module | str):
        families = tuple(models)
        if not families or not all(isinstance(f, Family) for f in families):
            raise DiagnosticsError("a sequence of models must hold Family objects")
        keys = [(f.name, f.parameterization) for f in families]
        if len(set(keys)) != len(keys):
            raise DiagnosticsError(f"two families share a name and parameterisation: {keys}")
        return families
    if callable(models) and not isinstance(models, nn.Module):
        return (Family(name or family_name(models), models, None if widths is None else tuple(widths),
                       parameterization, expect=expect),)
    raise DiagnosticsError(
        "models must be a callable width → nn.Module, a dict {width: callable}, a Family or a list of families; "
        f"got {type(models).__name__}"
    )


def check_growth(family: Family, counts: Mapping[int, int]) -> None:
    """Refuse a family whose parameter count does not grow strictly with the width.

    Raises
    ------
    DiagnosticsError
        Naming the widths and their counts.
    """
    widths = sorted(counts)
    flat = [(a, b) for a, b in zip(widths, widths[1:], strict=False) if counts[b] <= counts[a]]
    if flat:
        table = ", ".join(f"width {w}: d = {counts[w]:,}" for w in widths)
        raise DiagnosticsError(
            f"family {family.name!r}: the parameter count does not grow with the width ({table}); the factory "
            "must pass the width on to the layers it sizes"
        )


def widths_around_threshold(family: Family, nm: int) -> tuple[int, ...]:
    """Widths spanning the counting threshold ``d = n·m`` of S1 (``theory/width.md#s1-counting``).

    Powers of two: the three largest with ``d < n·m`` (as many as exist), then every one from the first with
    ``d ≥ n·m`` to the first with ``d ≥ 15·n·m``. On the digits (``n·m = 1280``) this gives MLP widths
    4, 8, 16 | 32, 64, 128, 256 and CNN widths 2, 4, 8 | 16, 32, 64.

    Raises
    ------
    DiagnosticsError
        When the parameter count does not grow from one power of two to the next.
    """
    below, above, counts = [], [], {}
    width = 1
    while True:
        counts[width] = count_parameters(family.model(width, 0))
        check_growth(family, counts)
        (below if counts[width] < nm else above).append(width)
        if counts[width] >= _MAX_OVER * nm:
            break
        width *= 2
    return tuple(below[-3:] + above)


def record_steps(steps: int, records: int) -> tuple[int, ...]:
    """Step 0 and ``records`` steps log-spaced over ``[1, steps]`` (rounded, without repeats), ending at ``steps``.

    Log spacing resolves the early phase of training, where the kernel moves fastest, with as many records
    as the late phase; e.g. ``record_steps(300, 6) == (0, 3, 7, 17, 45, 116, 300)``.
    """
    points = {0, steps} | {round(steps ** (i / records)) for i in range(1, records + 1)}
    return tuple(sorted(points))


@dataclass(frozen=True)
class Plan:
    """Everything a study's runs need besides the data: families with resolved widths and recipes, seeds, records.

    Attributes
    ----------
    families
        The families, each with its widths and recipe set.
    seeds
        Seeds of initialisation and batch order.
    records
        Measurements after step 0, log-spaced (:func:`record_steps`).
    dtype
        Dtype of the measurements (``None``: the checks' default, float64 on the CPU).
    device
        Where the models train (``None``: the CPU).
    output
        The output selector of the measurements and of the training loss (:func:`diagnostics.jacobian`'s).
    """

    families: tuple[Family, ...]
    seeds: tuple[int, ...]
    records: int = 6
    dtype: str | None = None
    device: str | None = None
    output: Any = None

    def __post_init__(self) -> None:
        missing = [f.name for f in self.families if f.widths is None or f.recipe is None]
        if missing:
            raise DiagnosticsError(f"families {missing} have no widths or no recipe: resolve them first")
        seeds = tuple(self.seeds)
        if not seeds or len(set(seeds)) != len(seeds) or any(
                isinstance(s, bool) or not isinstance(s, int) for s in seeds):
            raise DiagnosticsError(f"seeds must be distinct integers, got {list(seeds)}")
        if isinstance(self.records, bool) or not isinstance(self.records, int) or self.records < 1:
            raise DiagnosticsError(f"records must be a positive integer, got {self.records!r}")
        if self.dtype is not None and self.dtype not in ("float32", "float64"):
            raise DiagnosticsError(f"dtype must be 'float32', 'float64' or None, got {self.dtype!r}")

    def runs(self) -> list[RunSpec]:
        """Every run, in a fixed order (family, parameterisation, width, seed)."""
        return [RunSpec(f.name, f.parameterization, w, s) for f in self.families for w in f.widths
                for s in self.seeds]

    def family(self, spec: RunSpec) -> Family:
        """Return the family of a run."""
        return next(f for f in self.families if (f.name, f.parameterization) == (spec.family, spec.parameterization))

    def fingerprint(self, spec: RunSpec, data_key: Mapping[str, Any]) -> str:
        """Hash the run and everything its result depends on.

        That is its family's factory and recipe, the data, the records, the dtype, the device and the output
        selector: a run of another study that shares them all is reused.
        """
        family = self.family(spec)
        keyed = {"run": spec.to_dict(), "family": family.identity(), "recipe": family.recipe.key(),
                 "data": dict(data_key), "records": self.records, "dtype": self.dtype, "device": self.device,
                 "output": setting_key(self.output)}
        text = json.dumps(keyed, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
