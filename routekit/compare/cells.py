"""Which cells a suite runs, in which order: the sweep policy and the dependencies.

A cell is one method × task × learning rate × seed (:class:`~.results.CellKey`); the base
is one cell per task (lr 0, the first seed: it is deterministic). Planning runs in two
phases (see :mod:`.suite` for the policy): :func:`first_phase` (every lr on the first seed,
or on every seed with ``sweep: all_seeds``), then :func:`second_phase` from the first
phase's records (each method's best lr on the other seeds, chosen on val where the task has
a val split: :mod:`.selection`). A (method, task) given a rate in the suite's
``chosen_lrs`` (a multi-world run's later worlds: :mod:`.worlds`) runs that rate alone, on
every seed, in the first phase. A subnet_rl cell depends on the
cell of ``subnet_from`` at the same task, lr and seed, which is added to the plan when the
sweep did not already put it there.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError
from . import selection
from .results import CellKey, CellRecord
from .suite import Suite


def _key(method: str, task: str, lr: float, seed: int) -> CellKey:
    return CellKey(method=method, task=task, lr=lr, seed=seed)


def source_key(suite: Suite, key: CellKey) -> CellKey | None:
    """The cell a subnet_rl cell takes its mask from (None for other methods)."""
    if key.method != "subnet_rl":
        return None
    return _key(suite.subnet_from, key.task, key.lr, key.seed)


def first_phase(suite: Suite) -> list[CellKey]:
    """Every method at every one of its lrs on the first seed (all seeds with all_seeds); a
    (method, task) with a rate in ``chosen_lrs`` at that rate alone, on every seed."""
    seeds = suite.seeds if suite.sweep == "all_seeds" else suite.seeds[:1]
    keys: list[CellKey] = []
    for task in suite.tasks:
        for m in suite.methods:
            if not suite.method(m).trains:
                keys.append(_key(m, task, 0.0, suite.seeds[0]))
                continue
            fixed = suite.chosen_lrs.get(m, {}).get(task)
            if fixed is not None:  # a rate chosen elsewhere (a multi-world run's first world)
                keys += [_key(m, task, fixed, s) for s in suite.seeds]
                continue
            keys += [_key(m, task, lr, s) for lr in suite.method_lrs(m) for s in seeds]
    return with_dependencies(suite, keys)


def best_lrs(suite: Suite, records: Mapping[str, CellRecord]) -> dict[tuple[str, str], float]:
    """Per (method, task): the lr chosen among its first-seed cells, on val where the task
    has a val split, else on test (:mod:`.selection` says how, ties included); pairs without a
    finished cell are left out."""
    return selection.best_lrs(suite, records)


def second_phase(suite: Suite, records: Mapping[str, CellRecord]) -> list[CellKey]:
    """Each method at its best first-seed lr on the other seeds (none with all_seeds)."""
    if suite.sweep == "all_seeds" or len(suite.seeds) < 2:
        return []
    best = best_lrs(suite, records)
    keys = [_key(m, task, lr, s) for (m, task), lr in best.items() for s in suite.seeds[1:]
            if task not in suite.chosen_lrs.get(m, {})]  # those ran on every seed already
    return with_dependencies(suite, keys)


def with_dependencies(suite: Suite, keys: list[CellKey]) -> list[CellKey]:
    """``keys`` with every dependency added, each dependency before its dependants."""
    out: list[CellKey] = []
    seen: set[str] = set()
    for k in keys:
        src = source_key(suite, k)
        for kk in ([src] if src else []) + [k]:
            if kk.cell_id not in seen:
                seen.add(kk.cell_id)
                out.append(kk)
    return out


def check_dependencies(suite: Suite, keys: list[CellKey]) -> None:
    """Refuse a plan whose subnet_rl cell lacks the cell it takes its mask from."""
    ids = {k.cell_id for k in keys}
    for k in keys:
        src = source_key(suite, k)
        if src is not None and src.cell_id not in ids:
            raise ConfigError(
                f"cell {k.cell_id} trains the parameters that {src.cell_id} changed, but that "
                f"cell is not in the run; add method {src.method} with lr {k.lr:g} and seed "
                f"{k.seed} to the suite."
            )
