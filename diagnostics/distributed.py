"""D1 on a whole training set, streamed, data-parallel over ``torch.distributed`` (theory/alignment.md#data-parallel).

:func:`check_alignment_distributed` is :func:`~diagnostics.check_alignment` on the matrix-free path
for every sample of a data set, run by every process of a group: each process measures its
contiguous shard (:func:`~diagnostics.engine.matrix_free.streamed.shard_range`) with a model replica,
streamed batch by batch; the shards form one operator
(:class:`~diagnostics.engine.matrix_free.sharded.ShardedJacobian`: ``J v`` gathered, ``Jᵀ u`` an ``all_reduce``
in float64), and the solvers run identically on every process, which all return the same report.
The solver checkpoints (:class:`~diagnostics.engine.matrix_free.sharded.RankZeroStore`) and any file are
written by process 0 only.

Launch it with ``torchrun`` (:func:`init_from_environment` joins the group it sets up: NCCL when
CUDA is available, gloo otherwise), on one machine with :func:`launch`, which spawns ``nproc``
gloo processes with :func:`torch.multiprocessing.spawn` and a file rendezvous, or on a Ray cluster with
:func:`launch_ray` (Ray Train workers, whose group Ray sets up).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import pickle
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from .alignment_report import AlignmentReport
from .alignment_spectrum import alignment_from_operator, validate_horizon
from .engine import inputs as _inputs
from .engine import precision
from .engine.accuracy import jacobian_error
from .engine.functional import ParamSelector
from .engine.manifest import MeasurementManifest
from .engine.matrix_free.sharded import RankZeroStore, ShardedJacobian, process_group_size
from .engine.matrix_free.spectrum import DEFAULT_TOP_K
from .engine.matrix_free.streamed import StreamedJacobianOperator, shard_range
from .errors import DiagnosticsError

__all__ = ["check_alignment_distributed", "init_from_environment", "launch", "launch_ray"]


def check_alignment_distributed(
    model: nn.Module,
    data: object,
    *,
    loss: str = "mse",
    target: object = None,
    rank_tol: float | None = None,
    residual_tol: float | None = None,
    params: ParamSelector = None,
    output: _inputs.OutputSelector = None,
    dtype: torch.dtype | None = None,
    strategy: str = "auto",
    memory_budget: int | None = None,
    batch_size: int | None = None,
    horizon: tuple[float, int] | None = None,
    method: str = "auto",
    top_k: int = DEFAULT_TOP_K,
    max_iter: int | None = None,
    time_budget: float | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 10,
    progress: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    vector_budget: int | None = None,
    group: Any = None,
) -> AlignmentReport:
    """Test D1 on every sample of ``data``, shared among the processes of ``group``.

    Call it on every process of the group (or in one process without ``torch.distributed``); every
    process returns the same report.

    Parameters
    ----------
    model
        Any ``nn.Module`` on this process's device; never modified. Measured in eval mode.
    data
        A map-style ``Dataset`` of ``(x, y)`` pairs or a ``DataLoader`` over one, the same on every
        process; it is read batch by batch, never held whole.
    loss, target, rank_tol, residual_tol, params, output, strategy, memory_budget, horizon
        As in :func:`~diagnostics.check_alignment`.
    dtype
        Compute dtype; default as in :func:`~diagnostics.check_alignment` (float64 on the CPU).
    batch_size
        Samples per forward pass (default the DataLoader's, else 256).
    method
        The solver: ``"auto"`` (by the shape of ``J``), ``"lsqr"``, ``"gram"`` or ``"sketch"``
        (:func:`~diagnostics.alignment_spectrum.alignment_from_operator`).
    top_k, max_iter
        Eigenpairs of ``K`` and the LSQR iteration cap per solve.
    time_budget
        Seconds after which the solves stop with truncated solutions; the report says so. Plain LSQR's
        verdict is then *not established* unless the truncated residual (an upper bound) already holds; a
        preconditioned solve's certified bounds hold at any iterate, so it may still decide.
    checkpoint_dir, checkpoint_every
        Folder of the solver checkpoints (written by process 0 every ``checkpoint_every`` iterations); a
        job started again with the same model, data and settings resumes from them.
    progress
        Show the progress of the passes and the solves on process 0.
    work_dir, vector_budget
        Folder for the ``n·m``-vectors (outputs, products, LSQR's ``u``) larger than ``vector_budget``
        bytes (default 1/16 of the memory budget), kept there as memory-mapped files.
    group
        The process group (default the world).
    """
    start = time.perf_counter()
    if horizon is not None:
        validate_horizon(horizon)
    rank, world = process_group_size(group)
    dtype = dtype or precision.verdict_dtype(model)

    def measure() -> StreamedJacobianOperator:
        n = len(data.dataset if isinstance(data, torch.utils.data.DataLoader) else data)
        return StreamedJacobianOperator(model, data, shard=shard_range(n, rank, world), batch_size=batch_size,
                                        params=params, output=output, dtype=dtype, strategy=strategy,
                                        memory_budget=memory_budget, work_dir=work_dir,
                                        vector_budget=vector_budget)

    local = _together(measure, group)
    op = ShardedJacobian(local, group)
    checkpoints = None if checkpoint_dir is None else RankZeroStore(checkpoint_dir, group)
    report = alignment_from_operator(
        op, op.gather_rows(local.targets), loss=loss, target=target, rank_tol=rank_tol, residual_tol=residual_tol,
        top_k=top_k, max_iter=max_iter, horizon=horizon, method=method, time_budget=time_budget,
        checkpoints=checkpoints,
        checkpoint_every=checkpoint_every, progress=progress and rank == 0,
        workspace=lambda length: local.vectors.zeros((length,)),
    )
    report.mode, report.strategy = "eval", local.products
    first = local.first_batch()
    manifest = MeasurementManifest.build(local.fm, first, strategy=local.products, n_outputs=op.m,
                                         choice=local.choice, error=jacobian_error(local.fm, first, m=op.m,
                                                                                   per_sample=True),
                                         solver=report.solver)
    described = (f"{type(local.dataset).__name__} of {op.n} samples streamed in batches of {local.chunk_size} "
                 f"over {world} process(es); first batch: {manifest.inputs}")
    report.manifest = dataclasses.replace(manifest, n_samples=op.n, inputs=described)
    report.elapsed_s = time.perf_counter() - start
    return report


def _together(fn: Callable[[], Any], group: Any) -> Any:
    """Run ``fn`` on every process; if it fails anywhere, raise everywhere (no process is left waiting)."""
    rank, world = process_group_size(group)
    error: BaseException | None = None
    try:
        result = fn()
    except DiagnosticsError as exc:
        error = exc
    if world > 1:
        failures = [None] * world
        dist.all_gather_object(failures, None if error is None else str(error), group=group)
        failed = [(r, message) for r, message in enumerate(failures) if message is not None]
        if failed and error is None:
            r, message = failed[0]
            raise DiagnosticsError(f"process {r} refused its shard: {message}")
    if error is not None:
        raise error
    return result


def init_from_environment() -> bool:
    """Join the process group that ``torchrun`` describes in the environment; return whether there is one.

    NCCL when CUDA is available (the process then uses ``cuda:LOCAL_RANK``), gloo otherwise. Does
    nothing when the group is already initialised or the environment names no ``WORLD_SIZE`` above 1.
    """
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def launch(fn: Callable[..., Any], nproc: int, *args: Any, threads: int | None = None) -> list[Any]:
    """Run ``fn(*args)`` in ``nproc`` gloo processes on this machine; return each process's result, by rank.

    The processes meet through a file in a temporary folder (no port to find), each with ``threads``
    intra-op threads (default: the CPUs shared evenly). ``fn`` and ``args`` must be picklable
    (``fn`` defined at a module's top level). With ``nproc=1``, ``fn`` runs here, without a group. A
    :class:`~diagnostics.errors.DiagnosticsError` raised in a process is raised here, naming the process.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise DiagnosticsError(f"nproc must be a positive integer, got {nproc!r}")
    if nproc == 1:
        return [fn(*args)]
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="diagnostics-launch-") as folder:
        mp.spawn(_process, args=(nproc, folder, threads, fn, args), nprocs=nproc, join=True)
        outcomes = [pickle.loads((Path(folder) / f"result-{r}.pkl").read_bytes()) for r in range(nproc)]
    for rank, (failed, value) in enumerate(outcomes):
        if failed:
            raise DiagnosticsError(f"process {rank} of {nproc}: {value}")
    return [value for _, value in outcomes]


def launch_ray(fn: Callable[..., Any], nproc: int, *args: Any, use_gpu: bool = False) -> Any:
    """Run ``fn(*args)`` in ``nproc`` Ray Train workers; return process 0's result.

    Ray Train (:class:`ray.train.torch.TorchTrainer`) places the workers on the Ray cluster that
    :func:`ray.init` joins (``RAY_ADDRESS``, or a local one it starts) and sets up their
    ``torch.distributed`` group (gloo, or NCCL with ``use_gpu``, one GPU per worker), which ``fn`` uses as
    the default group. ``fn`` and ``args`` must be picklable; its result travels back pickled in a Ray
    Train checkpoint. A :class:`~diagnostics.errors.DiagnosticsError` raised in a worker is raised here.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise DiagnosticsError(f"nproc must be a positive integer, got {nproc!r}")
    try:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as exc:
        raise DiagnosticsError(f"the Ray launcher needs Ray Train: pip install 'ray[train]' ({exc})") from exc
    payload = base64.b64encode(pickle.dumps((fn, args))).decode()
    with tempfile.TemporaryDirectory(prefix="diagnostics-ray-") as folder:
        trainer = TorchTrainer(_ray_worker, train_loop_config={"payload": payload},
                               scaling_config=ScalingConfig(num_workers=nproc, use_gpu=use_gpu),
                               run_config=RunConfig(storage_path=folder, name="check"))
        with trainer.fit().checkpoint.as_directory() as kept:
            failed, value = pickle.loads((Path(kept) / "outcome.pkl").read_bytes())
    if failed:
        raise DiagnosticsError(f"process 0 of {nproc} (Ray Train): {value}")
    return value


def _ray_worker(config: dict[str, str]) -> None:
    """One Ray Train worker: run the payload's ``fn(*args)`` in the group Ray set up; process 0 reports the outcome.

    The outcome travels as a Ray Train checkpoint (a folder Ray keeps in the run's storage), which is how
    Ray Train hands a result back to the driver on any cluster.
    """
    import ray.train

    fn, args = pickle.loads(base64.b64decode(config["payload"]))
    try:
        outcome = (False, fn(*args))
    except DiagnosticsError as exc:
        outcome = (True, str(exc))
    if (dist.get_rank() if dist.is_initialized() else 0) != 0:
        ray.train.report({})
        return
    with tempfile.TemporaryDirectory(prefix="diagnostics-outcome-") as folder:
        (Path(folder) / "outcome.pkl").write_bytes(pickle.dumps(outcome))
        ray.train.report({}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _process(rank: int, world: int, folder: str, threads: int, fn: Callable[..., Any], args: tuple) -> None:
    """One spawned process: join the gloo group, run ``fn``, keep its result for :func:`launch`.

    The process ends with :func:`os._exit` once every process has written its result: tearing down gloo's
    threads and the interpreter at exit can abort a finished process (``terminate called without an
    active exception``, seen now and then), and nothing is left to clean up by then.
    """
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        outcome = (False, fn(*args))
    except DiagnosticsError as exc:  # bad input: reported by the parent, without a traceback per process
        outcome = (True, str(exc))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    (Path(folder) / f"result-{rank}.pkl").write_bytes(pickle.dumps(outcome))
    dist.barrier()  # every process has finished communicating before any leaves
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
