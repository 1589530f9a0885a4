"""Running a suite into a run directory: plan, execute, resume, collect ``results.json``.

Layout of a run directory::

    .lock              held (fcntl.flock) by the one run writing here; names its pid and host
    run.json           the suite's settings hash, the environment's fingerprints, routekit's version
    cells/<cell-id>/   one finished cell each (see routekit.compare.worker)
    results.json       every planned cell's record, the overlaps, versions (validated)
    report.md, plots/  written by routekit.compare.report

A suite with ``worlds:`` makes one such directory per world, ``worlds/<i>-<config hash>/``,
beside a top-level results.json and report.md of the verdicts across worlds
(routekit.compare.worlds).

One run at a time: a run holds the directory's lock (``routekit.locks``) from start to
end, and a second run on a locked directory is refused naming the holder's pid and host; a
lock whose holder died is taken over with a message. Local workers die with the run
(``routekit.compare.lifeline``), and a worker stops writing once its run has lost the lock.

A run resumes: finished cells (their ``cell.json`` present) are read, not redone, and a
cell killed at any moment resumes from its last complete training segment, or starts again
when it has none; what a kill left half-written is tidied, never loaded. A run directory made
with other suite settings, another environment (a world's or a local model's weights, not only
its config; a local environment's data file hashes), another routekit version
or other code (``results.code_version()``, a hash of every module that computes cells) is
refused, never mixed: pass another ``--out``, or ``--force`` to delete its cells and start
afresh. Methods, tasks, lrs and seeds may change between runs of one directory (cells are
independent), so a run can be widened or narrowed.
"""

from __future__ import annotations

import copy
import importlib.metadata
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, TrainingError
from ..io import recover_directory
from ..locks import exclusive_lock
from .cells import check_dependencies, first_phase, second_phase, source_key
from .devices import cell_devices, resolve_device, suite_device
from .env import Environment, resolve_environment
from .executors import execute
from .results import (
    CellKey,
    CellRecord,
    Overlap,
    Results,
    RunManifest,
    code_version,
    package_versions,
    read_model,
    write_model,
)
from .selection import check_selection, selections
from .suite import Suite
from .worker import RECORD, RUN_LOCK, CellJob

MANIFEST = "run.json"
RESULTS = "results.json"


@dataclass
class RunOutcome:
    """What :func:`run_suite` produced."""

    run_dir: Path
    results: Results
    failed: dict[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)  # cells computed by this call
    reused: list[str] = field(default_factory=list)  # cells found finished


def routekit_version() -> str:
    """The installed distribution's version (pyproject's, which ``routekit.__version__``
    states too), read from its metadata: the top-level package sits above every room, so
    the runner does not import it."""
    try:
        return importlib.metadata.version("routekit")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree never installed
        return "0+unknown"


def open_run_dir(run_dir: Path, manifest: RunManifest, force: bool) -> None:
    """Create ``run_dir`` for ``manifest``, or check that it was made for the same settings,
    world and routekit version (``force`` deletes a mismatching one's contents)."""
    path = run_dir / MANIFEST
    if path.is_file():
        old = read_model(path, RunManifest, "run manifest")
        diffs = _manifest_diffs(old, manifest)
        if diffs and not force:
            raise ConfigError(
                f"run directory {str(run_dir)!r} holds results of {'; '.join(diffs)}; mixing "
                "them would compare cells computed differently. Start fresh with --out "
                "ANOTHER_DIR, or --force to delete its cells and results."
            )
        if diffs:
            for name in ("cells", RESULTS, "report.md", "plots"):
                p = run_dir / name
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    else:
        refuse_foreign_dir(run_dir, force)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_model(path, manifest)


def refuse_foreign_dir(run_dir: Path, force: bool) -> None:
    """Refuse a non-empty ``run_dir`` that is no run directory (unless ``force``)."""
    if (run_dir.exists() and not (run_dir / MANIFEST).is_file() and not force
            and any(p.name != RUN_LOCK for p in run_dir.iterdir())):
        raise ConfigError(
            f"{str(run_dir)!r} exists, is not empty and is not a routekit compare run directory "
            f"(no {MANIFEST}); choose another --out, or --force to use it anyway."
        )


