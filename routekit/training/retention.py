"""Retention: keeping what the base knew while a task is trained.

retention = retain_kl_coef · Σ_t KL(p_ref(·|x<t) ‖ p_θ(·|x<t)) / (tokens of the global
            retention batch)

over every real position of the retention texts, added to either objective (SFT or RL).
The reference is the untrained model (:func:`routekit.training.parameterizations.frozen_base`);
the texts are those ``retain_text`` names (:func:`retention_texts`), read as documents
(:func:`routekit.scoring.document_rows`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..errors import ConfigError
from ..logprobs import full_kl
from ..models import pad_token_id
from ..scoring import right_padded
from ..world.config import WorldConfig
from ..world.store import get_world
from ..world.tasks import WORLD_TASKS, require_world, world_task


def retention_texts(
    spec: str | None,
    world: WorldConfig | None = None,
    *,
    model: nn.Module | None = None,
    world_known: bool = False,
) -> list[str]:
    """The texts named by ``retain_text``: ``world-corpus`` (the world's pretraining lines),
    ``text:PATH`` (a local ``.jsonl`` file's ``text`` fields, or any other file's non-empty
    lines) or a task name (its train examples, prompt + continuation).

    ``world`` is the world that ``world-corpus`` and world task names refer to (None: the
    default world). With ``world_known=True`` (as :func:`train` calls it) a None ``world``
    means that no world is known and such a name is refused instead.
    """
    if not spec:
        raise ConfigError("retain_text is not set; name 'world-corpus', 'text:PATH' or a task.")
    if spec == "world-corpus" or spec in WORLD_TASKS:
        if world_known:
            world = require_world(f"retain_text {spec!r}", world, model)
        if spec == "world-corpus":
            return list(get_world(world).corpus_lines)
        texts = [e.prompt + e.continuation for e in world_task(spec, world).examples("train")]
    elif spec.startswith("text:"):
        texts = _read_texts(Path(spec.removeprefix("text:")).expanduser())
    else:
        from ..tasks import get_task

        texts = [e.prompt + e.continuation for e in get_task(spec).examples("train")]
    if not texts:
        raise ConfigError(f"retain_text {spec!r} holds no text.")
    return texts


def _read_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"retain_text file {str(path)!r} does not exist.")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    texts = []
    for n, line in enumerate(lines, 1):
        try:
            texts.append(str(json.loads(line)["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(
                f"retain_text file {str(path)!r}, line {n}: expected a JSON object with a "
                "'text' field."
            ) from None
    return texts


def retain_kl_loss(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[tuple[list[int], list[int]]],
    global_tokens: int,
    coef: float,
    device: torch.device,
    base_context,
) -> tuple[torch.Tensor, dict[str, float]]:
    """coef · Σ KL(p_ref ‖ p_θ) over the real positions of ``rows`` (from
    :func:`routekit.scoring.document_rows`)
    / ``global_tokens``.

    The full-vocabulary KL (not a sampled estimate): retention text is short, and the exact
    value has no variance. Computed in float32, chunk by chunk (:func:`routekit.logprobs.full_kl`).
    """
    ids, attn, _ = right_padded(rows, pad_token_id(tokenizer), device)
    with torch.no_grad(), base_context() as base:
        ref = base(input_ids=ids, attention_mask=attn, use_cache=False).logits
    kl = full_kl(ref, model(input_ids=ids, attention_mask=attn, use_cache=False).logits)
    kl_sum = (kl * attn.float()).sum()
    return coef * kl_sum / global_tokens, {"retain_kl_sum": float(kl_sum.detach())}
