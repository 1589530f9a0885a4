"""Where cells run: in this process, in local worker processes, or as Ray tasks.

Every executor runs the same function (:func:`~.worker.run_cell`) on the same
:class:`~.worker.CellJob`, so the results do not depend on where a cell ran (each cell's
training is a pure function of its config and seed; see ``routekit.training``). A cell
starts once the cells it depends on have finished (subnet_rl after its full RL cell).

- ``local`` with ``workers=0``: one cell after another in this process;
- ``local`` with ``workers=N``: N processes (spawned, one fresh process per cell, so a
  cell's peak memory is its own), each with ``threads`` torch threads; on GPUs N defaults
  to the number of GPUs and each running cell has a GPU of its own (:mod:`.devices`). They die with this
  process, by whatever signal it dies (:mod:`.lifeline`), and Ctrl-C kills them at once;
- ``ray``: each cell is a Ray task (``ray.init()`` joins a running cluster when
  ``RAY_ADDRESS`` is set, else starts a local one with ``workers`` CPUs); install with
  ``pip install routekit[ray]``. On a cluster, the run directory and the world's cache entry
  must be on a filesystem every node sees (each task reads the world and writes its cell).

**Kill safety under Ray.** Cells written by Ray tasks take the same path as local ones
(:func:`~.worker.run_cell`: training checkpoints and the cell directory each appear in one
rename), so a task killed at any moment leaves a finished cell or none. When the driver
(this process) dies, Ray ends the job's tasks with it, and Ctrl-C cancels them
(``ray.cancel(force=True)``). Every task also checks, before each training segment and
before its cell lands, that the run directory's lock still names the run that started it
(the lock's token), and stops without writing once another run has taken the directory
over. When a worker *node* dies mid-cell, Ray retries the task (up to ``max_retries``, 3 by
default) on another node, which resumes from the cell's last training segment in the shared
run directory and removes the dead node's temporary files; once retries are exhausted the
cell is reported failed like any other, and rerunning the command retries it. A node that
is cut off but still running (a network partition) is not stopped by Ray: its copy of the
cell and the retry may then both write that cell's work directory (same values, atomic
renames), so keep the cluster's filesystem and network healthy or rerun the cell afterwards.

A failed cell does not stop the others; :func:`execute` returns the failures beside the
records, and cells that depend on a failed one are reported as skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from tqdm.auto import tqdm

from ..errors import ConfigError
from .devices import default_workers
from .lifeline import bind_to_parent, parent_bound_spawning
from .results import CellRecord
from .worker import CellJob, run_cell

EXECUTORS = ("local", "ray")


class _Done:
    """A cell run in this process, as a handle (records are not hashable)."""

    def __init__(self, job: CellJob) -> None:
        self.value = _safe_run(job)


def _safe_run(job: CellJob) -> tuple[str, CellRecord | None, str | None]:
    try:
        return job.key.cell_id, run_cell(job), None
    except Exception as e:  # reported by the caller with the cell's id
        return job.key.cell_id, None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"


def _schedule(
    jobs: list[CellJob], deps: dict[str, list[str]], submit: Callable[[CellJob], Any],
    wait_any: Callable[[list[Any]], tuple[list[Any], list[Any]]],
    result_of: Callable[[Any], tuple[str, CellRecord | None, str | None]],
    progress: bool, slots: int, devices: list[str] | None = None,
) -> tuple[dict[str, CellRecord], dict[str, str]]:
    """Submit ready jobs (dependencies done) up to ``slots`` at a time until all are done.
    With ``devices``, each job is placed on the one running the fewest cells (the first on a
    tie), so N workers over N GPUs run one cell per GPU."""
    pending = {j.key.cell_id: j for j in jobs}
    records: dict[str, CellRecord] = {}
    failed: dict[str, str] = {}
    running: dict[Any, str] = {}
    on_device: dict[Any, str] = {}

    def place(job: CellJob) -> CellJob:
        if not devices:
            return job
        busy = Counter(on_device.values())
        return dataclasses.replace(job, device=min(devices, key=lambda d: busy[d]))
    bar = tqdm(total=len(jobs), desc="cells", unit="cell", disable=not progress)
    try:
        while pending or running:
            for cid in list(pending):
                if len(running) >= slots:
                    break
                needs = deps.get(cid, [])
                if any(d in failed for d in needs):
                    failed[cid] = f"skipped: depends on failed cell(s) {[d for d in needs if d in failed]}"
                    pending.pop(cid)
                    bar.update(1)
                elif all(d in records for d in needs):
                    job = place(pending.pop(cid))
                    handle = submit(job)
                    running[handle], on_device[handle] = cid, job.device
            if not running:
                if pending:  # dependencies that are in no job and not done
                    for cid in list(pending):
                        failed[cid] = f"skipped: dependencies {deps.get(cid)} never ran"
                        pending.pop(cid)
                break
            done, _ = wait_any(list(running))
            for h in done:
                running.pop(h)
                on_device.pop(h, None)
                cid, rec, err = result_of(h)
                if rec is not None:
                    records[cid] = rec
                else:
                    failed[cid] = err or "failed"
                bar.set_postfix_str(cid)
                bar.update(1)
    finally:
        bar.close()
    return records, failed


def execute(
    jobs: list[CellJob], deps: dict[str, list[str]], *, executor: str = "local",
    workers: int | None = None, progress: bool = True, devices: list[str] | None = None,
) -> tuple[dict[str, CellRecord], dict[str, str]]:
    """Run ``jobs`` (dependencies first); returns (records by cell id, errors by cell id).
    ``devices``: where cells run (:func:`~.devices.cell_devices`), each job dealt to the least
    busy one; ``workers`` defaults to one per GPU when they are GPUs, else one per core."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}.")
    if executor == "ray":
        return _execute_ray(jobs, deps, progress, workers, devices)
    workers = default_workers(devices) if workers is None else workers
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}.")
    if workers == 0:
        return _schedule(jobs, deps, _Done, lambda hs: (hs[:1], hs[1:]), lambda h: h.value,
                         progress, slots=1, devices=devices)
    import multiprocessing as mp

    per_cell = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    with parent_bound_spawning(), ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=bind_to_parent, initargs=(os.getpid(),),
                             **per_cell) as pool:
        def submit(job: CellJob) -> Future:
            return pool.submit(_safe_run, job)

        def wait_any(hs: list[Future]) -> tuple[list[Future], list[Future]]:
            done, rest = wait(hs, return_when=FIRST_COMPLETED)
            return list(done), list(rest)

        try:
            return _schedule(jobs, deps, submit, wait_any, lambda f: f.result(), progress,
                             workers, devices)
        except BaseException:  # Ctrl-C (or any error here): stop the cells, do not wait
            _kill_workers(pool)
            raise


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL the pool's worker processes (their cells resume from their last segment)."""
    kill = getattr(pool, "kill_workers", None)  # Python 3.14
    if kill is not None:
        kill()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            proc.kill()


