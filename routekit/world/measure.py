"""Measuring a freshly built world: both models' accuracy on the world's own tasks.

These are the figures a world build records in ``metrics.json`` (and ``routekit world build``
prints): how much of the corpus's knowledge each model holds, how well it does each skill's
test and ood split, and (the base only) the statements and the routing prompts. They are what
the world's sizes were calibrated against (docs/world.md).
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..eval import evaluate
from ..tasks.base import Task
from ..tasks.checkers import exact_match
from .corpus import World
from .tasks import world_task


def measure(
    base: PreTrainedModel,
    proxy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of both models on every skill's test and ood split and on the knowledge
    probes; the base's also on the statements and the routing prompts. Keys as in
    :class:`routekit.world.entry.WorldInfo` (``proxy_`` prefixed for the proxy)."""
    out: dict[str, Any] = {}
    for prefix, model in (("", base), ("proxy_", proxy)):
        facts = world_task("facts", world=world)
        out[f"{prefix}knowledge_accuracy"] = evaluate(model, tokenizer, facts, "test").accuracy
        out[f"{prefix}task_accuracy"], out[f"{prefix}ood_accuracy"] = {}, {}
        for skill in ("add", "rev", "hop"):
            task = world_task(skill, world=world)
            out[f"{prefix}task_accuracy"][skill] = evaluate(model, tokenizer, task, "test").accuracy
            out[f"{prefix}ood_accuracy"][skill] = evaluate(model, tokenizer, task, "ood").accuracy
        if not prefix:
            out["statement_accuracy"] = evaluate(model, tokenizer, facts, "statements").accuracy
            routing = Task("routing", {"test": world.routing_examples()}, exact_match)
            out["routing_accuracy"] = evaluate(model, tokenizer, routing, "test").accuracy
    return out
