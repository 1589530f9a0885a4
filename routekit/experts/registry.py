"""The kinds of expert routekit knows, and loading an expert of any kind from its directory.

``routekit.svf`` and ``routekit.proxy`` each call :func:`register_kind` with their
:class:`~routekit.experts.base.ExpertKind` record when they are imported (``import
routekit`` imports both), so :func:`load_expert` dispatches on the ``kind`` an
``expert_config.json`` records without importing either package: the kinds sit above this
module and depend on it, never the reverse.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ExpertFileError
from ..io import read_json
from .base import EXPERT_CONFIG, Expert, ExpertKind

_KINDS: dict[str, ExpertKind] = {}


def register_kind(record: ExpertKind) -> None:
    """Make ``load_expert`` load directories whose config records ``kind == record.name``.

    Registering the same class again (a module reloaded) replaces the record; another class
    under a taken name is refused.
    """
    if record.cls.kind != record.name:
        raise ConfigError(
            f"{record.cls.__name__}.kind is {record.cls.kind!r} but it is registered as kind "
            f"{record.name!r}; they must agree."
        )
    old = _KINDS.get(record.name)
    if old is not None and old.cls.__qualname__ != record.cls.__qualname__:
        raise ConfigError(
            f"expert kind {record.name!r} is already registered by {old.cls.__name__}; "
            f"{record.cls.__name__} needs a name of its own."
        )
    _KINDS[record.name] = record


def registered_kinds() -> dict[str, ExpertKind]:
    """The registered kinds by name (a copy)."""
    return dict(_KINDS)


def kind_record(name: str) -> ExpertKind:
    """The record of kind ``name``; refuses an unknown kind, naming the known ones."""
    record = _KINDS.get(name)
    if record is None:
        raise ExpertFileError(
            f"no expert kind {name!r} is registered (known: {sorted(_KINDS)}); import the "
            "package that provides it (import routekit registers 'svf' and 'proxy')."
        )
    return record


def expert_kind(directory: str | os.PathLike) -> str:
    """The ``kind`` an expert directory records; refuses a directory that is no expert."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise ExpertFileError(
            f"expert directory {str(directory)!r} {what}; an expert is a directory written by "
            "save_pretrained."
        )
    raw = read_json(directory / EXPERT_CONFIG, what="expert config")
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind is None and isinstance(raw, dict):
        # Older configs predate the kind field; their format names the kind.
        kind = next((r.name for r in _KINDS.values() if raw.get("format") in r.formats), None)
    known = sorted(_KINDS)
    if kind not in known:
        found = f"kind {kind!r}" if kind is not None else (
            f"no kind (keys {sorted(raw)[:8]})" if isinstance(raw, dict) else f"a {type(raw).__name__}")
        writers = " or ".join(f"{_KINDS[k].cls.__name__}.save_pretrained" for k in known)
        raise ExpertFileError(
            f"{str(directory / EXPERT_CONFIG)!r} holds {found}; routekit experts are of kind "
            f"{known}. Give a directory written by {writers or 'an expert kind'}."
        )
    return kind


def load_expert(directory: str | os.PathLike, **kwargs: Any) -> Expert:
    """Load an expert of any registered kind from its directory.

    Keyword arguments go to the kind's ``from_pretrained``; ``dtype`` and ``device`` are
    accepted by both built-in kinds (an SVF expert's z vectors, a proxy expert's models).
    """
    return kind_record(expert_kind(directory)).load_from(directory, **kwargs)


def check_expert_kind(directory: str | os.PathLike, cls: type[Expert]) -> None:
    """Refuse loading ``directory`` with ``cls`` when it holds another kind (naming it)."""
    kind = expert_kind(directory)
    if kind != cls.kind:
        raise ExpertFileError(
            f"{str(directory)!r} holds a {kind!r} expert, not a {cls.kind!r} expert; load it with "
            f"routekit.load_expert(path) or {_KINDS[kind].cls.__name__}.from_pretrained."
        )


@contextlib.contextmanager
def disable_experts() -> Iterator[None]:
    """``with disable_experts():`` every expert of every kind is off for this thread's (or
    asyncio task's) calls: SVF layers compute their base, proxy steering is skipped, inside
    ``routekit.mixture`` blocks too. Other threads keep their own behaviour. An SVF model's
    ``model.disable_adapter()`` is this context (PEFT's name)."""
    with contextlib.ExitStack() as stack:
        for record in list(_KINDS.values()):
            if record.disabled is not None:
                stack.enter_context(record.disabled())
        yield
