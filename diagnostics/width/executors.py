"""Where the runs of a sweep execute: in this process, in a pool of spawned processes, or as Ray tasks.

Each executor takes the task ``(plan, spec, data) -> outcome`` (a module-level function, so it can be
sent to other processes, with a picklable plan and data) and yields ``(spec, outcome)`` in completion order;
a run whose worker was lost yields the exception instead, so one lost run never loses the sweep.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plan import RunSpec

__all__ = ["EXECUTORS", "local", "ray"]

Task = Callable[[Any, "RunSpec", Any], dict]
Outcomes = Iterator[tuple["RunSpec", "dict[str, Any] | BaseException"]]


def local(task: Task, config: Any, specs: list[RunSpec], data: Any, jobs: int,
          address: str | None) -> Outcomes:
    """In-process when ``jobs == 1``; otherwise a pool of ``jobs`` spawned processes.

    A worker process that dies (segfault, out-of-memory kill) breaks the pool; the runs that were
    pending then are retried each in a fresh single-process pool, so only the run that kills its
    worker is lost.
    """
    if jobs == 1:
        for spec in specs:
            yield spec, task(config, spec, data)
        return
    suspects = []
    with _pool(jobs, data) as pool:
        futures = {pool.submit(_pool_task, task, config, spec): spec for spec in specs}
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except BrokenProcessPool:
                suspects.append(futures[future])
    for spec in suspects:
        with _pool(1, data) as pool:
            try:
                yield spec, pool.submit(_pool_task, task, config, spec).result()
            except BrokenProcessPool as exc:
                yield spec, RuntimeError(f"the worker process running it died ({exc})")


def _pool(jobs: int, data: Any) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(data, os.getpid()))


_WORKER_DATA: list[Any] = []


def _init_worker(data: Any, parent: int) -> None:
    """Keep the data; exit when the driver dies (a killed sweep leaves no orphaned workers)."""
    _WORKER_DATA[:] = [data]

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _pool_task(task: Task, config: Any, spec: RunSpec) -> dict[str, Any]:
    return task(config, spec, _WORKER_DATA[0])


def ray(task: Task, config: Any, specs: list[RunSpec], data: Any, jobs: int,
        address: str | None) -> Outcomes:
    """One Ray task per run on the running Ray instance, else on ``address``, else a new local one.

    A local instance started here gets ``jobs`` CPUs and this package on its workers' path; a
    remote cluster needs the package installed on its workers.
    """
    try:
        import ray as ray_module
    except ImportError as exc:
        raise RuntimeError('the ray executor needs Ray: pip install "ray[default]"') from exc
    started = not ray_module.is_initialized()
    if started:
        if address:
            ray_module.init(address=address)
        else:
            root = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
            ray_module.init(num_cpus=jobs, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        task = ray_module.remote(num_cpus=1, max_retries=0)(task)
        data_ref = ray_module.put(data)
        pending = {task.remote(config, spec, data_ref): spec for spec in specs}
        while pending:
            done, _ = ray_module.wait(list(pending), num_returns=1)
            spec = pending.pop(done[0])
            try:
                yield spec, ray_module.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a lost worker loses only its run
                yield spec, exc
    finally:
        if started:
            ray_module.shutdown()


#: The executors by name.
EXECUTORS: dict[str, Callable[..., Outcomes]] = {"local": local, "ray": ray}
