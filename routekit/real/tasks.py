"""The project's real tasks: ``get_task("real:<name>")`` reads ``routekit/real/data/<name>.jsonl``.

Each record has ``question``, ``answer`` and ``split``; the prompt is the question itself
(template ``{question}``), read through the model's chat template (``chat=True``), and a
completion is checked by the ``sentence`` checker (the reference in the first sentence of an
answer written as a sentence). The data and their measured figures are described in
docs/real.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UnknownTaskError
from ..tasks.base import Task
from ..tasks.jsonl import jsonl_task
from ..tasks.registry import register_task_prefix

DATA_DIR = Path(__file__).resolve().parent / "data"
REAL_TEMPLATE = "{question}"
REAL_CHECKER = "sentence"


# Prompts without answers (held-out text for forgetting), not a task.
HELDOUT_PROMPTS = "heldout_prompts"


def real_task_names(data_dir: str | os.PathLike = DATA_DIR) -> list[str]:
    """The names of the shipped real tasks (the ``*.jsonl`` files of ``data_dir`` but the
    held-out prompts, which have no answers)."""
    return sorted(p.stem for p in Path(data_dir).glob("*.jsonl") if p.stem != HELDOUT_PROMPTS)


def real_task(
    name: str, *, data_dir: str | os.PathLike = DATA_DIR, checker: str = REAL_CHECKER
) -> Task:
    """The real task ``name`` from ``data_dir/<name>.jsonl`` (chat on, template ``{question}``)."""
    path = Path(data_dir) / f"{name}.jsonl"
    if name == HELDOUT_PROMPTS or not path.is_file():
        known = ", ".join(f"real:{n}" for n in real_task_names(data_dir)) or "none are installed"
        why = "prompts without answers, for forgetting" if name == HELDOUT_PROMPTS else f"no {str(path)!r}"
        raise UnknownTaskError(f"unknown real task {name!r} ({why}); known: {known}.")
    return jsonl_task(path, name=name, template=REAL_TEMPLATE, checker=checker, chat=True)


register_task_prefix("real", real_task, real_task_names)
