"""Tokenising, padding and per-token log-probabilities: how routekit scores an answer.

Training (SFT rows, RL rollouts, retention texts), the comparison's metrics and activations,
the few-shot router and the lm-eval adapter all read text through these, so one prompt is
the same ids everywhere:

- :func:`encode_prompt`: a prompt's ids as generation sees them;
- :func:`answer_row`: (prompt ids, answer ids) of a prompt and its answer, cut from the
  tokenisation of the joined text, with the stop token the answer ends on;
- :func:`document_rows`: texts read as documents (special tokens, the text, EOS);
- :func:`right_padded`: such rows as one right-padded batch with an answer mask;
- :func:`token_logprobs`: log π of every token given the ones before it.

It takes plain strings and ids (no task types: tasks sit above it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .logprobs import gather_logprobs


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Prompt ids exactly as generation sees them (with the tokenizer's special tokens)."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def document_rows(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """Each text as the model reads a document: special tokens, the text, then EOS."""
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    return [(encode_prompt(tokenizer, t) + eos, []) for t in texts]


def right_padded(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt, completion) id rows -> input_ids, attention_mask, completion mask (all B×L).

    Right padding keeps every real token at positions 0..len-1, as in left-padded
    generation (whose position ids count only real tokens), and no real token attends a pad.
    """
    length = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), length), dtype=torch.long)
    comp = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c, dtype=torch.long)
        attn[i, :n] = 1
        comp[i, len(p) : n] = True
    return ids.to(device), attn.to(device), comp.to(device)


def token_logprobs(
    model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, temperature: float = 1.0,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """log π(ids[:, t] | ids[:, <t]) for t >= 1, shape B×(L-1), in float32, gathered chunk by
    chunk (:func:`routekit.logprobs.gather_logprobs`: no vocabulary-sized float32 copy)."""
    kw = {} if position_ids is None else {"position_ids": position_ids}
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False, **kw).logits
    return gather_logprobs(logits[:, :-1], ids[:, 1:], temperature)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def answer_row(
    tokenizer: PreTrainedTokenizerBase, prompt: str, continuation: str
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a prompt and its answer, from the tokenisation of the
    *joined* text.

    The prompt and its ``continuation`` are tokenised together, as generation will read them,
    and the answer is every token past the longest common prefix with the prompt's own ids: a
    tokenizer that merges across the seam (SentencePiece's dummy prefix, BPE's ``Ġ``) trains
    on the tokens it generates. The answer runs up to and including the first stop token (a
    chat turn's end-of-turn token, e.g. ``<|im_end|>``); without one in the text, EOS is
    appended so SFT also teaches where to stop.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    joined = list(tokenizer(prompt + continuation, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and joined and joined[-1] == eos and (not prompt_ids or prompt_ids[-1] != eos):
        joined = joined[:-1]  # a tokenizer that appends EOS itself: keep one, ours, below
    cut = _common_prefix(prompt_ids, joined)
    answer = joined[cut:]
    stop = {int(eos)} if eos is not None else set()
    end = next((i for i, t in enumerate(answer) if t in stop), None)
    if end is not None:
        answer = answer[: end + 1]
    elif eos is not None:
        answer.append(int(eos))
    return joined[:cut], answer
