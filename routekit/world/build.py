"""Building a world cache entry: pretraining the base and the proxy, measuring them, and
writing the entry so that a killed or concurrent build never leaves one that loads wrong.

The entry (layout in :mod:`routekit.world.entry`) is assembled in a temporary sibling
directory and renamed into place, so a killed build leaves nothing that loads (and a rebuild
killed between moving the old entry aside and renaming the new one in gets the old one put
back); an entry whose files do not match its manifest is reported as corrupt and rebuilt.
One process builds an entry at a time (a flock on ``.<config-hash>.lock`` beside it): a
second one waits and then finds it built. An entry whose files match but whose
``metrics.json`` does not parse was not written by this build: it is refused (``--force``
rebuilds it), not overwritten unasked.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch

from ..cache import write_manifest
from ..errors import CorruptCacheError
from ..io import atomic_directory, atomic_write_json, pid_alive, recover_directory
from ..locks import exclusive_lock
from .config import WorldConfig
from .corpus import World
from .entry import WorldInfo, cached_info, fingerprints, verify_entry, world_dir
from .measure import measure
from .pretrain import encode_corpus, make_model, pretrain
from .tokenizer import build_tokenizer


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _clean_stale_tmp(parent: Path) -> None:
    """Remove temporary build directories of killed builds (their process is gone); a build
    still running in another process keeps its own."""
    if not parent.is_dir():
        return
    for p in parent.glob(".tmp-*"):
        # .tmp-<name>-<pid>-<random>: the random part has no '-', the name may
        fields = p.name.split("-")
        pid = int(fields[-2]) if len(fields) > 3 and fields[-2].isdigit() else None
        if pid is None or not pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def build(config: WorldConfig | None = None, *, force: bool = False, progress: bool = True) -> WorldInfo:
    """Build (or find in the cache) the world's base and proxy models; return their figures."""
    config = config or WorldConfig()
    t0 = time.perf_counter()
    root = world_dir(config)
    # One builder per entry: a second process waits, then finds the entry built.
    with exclusive_lock(root.parent / f".{root.name}.lock", f"world cache entry {str(root)!r}",
                        wait=True, on_wait=lambda m: print(f"routekit: {m}", file=sys.stderr)):
        return _build_locked(config, root, force, progress, t0)


def _build_locked(config: WorldConfig, root: Path, force: bool, progress: bool,
                  t0: float) -> WorldInfo:
    recover_directory(root)  # an entry a killed rebuild caught between its two renames
    if root.exists() and not force:
        try:
            verify_entry(root)
        except CorruptCacheError as e:
            print(f"routekit: {e} Rebuilding it.", file=sys.stderr)
        else:
            return cached_info(root, t0)
    _clean_stale_tmp(root.parent)
    world = World(config)
    tokenizer = build_tokenizer()
    stream = encode_corpus(world.corpus_lines, tokenizer)
    seq = config.base_pretrain.seq_len
    with atomic_directory(root) as tmp:
        atomic_write_json(tmp / "world_config.json", config.model_dump(mode="json"))
        models, seconds = {}, {}
        for which in ("base", "proxy"):
            torch.manual_seed(config.seed)
            model = make_model(getattr(config, which), tokenizer, seq)
            stats = pretrain(model, stream, getattr(config, f"{which}_pretrain"), config.seed,
                             desc=f"pretrain {which}", progress=progress)
            seconds[which] = stats["seconds"]
            model.save_pretrained(tmp / which)
            tokenizer.save_pretrained(tmp / which)
            models[which] = model
        metrics = measure(models["base"], models["proxy"], tokenizer, world, progress)
        metrics.update(
            base_params=_n_params(models["base"]),
            proxy_params=_n_params(models["proxy"]),
            build_seconds=time.perf_counter() - t0,
            pretrain_seconds=seconds,
            **fingerprints(models["base"], models["proxy"], tokenizer),
        )
        atomic_write_json(tmp / "metrics.json", metrics)
        write_manifest(tmp)
    return WorldInfo(**metrics, path=str(root), cached=False, seconds=time.perf_counter() - t0)
