"""The world a comparison runs on: its config, cache entry, built-weight fingerprints, and
the held-out text that forgetting and KL are measured on.

A suite names its world as ``default`` or ``tiny`` (built into the cache, or reused) or as
the directory of a world cache entry (``base/``, ``proxy/``, ``world_config.json``).

**Held-out world text.** Forgetting (PEFT's sense) needs text the models were not trained
on. It is written by the world's own corpus generator (the same mix of line kinds as
pretraining) from a separate seed, keeping only lines that occur nowhere in the pretraining
corpus (60,000 draws at most), the line kinds taken in turn. Because the corpus repeats its
few thousand distinct lines, the held-out lines are the generator's rarer combinations:
routing lines (``task: <prompt> => rev``) with prompts pretraining never labelled, and skill
lines with operands, strings or answers that pretraining never paired. No method trains on
them (task training uses the task's train split; retention KL uses the pretraining corpus).
Lines of the skill a cell trains are left out: most novel skill lines are the corpus's
systematic wrong answers, whose likelihood falls when a method learns the skill, which would
count learning as forgetting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import ConfigError
from ..io import model_fingerprint, read_json, tokenizer_fingerprint
from ..models import load_model
from ..world.config import WorldConfig
from ..world.corpus import World
from ..world.tasks import WORLD_CONFIG_FILE, named_world
from .results import WorldStamp

_MAX_DRAWS = 60_000


@dataclass
class WorldRef:
    """A built world: where its models are and what they are."""

    name: str  # as the suite names it
    config: WorldConfig
    root: Path
    stamp: WorldStamp
    metrics: dict

    @property
    def train_name(self) -> str:
        """How a TrainConfig names this world ('default', 'tiny' or the entry's path)."""
        return self.name if self.name in ("default", "tiny") else str(self.root)

    def load_base(self):
        return load_model(self.root / "base")

    def load_proxy(self):
        return load_model(self.root / "proxy")

    @cached_property
    def world(self) -> World:
        return World(self.config)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("world", None)  # the corpus (tens of MB) is rebuilt on demand, not shipped
        return state

    def heldout_text(self, n: int, task_family: str | None = None) -> list[str]:
        """Held-out lines for a cell training ``task_family`` (its own skill's lines left
        out: the skill's wrong-answer demonstrations would count learning as forgetting)."""
        return heldout_lines(self.world, n, exclude=task_family)


def heldout_lines(
    world: World, n: int, *, exclude: str | None = None, seed: str = "heldout"
) -> list[str]:
    """``n`` distinct lines of the world's corpus generator that pretraining never saw, the
    line kinds taken in turn (so that the routing lines, the most common novel kind, are
    not nearly all of it); lines of kind ``exclude`` (the skill a cell trains) left out."""
    seen = set(world.corpus_lines)
    rng = random.Random(f"{seed}-{world.config.seed}")
    kinds, weights = zip(*((k, w) for k, w in world.MIX.items() if k != exclude))
    pools: dict[str, list[str]] = {}
    taken: set[str] = set()
    for _ in range(_MAX_DRAWS):
        kind = rng.choices(kinds, weights=weights)[0]
        line = world._line(rng, kind)
        if line not in seen and line not in taken:
            taken.add(line)
            pools.setdefault(kind, []).append(line)
            if min(len(p) for p in pools.values()) * len(pools) >= n and len(pools) > 1:
                break
    if not pools:
        raise ConfigError("the world's generator wrote no line outside its corpus; no held-out text.")
    out: list[str] = []
    for i in range(max(len(p) for p in pools.values())):
        out += [pools[k][i] for k in sorted(pools) if i < len(pools[k])]
    return out[:n]


def resolve_world(spec: str, *, progress: bool = True) -> WorldRef:
    """The world a suite names, building ``default``/``tiny`` into the cache if needed."""
    from ..world.build import build
    from ..world.entry import world_dir

    if spec in ("default", "tiny"):
        config = named_world(spec)
        info = build(config, progress=progress)
        root = world_dir(config)
        metrics = info.model_dump(mode="json")
    else:
        root = Path(spec).expanduser()
        if not (root / WORLD_CONFIG_FILE).is_file() or not (root / "base").is_dir():
            raise ConfigError(
                f"world {spec!r} is not 'default', 'tiny' or a world cache entry directory "
                f"(holding {WORLD_CONFIG_FILE}, base/ and proxy/)."
            )
        config = named_world(root)
        metrics = read_json(root / "metrics.json", "world metrics") if (root / "metrics.json").is_file() else {}
    stamp = {k: metrics.get(k) for k in ("base_fingerprint", "proxy_fingerprint", "tokenizer_fingerprint")}
    if not all(stamp.values()):
        base, tok = load_model(root / "base")
        proxy, _ = load_model(root / "proxy")
        stamp = {"base_fingerprint": model_fingerprint(base),
                 "proxy_fingerprint": model_fingerprint(proxy),
                 "tokenizer_fingerprint": tokenizer_fingerprint(tok)}
    return WorldRef(spec, config, root, WorldStamp(config_hash=config.hash(), **stamp), metrics)
