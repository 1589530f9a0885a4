"""Running lm-eval tasks on a :class:`RoutekitLM`: the engine behind ``routekit eval --lm-eval``.

The model is built (and every bad model_arg refused) before lm-eval loads a task or runs a
request; tasks are looked up in the include paths (the shipped ``recipes/lm_eval/`` of a
source checkout by default) and, unless told otherwise, lm-eval's own task library.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UnknownTaskError
from .model import RoutekitLM, parse_model_args

try:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table
except ImportError as e:  # an optional extra
    raise ImportError(
        "routekit.lm_eval needs lm-evaluation-harness: pip install 'routekit[lmeval]'."
    ) from e

#: The task files shipped with a source checkout of routekit.
RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "lm_eval"


def include_paths(extra: Sequence[str | os.PathLike] | None = None) -> list[Path]:
    """``extra`` (``--include-path`` dirs, ``:``-separated strings allowed) after the shipped
    recipes/lm_eval/ when this is a source checkout."""
    paths = [RECIPES] if RECIPES.is_dir() else []
    for item in extra or []:
        paths += [Path(p).expanduser() for p in str(item).split(":") if p]
    return paths


def run_tasks(
    tasks: Sequence[str] | str,
    model_args: str | dict[str, Any] | RoutekitLM,
    *,
    include_path: Sequence[str | os.PathLike] | None = None,
    include_defaults: bool | None = None,
    limit: int | float | None = None,
    log_samples: bool = False,
    **simple_evaluate_kwargs: Any,
) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of ``tasks`` (names, comma-separated or a list) on a
    RoutekitLM built from ``model_args`` (lm-eval's ``key=value,...`` string or a dict).

    ``include_defaults``: whether lm-eval's own task library is searched too (indexing it
    takes seconds); None searches it only for names the include paths lack.
    Returns lm-eval's results dict. A task name found nowhere is an UnknownTaskError."""
    if isinstance(model_args, RoutekitLM):
        lm = model_args
    else:
        args = parse_model_args(model_args) if isinstance(model_args, str) else dict(model_args)
        lm = RoutekitLM(**args)
    names = [t for t in tasks.split(",") if t] if isinstance(tasks, str) else list(tasks)
    paths = include_paths(include_path)

    def manager_for(defaults: bool) -> TaskManager:
        return TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=defaults)

    manager = manager_for(bool(include_defaults))
    missing = [t for t in names if not manager.match_tasks([t])]
    if missing and include_defaults is None:
        manager = manager_for(True)
        missing = [t for t in names if not manager.match_tasks([t])]
    if missing:
        where = ", ".join(str(p) for p in paths) or "no include path"
        raise UnknownTaskError(
            f"lm-eval task(s) {missing} were found neither in {where} nor in lm-eval's own tasks; "
            "pass the directory of their YAML files with --include-path."
        )
    results = simple_evaluate(
        model=lm,
        tasks=names,
        task_manager=manager,
        limit=limit,
        log_samples=log_samples,
        **simple_evaluate_kwargs,
    )
    assert results is not None  # None only on non-zero ranks of a distributed run
    return results


def table(results: dict[str, Any]) -> str:
    """lm-eval's own markdown table of a results dict (and its groups table, if any)."""
    text = make_table(results)
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    return text
