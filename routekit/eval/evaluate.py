"""Greedy evaluation: :func:`evaluate` (``rk.evaluate``), a task split's accuracy with every
completion kept (:class:`EvalResult`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..tasks.base import Task
from ..tasks.chat import render_task
from .generate import generate


class EvalResult(BaseModel):
    """Accuracy of a model on one split of one task, with every completion kept."""

    task: str
    split: str
    accuracy: float
    n: int
    correct: list[bool]
    completions: list[str]


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    split: str = "test",
    *,
    max_new_tokens: int = 16,
    batch_size: int = 64,
    limit: int | None = None,
    progress: bool = False,
    chat: bool | None = None,
    **generate_kwargs: Any,
) -> EvalResult:
    """Greedy accuracy of ``model`` on ``task``'s ``split`` (with ``limit`` examples at most).

    ``chat``: read the prompts through the tokenizer's chat template; None (default) keeps
    the task's own ``chat`` setting.
    """
    task = render_task(task, tokenizer, chat)
    examples = task.examples(split)[:limit] if limit else task.examples(split)
    completions = generate(
        model,
        tokenizer,
        [e.prompt for e in examples],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc=f"eval {task.name}/{split}",
        **generate_kwargs,
    )
    correct = [task.check(c, e.reference) for c, e in zip(completions, examples)]
    return EvalResult(
        task=task.name,
        split=split,
        accuracy=sum(correct) / max(len(correct), 1),
        n=len(correct),
        correct=correct,
        completions=completions,
    )
