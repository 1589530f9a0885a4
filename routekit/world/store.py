"""Building, caching and loading the world's two models.

An entry lives in ``$ROUTEKIT_CACHE/world/<config-hash>/`` (default ``~/.cache/routekit``):
``base/`` and ``proxy/`` (``save_pretrained`` with the tokenizer), ``world_config.json``,
``metrics.json`` (the figures and the built weights' fingerprints) and, written last,
``manifest.json`` with every file's size and SHA-256. The entry is assembled in a temporary
sibling directory and renamed into place, so a killed build leaves nothing that loads (and
a rebuild killed between moving the old entry aside and renaming the new one in gets the
old one put back); an entry whose files do not match its manifest is reported as corrupt
and rebuilt. One process builds an entry at a time (a flock on ``.<config-hash>.lock``
beside it): a second one waits and then finds it built. An entry
whose files match but whose ``metrics.json`` does not parse was not written by this build:
it is refused (``--force`` rebuilds it), not overwritten unasked.

A seeded build is reproducible on one machine, not across machines (floating-point kernels
differ), so the entry records ``routekit.io.model_fingerprint`` of both models and the
tokenizer's fingerprint: two users hold the same world when these agree, whatever the
config hash says.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch
from pydantic import BaseModel, Field, ValidationError
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..cache import cache_root, verify_manifest, write_manifest
from ..errors import CorruptCacheError, RoutekitError
from ..io import (
    atomic_directory,
    atomic_write_json,
    model_fingerprint,
    pid_alive,
    read_json,
    recover_directory,
    tokenizer_fingerprint,
)
from ..locks import exclusive_lock
from ..models import load_model, register_model_name
from .config import WorldConfig
from .corpus import World
from .pretrain import encode_corpus, make_model, pretrain
from .tokenizer import build_tokenizer


class WorldInfo(BaseModel):
    """What ``routekit world build --json`` prints."""

    path: str
    cached: bool
    base_params: int
    proxy_params: int
    knowledge_accuracy: float
    statement_accuracy: float
    task_accuracy: dict[str, float]
    ood_accuracy: dict[str, float]
    proxy_knowledge_accuracy: float
    proxy_task_accuracy: dict[str, float]
    proxy_ood_accuracy: dict[str, float]
    routing_accuracy: float
    build_seconds: float
    pretrain_seconds: dict[str, float]
    seconds: float
    base_fingerprint: str = Field(
        description="routekit.io.model_fingerprint of the base weights as built; equal on two "
        "machines only if they built the same weights (the config hash alone does not say so)"
    )
    proxy_fingerprint: str = Field(description="the same for the proxy's weights")
    tokenizer_fingerprint: str = Field(description="routekit.io.tokenizer_fingerprint")


def world_dir(config: WorldConfig | None = None) -> Path:
    return cache_root() / "world" / (config or WorldConfig()).hash()


def verify_entry(root: Path) -> None:
    """Raise CorruptCacheError if any file of the entry is missing or differs from the manifest."""
    verify_manifest(root, "world cache entry")


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measure(
    base: PreTrainedModel,
    proxy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    progress: bool = False,
) -> dict:
    """Accuracy of both models on every skill's test and ood split and on the knowledge probes."""
    from ..eval import evaluate
    from ..tasks.base import Task
    from ..tasks.checkers import exact_match
    from .tasks import world_task

    out: dict = {}
    for prefix, model in (("", base), ("proxy_", proxy)):
        facts = world_task("facts", world=world)
        out[f"{prefix}knowledge_accuracy"] = evaluate(model, tokenizer, facts, "test").accuracy
        out[f"{prefix}task_accuracy"], out[f"{prefix}ood_accuracy"] = {}, {}
        for skill in ("add", "rev", "hop"):
            task = world_task(skill, world=world)
            out[f"{prefix}task_accuracy"][skill] = evaluate(model, tokenizer, task, "test").accuracy
            out[f"{prefix}ood_accuracy"][skill] = evaluate(model, tokenizer, task, "ood").accuracy
        if not prefix:
            out["statement_accuracy"] = evaluate(model, tokenizer, facts, "statements").accuracy
            routing = Task("routing", {"test": world.routing_examples()}, exact_match)
            out["routing_accuracy"] = evaluate(model, tokenizer, routing, "test").accuracy
    return out


def fingerprints(
    base: PreTrainedModel, proxy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> dict[str, str]:
    """The built weights' and tokenizer's fingerprints, as recorded in ``metrics.json``."""
    return {
        "base_fingerprint": model_fingerprint(base),
        "proxy_fingerprint": model_fingerprint(proxy),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
    }


def _cached_info(root: Path, t0: float) -> WorldInfo:
    """The figures of a verified entry. Entries built before fingerprints were recorded get
    them computed from their weights (not written back: the manifest covers metrics.json)."""
    path = root / "metrics.json"
    how = f"Run `routekit world build --force` with the same options to rebuild {str(root)!r}."
    try:
        metrics = read_json(path, "world metrics")
    except RoutekitError as e:
        raise CorruptCacheError(f"{e} {how}") from None
    if not isinstance(metrics, dict):
        raise CorruptCacheError(
            f"world metrics {str(path)!r} holds a {type(metrics).__name__}, not an object. {how}"
        )
    if not all(k in metrics for k in ("base_fingerprint", "proxy_fingerprint", "tokenizer_fingerprint")):
        base, tok = load_model(root / "base")
        proxy, _ = load_model(root / "proxy")
        metrics = {**fingerprints(base, proxy, tok), **metrics}
    metrics.update(path=str(root), cached=True, seconds=time.perf_counter() - t0)
    try:
        return WorldInfo(**metrics)
    except ValidationError as e:
        from ..errors import format_validation_error

        raise CorruptCacheError(
            f"world metrics {str(path)!r} are damaged: {format_validation_error(e)}. {how}"
        ) from None


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
            return _cached_info(root, t0)
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


def _load(which: str, config: WorldConfig | None, build_if_missing: bool):
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


# ``resolve_model("world")`` and the recipes' ``model: world`` come through this registration.
register_model_name("world", load)
register_model_name("world-proxy", load_proxy)
