"""``python -m diagnostics aligned-training``: base optimiser versus aligned training, over seeds.

Examples::

    python -m diagnostics aligned-training --dataset digits --out docs/results
    python -m diagnostics aligned-training --dataset mnist --data-dir DIR --device cuda --n-train 10000 --width 32
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import DATASETS
from .experiments import OPTIMIZERS, VARIANTS, ExperimentConfig, run_experiment, summary_table, to_markdown

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m diagnostics aligned-training",
        description="Base optimiser versus training that keeps D1 by construction (theory/application.md), over seeds.",
    )
    d = ExperimentConfig()
    p.add_argument("--dataset", default=d.dataset, choices=sorted(DATASETS))
    p.add_argument("--data-dir", default=None, help="folder with the data files (nothing is downloaded)")
    p.add_argument("--n-train", type=int, default=None, help="stratified training subset (default: all)")
    p.add_argument("--n-test", type=int, default=None, help="stratified test subset (default: all)")
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    p.add_argument("--variants", nargs="+", default=list(d.variants), choices=VARIANTS)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--blocks", type=int, default=d.n_blocks)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--switch-epoch", type=int, default=d.switch_epoch)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="0: full batch")
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--loss", default=d.loss, choices=("ce", "mse"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None,
                   help="folder for runs.csv, table.csv and table.md; finished runs are kept in <out>/runs "
                        "and a rerun with the same settings computes only what is missing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run, print the markdown table, optionally write it to ``--out``."""
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ExperimentConfig(
        dataset=args.dataset, data_dir=args.data_dir, n_train=args.n_train, n_test=args.n_test,
        device=args.device, seeds=tuple(args.seeds), variants=tuple(args.variants), width=args.width,
        n_blocks=args.blocks, epochs=args.epochs, switch_epoch=args.switch_epoch, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, loss=args.loss,
    )
    start = time.perf_counter()
    runs = run_experiment(config, folder=args.out, progress=not args.no_progress)
    table = summary_table(runs)
    text = to_markdown(table, config)
    print(text)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        runs.to_csv(out / "runs.csv", index=False)
        table.to_csv(out / "table.csv", index=False)
        (out / "table.md").write_text(text + "\n")
    return 0

