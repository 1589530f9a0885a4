"""The embedded synthetic world: a seeded corpus, a char tokenizer, and two pretrained Llamas."""

from .config import ModelSize, PretrainConfig, WorldConfig
from .corpus import World
from .store import (
    WorldInfo,
    build,
    cache_root,
    get_world,
    load,
    load_proxy,
    verify_entry,
    world_dir,
)
from .tasks import WORLD_TASKS, agreed_world, named_world, require_world, world_task
from .tokenizer import build_tokenizer

__all__ = [
    "ModelSize", "PretrainConfig", "WorldConfig", "World", "WorldInfo", "build", "cache_root",
    "get_world", "load", "load_proxy", "verify_entry", "world_dir", "build_tokenizer",
    "WORLD_TASKS", "world_task", "named_world", "agreed_world", "require_world",
]