def _execute_ray(jobs: list[CellJob], deps: dict[str, list[str]], progress: bool,
                 workers: int | None, devices: list[str] | None = None,
                 ) -> tuple[dict[str, CellRecord], dict[str, str]]:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray: pip install 'routekit[ray]' (or pip install ray)."
        ) from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:  # an existing cluster decides its own resources
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers or default_workers(), log_to_driver=False)
    gpus = bool(devices) and all(d.startswith("cuda") for d in devices or [])
    # On GPUs each task asks Ray for one, and Ray makes it the task's only visible GPU: the
    # cell then runs on "cuda" (its GPU), whichever node and index Ray chose.
    remote = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(_safe_run)
    resource = "GPU" if gpus else "CPU"
    slots = max(1, int(ray.cluster_resources().get(resource, 1)))
    devices = ["cuda"] if gpus else devices

    def wait_any(hs: list[Any]) -> tuple[list[Any], list[Any]]:
        return ray.wait(hs, num_returns=1)

    submitted: list[Any] = []

    def submit(job: CellJob) -> Any:
        submitted.append(remote.remote(job))
        return submitted[-1]

    try:
        return _schedule(jobs, deps, submit, wait_any, ray.get, progress, slots, devices)
    except BaseException:  # Ctrl-C: stop the running tasks rather than leave them writing
        for ref in submitted:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
