"""PromptRouter: ask the base itself which task family a prompt belongs to.

The world's corpus teaches the base ``task: <prompt> => <family>`` (families ``add``,
``rev``, ``hop``, ``fact``); for a real model, give a template with ``{prompt}`` that a
model answers with a class name (few-shot examples in the template work well). The router
generates a few greedy tokens, takes the answer's first word, and maps it to an expert with
``classes``. An answer that names no mapped class (or a class mapped to None) routes to the
base alone: never to whichever expert happened to be loaded last.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError
from ..eval import generate
from .base import (
    ExpertLike,
    Router,
    RouterFile,
    base_fingerprint_of,
    base_from_context,
    register_router,
)
from .mixture import Mixture, check_weight

WORLD_TEMPLATE = "task: {prompt} =>"
_FIRST_WORD = re.compile(r"\s*([^\s.,;:!?]+)")


def answer_class(completion: str) -> str:
    """The first word of a completion (without trailing punctuation); '' when there is none."""
    m = _FIRST_WORD.match(completion)
    return m.group(1).lower() if m else ""


def default_classes(experts: Sequence[ExpertLike]) -> dict[str, str]:
    """Class label -> expert name from each expert's task (the world's labels for its tasks).

    An expert's task is ``training_config["task"]`` when it has one, else its name; the
    world names the facts family ``fact``.
    """
    from ..world.corpus import ROUTE_LABELS

    out: dict[str, str] = {}
    for e in experts:
        name = e if isinstance(e, str) else e.name
        task = expert_task(e) or name
        label = ROUTE_LABELS.get(task, task)
        if label in out:
            raise ConfigError(
                f"experts {out[label]!r} and {name!r} both answer class {label!r}; give "
                "PromptRouter an explicit classes mapping."
            )
        out[label] = name
    return out


def expert_task(expert: ExpertLike) -> str | None:
    """The task an expert was trained on, when its metadata says so (SVF experts trained by
    ``routekit train`` record it), else None."""
    cfg = getattr(expert, "training_config", None) or {}
    task = cfg.get("task") if isinstance(cfg, Mapping) else None
    return task if isinstance(task, str) else None


@register_router
class PromptRouter(Router):
    """Routes each prompt to the expert whose class the base names for it (weight ``weight``).

    ``classes`` maps an answer (lower-case first word) to an expert name, or to None for a
    class that needs no expert (the world's ``fact``); the default is :func:`default_classes`.
    """

    kind = "prompt"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        experts: Sequence[ExpertLike],
        *,
        classes: Mapping[str, str | None] | None = None,
        template: str = WORLD_TEMPLATE,
        max_new_tokens: int = 4,
        weight: float = 1.0,
        batch_size: int = 64,
        base_fingerprint: str | None = None,
        chat: bool = False,
    ) -> None:
        super().__init__(experts, base_fingerprint or base_fingerprint_of(model))
        if "{prompt}" not in template:
            raise ConfigError(
                f"PromptRouter template {template!r} has no '{{prompt}}' field; write where "
                "the prompt goes, e.g. 'task: {prompt} =>'."
            )
        if max_new_tokens < 1 or batch_size < 1:
            raise ConfigError(
                f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}."
            )
        classes = dict(default_classes(experts) if classes is None else classes)
        unknown = {c: n for c, n in classes.items() if n is not None and n not in self.expert_names}
        if unknown:
            raise ConfigError(
                f"PromptRouter classes map to unknown expert(s) {unknown}; the experts are "
                f"{self.expert_names}."
            )
        self.model, self.tokenizer = model, tokenizer
        self.classes = {str(c).lower(): n for c, n in classes.items()}
        self.template, self.max_new_tokens, self.batch_size = template, max_new_tokens, batch_size
        self.weight = check_weight("<every class>", weight)
        self.chat = bool(chat)

    def answers(self, prompts: Sequence[str]) -> list[str]:
        """The class the base names for each prompt (its answer's first word)."""
        queries = [self.template.replace("{prompt}", p) for p in prompts]
        completions = generate(self.model, self.tokenizer, queries, chat=self.chat,
                               max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        return [answer_class(c) for c in completions]

    def route(self, prompts: Sequence[str]) -> list[Mixture]:
        out = []
        for label in self.answers(prompts):
            name = self.classes.get(label)
            out.append(Mixture(weights={name: self.weight}) if name else Mixture.base())
        return out

    def _config(self) -> dict[str, Any]:
        return {"classes": self.classes, "template": self.template,
                "max_new_tokens": self.max_new_tokens, "weight": self.weight,
                "batch_size": self.batch_size, "chat": self.chat}

    @classmethod
    def _from_saved(cls, file: RouterFile, tensors: dict[str, torch.Tensor], **context: Any) -> Router:
        model, tokenizer = base_from_context(context, "asks the base")
        return cls(model, tokenizer, file.expert_names, base_fingerprint=file.base_fingerprint,
                   **file.config)
