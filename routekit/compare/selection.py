"""How a sweep's learning rate (and a proxy cell's α) is chosen, apart from the verdicts.

Verdicts are judged on a task's test prompts (and the knowledge probes), so nothing that
chooses a hyperparameter may look at them:

- **val** (a task with a ``val`` split: routekit's real tasks, a JSONL task with
  ``"split": "val"`` records, a world built with ``n_val > 0``): every cell also scores the
  val prompts. A proxy cell's α is the one with the highest val accuracy, and a method's rate
  is the one whose first-seed cell (at its α) has the highest val accuracy. A tie goes to
  the *smaller* α, then the *smaller* rate: the more conservative update, and a rule that
  reads no figure a verdict uses (probe log-likelihood, which (g) judges, is not a
  tie-break here).
- **test** (a task without a val split, such as the default world's): the choice falls back
  to test accuracy, ties to the higher probe answer log-likelihood, then the higher rate
  (the rule routekit used before val splits, so such a run's cells and choices are
  unchanged). A choice among two or more candidates made so is labelled *chosen on test
  (optimistic)* in results.json and the report: the chosen cell's test figure is a maximum
  over the sweep on the very prompts it is then judged on. A suite's ``select_on: val``
  refuses such a run instead (:func:`check_selection`).
- **fixed** (a rate in the suite's ``chosen_lrs``, as a multi-world run gives its later
  worlds from the first world's choice): that rate alone is a candidate, whatever other
  cells of the method a dependency ran (subnet_rl's source at its own rate).

:func:`selections` writes down, per (method, task), which split chose, and every
candidate's val and test accuracy beside the chosen one (``Results.selection``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .results import CellRecord, Selection, choose_variant, on_val, test_key

if TYPE_CHECKING:
    from .suite import Suite

__all__ = ["OPTIMISTIC", "best_lrs", "check_selection", "choose_lr", "choose_variant",
           "n_candidates", "on_val", "selections", "test_key"]

OPTIMISTIC = "chosen on test (optimistic)"


def choose_lr(found: Sequence[tuple[float, CellRecord]]) -> float:
    """The rate of the best of ``found`` ((lr, first-seed cell) pairs), by the rule above."""
    best = [(lr, rec.best()) for lr, rec in found]
    if on_val([b for _, b in best]):
        return max(best, key=lambda x: (x[1].val_accuracy, -x[0]))[0]
    return max((test_key(b), lr) for lr, b in best)[1]


def _first_seed_cells(suite: Suite, records: Mapping[str, CellRecord], method: str,
                      task: str) -> list[tuple[float, CellRecord]]:
    from .results import CellKey

    s0 = suite.seeds[0]
    fixed = suite.chosen_lrs.get(method, {}).get(task)
    lrs = suite.method_lrs(method) if fixed is None else [fixed]  # chosen elsewhere: that one
    return [(lr, r) for lr in lrs
            if (r := records.get(CellKey(method=method, task=task, lr=lr, seed=s0).cell_id))
            is not None]


def best_lrs(suite: Suite, records: Mapping[str, CellRecord]) -> dict[tuple[str, str], float]:
    """Per (method, task): the chosen rate among the first-seed cells; pairs without a
    finished cell are left out."""
    out: dict[tuple[str, str], float] = {}
    for task in suite.tasks:
        for m in suite.methods:
            found = _first_seed_cells(suite, records, m, task)
            if found:
                out[(m, task)] = choose_lr(found)
    return out


def selections(suite: Suite, records: Mapping[str, CellRecord]) -> list[Selection]:
    """What chose each (method, task)'s rate and α: the split, the chosen candidate and
    every candidate's val and test accuracy (first seed; methods that train only)."""
    from .results import Candidate, Selection

    out: list[Selection] = []
    for task in suite.tasks:
        for m in suite.methods:
            found = _first_seed_cells(suite, records, m, task)
            if not found:
                continue
            lr = choose_lr(found)
            chosen = dict(found)[lr].best()
            cands = [Candidate(lr=x, alpha=v.alpha, val_accuracy=v.val_accuracy,
                               test_accuracy=v.test_accuracy,
                               chosen=(x == lr and v is chosen))
                     for x, rec in found for v in rec.variants]
            split = "val" if on_val([v for _, rec in found for v in rec.variants]) else "test"
            out.append(Selection(
                method=m, task=task, split=split, optimistic=split == "test" and len(cands) > 1,
                lr=lr, alpha=chosen.alpha, val_accuracy=chosen.val_accuracy,
                test_accuracy=chosen.test_accuracy, candidates=cands))
    return out


def n_candidates(suite: Suite, method: str) -> int:
    """How many (rate, α) candidates a method's choice is made among."""
    spec = suite.method(method)  # the suite knows its PEFT methods too
    if not spec.trains:
        return 1
    return len(suite.method_lrs(method)) * (len(suite.proxy_alphas) if spec.steered else 1)


def check_selection(suite: Suite, env: Any) -> None:
    """With ``select_on: val``, refuse a suite that would choose among candidates on a task
    with no val split (the choice would be made on its test prompts)."""
    if suite.select_on != "val":
        return
    choosing = [m for m in suite.methods if n_candidates(suite, m) > 1]
    if not choosing:
        return
    for task in suite.tasks:
        if "val" not in env.task(task).splits:
            raise ConfigError(
                f"select_on: val, but task {task!r} has no val split, and methods "
                f"{choosing} choose among several rates or α; the choice would be made on the "
                "test prompts the verdicts use. Give the task a val split (a JSONL task's "
                "\"split\": \"val\" records; a world built with n_val > 0), run one rate and "
                "one α per method, or set select_on: val_or_test (choices made on test are "
                f"then labelled {OPTIMISTIC!r})."
            )


__all__ = ["OPTIMISTIC", "best_lrs", "check_selection", "choose_lr", "choose_variant",
           "n_candidates", "on_val", "selections", "test_key"]
