"""The world's cache as its users reach it: the two models loaded from their entry (built
first when missing or corrupt), the world's facts without models, and the model names
``world`` / ``world-proxy`` that ``load_model`` and the recipes' ``model: world`` resolve.

Where an entry lives and what it holds is :mod:`routekit.world.entry` (under
:func:`routekit.cache.cache_root`, the one place the cache root is computed); building one
is :mod:`routekit.world.build`; both models' figures at build time,
:mod:`routekit.world.measure`.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import CorruptCacheError, RoutekitError
from ..io import recover_directory
from ..models import load_model, register_model_name
from .build import build
from .config import WorldConfig
from .corpus import World
from .entry import verify_entry, world_dir


def _load(which: str, config: WorldConfig | None,
          build_if_missing: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    config = config or WorldConfig()
    root = world_dir(config)
    recover_directory(root)  # an entry a killed rebuild caught between its two renames
    if not root.exists() and not build_if_missing:
        raise RoutekitError(
            f"the world for this config is not built yet ({str(root)!r} does not exist); run "
            "`routekit world build` first."
        )
    try:
        verify_entry(root)
    except CorruptCacheError:
        if not build_if_missing:
            raise
        build(config)
    return load_model(root / which)


def load(
    config: WorldConfig | None = None, *, build_if_missing: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The world's base model and tokenizer (building the world first if it is not cached)."""
    return _load("base", config, build_if_missing)


def load_proxy(
    config: WorldConfig | None = None, *, build_if_missing: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The world's small proxy model (same tokenizer as the base)."""
    return _load("proxy", config, build_if_missing)


def get_world(config: WorldConfig | None = None) -> World:
    """The world's facts, splits and corpus (no models; cheap)."""
    return World(config or WorldConfig())


# ``load_model("world")`` and the recipes' ``model: world`` come through this registration.
register_model_name("world", load)
register_model_name("world-proxy", load_proxy)
