"""The project's own width sweep (``width-report`` without ``--family``): its settings, data and families.

A :class:`SweepConfig` names the bundled families (``mlp``, ``cnn``, ...), their parameterisations, widths and
seeds, and a data set of :func:`~diagnostics.data.load_dataset`; :func:`config_plan` registers those families as
factories of a :class:`~diagnostics.width.plan.Plan` (full-batch gradient descent on the squared loss, the whole
training set as the probe), so they run through the same study as the user's own families
(:func:`diagnostics.width.study`).

Learning rates (S4). ``lr = lr₀ · learning_rate_multiplier(parameterization, width)``:
``lr₀`` for ``"ntk"`` (the NTK has a width-independent limit, so the step stays ``O(1)`` and the
kernel freezes as the width grows) and ``lr₀ · width`` for ``"mf"`` (the NTK shrinks like
``1/width``; scaling the step up by the width is the maximal-update choice that keeps feature
learning ``O(1)``).

Comparable points. The base rates ``lr₀`` and step budgets of :data:`DEFAULT_LR` and :data:`DEFAULT_STEPS` were
chosen per family and parameterisation by the rule of :mod:`diagnostics.width.lr_sweep` (``--lr-sweep``,
``docs/width.md``): the largest ``lr₀`` of the grid that keeps the dynamics linearised at the initial kernel
convergent at every width (``ηλ_max(K_0)/n < 2``: no run starts in the catapult regime, where the kernel moves by
``O(1)`` early at every width and hides the lazy regime) and whose loss rises in no step of a short run; and the
number of steps at which the smallest over-parameterised width reaches the loss level :data:`LOSS_LEVEL` with it.
Both parameterisations are thereby compared at the same training loss on the reference width, not at the same
step count. The search ran on seed 0; on other seeds ``ηλ_max(K_0)/n`` at the NTK reference width can exceed 2
(it does for seeds 1 and 2 on the digits, ``docs/width.md``), and those runs start beyond the edge of stability of
their initial kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data import DataSplit, load_dataset
from ..models import FAMILIES, PARAMETERIZATIONS, build_model, learning_rate_multiplier
from .batches import StudyData, study_data
from .plan import Family, Plan, RunSpec, record_steps, widths_around_threshold
from .recipe import OptimizerFactory, Recipe

__all__ = [
    "DEFAULT_LR", "DEFAULT_STEPS", "EXPECTED_TREND", "FULL", "LOSS_LEVEL", "BuiltinFactory", "RunSpec", "SweepConfig",
    "TRADED", "build_run_model", "config_data", "config_plan", "config_setup", "default_widths", "load_data",
    "record_steps",
]

#: Base learning rates ``lr₀``, per ``"family/parameterization"`` (chosen by ``--lr-sweep``, see the module
#: docstring) and per parameterisation for the other families.
DEFAULT_LR: dict[str, float] = {
    "standard": 1.0, "ntk": 0.5, "mf": 1.0,
    "mlp/ntk": 2.0, "mlp/mf": 1.0, "cnn/ntk": 0.5, "cnn/mf": 0.25,
}
#: Full-batch gradient steps, per ``"family/parameterization"`` (the steps at which the reference width reaches
#: :data:`LOSS_LEVEL` at the chosen ``lr₀``) and per parameterisation for the other families.
DEFAULT_STEPS: dict[str, int] = {
    "standard": 300, "ntk": 300, "mf": 300,
    "mlp/ntk": 945, "mlp/mf": 258, "cnn/ntk": 2798, "cnn/mf": 1384,
}
#: S4 expectation per parameterisation: the NTK (and the standard one, whose step shrinks like ``1/width``) is lazy,
#: mean-field is rich (``theory/width.md#s4-lazy-versus-rich``).
EXPECTED_TREND = {"ntk": "decreasing", "standard": "decreasing", "mf": "order-one"}
#: The training loss at which the step budgets were matched (``--lr-sweep``).
LOSS_LEVEL = 0.05
#: The learning-rate grid of ``--lr-sweep``: ``lr₀`` from 1/4 to 16 in factors of 2.
LR_GRID: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
_MLP_FAMILIES = ("mlp", "deep-linear", "bias-free-relu")
_IMAGE_FAMILIES = ("cnn", "resnet")
#: The full configuration of ``docs/width.md`` (``width-report --full``): five seeds, at least five widths above
#: the counting threshold per family on the digits. Every other setting is the default's, so the runs the two
#: share have the same fingerprint and a full report in the default's folder reuses them.
FULL: dict[str, Any] = {
    "widths": {"mlp": (8, 16, 32, 64, 128, 256, 512), "cnn": (4, 8, 16, 24, 32, 48, 64)},
    "seeds": (0, 1, 2, 3, 4),
}
_DTYPES = ("float32", "float64")


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
    steps : int or dict
        Full-batch gradient steps: one number for every run, or per parameterisation (keys ``"ntk"``, ...,
        or ``"family/parameterization"``, which wins); what is not given takes :data:`DEFAULT_STEPS`. Stored
        per ``"family/parameterization"``.
    records : int
        Measurements after step 0, log-spaced over ``[1, steps]`` (:func:`record_steps`); the last is at
        ``steps``.
    lr : dict
        ``lr₀`` per parameterisation (or ``"family/parameterization"``, which wins); the step is
        ``lr₀ · learning_rate_multiplier(p, width)``. What is not given takes :data:`DEFAULT_LR`. Stored per
        ``"family/parameterization"``.
    dtype : str, optional
        ``"float32"`` or ``"float64"``: the dtype of the measurements (default float64 on the CPU, as every
        check of the toolkit; the certificate ``B`` depends on the smallest eigenvalues of ``K``, which
        float32 does not resolve near the counting threshold).
    mlp_depth : int
        Hidden layers of the MLP families (1: the two-layer networks of the S4 derivation; 0: an affine model,
        whose kernel never moves).
    data_seed : int
        Seed of the training and test subsets (and of the teacher-student task).
    teacher : dict
        Options of the ``"teacher-student"`` task (``d_in``, ``m``, ``teacher_width``, ...).
    lr_grid : tuple of float
        The ``lr₀`` values of ``--lr-sweep``.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    families: tuple[str, ...] = ("mlp", "cnn")
    parameterizations: tuple[str, ...] = ("ntk", "mf")
    widths: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int = 128
    n_test: int | None = None
    steps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_STEPS))
    records: int = 6
    lr: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LR))
    dtype: str | None = None
    mlp_depth: int = 1
    data_seed: int = 0
    teacher: dict[str, Any] = field(default_factory=dict)
    lr_grid: tuple[float, ...] = LR_GRID

    def __post_init__(self) -> None:
        self.families = tuple(self.families)
        self.parameterizations = tuple(self.parameterizations)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.widths = {k: tuple(int(w) for w in v) for k, v in dict(self.widths).items()}
        if isinstance(self.steps, int) and not isinstance(self.steps, bool):
            self.steps = {p: self.steps for p in self.parameterizations}
        self.steps = _per_run(dict(self.steps), DEFAULT_STEPS, self.families, self.parameterizations)
        self.lr = _per_run(dict(self.lr), DEFAULT_LR, self.families, self.parameterizations)
        self.lr_grid = tuple(float(x) for x in self.lr_grid)
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
        for name in ("n_train", "records"):
            _check_count(name, getattr(self, name))
        if isinstance(self.mlp_depth, bool) or not isinstance(self.mlp_depth, int) or self.mlp_depth < 0:
            raise ValueError(f"mlp_depth must be a non-negative integer, got {self.mlp_depth!r}")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES} or None, got {self.dtype!r}")
        if not self.lr_grid or any(not x > 0 for x in self.lr_grid):
            raise ValueError(f"lr_grid must hold positive learning rates, got {list(self.lr_grid)}")
        for key in self.steps:
            _check_count(f"steps for {key}", self.steps[key])
        for key, lr in self.lr.items():
            if not (isinstance(lr, int | float) and not isinstance(lr, bool) and lr > 0):
                raise ValueError(f"lr needs a positive base learning rate for {key}, got {lr!r}")

    # -- per run -----------------------------------------------------------------------------------
    def base_lr(self, family: str, parameterization: str) -> float:
        """Return ``lr₀`` of a family and parameterisation."""
        return float(self.lr[f"{family}/{parameterization}"])

    def step_size(self, spec: RunSpec) -> float:
        """Return the learning rate of a run, ``lr₀ · learning_rate_multiplier(parameterization, width)``."""
        return self.base_lr(spec.family, spec.parameterization) * learning_rate_multiplier(
            spec.parameterization, spec.width)

    def steps_for(self, family: str, parameterization: str) -> int:
        """Return the number of gradient steps of a family and parameterisation."""
        return int(self.steps[f"{family}/{parameterization}"])

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


def _per_run(given: dict[str, Any], defaults: dict[str, Any], families: tuple[str, ...],
             parameterizations: tuple[str, ...]) -> dict[str, Any]:
    """Return one value per ``"family/parameterization"`` of the config.

    Given for the pair, else given for the parameterisation, else the default for the pair, else the default for
    the parameterisation (else ``None``, which the checks refuse). Pairs of other families are dropped.
    """
    unknown = [k for k in given if k not in PARAMETERIZATIONS and k.partition("/")[0] not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown keys {unknown}: use a parameterisation or 'family/parameterization'")
    out = {}
    for family in families:
        for p in parameterizations:
            pair = f"{family}/{p}"
            for table, key in ((given, pair), (given, p), (defaults, pair), (defaults, p)):
                if key in table:
                    out[pair] = table[key]
                    break
            else:
                out[pair] = None
    return out


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


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
    factory = BuiltinFactory(family, parameterization, data.input_shape, data.n_outputs, mlp_depth)
    return Family(family, factory, parameterization=parameterization).model(width, seed)


def default_widths(family: str, data: DataSplit, mlp_depth: int = 1) -> tuple[int, ...]:
    """Widths spanning the counting threshold ``d = n·m`` of S1 for one of the project's families on ``data``.

    :func:`~diagnostics.width.plan.widths_around_threshold` of its factory: on the digits (``n·m = 1280``) MLP widths
    4, 8, 16 | 32, 64, 128, 256 and CNN widths 2, 4, 8 | 16, 32, 64.
    """
    factory = BuiltinFactory(family, "ntk", data.input_shape, data.n_outputs, mlp_depth)
    return widths_around_threshold(Family(family, factory), data.n_train * data.n_outputs)


@dataclass(frozen=True)
class BuiltinFactory:
    """The factory ``width → nn.Module`` of one of the project's families and parameterisations (picklable).

    Called under ``torch.manual_seed(seed)`` by :meth:`~diagnostics.width.plan.Family.model`, it builds the model
    :func:`~diagnostics.models.build_model` seeds with that same seed.
    """

    family: str
    parameterization: str
    input_shape: tuple[int, ...]
    n_out: int
    mlp_depth: int = 1

    def __call__(self, width: int) -> nn.Module:
        """Build the model of ``width``, seeded with the seed the caller set."""
        extra = {"depth": self.mlp_depth} if self.family in _MLP_FAMILIES else {}
        return build_model(self.family, width, input_shape=self.input_shape, n_out=self.n_out,
                           parameterization=self.parameterization, seed=torch.initial_seed(), **extra)

    def key(self) -> dict[str, Any]:
        """Return a JSON-ready description (for fingerprints)."""
        return {"family": self.family, "parameterization": self.parameterization,
                "mlp_depth": self.mlp_depth if self.family in _MLP_FAMILIES else None}


def config_plan(config: SweepConfig, data: DataSplit) -> Plan:
    """Return the plan of a resolved config: its families registered as factories.

    Each is trained by full-batch gradient descent on the squared loss with step
    ``lr₀ · learning_rate_multiplier(parameterization, width)`` for its step budget, and judged against the S4
    expectation of its parameterisation.
    """
    families = tuple(
        Family(fam, BuiltinFactory(fam, p, data.input_shape, data.n_outputs, config.mlp_depth),
               widths=config.widths[fam], parameterization=p,
               recipe=Recipe(OptimizerFactory("sgd", config.base_lr(fam, p), scaling=p), config.steps_for(fam, p)),
               expect=EXPECTED_TREND.get(p))
        for fam in config.families for p in config.parameterizations
    )
    return Plan(families, config.seeds, config.records, config.dtype)


def config_data(config: SweepConfig, data: DataSplit) -> StudyData:
    """Return the data of a config's runs: the training set is the probe (``n = n_train``), the test split tests."""
    return study_data(data, probe_size=None, name=data.name)


