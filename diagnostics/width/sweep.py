"""Width sweeps: train model families over widths, parameterisations and seeds (THEORY §5).

One *run* is a ``(family, parameterization, width, seed)``: a model built by
:func:`~diagnostics.models.build_model`, trained by full-batch gradient descent on the squared loss
``L = (1/2n)‖f_X − Y‖²`` (one-hot ``Y`` for classes), with an
:class:`~diagnostics.tracking.AlignmentTracker` measuring D1, (I2), (I3) and the kernel movement on the
*whole training set* every ``every`` steps. The probe is the training set, so the tracked loss is
the training loss and the counting threshold of S1 is ``d = n·m`` with ``n = n_train``.

Learning rates (S4). ``lr = lr₀[parameterization] · learning_rate_multiplier(parameterization, width)``:
``lr₀`` for ``"ntk"`` (the NTK has a width-independent limit, so the step stays ``O(1)`` and the
kernel freezes as the width grows) and ``lr₀ · width`` for ``"mf"`` (the NTK shrinks like
``1/width``; scaling the step up by the width is the maximal-update choice that keeps feature
learning ``O(1)``). The default ``lr₀`` (0.5 for ``"ntk"``, 1.0 for ``"mf"``) is below the catapult
instability of the narrow NTK networks on the digits; larger ``lr₀`` for ``"ntk"`` makes the kernel
move by ``O(1)`` early in training at every width, which hides the lazy regime.

Execution. Every run is independent and deterministic (seeded initialisation, full-batch steps,
``torch`` limited to one thread inside the run), so the ``local`` executor (in-process, or a pool
of ``jobs`` processes) and the ``ray`` executor (one Ray task per run) produce identical tables.
Each finished run is written atomically to ``<folder>/runs/<run_id>.json`` (temporary file, then
:func:`os.replace`) by the driver as soon as it arrives, so an interrupted sweep loses only the runs
in flight and a rerun skips the finished ones. A run that raises is written to
``<run_id>.failed.json`` with its error, listed as missing and retried on the next rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data import DataSplit, load_dataset
from ..models import FAMILIES, PARAMETERIZATIONS, build_model, count_parameters, learning_rate_multiplier
from ..store import RunStore
from ..targets import Targets
from ..tracking import AlignmentTracker

__all__ = [
    "DEFAULT_LR",
    "EXECUTORS",
    "RunSpec",
    "SweepConfig",
    "SweepResult",
    "default_widths",
    "load_data",
    "load_results",
    "run_one",
    "run_sweep",
]

#: Width-independent base learning rates ``lr₀`` (see the module docstring).
DEFAULT_LR: dict[str, float] = {"standard": 1.0, "ntk": 0.5, "mf": 1.0}
EXECUTORS: tuple[str, ...] = ("local", "ray")
#: Tracker columns that measure time, not the model: excluded when comparing tables.
TIMING_COLUMNS: tuple[str, ...] = ("measure_seconds", "wall_time", "seconds")
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


def _build(family: str, width: int, data: DataSplit, parameterization: str, seed: int, mlp_depth: int):
    extra = {"depth": mlp_depth} if family in _MLP_FAMILIES else {}
    return build_model(
        family, width, input_shape=data.input_shape, n_out=data.n_outputs, parameterization=parameterization,
        seed=seed, **extra,
    )


def default_widths(family: str, data: DataSplit, mlp_depth: int = 1) -> tuple[int, ...]:
    """Widths spanning the counting threshold ``d = n·m`` of S1 (THEORY §5) for one family.

    Powers of two: the three largest with ``d < n·m`` (as many as exist), the first with
    ``d ≥ n·m``, the first with ``d ≥ 30·n·m``, and the power of two nearest their geometric mean.
    On the digits (``n·m = 1280``) this gives MLP widths 4, 8, 16 | 32, 128, 512 and CNN widths
    2, 4, 8 | 16, 32, 64.
    """
    nm = data.n_train * data.n_outputs
    below, above = [], []
    width = 1
    while True:
        d = count_parameters(_build(family, width, data, "ntk", 0, mlp_depth))
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


# ---------------------------------------------------------------------------------------------
# One run


def run_one(config: SweepConfig, spec: RunSpec, data: DataSplit) -> dict[str, Any]:
    """Train one model and track it; return ``{"summary": {...}, "records": [...]}``.

    Uses one ``torch`` thread (restored afterwards), so the numbers do not depend on the executor.
    Raises if the training diverges (non-finite loss) or a measurement fails.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(config, spec, data)
    finally:
        torch.set_num_threads(threads)


