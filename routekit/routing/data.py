"""Labelled routing prompts: from each expert's task (training split), or from a JSONL file."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from ..tasks.registry import get_task
from .base import ExpertLike, expert_names
from .classifier import NONE_CLASS
from .prompt import expert_task


def task_routing_prompts(
    experts: Sequence[ExpertLike],
    *,
    none_task: str | None = "facts",
    split: str = "train",
    tasks: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """``{expert name: its task's split prompts, ..., "none": none_task's split prompts}``.

    An expert's task is ``tasks[name]``, else its ``training_config["task"]``, else its name.
    Only the *training* split should teach a router (the default), so test prompts stay
    unseen. ``none_task`` gives prompts that need no expert (the world's knowledge
    questions); None leaves the none class out.
    """
    tasks = dict(tasks or {})
    out: dict[str, list[str]] = {}
    for e, name in zip(experts, expert_names(experts)):
        task = tasks.get(name) or expert_task(e) or name
        out[name] = get_task(task).prompts(split)
    if none_task is not None:
        if none_task in [tasks.get(n) or expert_task(e) or n
                         for e, n in zip(experts, expert_names(experts))]:
            raise ConfigError(
                f"the none class's task {none_task!r} is also an expert's task; pass "
                "none_task=None or another task."
            )
        out[NONE_CLASS] = get_task(none_task).prompts(split)
    return out


def read_routing_jsonl(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read ``{"prompt": ..., "expert": ...}`` records (``expert`` may be ``"none"``) into
    ``{class: prompts}``, refusing a malformed line with its number."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"routing data file {str(path)!r} does not exist.")
    out: dict[str, list[str]] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{i} is not valid JSON ({e}).") from e
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not (
            isinstance(rec.get("expert"), str) and rec["expert"]
        ):
            raise ConfigError(
                f"{path}:{i} must be an object with a string 'prompt' and a non-empty string "
                f"'expert' (an expert name or \"none\"); got {line[:120]!r}."
            )
        out.setdefault(rec["expert"], []).append(rec["prompt"])
    if not out:
        raise ConfigError(f"routing data file {str(path)!r} holds no records.")
    return out
