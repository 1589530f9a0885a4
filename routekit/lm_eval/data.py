"""Data for lm-eval task files: a routekit task's split as a ``datasets`` split, and JSONL export.

The task YAMLs under ``recipes/lm_eval/`` read their documents through these functions
(``custom_dataset`` / ``process_docs`` entries), so a world task needs no exported file and a
real task's one JSONL (``split`` field) yields its test split. Every document carries
``prompt``, ``reference`` (what the checker compares with) and ``continuation`` (the text
that follows the prompt, as routekit's likelihood metrics score it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets

from ..errors import ConfigError
from ..io import atomic_write_bytes
from ..tasks.base import Task
from ..tasks.registry import get_task
from ..world.tasks import named_world


def task_records(task: Task, split: str = "test") -> list[dict[str, str]]:
    """``prompt`` / ``reference`` / ``continuation`` records of one split of ``task``."""
    return [
        {"prompt": e.prompt, "reference": e.reference, "continuation": e.continuation}
        for e in task.examples(split)
    ]


def world_dataset(
    world_task: str, world: str = "default", split: str = "test", **_metadata: Any
) -> datasets.DatasetDict:
    """``custom_dataset`` of a world task YAML: the task's ``split`` of the named world
    (``default``, ``tiny`` or a world_config.json), as the DatasetDict split ``test``.
    lm-eval also passes its metadata (the model_args); they are ignored."""
    task = get_task(world_task, named_world(world))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(task_records(task, split))})


def test_docs(docs: datasets.Dataset) -> datasets.Dataset:
    """``process_docs`` of a real task YAML: the records whose ``split`` is ``test``."""
    return docs.filter(lambda d: d["split"] == "test")


def export_jsonl(task: Task | str, path: str | os.PathLike, split: str = "test") -> Path:
    """Write one split of a routekit task as JSONL records for a ``dataset_path: json`` task
    (atomically); returns the path."""
    task = get_task(task)
    lines = [json.dumps(r, ensure_ascii=False) for r in task_records(task, split)]
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode())
    return Path(path)


def check_real(
    doc: dict[str, Any], results: list[str], checker: str = "sentence"
) -> dict[str, bool]:
    """``process_results`` of a real task YAML: routekit's ``checker`` on the completion and
    the record's ``answer`` (reduced to its final answer as routekit's JSONL tasks do)."""
    from ..tasks.checkers import CHECKERS, extract_answer

    if checker not in CHECKERS:
        raise ConfigError(
            f"routekit has no {checker!r} checker (known: {sorted(CHECKERS)}); the real task "
            "files need the routekit version that ships the real tasks."
        )
    return {
        f"{checker}_match": bool(CHECKERS[checker](results[0], extract_answer(str(doc["answer"]))))
    }