def _train(config: SweepConfig, spec: RunSpec, data: DataSplit) -> dict[str, Any]:
    start = time.perf_counter()
    model = _build(spec.family, spec.width, data, spec.parameterization, spec.seed, config.mlp_depth)
    X, T = data.X_train, data.y_train
    n = X.shape[0]
    Y = Targets.build(T, n, data.n_outputs, "mse").Y.to(X.dtype)
    lr = config.lr[spec.parameterization] * learning_rate_multiplier(spec.parameterization, spec.width)
    tracker = AlignmentTracker(model, (X, T), every=config.every, loss="mse", probe_size=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(config.steps + 1):
        tracker.step(step)
        if step == config.steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss = 0.5 * ((model(X) - Y) ** 2).sum() / n
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {loss.item()}) with lr {lr:g}")
        loss.backward()
        optimizer.step()
    history = tracker.history
    summary = {
        **spec.to_dict(),
        "run_id": spec.run_id,
        "lr": lr,
        "n_params": int(history["n_params"].iloc[-1]),
        "n_outputs": int(history["n_outputs"].iloc[-1]),
        **_final_and_initial(history),
        **_test_metrics(model, data),
        "seconds": time.perf_counter() - start,
    }
    summary["underparameterised"] = summary["n_params"] < summary["n_outputs"]
    return {"summary": summary, "records": history.to_dict("records")}


_FINAL = (
    "loss", "loss_lower_bound", "residual", "aligned", "rank", "bound_ratio", "certificate", "grad_norm",
    "kernel_movement_init", "param_movement", "effective_rank", "decomposition_gap", "lambda_max",
)


def _final_and_initial(history: pd.DataFrame) -> dict[str, Any]:
    first, last = history.iloc[0], history.iloc[-1]
    out = {f"final_{k}": _plain(last[k]) for k in _FINAL}
    out.update({f"init_{k}": _plain(first[k]) for k in ("loss", "residual", "rank", "lambda_max")})
    return out


def _test_metrics(model: torch.nn.Module, data: DataSplit) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = {}
        for split, X, y in (("train", data.X_train, data.y_train), ("test", data.X_test, data.y_test)):
            f = model(X)
            if data.task == "classification":
                out[f"{split}_accuracy"] = float((f.argmax(1) == y).double().mean())
                y = torch.nn.functional.one_hot(y, data.n_outputs).to(f.dtype)
            out[f"{split}_loss"] = float(0.5 * ((f - y) ** 2).sum() / X.shape[0])
    model.train(was_training)
    return out


def _plain(value: Any) -> Any:
    """Numpy scalars to Python (JSON) scalars."""
    return value.item() if hasattr(value, "item") else value


# ---------------------------------------------------------------------------------------------
# Executors: each yields one outcome per run, in completion order


def _outcome(config: dict[str, Any], spec: RunSpec, data: DataSplit) -> dict[str, Any]:
    """Run ``spec`` and wrap the result or the error; never raises (one failure loses one run)."""
    try:
        result = run_one(SweepConfig.from_dict(config), spec, data)
        return {"status": "ok", **result}
    except Exception as exc:  # noqa: BLE001 - a run's failure is data for the report
        return _failure(spec, exc, traceback.format_exc())


def _failure(spec: RunSpec, exc: BaseException, trace: str = "") -> dict[str, Any]:
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": trace,
            "summary": {**spec.to_dict(), "run_id": spec.run_id}}


def _local(config: dict, specs: list[RunSpec], data: DataSplit, jobs: int, address: str | None):
    """In-process when ``jobs == 1``; otherwise a pool of ``jobs`` spawned processes.

    A worker process that dies (segfault, out-of-memory kill) breaks the pool; the runs that were
    pending then are retried each in a fresh single-process pool, so only the run that kills its
    worker is lost.
    """
    if jobs == 1:
        for spec in specs:
            yield spec, _outcome(config, spec, data)
        return
    suspects = []
    with _pool(jobs, data) as pool:
        futures = {pool.submit(_pool_task, config, spec): spec for spec in specs}
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except BrokenProcessPool:
                suspects.append(futures[future])
    for spec in suspects:
        with _pool(1, data) as pool:
            try:
                yield spec, pool.submit(_pool_task, config, spec).result()
            except BrokenProcessPool as exc:
                yield spec, _failure(spec, RuntimeError(f"the worker process running it died ({exc})"))


def _pool(jobs: int, data: DataSplit) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(data, os.getpid()))


_WORKER_DATA: list[DataSplit] = []


def _init_worker(data: DataSplit, parent: int) -> None:
    """Keep the data; exit when the driver dies (a killed sweep leaves no orphaned workers)."""
    _WORKER_DATA[:] = [data]

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _pool_task(config: dict, spec: RunSpec) -> dict[str, Any]:
    return _outcome(config, spec, _WORKER_DATA[0])


