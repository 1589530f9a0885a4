"""Tasks: named splits of prompts with references and a checker (reward and metric in one).

This package sits below ``routekit.world``: the world's tasks (``add``, ``rev``, ``hop``,
``facts``) live in :mod:`routekit.world.tasks` and register their names with
:func:`register_named_tasks`, so ``get_task("rev")`` works without this package importing the
world.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from .base import Example, Task
from .chat import render_example, render_prompt, render_task
from .checkers import answer_match, exact_match, extract_answer, normalize
from .jsonl import TaskSpec, dataset_task, jsonl_task
from .registry import get_task, known_tasks, register_named_tasks, register_task_prefix

__all__ = [
    "Example", "Task", "answer_match", "exact_match", "extract_answer", "normalize",
    "dataset_task", "jsonl_task", "get_task", "known_tasks", "TaskSpec", "render_prompt",
    "render_example", "render_task", "register_task_prefix", "register_named_tasks",
]

# Names this package exported until the world's tasks moved to routekit.world.tasks; they
# still resolve, for one release, with a DeprecationWarning naming the new place.
_MOVED = {"WORLD_TASKS": "routekit.world.tasks", "world_task": "routekit.world.tasks"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(
            f"routekit.tasks.{name} moved to {_MOVED[name]}.{name} (also routekit.world.{name}); "
            "the old name goes in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
