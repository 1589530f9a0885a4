"""A suite on several worlds: one sub-run per world, and verdicts committed across them.

A verdict that flips when the world's pretraining is repeated (another seed, or the same
config built on another machine into other weights) is a fact about one world, not about the
claim. So a suite may name ``worlds:`` instead of one ``world:``; each world is a level of
the hierarchy above seeds and prompts:

- **Sub-runs.** World i (1-based) runs into ``RUN/worlds/<i>-<config hash>/``, a normal
  single-environment run directory (its own ``run.json``, cells, ``results.json``,
  ``report.md``, resume and refusal to mix environments; :mod:`.runner`). A world given as a
  mapping of WorldConfig overrides is built into the cache on first use by the world builder
  (:func:`routekit.world.build`, cached by config hash), then named by its cache entry.
- **Rates.** With ``world_sweep: first`` (the default) the first world runs the suite's sweep
  and every later world runs only each method's rate chosen there, per task (its
  ``Results.selection``: on val where the task has a val split), on every seed: the later
  sub-suites carry them as ``chosen_lrs``. ``world_sweep: every`` sweeps on every world.
- **Resume.** A world whose ``results.json`` holds every cell its plan asks for, written
  with the same suite, environment stamp, routekit version and code version, is read, not
  run again; any other world resumes its cells as a single run does. A world with failed
  cells stops the run (its finished cells are kept; rerunning retries them).
- **Verdicts across worlds** (:func:`combine_verdicts`), per claim line (claim × task, as
  each world's report keys them): "supported" or "contradicted" only when every world gives
  that verdict and at least ``MIN_WORLDS`` worlds ran; "not applicable" when every world
  says so; otherwise "inconclusive", with the split named ("worlds disagree: supported on 2
  of 3, inconclusive on 1"). A claim that is not applicable on some worlds and judged on
  others is inconclusive: it was not shown to hold on every world.

The top-level ``RUN/results.json`` (:class:`WorldsResults`: each world's spec, stamp and
sub-directory, the first world's choices, each claim line's verdict per world and across
worlds) and ``RUN/report.md`` (the table, with links to each world's report) are written
atomically. The module runs no cell itself and changes nothing a cell computes.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..errors import ConfigError
from ..io import atomic_write_bytes
from ..locks import exclusive_lock
from ..reporting import md_table, text_table
from .claims import NOT_APPLICABLE, Claim, all_claims
from .results import (
    RESULTS_SCHEMA,
    Results,
    RunManifest,
    Selection,
    WorldStamp,
    _Strict,
    code_version,
    read_model,
    write_model,
)
from .suite import Suite, suite_from_dict
from .worker import RUN_LOCK

WORLDS_DIR = "worlds"
RESULTS = "results.json"
REPORT = "report.md"
MIN_WORLDS = 3  # fewer worlds than this commit no verdict across worlds
VERDICT_ORDER = ("supported", "contradicted", "inconclusive", NOT_APPLICABLE, "missing")


# ----------------------------------------------------------------------------- records
class WorldEntry(_Strict):
    """One world of a multi-world run."""

    index: int = Field(description="1-based, in the suite's order")
    spec: str | dict[str, Any] = Field(description="the world as the suite's worlds: lists it")
    world: str = Field(description="the sub-suite's world: 'default', 'tiny' or a cache entry")
    dir: str = Field(description="the sub-run directory, relative to the run directory")
    config_hash: str
    stamp: WorldStamp = Field(description="the built weights' fingerprints (its run.json's)")
    rates: Literal["swept", "first world's"] = Field(
        description="whether this world swept the rates or ran the first world's choices")
    cells: int


class ClaimLine(_Strict):
    """One claim line (claim × task): its verdict on each world and across worlds."""

    scope: str = Field(description="the task, or 'all tasks' for the pooled claims")
    letter: str
    text: str
    verdicts: list[str] = Field(description="per world, in order ('missing': no such line)")
    reasons: list[str] = Field(description="per world, the verdict's reason ('' for none)")
    verdict: str = Field(description="across worlds (combine_verdicts)")
    reason: str


class WorldsResults(_Strict):
    """The top-level ``results.json`` of a multi-world run."""

    schema_version: int = RESULTS_SCHEMA
    kind: Literal["worlds"] = "worlds"
    suite: dict[str, Any] = Field(description="the suite as given, worlds: included")
    settings_hash: str
    routekit_version: str
    code_version: str
    min_worlds: int = MIN_WORLDS
    worlds: list[WorldEntry]
    chosen: list[Selection] = Field(
        default_factory=list, description="the first world's choice per (method, task): what "
        "the later worlds ran with world_sweep: first")
    claims: list[ClaimLine]


# ----------------------------------------------------------------------------- combining
def combine_verdicts(verdicts: Sequence[str], min_worlds: int = MIN_WORLDS) -> tuple[str, str]:
    """The verdict across worlds and its reason (see the module's docstring)."""
    n = len(verdicts)
    counts = Counter(verdicts)
    if n == 0:
        return "inconclusive", "no world ran"
    if len(counts) == 1:
        (v,) = counts
        if v in ("supported", "contradicted"):
            if n < min_worlds:
                return "inconclusive", (f"{v} on {'both' if n == 2 else 'all'} {n} world"
                                        f"{'s' if n > 1 else ''}, fewer than {min_worlds}: no "
                                        "verdict across worlds")
            return v, f"{v} on all {n} worlds"
        if v == NOT_APPLICABLE:
            return NOT_APPLICABLE, "not applicable on every world"
        return "inconclusive", f"{v} on every world"
    split = ", ".join(f"{v} on {counts[v]}" + (f" of {n}" if i == 0 else "")
                      for i, v in enumerate(sorted(counts, key=lambda v: (-counts[v],
                                                                          VERDICT_ORDER.index(v)
                                                                          if v in VERDICT_ORDER
                                                                          else 99))))
    return "inconclusive", f"worlds disagree: {split}"


def cross_world(per_world: Sequence[Sequence[tuple[str, Sequence[Claim]]]],
                min_worlds: int = MIN_WORLDS) -> list[ClaimLine]:
    """Each claim line's verdict per world and across worlds, from every world's
    :func:`~.claims.all_claims` (lines in the first world's order, then any others)."""
    keyed: list[dict[tuple[str, str], Claim]] = [
        {(scope, c.letter): c for scope, claims in world for c in claims} for world in per_world]
    order: list[tuple[str, str]] = []
    for world in keyed:
        order += [k for k in world if k not in order]
    out = []
    for key in order:
        found = [w.get(key) for w in keyed]
        first = next(c for c in found if c is not None)
        verdicts = [c.verdict if c is not None else "missing" for c in found]
        verdict, reason = combine_verdicts(verdicts, min_worlds)
        out.append(ClaimLine(scope=key[0], letter=key[1], text=first.text, verdicts=verdicts,
                             reasons=[c.reason if c is not None else "" for c in found],
                             verdict=verdict, reason=reason))
    return out


# ----------------------------------------------------------------------------- planning
@dataclass
class WorldPlan:
    """Where one world of a suite runs (its config known before anything is built)."""

    index: int
    spec: str | dict[str, Any]
    config_hash: str

    @property
    def dirname(self) -> str:
        return f"{self.index}-{self.config_hash}"


def plan_worlds(suite: Suite) -> list[WorldPlan]:
    """The suite's worlds with their sub-directories; two entries naming one config (a
    cache entry directory holding a listed config, say) are refused."""
    from ..world.tasks import named_world

    plans, seen = [], {}
    for i, spec in enumerate(suite.worlds, start=1):
        h = named_world(spec).hash()
        if h in seen:
            raise ConfigError(f"worlds {seen[h]} and {i} of suite {suite.name!r} are one world "
                              f"(config {h}); give each world its own config, e.g. another seed.")
        seen[h] = i
        plans.append(WorldPlan(i, spec, h))
    return plans


def resolve_world_spec(spec: str | dict[str, Any], progress: bool = True):
    """``(the sub-suite's world name, its environment)``: a mapping is built into the world
    cache (or found there) by :func:`routekit.world.build` and named by its entry."""
    from .env.world import resolve_world_environment

    if isinstance(spec, dict):
        from ..world.build import build
        from ..world.config import world_from_overrides
        from ..world.entry import world_dir

        config = world_from_overrides(spec, "worlds entry")
        build(config, progress=progress)
        spec = str(world_dir(config))
    return spec, resolve_world_environment(spec, progress=progress)


def world_suite(suite: Suite, world: str, chosen: dict[str, dict[str, float]] | None) -> Suite:
    """The single-world suite a sub-run runs: ``world`` instead of the list, and the first
    world's rates as ``chosen_lrs`` (None: sweep)."""
    data = suite.model_dump(mode="json")
    data.update(world=world, worlds=[], world_sweep="first", chosen_lrs=chosen or {})
    return suite_from_dict(data, f"suite {suite.name!r} on world {world!r}")


def chosen_lrs(selection: Sequence[Selection]) -> dict[str, dict[str, float]]:
    """Per method, per task, the rate a world's sweep chose."""
    out: dict[str, dict[str, float]] = {}
    for s in selection:
        out.setdefault(s.method, {})[s.task] = s.lr
    return out


def finished_world(suite: Suite, run_dir: Path, manifest: RunManifest,
                   report: bool) -> Results | None:
    """The world's results when its run directory is complete for ``suite`` (every planned
    cell in its results.json, written for the same suite and manifest), else None."""
    from .cells import first_phase, second_phase

    path = run_dir / RESULTS
    if not path.is_file() or (report and not (run_dir / REPORT).is_file()):
        return None
    try:
        res = read_model(path, Results, "results")
    except ConfigError:
        return None
    if res.manifest != manifest or res.suite != suite.model_dump(mode="json"):
        return None
    records = {c.cell_id: c for c in res.cells}
    plan = first_phase(suite) + second_phase(suite, records)
    return res if all(k.cell_id in records for k in plan) else None


# ----------------------------------------------------------------------------- running
@dataclass
class WorldsOutcome:
    """What a multi-world :func:`~.runner.run_suite` produced."""

    run_dir: Path
    results: WorldsResults
    worlds: list[Any] = field(default_factory=list)  # each world's RunOutcome
    ran: list[str] = field(default_factory=list)  # "<world dir>/<cell id>" computed now
    reused: list[str] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # worlds found finished


def _open_top(run_dir: Path, force: bool) -> None:
    """Refuse a directory that is neither empty nor a multi-world run directory (a
    single-world run's, or a foreign one), unless ``force``."""
    from .runner import MANIFEST

    if (run_dir / MANIFEST).is_file():
        if not force:
            raise ConfigError(
                f"run directory {str(run_dir)!r} holds a single-world run ({MANIFEST}); a suite "
                "with worlds: writes one sub-run per world under worlds/. Use another --out, or "
                "--force to delete its cells and results."
            )
        for name in ("cells", MANIFEST, RESULTS, REPORT, "plots"):
            p = run_dir / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    elif (run_dir.exists() and not (run_dir / WORLDS_DIR).is_dir() and not force
          and any(p.name != RUN_LOCK for p in run_dir.iterdir())):
        raise ConfigError(
            f"{str(run_dir)!r} exists, is not empty and is not a routekit compare run directory "
            f"(no {MANIFEST}, no {WORLDS_DIR}/); choose another --out, or --force to use it anyway."
        )


def run_worlds(
    suite: Suite, out: str | Path, *, executor: str = "local", workers: int | None = None,
    force: bool = False, progress: bool = True, threads: int = 1, report: bool = True,
    device: str | None = None,
) -> WorldsOutcome:
    """Run ``suite`` on each of its worlds (see the module's docstring), then write the
    top-level results.json and report.md (``report=False``: results.json only, and no
    per-world reports)."""
    from .runner import routekit_version, run_suite

    if not suite.worlds:
        raise ConfigError(f"suite {suite.name!r} names no worlds; run it with run_suite.")
    run_dir = Path(out)
    plans = plan_worlds(suite)
    _open_top(run_dir, force)
    with exclusive_lock(run_dir / RUN_LOCK, f"run directory {str(run_dir)!r}",
                        on_stale=lambda m: print(f"routekit: {m}", file=sys.stderr)):
        outcome = WorldsOutcome(run_dir, results=None)  # type: ignore[arg-type]
        entries: list[WorldEntry] = []
        per_world: list[Results] = []
        chosen: dict[str, dict[str, float]] | None = None
        first_selection: list[Selection] = []
        for plan in plans:
            if progress:
                print(f"routekit: world {plan.index} of {len(plans)} (config "
                      f"{plan.config_hash})", file=sys.stderr)
            name, env = resolve_world_spec(plan.spec, progress=progress)
            sub = world_suite(suite, name, chosen if plan.index > 1 else None)
            sub_dir = run_dir / WORLDS_DIR / plan.dirname
            manifest = RunManifest(suite=sub.name, settings_hash=sub.settings_hash(),
                                   world=env.stamp, routekit_version=routekit_version(),
                                   code_version=code_version())
            res = finished_world(sub, sub_dir, manifest, report)
            if res is not None:
                outcome.skipped.append(plan.index)
                if report:
                    # verdicts and plots are presentation: rewrite the world's report from its
                    # cells, so it says what the table across worlds (recomputed below) says
                    from .report import write_report
                    write_report(res, sub_dir)
                outcome.reused += [f"{plan.dirname}/{c.cell_id}" for c in res.cells]
            else:
                one = run_suite(sub, sub_dir, executor=executor, workers=workers, force=force,
                                progress=progress, env=env, threads=threads, report=report,
                                device=device)
                outcome.worlds.append(one)
                outcome.ran += [f"{plan.dirname}/{c}" for c in one.ran]
                outcome.reused += [f"{plan.dirname}/{c}" for c in one.reused]
                res = one.results
            per_world.append(res)
            if plan.index == 1:
                first_selection = list(res.selection)
                if suite.world_sweep == "first":
                    chosen = chosen_lrs(res.selection)
            entries.append(WorldEntry(
                index=plan.index, spec=plan.spec, world=name,
                dir=f"{WORLDS_DIR}/{plan.dirname}", config_hash=plan.config_hash,
                stamp=env.stamp, rates="first world's" if plan.index > 1 and chosen is not None
                else "swept", cells=len(res.cells)))
        combined = WorldsResults(
            suite=suite.model_dump(mode="json"), settings_hash=suite.settings_hash(),
            routekit_version=routekit_version(), code_version=code_version(), worlds=entries,
            chosen=first_selection, claims=cross_world([all_claims(r) for r in per_world]))
        write_worlds(combined, run_dir, report=report)
        outcome.results = combined
        return outcome


# ----------------------------------------------------------------------------- output
def read_worlds_results(path: str | Path) -> WorldsResults:
    """Read and validate a multi-world run's top-level results.json (or its directory's)."""
    from .runner import results_file

    return read_model(results_file(path), WorldsResults, "multi-world results")


def _spec_text(spec: str | dict[str, Any]) -> str:
    if isinstance(spec, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"
    return spec


def _verdict_cell(v: str, reason: str, bold: bool = True) -> str:
    text = f"**{v}**" if bold else v
    return f"{text} ({reason})" if reason else text


def verdict_table(results: WorldsResults, markdown: bool = True) -> tuple[list[str], list[list[str]]]:
    """claim | task | (statement) | world 1 … world n | across worlds."""
    n = len(results.worlds)
    header = ["claim", "task"] + (["statement"] if markdown else []) + [
        f"world {i}" for i in range(1, n + 1)] + ["across worlds"]
    rows = []
    for line in results.claims:
        per = [(f"**{v}**" if markdown else v) for v in line.verdicts]
        rows.append([f"({line.letter})", line.scope] + ([line.text] if markdown else []) + per
                    + [_verdict_cell(line.verdict, line.reason, markdown)])
    return header, rows


def verdict_text(results: WorldsResults) -> str:
    """The cross-world verdict table as plain text (what ``routekit compare`` prints)."""
    return text_table(*verdict_table(results, markdown=False))


def render_worlds(results: WorldsResults) -> str:
    """The top-level report.md of a multi-world run."""
    suite = Suite.model_validate(results.suite)
    n = len(results.worlds)
    held = [f"({c.letter}) {c.scope}" for c in results.claims
            if c.verdict in ("supported", "contradicted")]
    world_rows = [[str(w.index), f"`{_spec_text(w.spec)}`", f"`{w.config_hash}`",
                   f"`{w.stamp.base_fingerprint}`", f"`{w.stamp.proxy_fingerprint or 'none'}`",
                   w.rates, str(w.cells), f"[{w.dir}/{REPORT}]({w.dir}/{REPORT})"]
                  for w in results.worlds]
    chosen_rows = [[s.task, s.method, f"{s.lr:g}", "—" if s.alpha is None else f"{s.alpha:g}",
                    "test (optimistic)" if s.optimistic else s.split, str(len(s.candidates))]
                   for s in results.chosen]
    later = ("The first world swept every rate (on its first seed) and each later world ran "
             "only each method's rate chosen there, per task, on every seed."
             if suite.world_sweep == "first" else "Every world swept every rate on its own.")
    lines = [
        f"# routekit compare: suite `{suite.name}` on {n} worlds",
        "",
        f"routekit {results.routekit_version}. Each world is a full run of the suite in its own "
        f"directory (its report, results.json and cells; linked below). {later} A verdict "
        f"commits across worlds only when every world gives it and at least "
        f"{results.min_worlds} worlds ran; a claim not applicable on some worlds and judged on "
        "others is inconclusive; 'not applicable' when it is so on every world.",
        "",
        "## Worlds",
        "",
        md_table(["world", "spec", "config", "base weights", "proxy", "rates", "cells", "report"],
                 world_rows),
        "",
        "## Verdicts across worlds",
        "",
        (f"Held on every world: {', '.join(held)}." if held else
         "No claim line held on every world."),
        "",
        md_table(*verdict_table(results)),
        "",
        "Each world's numbers (intervals over seeds and prompts) are in its own report.",
        "",
        "## Rates chosen on world 1",
        "",
        md_table(["task", "method", "lr", "α", "chosen on", "candidates"], chosen_rows)
        if chosen_rows else "No trained method.",
        "",
    ]
    return "\n".join(lines)


def write_worlds(results: WorldsResults, run_dir: str | Path, report: bool = True) -> Path:
    """Write the top-level results.json (and report.md), each atomically."""
    run_dir = Path(run_dir)
    path = write_model(run_dir / RESULTS, results)
    if report:
        atomic_write_bytes(run_dir / REPORT, render_worlds(results).encode())
    return path


__all__ = [
    "ClaimLine", "MIN_WORLDS", "WorldEntry", "WorldPlan", "WorldsOutcome", "WorldsResults",
    "chosen_lrs", "combine_verdicts", "cross_world", "finished_world", "plan_worlds",
    "read_worlds_results", "render_worlds", "resolve_world_spec", "run_worlds",
    "verdict_table", "verdict_text", "world_suite", "write_worlds",
]
