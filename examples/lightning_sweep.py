"""A width sweep as a user trains it with Lightning, every run tracked by a tagged ``AlignmentCallback``.

Each run of the sweep is an ordinary ``Trainer.fit`` of one width and seed: a ``LightningModule`` around the model,
its own optimiser, shuffled minibatches of a ``DataLoader``. The only addition is the callback, whose
``tags={"width": ..., "seed": ...}`` go into its history file; the width report then reads the histories, with no
retraining::

    python -m examples.lightning_sweep --family bert --widths 16,32,64 --seeds 0,1 -o lightning_logs
    python -m diagnostics width-report --from-runs lightning_logs -o reports/width-lightning

``--family bert`` is :func:`~examples.width_families.make_bert` on :func:`~examples.width_families.counting_task`
trained by AdamW; ``--family resnet`` is :func:`~examples.width_families.make_resnet` on the digits trained by SGD
with momentum; both on the cross-entropy loss.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from diagnostics.integrations.lightning import AlignmentCallback

from .width_families import counting_task, digits, make_bert, make_resnet

__all__ = ["Classifier", "FAMILIES", "sweep"]


class Classifier(pl.LightningModule):
    """A classifier trained on the cross-entropy of its logits: ``model`` takes a tensor or a dict of tensors."""

    def __init__(self, model: nn.Module, optimizer: Callable[[Any], torch.optim.Optimizer]) -> None:
        super().__init__()
        self.model, self.make_optimizer = model, optimizer

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the model's logits (its ``logits`` attribute when it returns an output object)."""
        out = self.model(**x) if isinstance(x, dict) else self.model(x)
        return out.logits if hasattr(out, "logits") else out

    def training_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Return the cross-entropy of a minibatch ``(x, y)``, logged as ``train_loss``."""
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Return the optimiser of the sweep's family, over every parameter."""
        return self.make_optimizer(self.parameters())


def _bert() -> dict[str, Any]:
    task = counting_task()
    return {"build": make_bert, "data": task["data"], "output": "logits",
            "optimizer": lambda params: torch.optim.AdamW(params, lr=1e-3)}


def _resnet() -> dict[str, Any]:
    split = digits()
    return {"build": make_resnet, "data": (split.X_train, split.y_train), "output": None,
            "optimizer": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9)}


#: The sweeps this script runs: a factory, the training data, the output to measure and the optimiser.
FAMILIES: dict[str, Callable[[], dict[str, Any]]] = {"bert": _bert, "resnet": _resnet}


def sweep(folder: str | os.PathLike[str], family: str, widths: list[int], seeds: list[int], *, steps: int = 300,
          batch_size: int = 32, probe_size: int = 128, every: int | float = 0.05, full_every: int = 4,
          n_train: int | None = None) -> list[Path]:
    """Train every width and seed of ``family`` with Lightning and return the history files of their callbacks.

    Parameters
    ----------
    folder
        Where the runs go, one folder ``w<width>_s<seed>`` each (Lightning's ``default_root_dir``).
    family
        A key of :data:`FAMILIES`.
    widths, seeds
        The runs: one per width and seed (the seed fixes the initialisation and the batch order).
    steps, batch_size
        Optimiser steps of every run, samples per step.
    probe_size, every, full_every
        The callback's probe, cadence (steps, or a fraction of the run) and full records (one in ``full_every``;
        the width report reads the full ones, and the last step is always one).
    n_train
        Train on the first ``n_train`` samples only (default: all).
    """
    setup = FAMILIES[family]()
    X, y = setup["data"]
    if n_train is not None:
        X = {k: v[:n_train] for k, v in X.items()} if isinstance(X, dict) else X[:n_train]
        y = y[:n_train]
    samples = [({k: v[i] for k, v in X.items()} if isinstance(X, dict) else X[i], y[i]) for i in range(len(y))]
    paths = []
    for width in widths:
        for seed in seeds:
            pl.seed_everything(seed, verbose=False)
            module = Classifier(setup["build"](width), setup["optimizer"])
            root = Path(folder) / f"w{width}_s{seed}"
            callback = AlignmentCallback((X, y), tags={"width": width, "seed": seed, "family": family,
                                               "batch_size": batch_size},
                                         module="model", output=setup["output"], loss="ce", probe_size=probe_size,
                                         every=every, full_every=full_every, path=root / "alignment.jsonl")
            trainer = pl.Trainer(max_steps=steps, default_root_dir=root, callbacks=[callback], logger=False,
                                 enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                 accelerator="cpu", devices=1)
            trainer.fit(module, DataLoader(samples, batch_size=batch_size, shuffle=True, drop_last=True))
            paths.append(root / "alignment.jsonl")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="bert")
    parser.add_argument("--widths", default="16,32,64", help="comma-separated")
    parser.add_argument("--seeds", default="0,1", help="comma-separated")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("-o", "--output", type=Path, default=Path("lightning_logs"))
    args = parser.parse_args(argv)
    paths = sweep(args.output, args.family, [int(w) for w in args.widths.split(",")],
                  [int(s) for s in args.seeds.split(",")], steps=args.steps, batch_size=args.batch_size)
    print(f"{len(paths)} histories under {args.output}; the report: python -m diagnostics width-report "
          f"--from-runs {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
