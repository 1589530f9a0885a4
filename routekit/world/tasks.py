"""The world's tasks (add, rev, hop, facts) and which world a model, a task or a config names.

Importing this module registers the four names with :mod:`routekit.tasks.registry`, so
``get_task("rev")`` (and ``get_task("rev", world_config)``) resolve here while the task
registry, which sits below the world, imports nothing of it.

World task names and the ``world-corpus`` retention text mean nothing until a world is
chosen: the default world, the tiny CI world and any custom WorldConfig each have their own
entities, splits and corpus. :func:`agreed_world` makes that choice explicit and checked: a
world named in a config, the world whose cache entry a model was loaded from, and the world a
world task was drawn from must be one and the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, ExpertFileError
from ..io import read_json
from ..tasks.base import Task
from ..tasks.checkers import answer_match
from ..tasks.registry import register_named_tasks
from .config import WorldConfig, world_from_overrides
from .corpus import SKILLS, World

WORLD_TASKS = (*SKILLS, "facts")
# What routekit.world.build writes beside the ``base/`` and ``proxy/`` models of an entry.
WORLD_CONFIG_FILE = "world_config.json"
WORLD_MODEL_DIRS = ("base", "proxy")
WORLD_NAMES = "'default', 'tiny', or the path of a world_config.json (or of the world cache entry holding it)"


def world_task(name: str, config: WorldConfig | None = None, world: World | None = None) -> Task:
    """A world task by name: ``add``, ``rev``, ``hop`` (train/test/ood) or ``facts``
    (train: questions seen in pretraining, test: held-out probes, statements: recall).
    The task records its world's config (``task.world``)."""
    world = world or World(config or WorldConfig())
    if name == "facts":
        return Task("facts", world.knowledge_splits(), answer_match, family="facts", world=world.config)
    return Task(name, world.skill_splits(name), answer_match, family=name, world=world.config)


def _registered_world_task(name: str, world_config: Any) -> Task:
    """``get_task(name, world_config)`` for a world task: ``world_config`` None means the
    default world, as ``world_task`` has it."""
    if world_config is not None and not isinstance(world_config, WorldConfig):
        raise ConfigError(
            f"get_task({name!r}, world_config=...) takes a routekit.world.WorldConfig, not a "
            f"{type(world_config).__name__}; name a world with routekit.world.tasks.named_world."
        )
    return world_task(name, world_config)


register_named_tasks(WORLD_TASKS, _registered_world_task)


def _read_world_config(path: Path) -> WorldConfig:
    try:
        return WorldConfig.model_validate(read_json(path, what="world config"))
    except ValidationError as e:
        raise ConfigError(f"world config {str(path)!r} is invalid ({e}); name another world.") from None
    except ExpertFileError as e:  # a missing or unparsable file
        raise ConfigError(f"{e} Name the world as {WORLD_NAMES}.") from None


def named_world(spec: str | os.PathLike | WorldConfig | Mapping[str, Any]) -> WorldConfig:
    """The WorldConfig named by ``spec``: ``'default'``, ``'tiny'`` (WorldConfig.tiny()), a
    world_config.json file, a directory holding one (a world cache entry), or a mapping of
    WorldConfig fields overriding the default config (:func:`~.config.world_from_overrides`)."""
    if isinstance(spec, WorldConfig):
        return spec
    if isinstance(spec, Mapping):
        return world_from_overrides(spec)
    if str(spec) == "default":
        return WorldConfig()
    if str(spec) == "tiny":
        return WorldConfig.tiny()
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / WORLD_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"world {str(spec)!r} names no world; name it as {WORLD_NAMES}.")
    return _read_world_config(path)


def _model_path(model: Any) -> Path | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    name = getattr(getattr(base, "config", None), "_name_or_path", None)
    return Path(name) if name else None


def world_of_model(model: Any) -> WorldConfig | None:
    """The world whose cache entry ``model`` was loaded from (``<entry>/base`` or
    ``<entry>/proxy``, beside ``<entry>/world_config.json``), or None for any other model."""
    path = _model_path(model)
    if path is None or path.name not in WORLD_MODEL_DIRS:
        return None
    config_file = path.parent / WORLD_CONFIG_FILE
    return _read_world_config(config_file) if config_file.is_file() else None


def require_world(what: str, world: WorldConfig | None, model: Any = None) -> WorldConfig:
    """``world``, or a ConfigError saying that ``what`` (a world task or 'world-corpus') needs
    a world that neither the config nor the model names."""
    if world is not None:
        return world
    path = _model_path(model) if model is not None else None
    source = f"the model {str(path)!r}" if path else "the model"
    raise ConfigError(
        f"{what} refers to the world, but {source} was not loaded from a world cache entry and "
        f"no world is named, so which world is meant is unknown. Name it with world: "
        f"{WORLD_NAMES}."
    )


def describe_world(config: WorldConfig) -> str:
    """'the default world (hash ...)', 'the tiny world (...)' or 'the world <hash> (seed, size)'."""
    for label, known in (("default", WorldConfig()), ("tiny", WorldConfig.tiny())):
        if config.hash() == known.hash():
            return f"the {label} world ({config.hash()})"
    return f"the world {config.hash()} (seed {config.seed}, {config.n_entities} entities)"


def world_name_hint(config: WorldConfig, model: Any = None) -> str:
    """How a config names ``config``'s world: 'default', 'tiny' or a world_config.json path."""
    for label, known in (("default", WorldConfig()), ("tiny", WorldConfig.tiny())):
        if config.hash() == known.hash():
            return label
    path = _model_path(model) if model is not None else None
    if path is not None and (path.parent / WORLD_CONFIG_FILE).is_file():
        return str(path.parent / WORLD_CONFIG_FILE)
    return "<its world cache entry>/world_config.json"


def agreed_world(
    *,
    model: Any = None,
    named: str | os.PathLike | WorldConfig | None = None,
    task: Task | None = None,
) -> WorldConfig | None:
    """The one world that ``named`` (a config's ``world:``), the model's world cache entry
    and a world ``task`` refer to; None when none of them names a world.

    Two of them naming different worlds is a ConfigError that says how to name the right one.
    """
    sources: list[tuple[str, WorldConfig]] = []
    if named is not None:
        sources.append((f"world: {str(named)!r}", named_world(named)))
    own = world_of_model(model) if model is not None else None
    if own is not None:
        sources.append((f"the model {str(_model_path(model))!r}", own))
    if task is not None and getattr(task, "world", None) is not None:
        sources.append((f"task {task.name!r}", task.world))
    if not sources:
        return None
    first_label, first = sources[0]
    for label, other in sources[1:]:
        if other.hash() != first.hash():
            right = own if own is not None else first
            raise ConfigError(
                f"{first_label} is {describe_world(first)} but {label} is "
                f"{describe_world(other)}; world tasks and 'world-corpus' must come from the "
                f"world of the model being trained. Name it with world: "
                f"{world_name_hint(right, model)!r} (or get_task(name, world_config=...)), "
                "or train a model of the world you mean."
            )
    return first
