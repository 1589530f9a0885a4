"""Which pretraining behaviour an answer shows on a world skill: correct, the skill's
systematic wrong answer, or other.

The world's mixed formats demonstrate each skill correctly only part of the time; the rest
of the demonstrations show one systematic wrong answer (see :mod:`routekit.world.corpus`):

- ``add``: the first operand (``sum of 27 and 8 is 27``),
- ``rev``: the word copied unreversed (``backwards abc: abc``),
- ``hop``: the city, the first hop, instead of its country (``country of x? <city>``).

An answer is ``correct`` when the task's checker accepts it against the reference (this
wins when the two coincide, e.g. ``a + 0``), ``systematic`` when the same checker accepts
it against the systematic wrong answer, and ``other`` otherwise. Tracked over training, the
shares show whether a method moves a model from one pretraining behaviour to another.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError
from ..tasks.base import Example, Task
from ..world.corpus import SKILLS, World

BEHAVIOURS = ("correct", "systematic", "other")


def systematic_wrong_answer(skill: str, example: Example, world: World | None = None) -> str:
    """The wrong answer the world's corpus demonstrates for ``example`` of ``skill``
    (``hop`` needs ``world``, whose facts give the entity's city)."""
    try:
        if skill == "add":
            return str(example.meta["a"])
        if skill == "rev":
            return str(example.meta["word"])
        if skill == "hop":
            if world is None:
                raise ConfigError(
                    "the hop skill's wrong answer is the entity's city, which only the world's "
                    "facts give; pass world= (routekit.world.get_world(config))."
                )
            entity = example.meta["entity"]
            if entity not in world.facts:
                raise ConfigError(
                    f"entity {entity!r} is not in this world's facts; pass the world the "
                    "task was built from."
                )
            return world.facts[entity]["city"]
    except KeyError as missing:
        raise ConfigError(
            f"example {example.prompt!r} has no {missing} in its meta; behaviour shares need "
            "the world's own skill examples (routekit.world.tasks.world_task)."
        ) from None
    raise ConfigError(f"no systematic wrong answer for skill {skill!r}; known skills: {list(SKILLS)}.")


def classify_behaviours(
    task: Task, examples: Sequence[Example], completions: Sequence[str], world: World | None = None
) -> list[str]:
    """One of :data:`BEHAVIOURS` per completion of ``examples`` (a world skill task).
    ``world`` defaults to the world the task records it was drawn from (``task.world``)."""
    if world is None and getattr(task, "world", None) is not None:
        world = World(task.world)
    if len(examples) != len(completions):
        raise ConfigError(
            f"{len(completions)} completions for {len(examples)} examples; give one per example."
        )
    labels = []
    for e, c in zip(examples, completions):
        if task.check(c, e.reference):
            labels.append("correct")
        elif task.check(c, systematic_wrong_answer(task.family or task.name, e, world)):
            labels.append("systematic")
        else:
            labels.append("other")
    return labels


def behaviour_shares(labels: Sequence[str]) -> dict[str, float]:
    """Share of each behaviour among ``labels`` (keys in :data:`BEHAVIOURS` order, sum 1)."""
    unknown = sorted(set(labels) - set(BEHAVIOURS))
    if unknown:
        raise ConfigError(f"unknown behaviour labels {unknown}; known: {list(BEHAVIOURS)}.")
    if not labels:
        raise ConfigError("no answers to share out; give at least one label.")
    return {b: sum(label == b for label in labels) / len(labels) for b in BEHAVIOURS}
