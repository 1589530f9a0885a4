"""The embedded synthetic world: a seeded corpus, a char tokenizer, and two pretrained Llamas.

One job a module: ``config`` (WorldConfig), ``corpus`` (World: facts, skills, splits),
``tokenizer``, ``pretrain``, ``tasks`` (the world's tasks, registered with
``routekit.tasks``; which world a model or config names), ``entry`` (a cache entry's layout,
checks and figures), ``measure`` (both models' accuracy at build time), ``build`` (pretraining
and writing an entry under its lock), ``store`` (loading the models, building them if missing)
and ``commands`` (``routekit world build``).
"""

from ..cache import cache_root
from .build import build
from .config import ModelSize, PretrainConfig, WorldConfig
from .corpus import World
from .entry import WorldInfo, verify_entry, world_dir
from .store import get_world, load, load_proxy
from .tasks import WORLD_TASKS, agreed_world, named_world, require_world, world_task
from .tokenizer import build_tokenizer

__all__ = [
    "ModelSize", "PretrainConfig", "WorldConfig", "World", "WorldInfo", "build", "cache_root",
    "get_world", "load", "load_proxy", "verify_entry", "world_dir", "build_tokenizer",
    "WORLD_TASKS", "world_task", "named_world", "agreed_world", "require_world",
]
