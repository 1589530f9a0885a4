"""The embedded synthetic world as an :class:`~routekit.compare.env.Environment`: today's
world-specific behaviour of the harness, gathered behind the protocol (the same figures).

Probes are the world's ``facts`` task (held-out entities' questions, and its statements);
held-out text is written by the world's generator (:mod:`routekit.compare.world_ref`);
retention text is the pretraining corpus; behaviour labels exist for the world's skills;
``hop``'s ood prompt i asks about test prompt i's entity (paired).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...tasks.base import Example, Task
from ...tasks.registry import get_task
from ...world.corpus import SKILLS
from ...world.tasks import world_task
from ..behaviour import classify_behaviours
from ..results import WorldStamp
from ..world_ref import WorldRef, resolve_world

# World tasks whose ood prompt i asks about the same item as test prompt i (hop: the same
# entity in an unseen wording), so a test − ood difference can be paired prompt by prompt.
WORLD_PAIRED_OOD = frozenset({"hop"})


@dataclass
class WorldEnvironment:
    """A built world (``WorldRef``) as the harness's environment."""

    ref: WorldRef
    kind: str = "world"

    @property
    def stamp(self) -> WorldStamp:
        return self.ref.stamp

    @property
    def metrics(self) -> dict:
        return self.ref.metrics

    @property
    def has_proxy(self) -> bool:
        return True

    def load_base(self):
        return self.ref.load_base()

    def load_proxy(self):
        return self.ref.load_proxy()

    def check_task(self, name: str) -> None:
        from ..suite import check_task_name

        check_task_name(name)

    def task(self, name: str) -> Task:
        return get_task(name, self.ref.config)

    def paired_ood(self, name: str) -> bool:
        return name in WORLD_PAIRED_OOD

    def probes(self) -> Task:
        return world_task("facts", world=self.ref.world)

    def heldout_text(self, n: int, task: Task) -> list[str]:
        return self.ref.heldout_text(n, task.family)

    def retain_text(self) -> str:
        return "world-corpus"

    def train_fields(self, steered: bool) -> dict[str, Any]:
        return {"world": self.ref.train_name, "model": "world-proxy" if steered else "world"}

    def has_behaviour(self, task: Task) -> bool:
        return task.family in SKILLS and getattr(task, "world", None) is not None

    def behaviour_labels(
        self, task: Task, examples: Sequence[Example], completions: Sequence[str]
    ) -> list[str]:
        return classify_behaviours(task, examples, completions)

    def describe(self, tasks: Sequence[str]) -> dict[str, Any]:
        return {
            "kind": "world",
            "world": self.ref.name,
            "config_hash": self.stamp.config_hash,
            "ood": [t for t in tasks if "ood" in self.task(t).splits],
            "paired_ood": sorted(WORLD_PAIRED_OOD),
            "proxy": True,
            "behaviour": True,
        }


def resolve_world_environment(spec: str, *, progress: bool = True) -> WorldEnvironment:
    """The world a suite names (built into the cache if needed) as an environment."""
    return WorldEnvironment(resolve_world(spec, progress=progress))


__all__ = ["WORLD_PAIRED_OOD", "WorldEnvironment", "resolve_world_environment"]
