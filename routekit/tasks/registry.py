"""Resolving a task name: local data by ``jsonl:PATH`` or ``hf:PATH`` (or a
:class:`~routekit.tasks.jsonl.TaskSpec` with options), and the tasks providers register:
bare names (the world's ``add``, ``rev``, ``hop``, ``facts``, registered by
``routekit.world.tasks``) and names under a prefix (``real:<name>`` from ``routekit.real``).

This module imports no provider: each registers itself when imported, and ``routekit``'s
``__init__`` imports them all, so every name is known before any call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, UnknownTaskError, format_validation_error
from .base import Task
from .jsonl import TaskSpec, dataset_task, jsonl_task

# prefix -> (loader of the name after the prefix, the names it knows for the error message)
_PREFIXES: dict[str, tuple[Callable[[str], Task], Callable[[], list[str]]]] = {}
# bare name -> loader(name, world_config); world_config is whatever the caller of get_task
# passed (a routekit.world.WorldConfig for the world's tasks), opaque to this module.
_NAMED: dict[str, Callable[[str, Any], Task]] = {}


def register_task_prefix(
    prefix: str, loader: Callable[[str], Task], names: Callable[[], list[str]]
) -> None:
    """Make ``get_task("<prefix>:<name>")`` return ``loader(name)`` (``routekit.real`` registers
    ``real``, so this module imports no provider)."""
    _PREFIXES[prefix] = (loader, names)


def register_named_tasks(names: Iterable[str], loader: Callable[[str, Any], Task]) -> None:
    """Make ``get_task(name, world_config)`` return ``loader(name, world_config)`` for each bare
    name in ``names`` (``routekit.world.tasks`` registers ``add``, ``rev``, ``hop`` and
    ``facts``, so this module imports nothing of the world). A name already registered by
    another loader, or one holding ``:``, is refused: it would shadow a task or a prefix."""
    for name in names:
        if ":" in name:
            raise ConfigError(f"task name {name!r} holds ':', which is kept for prefixes "
                              "(register_task_prefix).")
        kept = _NAMED.get(name)
        if kept is not None and _qualname(kept) != _qualname(loader):  # a reload is no clash
            raise ConfigError(f"task name {name!r} is already registered by another provider.")
        _NAMED[name] = loader


def _qualname(f: Callable[..., Any]) -> str:
    return f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', repr(f))}"


def known_tasks() -> list[str]:
    """Every task name :func:`get_task` resolves: bare names, ``prefix:name`` and the two
    local-data forms."""
    named = [f"{p}:{n}" for p, (_, names) in _PREFIXES.items() for n in names()]
    return [*_NAMED, *named, "jsonl:PATH", "hf:PATH"]


def task_spec(spec: Mapping[str, Any] | TaskSpec) -> TaskSpec:
    """A TaskSpec from a mapping (a recipe's ``task:``), refusing unknown keys by name."""
    if isinstance(spec, TaskSpec):
        return spec
    try:
        return TaskSpec(**dict(spec))
    except ValidationError as e:
        raise ConfigError(f"task spec {dict(spec)!r}: {format_validation_error(e)}") from None


JSONL_OPTIONS = ("prompt_key", "answer_key", "template", "checker")


def with_options(task: str | TaskSpec | Mapping[str, Any], **options: Any) -> str | TaskSpec:
    """``task`` with the local-data options that are not None (``prompt_key``, ``answer_key``,
    ``template``, ``checker``) set: a TaskSpec for ``jsonl:``/``hf:`` data; refused for other
    tasks, whose data fix them. With no option given, ``task`` is returned as it is."""
    given = {k: v for k, v in options.items() if k in JSONL_OPTIONS and v is not None}
    unknown = sorted(set(options) - set(JSONL_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown task options {unknown}; known: {list(JSONL_OPTIONS)}.")
    if not given:
        return task
    if isinstance(task, str) and not task.startswith(("jsonl:", "hf:")):
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(
            f"{flags} apply to jsonl:PATH and hf:PATH tasks only, not to {task!r}, whose data "
            "fix their own fields."
        )
    base = task_spec(task) if not isinstance(task, str) else TaskSpec(path=task)
    return base.model_copy(update=given)


def add_task_arguments(parser: Any) -> None:
    """The CLI's task options (``routekit eval`` and ``routekit train``)."""
    import argparse

    parser.add_argument("--prompt-key", default=None, help="jsonl/hf tasks: the prompt field (default question)")
    parser.add_argument("--answer-key", default=None, help="jsonl/hf tasks: the reference field (default answer)")
    parser.add_argument("--template", default=None,
                        help="jsonl/hf tasks: prompt template, {question} is the prompt field "
                        "(default 'Question: {question}\\nAnswer:')")
    parser.add_argument("--checker", default=None, help="jsonl/hf tasks: checker name (default answer)")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="read prompts through the tokenizer's chat template (default: the "
                        "task's own setting, off unless the task says chat)")


def task_options(args: Any) -> dict[str, Any]:
    """The task options :func:`add_task_arguments` parsed (None where not given)."""
    return {k: getattr(args, k) for k in JSONL_OPTIONS}


def get_task(
    name: str | Task | TaskSpec | Mapping[str, Any],
    world_config: Any = None,
    *,
    chat: bool | None = None,
) -> Task:
    """A Task from its name or spec; a Task passes through unchanged. ``chat`` (None: the
    task's own setting) turns chat-template rendering on or off. ``world_config`` (a
    ``routekit.world.WorldConfig``; typed ``Any`` here because tasks sit below the world) is
    handed to the loader of a bare registered name: which world a world task is drawn from."""
    if isinstance(name, Task):
        return name.with_chat(chat)
    if isinstance(name, (TaskSpec, Mapping)):
        return task_spec(name).load().with_chat(chat)
    if name in _NAMED:
        return _NAMED[name](name, world_config).with_chat(chat)
    if name.startswith("jsonl:"):
        return jsonl_task(name.removeprefix("jsonl:")).with_chat(chat)
    if name.startswith("hf:"):
        path = name.removeprefix("hf:")
        return dataset_task(path, name=path.rstrip("/").rsplit("/", 1)[-1]).with_chat(chat)
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PREFIXES:
        return _PREFIXES[prefix][0](rest).with_chat(chat)
    raise UnknownTaskError(
        f"unknown task {name!r}. Known tasks: {', '.join(known_tasks())} "
        "(jsonl:PATH reads local JSONL records, hf:PATH a dataset saved with save_to_disk)."
    )
