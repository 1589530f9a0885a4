"""Tasks: named splits of prompts with references and a checker (reward and metric in one)."""

from .base import Example, Task
from .chat import render_example, render_prompt, render_task
from .checkers import answer_match, exact_match, extract_answer, normalize
from .jsonl import TaskSpec, dataset_task, jsonl_task
from .registry import get_task, known_tasks, register_task_prefix
from .world_tasks import WORLD_TASKS, world_task

__all__ = [
    "Example", "Task", "answer_match", "exact_match", "extract_answer", "normalize",
    "dataset_task", "jsonl_task", "get_task", "known_tasks", "TaskSpec", "render_prompt",
    "render_example", "render_task", "register_task_prefix", "WORLD_TASKS", "world_task",
]
