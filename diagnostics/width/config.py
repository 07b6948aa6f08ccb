"""What a width sweep runs: its runs ``(family, parameterization, width, seed)``, its settings and its data.

Learning rates (S4). ``lr = lr₀[parameterization] · learning_rate_multiplier(parameterization, width)``:
``lr₀`` for ``"ntk"`` (the NTK has a width-independent limit, so the step stays ``O(1)`` and the
kernel freezes as the width grows) and ``lr₀ · width`` for ``"mf"`` (the NTK shrinks like
``1/width``; scaling the step up by the width is the maximal-update choice that keeps feature
learning ``O(1)``). The default ``lr₀`` (0.5 for ``"ntk"``, 1.0 for ``"mf"``) is below the catapult
instability of the narrow NTK networks on the digits; larger ``lr₀`` for ``"ntk"`` makes the kernel
move by ``O(1)`` early in training at every width, which hides the lazy regime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..data import DataSplit, load_dataset
from ..models import FAMILIES, PARAMETERIZATIONS, build_model, count_parameters

__all__ = ["DEFAULT_LR", "RunSpec", "SweepConfig", "build_run_model", "default_widths", "load_data"]

#: Width-independent base learning rates ``lr₀`` (see the module docstring).
DEFAULT_LR: dict[str, float] = {"standard": 1.0, "ntk": 0.5, "mf": 1.0}
_MLP_FAMILIES = ("mlp", "deep-linear", "bias-free-relu")
_IMAGE_FAMILIES = ("cnn", "resnet")
#: Largest width of the default grid: the first power of two with ``d ≥ _MAX_OVER · n·m``.
_MAX_OVER = 30


@dataclass(frozen=True, order=True)
class RunSpec:
    """One run of a sweep: a model family, its parameterisation, a width and an initialisation seed."""

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


@dataclass
class SweepConfig:
    """What a width sweep trains and measures.

    Parameters
    ----------
    dataset : str
        A name accepted by :func:`~diagnostics.data.load_dataset` (default the bundled ``"digits"``).
    data_dir : str, optional
        Folder of the data files (file-based data sets only).
    families : tuple of str
        Model families of :func:`~diagnostics.models.build_model`.
    parameterizations : tuple of str
        ``"ntk"`` and/or ``"mf"`` (and ``"standard"``); S4 contrasts the first two.
    widths : dict, optional
        Widths per family; a family left out gets :func:`default_widths` (resolved by
        :meth:`resolve`).
    seeds : tuple of int
        Initialisation seeds (the data subset does not depend on them).
    n_train : int
        Training samples, all of them used as the probe: ``n`` in ``d = n·m``.
    n_test : int, optional
        Test samples for the test accuracy (default: the whole test split).
    steps, every : int
        Full-batch gradient steps, and the measurement interval (``steps`` must be a multiple).
    lr : dict
        ``lr₀`` per parameterisation; the step is ``lr₀ · learning_rate_multiplier(p, width)``.
    mlp_depth : int
        Hidden layers of the MLP families (1: the two-layer networks of the S4 derivation).
    data_seed : int
        Seed of the training and test subsets (and of the teacher-student task).
    teacher : dict
        Options of the ``"teacher-student"`` task (``d_in``, ``m``, ``teacher_width``, ...).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    families: tuple[str, ...] = ("mlp", "cnn")
    parameterizations: tuple[str, ...] = ("ntk", "mf")
    widths: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int = 128
    n_test: int | None = None
    steps: int = 300
    every: int = 50
    lr: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LR))
    mlp_depth: int = 1
    data_seed: int = 0
    teacher: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.families = tuple(self.families)
        self.parameterizations = tuple(self.parameterizations)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.widths = {k: tuple(int(w) for w in v) for k, v in dict(self.widths).items()}
        self.lr = {**{p: DEFAULT_LR[p] for p in self.parameterizations if p in DEFAULT_LR}, **self.lr}
        self.teacher = dict(self.teacher)
        _check_known("family", self.families, FAMILIES)
        _check_known("parameterization", self.parameterizations, PARAMETERIZATIONS)
        if "resnet" in self.families and set(self.parameterizations) - {"standard"}:
            raise ValueError("family 'resnet' supports only the 'standard' parameterization")
        _check_known("family in widths", tuple(self.widths), self.families, allow_empty=True)
        for name, values in (("seeds", self.seeds), *((f"widths[{k}]", v) for k, v in self.widths.items())):
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be a non-empty list without repeats, got {list(values)}")
        if any(w < 1 for v in self.widths.values() for w in v):
            raise ValueError(f"widths must be positive, got {self.widths}")
        for name in ("n_train", "steps", "every", "mlp_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.steps % self.every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of every ({self.every})")
        for p in self.parameterizations:
            if not (isinstance(self.lr.get(p), int | float) and self.lr[p] > 0):
                raise ValueError(f"lr needs a positive base learning rate for {p!r}, got {self.lr.get(p)!r}")

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary; :meth:`from_dict` reads it back."""
        out = dataclasses.asdict(self)
        out["widths"] = {k: list(v) for k, v in self.widths.items()}
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SweepConfig:
        """Build a config from :meth:`to_dict` output (unknown keys are an error)."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**values)

    def fingerprint(self, spec: RunSpec) -> str:
        """Hash of the run and of every field its result depends on.

        Families, parameterisations, widths and seeds choose *which* runs exist, ``data_dir`` only
        where the files are, and only the run's own ``lr₀`` matters, so extending a sweep reuses
        its finished runs.
        """
        skip = {"families", "parameterizations", "widths", "seeds", "data_dir", "lr"}
        keyed = {k: v for k, v in self.to_dict().items() if k not in skip}
        keyed.update(spec.to_dict(), lr=self.lr[spec.parameterization])
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]

    # -- the runs ----------------------------------------------------------------------------------
    def resolve(self, data: DataSplit) -> SweepConfig:
        """Return a copy with explicit widths for every family (:func:`default_widths` where missing)."""
        widths = {
            fam: self.widths.get(fam) or default_widths(fam, data, self.mlp_depth) for fam in self.families
        }
        return dataclasses.replace(self, widths=widths)

    def runs(self) -> list[RunSpec]:
        """Every run of a resolved config, in a fixed order (family, parameterisation, width, seed)."""
        missing = [f for f in self.families if f not in self.widths]
        if missing:
            raise ValueError(f"no widths for {missing}: call resolve(data) first")
        return [
            RunSpec(fam, p, w, s)
            for fam in self.families
            for p in self.parameterizations
            for w in self.widths[fam]
            for s in self.seeds
        ]


