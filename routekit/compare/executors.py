"""Where cells run: in this process, in local worker processes, or as Ray tasks.

Every executor runs the same function (:func:`~.worker.run_cell`) on the same
:class:`~.worker.CellJob`, so the results do not depend on where a cell ran (each cell's
training is a pure function of its config and seed; see ``routekit.training``). A cell
starts once the cells it depends on have finished (subnet_rl after its full RL cell).

- ``local`` with ``workers=0``: one cell after another in this process;
- ``local`` with ``workers=N``: N processes (spawned, one fresh process per cell, so a
  cell's peak memory is its own), each with ``threads`` torch threads;
- ``ray``: each cell is a Ray task (``ray.init()`` joins a running cluster when
  ``RAY_ADDRESS`` is set, else starts a local one with ``workers`` CPUs); install with
  ``pip install routekit[ray]``. On a cluster, the run directory and the world's cache entry
  must be on a filesystem every node sees (each task reads the world and writes its cell).

A failed cell does not stop the others; :func:`execute` returns the failures beside the
records, and cells that depend on a failed one are reported as skipped.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from tqdm.auto import tqdm

from ..errors import ConfigError
from .results import CellRecord
from .worker import CellJob, run_cell

EXECUTORS = ("local", "ray")


def default_workers() -> int:
    """What the machine's cores allow: one single-threaded worker per core."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n)


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
    progress: bool, slots: int,
) -> tuple[dict[str, CellRecord], dict[str, str]]:
    """Submit ready jobs (dependencies done) up to ``slots`` at a time until all are done."""
    pending = {j.key.cell_id: j for j in jobs}
    records: dict[str, CellRecord] = {}
    failed: dict[str, str] = {}
    running: dict[Any, str] = {}
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
                    running[submit(pending.pop(cid))] = cid
            if not running:
                if pending:  # dependencies that are in no job and not done
                    for cid in list(pending):
                        failed[cid] = f"skipped: dependencies {deps.get(cid)} never ran"
                        pending.pop(cid)
                break
            done, _ = wait_any(list(running))
            for h in done:
                running.pop(h)
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
    workers: int | None = None, progress: bool = True,
) -> tuple[dict[str, CellRecord], dict[str, str]]:
    """Run ``jobs`` (dependencies first); returns (records by cell id, errors by cell id)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}.")
    if executor == "ray":
        return _execute_ray(jobs, deps, progress, workers)
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}.")
    if workers == 0:
        return _schedule(jobs, deps, _Done, lambda hs: (hs[:1], hs[1:]), lambda h: h.value,
                         progress, slots=1)
    import multiprocessing as mp

    per_cell = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             **per_cell) as pool:
        def submit(job: CellJob) -> Future:
            return pool.submit(_safe_run, job)

        def wait_any(hs: list[Future]) -> tuple[list[Future], list[Future]]:
            done, rest = wait(hs, return_when=FIRST_COMPLETED)
            return list(done), list(rest)

        return _schedule(jobs, deps, submit, wait_any, lambda f: f.result(), progress, workers)


def _execute_ray(jobs: list[CellJob], deps: dict[str, list[str]], progress: bool,
                 workers: int | None) -> tuple[dict[str, CellRecord], dict[str, str]]:
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
    remote = ray.remote(num_cpus=1)(_safe_run)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def wait_any(hs: list[Any]) -> tuple[list[Any], list[Any]]:
        return ray.wait(hs, num_returns=1)

    return _schedule(jobs, deps, remote.remote, wait_any, ray.get, progress, slots)
