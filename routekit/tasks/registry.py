"""Resolving a task name: world tasks by name, local data by ``jsonl:PATH`` or ``hf:PATH``."""

from __future__ import annotations

from ..errors import UnknownTaskError
from ..world.config import WorldConfig
from .base import Task
from .jsonl import dataset_task, jsonl_task
from .world_tasks import WORLD_TASKS, world_task


def known_tasks() -> list[str]:
    return [*WORLD_TASKS, "jsonl:PATH", "hf:PATH"]


def get_task(name: str | Task, world_config: WorldConfig | None = None) -> Task:
    """A Task from its name; a Task passes through unchanged."""
    if isinstance(name, Task):
        return name
    if name in WORLD_TASKS:
        return world_task(name, world_config)
    if name.startswith("jsonl:"):
        return jsonl_task(name.removeprefix("jsonl:"))
    if name.startswith("hf:"):
        path = name.removeprefix("hf:")
        return dataset_task(path, name=path.rstrip("/").rsplit("/", 1)[-1])
    raise UnknownTaskError(
        f"unknown task {name!r}. Known tasks: {', '.join(known_tasks())} "
        "(jsonl:PATH reads local JSONL records, hf:PATH a dataset saved with save_to_disk)."
    )