def _manifest_diffs(old: RunManifest, new: RunManifest) -> list[str]:
    out = []
    if old.settings_hash != new.settings_hash:
        out.append(f"suite {old.suite!r} with settings {old.settings_hash} (this run: suite "
                   f"{new.suite!r}, settings {new.settings_hash})")
    if old.world != new.world:
        out.append(f"another environment (config {old.world.config_hash}, base weights "
                   f"{old.world.base_fingerprint}; this run: {new.world.config_hash}, "
                   f"{new.world.base_fingerprint})")
    if old.routekit_version != new.routekit_version:
        out.append(f"routekit {old.routekit_version} (this is {new.routekit_version})")
    if old.code_version != new.code_version:
        out.append(f"other code (code version {old.code_version or 'not recorded'}; this "
                   f"code is {new.code_version}: a change to what a cell computes makes its "
                   "finished cells stale)")
    return out


def run_suite(
    suite: Suite, out: str | Path, *, executor: str = "local", workers: int | None = None,
    force: bool = False, progress: bool = True, env: Environment | None = None,
    threads: int = 1, report: bool = True, device: str | None = None,
) -> RunOutcome:
    """Run every cell of ``suite`` into ``out`` (resuming), then write results.json (and
    report.md with plots unless ``report=False``). ``env`` defaults to the environment the
    suite names (:func:`~.env.resolve_environment`). ``device`` (default: the suite's, else
    auto) is where every cell's models live (:mod:`.devices`); ``workers`` defaults to one
    per GPU on GPUs, else one per core.

    A suite with ``worlds:`` is refused: :func:`routekit.compare.worlds.run_worlds` runs
    each world through this function into its own sub-run directory (the house reads one
    way: the multi-world layer sits above this one)."""
    if suite.worlds:
        raise ConfigError(f"suite {suite.name!r} names several worlds; run it with "
                          "routekit.compare.worlds.run_worlds (routekit compare does).")
    devices = cell_devices(resolve_device(device or suite_device(suite)))
    run_dir = Path(out)
    env = env or resolve_environment(suite, progress=progress)
    check_selection(suite, env)  # select_on: val refuses before the directory is touched
    manifest = RunManifest(suite=suite.name, settings_hash=suite.settings_hash(),
                           world=env.stamp, routekit_version=routekit_version(),
                           code_version=code_version())
    refuse_foreign_dir(run_dir, force)  # before the lock file is made in it
    with exclusive_lock(run_dir / RUN_LOCK, f"run directory {str(run_dir)!r}",
                        on_stale=lambda m: print(f"routekit: {m}", file=sys.stderr)) as holder:
        open_run_dir(run_dir, manifest, force)
        return _run_locked(suite, run_dir, manifest, env, executor, workers, threads,
                           progress, report, holder["token"], devices)


def _run_locked(suite: Suite, run_dir: Path, manifest: RunManifest, env: Environment,
                executor: str, workers: int | None, threads: int, progress: bool,
                report: bool, token: str, devices: list[str]) -> RunOutcome:
    outcome = RunOutcome(run_dir, results=None)  # type: ignore[arg-type]
    records: dict[str, CellRecord] = {}
    plan: list[CellKey] = []
    for phase in (first_phase, second_phase):
        keys = [k for k in (phase(suite) if phase is first_phase else phase(suite, records))
                if k.cell_id not in {p.cell_id for p in plan}]
        check_dependencies(suite, plan + keys)
        plan += keys
        _run_keys(suite, keys, run_dir, env, records, outcome, executor, workers, threads,
                  progress, token, devices)
    overlaps = seed_overlaps(suite, plan, records, run_dir, env)
    results = Results(
        suite=suite.model_dump(mode="json"), manifest=manifest, environment=env.describe(suite.tasks),
        world_metrics={k: v for k, v in env.metrics.items() if not isinstance(v, (dict, list))
                       or k in ("task_accuracy", "ood_accuracy", "proxy_task_accuracy",
                                "proxy_ood_accuracy")},
        packages=package_versions(),
        cells=[records[k.cell_id] for k in plan if k.cell_id in records], overlaps=overlaps,
        selection=selections(suite, records),
    )
    write_model(run_dir / RESULTS, results)
    outcome.results = results
    if report:
        from .report import write_report

        write_report(results, run_dir)
    if outcome.failed:
        shown = "; ".join(f"{cid}: {err.splitlines()[0]}" for cid, err in outcome.failed.items())
        raise TrainingError(
            f"{len(outcome.failed)} cell(s) failed ({shown}). The {len(records)} finished "
            f"cells are kept in {str(run_dir)!r} and in its results.json; rerun the same "
            "command to retry the failed ones."
        )
    return outcome