def _check_known(what: str, values: tuple, known: Iterable, allow_empty: bool = False) -> None:
    known = tuple(known)
    bad = [v for v in values if v not in known]
    if bad or not (values or allow_empty):
        choices = ", ".join(map(str, known))
        raise ValueError(f"unknown or empty {what} {bad or list(values)}; known: {choices}")


# ---------------------------------------------------------------------------------------------
# Data and models


def load_data(config: SweepConfig) -> DataSplit:
    """Load the config's data set; a file-based one that is absent raises ``FileNotFoundError``.

    Image families need ``(C, H, W)`` inputs, so they are refused for flat data (teacher-student).
    """
    data = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        n_train=config.n_train,
        n_test=config.n_test,
        seed=config.data_seed,
        **config.teacher,
    )
    flat = [f for f in config.families if f in _IMAGE_FAMILIES and len(data.input_shape) != 3]
    if flat:
        raise ValueError(
            f"families {flat} need image inputs (C, H, W); {data.name} has input shape {data.input_shape}. "
            "Use --families mlp for it."
        )
    return data


def build_run_model(family: str, width: int, data: DataSplit, parameterization: str, seed: int,
                    mlp_depth: int) -> nn.Module:
    """Build the seeded model of one run for ``data`` (the MLP families with ``mlp_depth`` hidden layers)."""
    extra = {"depth": mlp_depth} if family in _MLP_FAMILIES else {}
    return build_model(
        family, width, input_shape=data.input_shape, n_out=data.n_outputs, parameterization=parameterization,
        seed=seed, **extra,
    )


def default_widths(family: str, data: DataSplit, mlp_depth: int = 1) -> tuple[int, ...]:
    """Widths spanning the counting threshold ``d = n·m`` of S1 (theory/width.md) for one family.

    Powers of two: the three largest with ``d < n·m`` (as many as exist), the first with
    ``d ≥ n·m``, the first with ``d ≥ 30·n·m``, and the power of two nearest their geometric mean.
    On the digits (``n·m = 1280``) this gives MLP widths 4, 8, 16 | 32, 128, 512 and CNN widths
    2, 4, 8 | 16, 32, 64.
    """
    nm = data.n_train * data.n_outputs
    below, above = [], []
    width = 1
    while True:
        d = count_parameters(build_run_model(family, width, data, "ntk", 0, mlp_depth))
        if d < nm:
            below.append(width)
        else:
            above.append(width)
            if d >= _MAX_OVER * nm:
                break
        width *= 2
    first, last = above[0], above[-1]
    middle = 2 ** round((math.log2(first) + math.log2(last)) / 2)
    return tuple(sorted(set(below[-3:] + [first, middle, last])))
