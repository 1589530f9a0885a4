"""Batched generation with left padding: :func:`generate` (``rk.generate``, texts in, texts out).

Also the stop tokens generation ends on (:func:`stop_ids`, shared with RL rollouts) and the
``ROW_WINDOW`` hook through which ``routekit.mixture`` gives each batch of prompts its own
alpha rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..experts.mixture import ROW_WINDOW
from ..models import left_pad, pad_token_id
from ..tasks.chat import render_prompts


def stop_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> list[int]:
    """The token ids generation stops on: the tokenizer's EOS and the model's
    ``generation_config.eos_token_id`` (one id or a list), sorted, without repeats."""
    ids = []
    for cand in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(cand, int):
            ids.append(cand)
        elif isinstance(cand, (list, tuple)):
            ids.extend(int(c) for c in cand)
    return sorted(set(ids))


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    progress: bool = False,
    desc: str = "generate",
    chat: bool = False,
    **generate_kwargs: Any,
) -> list[str]:
    """Complete ``prompts`` in left-padded batches; returns only the new text of each.

    With ``num_return_sequences = k`` the result holds k completions per prompt, grouped
    by prompt. Extra keyword arguments go to ``model.generate`` (e.g. ``logits_processor``).
    Inside ``routekit.mixture(...)`` with one alpha row per prompt, each batch of
    ``batch_size`` prompts runs with its own rows. The tokenizer is not modified. ``chat``:
    each prompt is first put through the tokenizer's chat template
    (:func:`routekit.tasks.chat.render_prompt`). Texts in, texts out: it routes nothing (the
    ``routekit generate`` command routes each prompt first, as ``AdaptiveModel.generate``).
    """
    prompts = render_prompts(tokenizer, list(prompts), chat)
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    window = ROW_WINDOW.get()
    stop = stop_ids(tokenizer, model)
    out: list[str] = []
    was_training = model.training
    if was_training:  # leave an eval-mode model alone: other threads may be using it
        model.eval()
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i : i + batch_size])
            enc = left_pad(tokenizer, chunk, device)
            rows = window(i, i + len(chunk), len(prompts)) if window else contextlib.nullcontext()
            with rows:
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    temperature=temperature if do_sample else None,
                    top_k=None if not do_sample else 0,
                    top_p=None if not do_sample else 1.0,
                    num_return_sequences=num_return_sequences,
                    pad_token_id=pad,
                    eos_token_id=stop or None,
                    **generate_kwargs,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
            bar.update(len(chunk))
    finally:
        bar.close()
        if was_training:
            model.train(True)
    return out