#: What the default configuration gives up to finish in about six minutes on two idle cores, against ``--full``.
TRADED = (
    "The default keeps every measurement in float64 (the certificate B and the D1 verdict near the counting "
    "threshold depend on eigenvalues float32 cannot resolve) and pays for it with size: three seeds, widths up to "
    "256 (MLP) and 64 (CNN) with three or four of them above the counting threshold, and {records} log-spaced "
    "records per run. The slopes of S4 then rest on three seeds and a width range of 8 (MLP) or 4 (CNN), so "
    "their intervals (t over three per-seed slopes) are wide; `--full` (docs/width.md) has five seeds, five or "
    "more widths above the threshold per family, and reuses the default's runs when written to the same folder."
)


def config_setup(config: SweepConfig, data: DataSplit) -> list[str]:
    """Sentences of the report's *Setup* section for the project's own sweep: data, families, steps, trade-offs."""
    nm = data.n_train * data.n_outputs
    widths = "; ".join(f"{fam}: {', '.join(map(str, ws))}" for fam, ws in config.widths.items())
    rules = "; ".join(
        f"{fam}/{p}: lr = {config.base_lr(fam, p):g} × {_multiplier_text(p)} for {config.steps_for(fam, p)} steps "
        f"(records at {', '.join(map(str, record_steps(config.steps_for(fam, p), config.records)))})"
        for fam in config.families for p in config.parameterizations
    )
    task = "one-hot class targets" if data.task == "classification" else "real-valued targets"
    return [
        f"Data: {data.name}, n = {data.n_train} training samples ({task}, m = {data.n_outputs} "
        f"outputs), {data.n_test} test samples. The probe is the whole training set, so n·m = {nm} and "
        "the tracked loss is the training loss.",
        f"Families {', '.join(config.families)} (MLP: {config.mlp_depth} hidden layer(s); CNN: two 3×3 "
        f"convolutions with max-pooling), widths {widths}; seeds {', '.join(map(str, config.seeds))}.",
        "Training: full-batch gradient descent on the squared loss L = (1/2n)‖f_X − Y‖², measured by "
        f"`AlignmentTracker` in {config.dtype or 'float64'} at log-spaced records. Step sizes and budgets "
        f"(theory/width.md#s4-lazy-versus-rich): {rules}. NTK keeps an O(1) step (its kernel has a "
        "width-independent limit); mean-field scales the step up by the width (its kernel shrinks like 1/width), "
        "the maximal-update choice that keeps feature learning O(1).",
        "Comparable points: the base rates and step budgets come from `--lr-sweep` on the smallest "
        "over-parameterised width (the largest lr₀ of the grid whose loss never rises in a step and that diverges "
        f"at no width; the steps at which that width reaches the training loss {LOSS_LEVEL:g}), so the two "
        "parameterisations are compared at the same loss on the reference width, not at the same step count.",
        "What the default trades: " + TRADED.format(records=config.records),
    ]


def _multiplier_text(parameterization: str) -> str:
    factor = learning_rate_multiplier(parameterization, 2)
    return {0.5: "1/width", 1.0: "1", 2.0: "width"}[factor]
