r"""``python -m diagnostics check``: D1 on a whole training set, on one process or many (theory/alignment.md#d1).

Examples::

    python -m diagnostics check --data digits --model mlp --nproc 2 --out report.json
    torchrun --nproc-per-node 8 -m diagnostics check --data cifar10 --model resnet --device cuda \\
        --dtype float32 --checkpoint-dir ckpt --out report.json
    RAY_ADDRESS=auto python -m diagnostics check --ray --nproc 8 --data cifar10 --model resnet --device cuda

``--nproc N`` spawns ``N`` gloo processes on this machine (with ``--ray``, ``N`` Ray Train workers on
the Ray cluster, whose group Ray sets up); under ``torchrun`` the group it sets up is joined instead
(NCCL on GPUs) and ``--nproc`` is ignored. Process 0 prints the report and writes
``--out`` (atomically).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.distributed as dist

from .alignment_report import AlignmentReport
from .data import DATASETS, load_dataset
from .distributed import check_alignment_distributed, init_from_environment, launch, launch_ray
from .engine.matrix_free.preconditioned import METHODS
from .errors import DiagnosticsError
from .models import FAMILIES, build_model
from .store import write_json

__all__ = ["configure", "job", "run"]

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``check`` to its parser."""
    parser.add_argument("--data", default="digits", choices=DATASETS, help="data set (default digits)")
    parser.add_argument("--data-dir", default=None, help="folder of the data files (file-based data sets)")
    parser.add_argument("--n-train", type=int, default=None, help="samples of the training split (default all)")
    parser.add_argument("--model", default="mlp", choices=FAMILIES, help="model family (default mlp)")
    parser.add_argument("--width", type=int, default=32, help="hidden units or channels (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and of the data subset")
    parser.add_argument("--loss", default="mse", choices=("mse", "ce"))
    parser.add_argument("--dtype", default="float64", choices=tuple(DTYPES), help="compute dtype (default float64)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=256, help="samples per forward pass")
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (gloo); see torchrun")
    parser.add_argument("--ray", action="store_true",
                        help="run the --nproc processes as Ray Train workers on the Ray cluster (RAY_ADDRESS or local)")
    parser.add_argument("--solver", default="auto", choices=METHODS,
                        help="LSQR, or LSQR preconditioned by the exact or sketched JᵀJ (default: by the shape of J)")
    parser.add_argument("--top-k", type=int, default=10, help="top eigenpairs of K (default 10)")
    parser.add_argument("--max-iter", type=int, default=None, help="LSQR iteration cap per solve")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds for the eigenpairs and the solves")
    parser.add_argument("--checkpoint-dir", default=None, help="solver checkpoints: a rerun resumes from them")
    parser.add_argument("--work-dir", default=None, help="folder for memory-mapped n·m-vectors")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``check`` as parsed; return the exit code (2 for bad arguments or data)."""
    settings = vars(args).copy()
    settings.pop("command", None)
    try:
        if init_from_environment():
            job(settings)
        elif args.ray:
            launch_ray(job, args.nproc, settings, use_gpu=args.device == "cuda")
        else:
            launch(job, args.nproc, settings)
    except (DiagnosticsError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    return 0


def job(settings: dict[str, Any]) -> AlignmentReport:
    """Measure on this process's shard; process 0 prints the report and writes ``out``. Return the report."""
    split = load_dataset(settings["data"], data_dir=settings["data_dir"], n_train=settings["n_train"],
                         n_test=1 if settings["data"] == "teacher-student" else None, seed=settings["seed"])
    n_out = split.n_classes or split.y_train.shape[1]
    model = build_model(settings["model"], settings["width"], input_shape=split.input_shape, n_out=n_out,
                        seed=settings["seed"])
    device = _device(settings["device"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    report = check_alignment_distributed(
        model.to(device), torch.utils.data.TensorDataset(split.X_train, split.y_train), loss=settings["loss"],
        dtype=DTYPES[settings["dtype"]], batch_size=settings["batch_size"], method=settings["solver"],
        top_k=settings["top_k"],
        max_iter=settings["max_iter"],
        time_budget=settings["time_budget"], checkpoint_dir=settings["checkpoint_dir"],
        work_dir=settings["work_dir"], progress=not settings["quiet"],
    )
    if rank == 0:
        print(report, flush=True)
        if settings["out"]:
            write_json(settings["out"], report.to_dict())
    return report


def _device(name: str) -> torch.device:
    """Return the device of this process: ``cuda:LOCAL_RANK`` (the current CUDA device) or the CPU."""
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DiagnosticsError("--device cuda: CUDA is not available on this machine")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
