"""Base optimiser versus aligned training on a data set, over seeds: the table of ``docs/application.md``.

For every seed a residual network (convolutions, skip connections, batch norm; :class:`~diagnostics.models.ResNet`)
is trained with the base optimiser up to the switch epoch. The state at ``τ`` (model, optimiser, data order)
is then continued once per variant for the remaining epochs:

``base``
    the base optimiser, unchanged;
``tangent``, ``penultimate``
    :class:`~diagnostics.aligned.AlignedTraining` with that frozen feature map and full coefficients;
``tangent/rank-one``, ``penultimate/rank-one``
    the same with the rank-one construction of ``theory/application_cheaper.md``.

Every variant of a seed shares the trajectory up to ``τ``, so the comparison isolates what the
augmentation does. The table reports test accuracy (mean ± std over seeds), the final training loss
(whole training set, eval mode, the augmented model for the framework), the guarantee status of the run,
the time per epoch after the switch and the one-time cost of the check.

Command line: ``python -m diagnostics aligned-training --help`` (:mod:`diagnostics.aligned.command`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import DataSplit, load_dataset
from ..engine.choice import synchronize
from ..models import build_model
from ..store import RunStore
from .trainer import AlignedTraining

__all__ = ["OPTIMIZERS", "VARIANTS", "ExperimentConfig", "run_experiment", "summary_table", "to_markdown"]

VARIANTS = ("base", "tangent", "penultimate", "tangent/rank-one", "penultimate/rank-one")
OPTIMIZERS = ("sgd", "gd", "adam")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run depends on (printed with the table).

    Attributes
    ----------
    dataset, data_dir, n_train, n_test
        Passed to :func:`~diagnostics.data.load_dataset` (split seed 0: the same split for every seed).
    device
        ``"cpu"`` or ``"cuda"``.
    seeds
        One run per seed (initialisation and data order).
    variants
        Subset of :data:`VARIANTS`.
    width, n_blocks
        The ResNet's channels and residual blocks.
    epochs, switch_epoch
        Epochs in all, and the epoch after which the framework switches (``τ`` in steps).
    batch_size
        Minibatch size; ``0`` means full batch (gradient descent on the whole training set).
    optimizer, lr, momentum
        ``"sgd"`` (with ``momentum``), ``"gd"`` (plain gradient steps) or ``"adam"``; the same before and after
        ``τ`` and for every variant.
    loss
        ``"ce"`` (cross-entropy on the logits) or ``"mse"`` (squared loss on one-hot targets).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    device: str = "cpu"
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = VARIANTS
    width: int = 8
    n_blocks: int = 2
    epochs: int = 30
    switch_epoch: int = 15
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    loss: str = "ce"

    def __post_init__(self) -> None:
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.loss not in ("ce", "mse"):
            raise ValueError(f"loss must be 'ce' or 'mse', got {self.loss!r}")
        if not 0 < self.switch_epoch < self.epochs:
            raise ValueError(f"switch_epoch must lie in (0, epochs = {self.epochs}), got {self.switch_epoch}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")


def run_experiment(
    config: ExperimentConfig,
    split: DataSplit | None = None,
    *,
    folder: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Train every variant for every seed; one row per (variant, seed).

    Parameters
    ----------
    config
        The experiment.
    split
        The data (default: ``load_dataset(config.dataset, ...)``).
    folder
        Where finished work is kept, so that an interrupted experiment resumes without losing it:
        ``runs/seed<s>.switch.pt`` (model, optimiser and data order at ``τ``) and
        ``runs/seed<s>-<variant>.json`` (one finished row), each written atomically and tagged with a
        fingerprint of the settings it depends on; a rerun computes only what is missing or stale.
    progress
        Show a progress bar over the (seed, variant) runs.

    Returns
    -------
    pandas.DataFrame
        Columns ``variant``, ``seed``, ``test_accuracy``, ``train_accuracy``, ``train_loss``, ``status``,
        ``bound_records``, ``bound_holds``, ``max_bound_ratio``, ``distance_holds``, ``residual_before``,
        ``residual``, ``random_features``, ``n_coefficients``, ``nu_norm_sq``, ``omega_norm_sq``,
        ``seconds_per_epoch_before``, ``seconds_per_epoch``, ``check_seconds``, ``extra_bytes``,
        ``peak_bytes`` (CUDA only).
    """
    if split is None:
        split = load_dataset(config.dataset, data_dir=config.data_dir, n_train=config.n_train,
                             n_test=config.n_test, seed=0)
    if split.task != "classification":
        raise ValueError("the experiment trains classifiers; pick a classification data set")
    device = torch.device(config.device)
    data = _Data(split, device)
    store = _Store(Path(folder), config) if folder is not None else None
    rows = []
    with tqdm(total=len(config.seeds) * len(config.variants), desc="experiment", unit="run",
              disable=not progress) as bar:
        for seed in config.seeds:
            rows.extend(_run_seed(config, data, seed, store, bar))
    return pd.DataFrame(rows)


