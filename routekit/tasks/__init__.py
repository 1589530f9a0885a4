"""Tasks: named splits of prompts with references and a checker (reward and metric in one)."""

from .base import Example, Task
from .checkers import answer_match, exact_match, extract_answer, normalize
from .jsonl import dataset_task, jsonl_task
from .registry import get_task, known_tasks
from .world_tasks import WORLD_TASKS, world_task

__all__ = [
    "Example", "Task", "answer_match", "exact_match", "extract_answer", "normalize",
    "dataset_task", "jsonl_task", "get_task", "known_tasks", "WORLD_TASKS", "world_task",
]
