"""The environment a comparison runs in: the one object the harness asks for everything that
is not a method (the base and the optional proxy, the tasks and their ood pairing, the
knowledge probes, held-out and retention text, behaviour labels, fingerprints).

Two implementations: :class:`~.world.WorldEnvironment` (the embedded synthetic world, a
suite's ``world:``) and :class:`~.local.LocalEnvironment` (a local checkpoint, ``smollm2`` or a
``.gguf`` with the user's own JSONL tasks and texts, a suite's ``model:`` block). An
environment is picklable: every cell's worker process gets it whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import nn
from transformers import PreTrainedTokenizerBase

from ...tasks.base import Example, Task
from ..results import WorldStamp


@runtime_checkable
class Environment(Protocol):
    """What the harness needs from the world it compares methods in."""

    kind: str  # "world" or "local"
    stamp: WorldStamp  # fingerprints: a run directory refuses cells of another stamp
    metrics: dict  # the environment's own figures, copied into results.json

    @property
    def has_proxy(self) -> bool:
        """Whether a proxy model (sharing the base's vocabulary) exists for proxy methods."""
        ...

    def load_base(self) -> tuple[nn.Module, PreTrainedTokenizerBase]:
        """A fresh copy of the base and its tokenizer."""
        ...

    def load_proxy(self) -> tuple[nn.Module, PreTrainedTokenizerBase]:
        """A fresh copy of the (untuned) proxy; a ConfigError when there is none."""
        ...

    def check_task(self, name: str) -> None:
        """Refuse a task name this environment does not know (UnknownTaskError)."""
        ...

    def task(self, name: str) -> Task:
        """The task ``name`` with its splits (train, test, optional ood)."""
        ...

    def paired_ood(self, name: str) -> bool:
        """Whether ood prompt i of task ``name`` asks about the same item as test prompt i."""
        ...

    def probes(self) -> Task | None:
        """The knowledge probes (their ``test`` split; ``statements`` optional), or None."""
        ...

    def heldout_text(self, n: int, task: Task) -> list[str]:
        """At most ``n`` texts no model trained on, for forgetting and KL on text."""
        ...

    def retain_text(self) -> str | None:
        """What a method's retention KL keeps (a TrainConfig ``retain_text``), or None."""
        ...

    def train_fields(self, steered: bool) -> dict[str, Any]:
        """The TrainConfig fields ``model`` and ``world`` of a cell (``steered``: the proxy)."""
        ...

    def has_behaviour(self, task: Task) -> bool:
        """Whether answers to ``task`` can be labelled correct / systematic / other."""
        ...

    def behaviour_labels(
        self, task: Task, examples: Sequence[Example], completions: Sequence[str]
    ) -> list[str]:
        """One behaviour label per completion (only where :meth:`has_behaviour`)."""
        ...

    def describe(self, tasks: Sequence[str]) -> dict[str, Any]:
        """What results.json records of the environment for a run of ``tasks`` (kind,
        sources, data hashes, which tasks have an ood split and which pair it, whether it has
        a proxy pair and behaviour labels)."""
        ...


def resolve_environment(suite: Any, *, progress: bool = True) -> Environment:
    """The environment a suite names: its ``model:`` block when given, else its ``world``."""
    if getattr(suite, "model", None) is not None:
        from .local import LocalEnvironment

        return LocalEnvironment.from_block(suite.model)
    from .world import resolve_world_environment

    return resolve_world_environment(suite.world, progress=progress)


__all__ = ["Environment", "resolve_environment"]