class _Store:
    """The experiment's runs in a :class:`~diagnostics.store.RunStore`: finished rows and switch states."""

    def __init__(self, folder: Path, config: ExperimentConfig) -> None:
        self.runs = RunStore(folder)
        # seeds and variants choose which runs exist and data_dir only where the files are
        keyed = {k: v for k, v in asdict(config).items() if k not in {"seeds", "variants", "data_dir"}}
        self._key = json.dumps(keyed, sort_keys=True)

    def fingerprint(self, seed: int, variant: str = "") -> str:
        """Hash of the settings, the seed and the variant."""
        return hashlib.sha256(f"{self._key}|{seed}|{variant}".encode()).hexdigest()[:16]

    def row(self, seed: int, variant: str) -> dict | None:
        """Return the finished row, or ``None`` (missing, torn or from other settings)."""
        stored = self.runs.read(_row_name(seed, variant), self.fingerprint(seed, variant))
        return None if stored is None else stored["row"]

    def write_row(self, seed: int, variant: str, row: dict) -> None:
        """Store a finished row."""
        self.runs.write(_row_name(seed, variant), self.fingerprint(seed, variant), {"row": row})

    def switch_state(self, seed: int) -> dict | None:
        """Return the state at ``τ``, or ``None``."""
        return self.runs.read_state(f"seed{seed}.switch", self.fingerprint(seed))

    def write_switch_state(self, seed: int, state: dict) -> None:
        """Store the state at ``τ``."""
        self.runs.write_state(f"seed{seed}.switch", self.fingerprint(seed), state)


def _row_name(seed: int, variant: str) -> str:
    return f"seed{seed}-{variant.replace('/', '-')}"


@dataclass
class _Data:
    split: DataSplit
    device: torch.device

    def __post_init__(self) -> None:
        s = self.split
        self.X, self.y = s.X_train.to(self.device), s.y_train.to(self.device)
        self.X_test, self.y_test = s.X_test.to(self.device), s.y_test.to(self.device)
        self.Y = F.one_hot(self.y, s.n_classes).to(self.X.dtype)