def _ray(config: dict, specs: list[RunSpec], data: DataSplit, jobs: int, address: str | None):
    """One Ray task per run on the running Ray instance, else on ``address``, else a new local one.

    A local instance started here gets ``jobs`` CPUs and this package on its workers' path; a
    remote cluster needs the package installed on its workers.
    """
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError('the ray executor needs Ray: pip install "ray[default]"') from exc
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address)
        else:
            root = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
            ray.init(num_cpus=jobs, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_outcome)
        data_ref = ray.put(data)
        pending = {task.remote(config, spec, data_ref): spec for spec in specs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(done[0])
            try:
                yield spec, ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a lost worker loses only its run
                yield spec, _failure(spec, exc)
    finally:
        if started:
            ray.shutdown()


_EXECUTORS: dict[str, Callable[..., Iterator[tuple[RunSpec, dict]]]] = {"local": _local, "ray": _ray}


# ---------------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepResult:
    """Tables of a sweep.

    Attributes
    ----------
    records : pandas.DataFrame
        One row per run per tracker record (the run's fields, then the tracker's columns).
    runs : pandas.DataFrame
        One row per finished run: final and initial values, test metrics, learning rate, time.
    missing : pandas.DataFrame
        One row per run without a result: ``run_id``, the run's fields, ``status`` (``"failed"`` or
        ``"not run"``) and ``error``.
    executed : int
        Runs executed by this call (the others were read from earlier results).
    """

    records: pd.DataFrame
    runs: pd.DataFrame
    missing: pd.DataFrame
    executed: int = 0


def run_sweep(
    config: SweepConfig,
    folder: str | os.PathLike[str],
    *,
    data: DataSplit | None = None,
    executor: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> SweepResult:
    """Run every run of ``config`` not finished in ``folder`` and return the tables of all of them.

    Parameters
    ----------
    config : SweepConfig
        Widths left out are resolved with :func:`default_widths`.
    folder : path-like
        Output folder; results go to ``folder/runs/``.
    data : DataSplit, optional
        The loaded data (default: :func:`load_data`).
    executor : str
        ``"local"`` or ``"ray"``.
    jobs : int, optional
        Local processes (1: in-process) or CPUs of a Ray instance started here; default the CPUs
        available to this process.
    address : str, optional
        Address of an existing Ray cluster (``executor="ray"``).
    resume : bool
        Skip runs whose result file has the same :meth:`SweepConfig.fingerprint`.
    progress : bool
        Show a tqdm progress bar over runs.

    Returns
    -------
    SweepResult
    """
    if executor not in _EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    data = data if data is not None else load_data(config)
    config = config.resolve(data)
    jobs = jobs or len(os.sched_getaffinity(0))
    store, specs = RunStore(folder), config.runs()
    todo = [s for s in specs if not (resume and store.read(s.run_id, config.fingerprint(s)))]
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="width sweep", unit="run",
               disable=not progress)
    if todo:
        bar.write(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; running {len(todo)} "
                  f"({executor} executor)")
    with bar:
        for spec, outcome in _EXECUTORS[executor](config.to_dict(), todo, data, jobs, address):
            _write_outcome(store, spec, outcome, config.fingerprint(spec))
            bar.set_postfix_str(spec.run_id + ("" if outcome["status"] == "ok" else " FAILED"))
            bar.update()
    records, runs, missing = load_results(config, folder)
    return SweepResult(records, runs, missing, executed=len(todo))


def load_results(config: SweepConfig, folder: str | os.PathLike[str]) -> tuple[pd.DataFrame, ...]:
    """Read the result files of a resolved config: ``(records, runs, missing)`` (see :class:`SweepResult`)."""
    store = RunStore(folder)
    records, runs, missing = [], [], []
    for spec in config.runs():
        fingerprint = config.fingerprint(spec)
        result = store.read(spec.run_id, fingerprint)
        if result is not None:
            runs.append(result["summary"])
            records += [{**spec.to_dict(), "run_id": spec.run_id, **row} for row in result["records"]]
            continue
        failure = store.read(f"{spec.run_id}.failed", fingerprint)
        status, error = ("failed", failure["error"]) if failure is not None else ("not run", "")
        missing.append({"run_id": spec.run_id, **spec.to_dict(), "status": status, "error": error})
    columns = ["run_id", "family", "parameterization", "width", "seed", "status", "error"]
    return pd.DataFrame(records), pd.DataFrame(runs), pd.DataFrame(missing, columns=columns)


def _write_outcome(store: RunStore, spec: RunSpec, outcome: dict[str, Any], fingerprint: str) -> None:
    """``<run_id>.json`` for a finished run (its last failure forgotten), ``<run_id>.failed.json`` otherwise."""
    if outcome["status"] == "ok":
        store.write(spec.run_id, fingerprint, {"run_id": spec.run_id, **outcome})
        store.remove(f"{spec.run_id}.failed")
    else:
        store.write(f"{spec.run_id}.failed", fingerprint, {"run_id": spec.run_id, **outcome})

