"""A world cache entry: where it lives, what it holds, and checking and reading what was built.

An entry lives in ``$ROUTEKIT_CACHE/world/<config-hash>/`` (the root from
:func:`routekit.cache.cache_root`, default ``~/.cache/routekit``): ``base/`` and ``proxy/``
(``save_pretrained`` with the tokenizer), ``world_config.json``, ``metrics.json`` (the figures
and the built weights' fingerprints) and, written last, ``manifest.json`` with every file's
size and SHA-256. An entry whose files do not match its manifest is corrupt
(:func:`verify_entry`). An entry whose files match but whose ``metrics.json`` does not parse
was not written by this build: :func:`cached_info` refuses it (``--force`` rebuilds it).

A seeded build is reproducible on one machine, not across machines (floating-point kernels
differ), so the entry records ``routekit.io.model_fingerprint`` of both models and the
tokenizer's fingerprint: two users hold the same world when these agree, whatever the
config hash says.

Writing an entry is :mod:`routekit.world.build`; loading one (building it first if missing)
is :mod:`routekit.world.store`.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..cache import cache_root, verify_manifest
from ..errors import CorruptCacheError, RoutekitError, format_validation_error
from ..io import model_fingerprint, read_json, tokenizer_fingerprint
from ..models import load_model
from .config import WorldConfig

FINGERPRINT_KEYS = ("base_fingerprint", "proxy_fingerprint", "tokenizer_fingerprint")


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
    """The cache entry of ``config``'s world (default: the default world); not created here."""
    return cache_root() / "world" / (config or WorldConfig()).hash()


def verify_entry(root: Path) -> None:
    """Raise CorruptCacheError if any file of the entry is missing or differs from the manifest."""
    verify_manifest(root, "world cache entry")


def fingerprints(
    base: PreTrainedModel, proxy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> dict[str, str]:
    """The built weights' and tokenizer's fingerprints, as recorded in ``metrics.json``."""
    return {
        "base_fingerprint": model_fingerprint(base),
        "proxy_fingerprint": model_fingerprint(proxy),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
    }


def cached_info(root: Path, t0: float) -> WorldInfo:
    """The figures of a verified entry (``seconds`` counted from ``t0``, a
    ``time.perf_counter()``). Entries built before fingerprints were recorded get them
    computed from their weights (not written back: the manifest covers metrics.json)."""
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
    if not all(k in metrics for k in FINGERPRINT_KEYS):
        base, tok = load_model(root / "base")
        proxy, _ = load_model(root / "proxy")
        metrics = {**fingerprints(base, proxy, tok), **metrics}
    metrics.update(path=str(root), cached=True, seconds=time.perf_counter() - t0)
    try:
        return WorldInfo(**metrics)
    except ValidationError as e:
        raise CorruptCacheError(
            f"world metrics {str(path)!r} are damaged: {format_validation_error(e)}. {how}"
        ) from None