def _loss_fn(config: ExperimentConfig, out: torch.Tensor, y: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    if config.loss == "ce":
        return F.cross_entropy(out, y)
    return ((out - Y) ** 2).sum() / (2 * out.shape[0])


def _optimizer(config: ExperimentConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    momentum = config.momentum if config.optimizer == "sgd" else 0.0
    return torch.optim.SGD(params, lr=config.lr, momentum=momentum)


@dataclass
class _Plain:
    """The base optimiser behind the same three names as :class:`AlignedTraining`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def step(self, closure) -> None:
        self.optimizer.step(closure)


def _epoch(config: ExperimentConfig, data: _Data, runner: _Plain | AlignedTraining,
           generator: torch.Generator) -> float:
    """One epoch of (mini)batch steps through ``runner.step(closure)``; returns its wall time in seconds."""
    n = data.X.shape[0]
    size = config.batch_size or n
    order = torch.randperm(n, generator=generator).to(data.device)
    runner.model.train()
    start = time.perf_counter()
    for s in range(0, n, size):
        idx = order[s : s + size]

        def closure(idx: torch.Tensor = idx) -> torch.Tensor:
            runner.optimizer.zero_grad()
            loss = _loss_fn(config, runner.model(data.X[idx]), data.y[idx], data.Y[idx])
            loss.backward()
            return loss

        runner.step(closure)
    synchronize(data.device)
    return time.perf_counter() - start


@torch.no_grad()
def _evaluate(config: ExperimentConfig, data: _Data, net: nn.Module) -> dict[str, float]:
    was = net.training
    net.eval()
    try:
        out_train = torch.cat([net(data.X[s : s + 1024]) for s in range(0, data.X.shape[0], 1024)])
        out_test = torch.cat([net(data.X_test[s : s + 1024]) for s in range(0, data.X_test.shape[0], 1024)])
    finally:
        net.train(was)
    return {
        "test_accuracy": float((out_test.argmax(1) == data.y_test).float().mean()),
        "train_accuracy": float((out_train.argmax(1) == data.y).float().mean()),
        "train_loss": float(_loss_fn(config, out_train, data.y, data.Y)),
    }


def _switch_state(config: ExperimentConfig, data: _Data, seed: int, build) -> dict:
    """Train the base model up to ``τ``; return what every variant continues from."""
    model = build()
    base = _Plain(model, _optimizer(config, model.parameters()))
    generator = torch.Generator().manual_seed(seed)
    before = [_epoch(config, data, base, generator) for _ in range(config.switch_epoch)]
    return {"model": model.state_dict(), "optimizer": base.optimizer.state_dict(),
            "generator": generator.get_state(), "seconds_per_epoch": float(np.mean(before))}


def _run_seed(config: ExperimentConfig, data: _Data, seed: int, store: _Store | None, bar: tqdm) -> list[dict]:
    split = data.split
    build = lambda: build_model("resnet", config.width, input_shape=split.input_shape,  # noqa: E731
                                n_out=split.n_classes, seed=seed, n_blocks=config.n_blocks).to(data.device)
    rows = {v: store.row(seed, v) for v in config.variants} if store is not None else {}
    bar.update(sum(r is not None for r in rows.values()))
    todo = [v for v in config.variants if rows.get(v) is None]
    state = store.switch_state(seed) if store is not None and todo else None
    if todo and state is None:
        state = _switch_state(config, data, seed, build)
        if store is not None:
            store.write_switch_state(seed, state)
    generator = torch.Generator()
    for variant in todo:
        net = build()
        net.load_state_dict(state["model"])
        opt = _optimizer(config, net.parameters())
        opt.load_state_dict(copy.deepcopy(state["optimizer"]))
        generator.set_state(state["generator"])
        if data.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(data.device)
        row: dict = {"variant": variant, "seed": seed, "seconds_per_epoch_before": state["seconds_per_epoch"]}
        if variant == "base":
            runner, trainer = _Plain(net, opt), None
        else:
            feature_map, _, coefficients = variant.partition("/")
            trainer = AlignedTraining(net, opt, train_data=(data.X, data.y), switch_step=0, loss=config.loss,
                                      feature_map=feature_map, coefficients=coefficients or "full",
                                      full_batch=config.batch_size == 0, seed=seed)
            runner = trainer
        after = [_epoch(config, data, runner, generator) for _ in range(config.epochs - config.switch_epoch)]
        row["seconds_per_epoch"] = float(np.mean(after))
        row.update(_evaluate(config, data, runner.model))
        row.update(_framework_columns(trainer))
        row["peak_bytes"] = torch.cuda.max_memory_allocated(data.device) if data.device.type == "cuda" else math.nan
        rows[variant] = row
        if store is not None:
            store.write_row(seed, variant, row)
        bar.update(1)
    return [rows[v] for v in config.variants]


def _framework_columns(trainer: AlignedTraining | None) -> dict:
    if trainer is None:
        return {"status": "—", "extra_bytes": 0, "check_seconds": 0.0, "n_coefficients": 0}
    report, guarantee = trainer.switch_report, trainer.guarantee()
    augmented = trainer.augmented
    frozen_bytes = sum(t.numel() * t.element_size()
                       for t in [*augmented.features.parameters(), *augmented.features.buffers()])
    coefficient_bytes = sum(p.numel() * p.element_size() for p in augmented.trainable())
    state_bytes = sum(t.numel() * t.element_size() for p in augmented.trainable()
                      for t in trainer.optimizer.state.get(p, {}).values() if isinstance(t, torch.Tensor))
    return {
        "status": guarantee.status,
        "bound_records": guarantee.records,
        "bound_holds": guarantee.bound_holds,
        "max_bound_ratio": guarantee.max_bound_ratio,
        "distance_holds": bool(guarantee.distance.holds) if guarantee.distance is not None else True,
        "residual_before": report.residual_before,
        "residual": report.residual + report.rounding,
        "random_features": report.random_features,
        "n_coefficients": report.n_coefficients,
        "nu_norm_sq": report.nu_norm_sq,
        "omega_norm_sq": report.omega_norm_sq,
        "check_seconds": report.check_seconds,
        "extra_bytes": frozen_bytes + 2 * coefficient_bytes + state_bytes,  # copy, u and its gradient, state
    }


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per variant (sample std, ``ddof=1``; 0 for one seed).

    Returns
    -------
    pandas.DataFrame
        One row per variant with ``test_acc_mean``, ``test_acc_std``, ``test_acc_seeds`` (per seed, in seed
        order), ``train_loss_mean``, ``train_loss_std``,
        ``status``, ``bound`` (records within the bound / records), ``s_per_epoch``, ``check_s``,
        ``extra_MB``, ``within_one_std_of_base``.
    """
    out = []
    base = runs[runs.variant == "base"]
    base_mean = base.test_accuracy.mean() if len(base) else math.nan
    base_std = base.test_accuracy.std(ddof=1) if len(base) > 1 else 0.0
    for variant, g in runs.groupby("variant", sort=False):
        std = g.test_accuracy.std(ddof=1) if len(g) > 1 else 0.0
        is_base = variant == "base"
        records = g.bound_records.sum() if "bound_records" in g and not is_base else 0
        out.append({
            "variant": variant,
            "seeds": len(g),
            "test_acc_mean": g.test_accuracy.mean(),
            "test_acc_std": std,
            "test_acc_seeds": tuple(g.sort_values("seed").test_accuracy),
            "train_loss_mean": g.train_loss.mean(),
            "train_loss_std": g.train_loss.std(ddof=1) if len(g) > 1 else 0.0,
            "status": "—" if is_base else ", ".join(sorted(set(g.status))),
            "bound": "—" if is_base else f"{int(g.bound_holds.sum())}/{int(records)}",
            "s_per_epoch": g.seconds_per_epoch.mean(),
            "check_s": g.check_seconds.mean(),
            "extra_MB": g.extra_bytes.mean() / 2**20,
            "within_one_std_of_base": bool(g.test_accuracy.mean() >= base_mean - base_std),
        })
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame, config: ExperimentConfig) -> str:
    """Format the summary as a markdown table, with the configuration underneath."""
    lines = [
        "| variant | test accuracy (mean ± std) | per seed (%) | final training loss | guarantee | bound held | "
        "s / epoch after τ | check at τ (s) | extra memory (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.variant} | {100 * r.test_acc_mean:.2f} ± {100 * r.test_acc_std:.2f} % | "
            f"{', '.join(f'{100 * a:.1f}' for a in r.test_acc_seeds)} | "
            f"{r.train_loss_mean:.2e} ± {r.train_loss_std:.1e} | {r.status} | {r.bound} | {r.s_per_epoch:.3f} | "
            f"{r.check_s:.2f} | {r.extra_MB:.2f} |"
        )
    settings = {k: v for k, v in asdict(config).items()
                if v is not None and not (k == "momentum" and config.optimizer != "sgd")}
    lines.append("")
    lines.append("Configuration: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()))
    return "\n".join(lines)
