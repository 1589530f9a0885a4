"""The Task protocol: named splits of (prompt, reference) examples and a checker.

One object serves both as an RL reward (``reward``) and as an evaluation metric
(``check`` inside :func:`routekit.eval.evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import RoutekitError
from .checkers import Checker, exact_match


class WorldLike(Protocol):
    """What a task knows of the world it was drawn from: the world's identity. Tasks sit below
    ``routekit.world`` (they import nothing of it, not even for annotations), so ``Task.world``
    is typed by this protocol; a ``routekit.world.WorldConfig`` satisfies it."""

    def hash(self) -> str: ...


@dataclass(frozen=True)
class Example:
    """One prompt with the reference answer its completion is checked against.

    ``reference`` is what a checker compares with (normalised, e.g. ``"35"``). ``target`` is
    the exact text that follows the prompt when the example is written out in full, which is
    what SFT trains on; leave it ``None`` to join the reference to the prompt as text joins
    words (see :attr:`continuation`).
    """

    prompt: str
    reference: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    target: str | None = None

    @property
    def continuation(self) -> str:
        """The text after the prompt: ``target``, else the reference after one space.

        No space is added when the prompt ends in whitespace, the reference starts with it, or
        the prompt is empty. ``"sum of 3 and 4 is"`` + ``"7"`` is trained as ``" 7"``, the way
        the text reads (and the way a BPE tokenizer splits it, ``"Ġ7"``): a model tuned on
        ``"is7"`` would learn a format that no text has.
        """
        if self.target is not None:
            return self.target
        if not self.prompt or self.prompt[-1:].isspace() or self.reference[:1].isspace():
            return self.reference
        return " " + self.reference


class Task:
    """A named task with splits (``train``, ``test``, ``ood`` ...) and a checker.

    Subclasses fill ``self._splits`` (split name -> list of Examples) or override
    :meth:`examples`. ``world`` is the WorldConfig (a :class:`WorldLike`) of the world a world
    task was drawn from (None for other tasks), so a trainer can refuse a model of another
    world. ``chat``: the
    prompts are read through the tokenizer's chat template (``routekit.tasks.chat``); off by
    default, as in lm-evaluation-harness.
    """

    name: str = "task"
    family: str | None = None

    def __init__(
        self,
        name: str,
        splits: dict[str, Sequence[Example]],
        checker: Checker | Callable[[str, str], bool] = exact_match,
        family: str | None = None,
        world: WorldLike | None = None,
        chat: bool = False,
    ) -> None:
        self.name = name
        self._splits = {k: list(v) for k, v in splits.items()}
        self.checker = checker
        self.family = family or name
        self.world = world
        self.chat = bool(chat)
        # True once routekit.tasks.chat.render_task has put the prompts through the template
        self.rendered = False

    def with_chat(self, chat: bool | None) -> Task:
        """This task with ``chat`` set (None keeps the task's own); a copy, never in place."""
        if chat is None or bool(chat) == self.chat:
            return self
        out = Task(self.name, {s: self.examples(s) for s in self.splits}, self.checker,
                   family=self.family, world=self.world, chat=bool(chat))
        return out

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._splits)

    def examples(self, split: str = "test") -> list[Example]:
        if split not in self._splits:
            raise RoutekitError(
                f"task {self.name!r} has no split {split!r}; it has {list(self._splits)}."
            )
        return self._splits[split]

    def prompts(self, split: str = "test") -> list[str]:
        return [e.prompt for e in self.examples(split)]

    def references(self, split: str = "test") -> list[str]:
        return [e.reference for e in self.examples(split)]

    def check(self, completion: str, reference: str) -> bool:
        """Whether a completion answers the reference (the checker decides the tolerance)."""
        return bool(self.checker(completion, reference))

    def reward(self, completions: Sequence[str], references: Sequence[str]) -> list[float]:
        """RL reward: 1.0 for a correct completion, else 0.0."""
        return [1.0 if self.check(c, r) else 0.0 for c, r in zip(completions, references)]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self._splits.items())
        chat = ", chat=True" if self.chat else ""
        return f"{type(self).__name__}({self.name!r}, {sizes}{chat})"