def _run_keys(suite: Suite, keys: list[CellKey], run_dir: Path, env: Environment,
              records: dict[str, CellRecord], outcome: RunOutcome, executor: str,
              workers: int | None, threads: int, progress: bool, token: str | None = None,
              devices: list[str] | None = None) -> None:
    jobs, deps = [], {}
    heldout: dict[str, list[str]] = {}  # per task, computed once for all its cells
    for k in keys:
        path = run_dir / "cells" / k.cell_id / RECORD
        recover_directory(path.parent, all_stale=True)  # this run holds the lock: see worker
        if path.is_file():
            # a kill while the finished cell's work directory was being removed leaves a part
            shutil.rmtree(path.parent.parent / f".work-{k.cell_id}", ignore_errors=True)
            rec = read_model(path, CellRecord, "cell record")
            if rec.code_version != code_version():
                raise ConfigError(
                    f"cell {k.cell_id!r} in {str(run_dir)!r} was computed by other code "
                    f"(code version {rec.code_version or 'not recorded'}, this is "
                    f"{code_version()}); rerun with --force to redo the run's cells, or use "
                    "another --out."
                )
            _check_same_peft_config(suite, k, rec, run_dir)
            records[k.cell_id] = rec
            outcome.reused.append(k.cell_id)
            continue
        src = source_key(suite, k)
        if k.task not in heldout:
            heldout[k.task] = env.heldout_text(suite.eval.heldout_text, env.task(k.task))
        jobs.append(CellJob(
            run_dir=str(run_dir), key=k, suite=suite.model_dump(mode="json"), env=env,
            settings_hash=suite.settings_hash(),
            source_dir=str(run_dir / "cells" / src.cell_id) if src else None, threads=threads,
            heldout=heldout[k.task], run_token=token,
        ))
        deps[k.cell_id] = [src.cell_id] if src and src.cell_id not in records else []
    if not jobs:
        return
    done, failed = execute(jobs, deps, executor=executor, workers=workers, progress=progress,
                           devices=devices)
    records.update(done)
    outcome.ran += list(done)
    outcome.failed.update(failed)


def _check_same_peft_config(suite: Suite, key: CellKey, rec: CellRecord, run_dir: Path) -> None:
    """Refuse a finished cell of a PEFT method whose config is not the suite's now (the name
    stayed, the file changed): its figures would belong to another method."""
    spec = suite.method(key.method)
    if spec.peft is None:
        return
    had = (rec.train_config or {}).get("peft")
    if had != spec.peft:
        raise ConfigError(
            f"cell {key.cell_id!r} in {str(run_dir)!r} trained PEFT method {key.method!r} with "
            f"config {had}, and the suite now defines it as {spec.peft}; give the new config "
            "another name:, use another --out, or --force to redo the run's cells."
        )


def seed_overlaps(suite: Suite, plan: list[CellKey], records: dict[str, CellRecord],
                  run_dir: Path, env: Environment) -> list[Overlap]:
    """Bitwise overlap of the updated sets of every two seeds of a weight-space method at
    one task and lr, beside the expectation for random masks of the same densities."""
    from ..analysis import overlap_checkpoints

    groups: dict[tuple[str, str, float], list[CellKey]] = {}
    for k in plan:
        if k.cell_id in records and suite.method(k.method).weight_space:
            groups.setdefault((k.method, k.task, k.lr), []).append(k)
    out: list[Overlap] = []
    base = bf16 = None
    for (method, task, lr), keys in sorted(groups.items()):
        keys = sorted(keys, key=lambda k: k.seed)
        if len(keys) < 2:
            continue
        if base is None:
            base, _ = env.load_base()
        ref = base
        if suite.method(method).bf16_storage:
            bf16 = bf16 if bf16 is not None else copy.deepcopy(base).to(torch.bfloat16)
            ref = bf16
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                ov = overlap_checkpoints(ref, run_dir / "cells" / a.cell_id / "weights",
                                         run_dir / "cells" / b.cell_id / "weights").overall
                out.append(Overlap(method=method, task=task, lr=lr, seeds=[a.seed, b.seed],
                                   o1=ov.o1, o2=ov.o2, jaccard=ov.jaccard,
                                   expected_jaccard=ov.expected_jaccard,
                                   expected_o1=ov.expected_o1))
    return out


def results_file(path: str | Path) -> Path:
    """``path`` itself, or the results.json inside it when it is a run directory."""
    path = Path(path)
    return path / RESULTS if path.is_dir() else path


def read_results(path: str | Path) -> Results:
    """Read and validate a results.json (or a run directory's)."""
    return read_model(results_file(path), Results, "results")


__all__ = ["RunOutcome", "open_run_dir", "read_results", "run_suite", "seed_overlaps"]
