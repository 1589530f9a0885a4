"""The world's tasks: three latent skills (add, rev, hop) and the knowledge probes (facts)."""

from __future__ import annotations

from ..world.config import WorldConfig
from ..world.corpus import SKILLS, World
from .base import Task
from .checkers import answer_match

WORLD_TASKS = (*SKILLS, "facts")


def world_task(name: str, config: WorldConfig | None = None, world: World | None = None) -> Task:
    """A world task by name: ``add``, ``rev``, ``hop`` (train/test/ood) or ``facts``
    (train: questions seen in pretraining, test: held-out probes, statements: recall)."""
    world = world or World(config or WorldConfig())
    if name == "facts":
        return Task("facts", world.knowledge_splits(), answer_match, family="facts")
    return Task(name, world.skill_splits(name), answer_match, family=name)
