"""The SFT objective: next-token cross-entropy on reference answers only.

SFT loss = Σ_answer-tokens CE / (number of answer tokens in the global batch)

The loss of one micro-batch is already divided by the *global* count (which every process
can compute alone), so the sum of all micro-batches' gradients, over every process, is the
gradient of the global-batch loss. Rows are cut by :func:`routekit.scoring.answer_row`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..models import pad_token_id
from ..scoring import answer_row, right_padded, token_logprobs
from ..tasks.base import Example


def sft_row(tokenizer: PreTrainedTokenizerBase, example: Example) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one example: :func:`routekit.scoring.answer_row` of its
    prompt and continuation (the answer ends on the stop token SFT teaches)."""
    return answer_row(tokenizer, example.prompt, example.continuation)


def sft_rows(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
    """:func:`sft_row` of each example (prompts rendered beforehand, see
    ``routekit.tasks.chat.render_task``)."""
    return [sft_row(tokenizer, e) for e in examples]


def sft_loss(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    local: Sequence[Example],
    global_answer_tokens: int,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on answer tokens only (prompt and pad positions are label -100)."""
    ids, attn, comp = right_padded(sft_rows(tokenizer, local), pad_token_id(tokenizer), device)
    logp = token_logprobs(model, ids, attn)
    total = -(logp * comp[:, 1:]).sum()
    loss = total / global_answer_tokens
    return loss, {"loss_sum": float(total.detach()), "tokens": int(comp.sum())}


def count_answer_tokens(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]) -> int:
    """Answer tokens of ``examples``: the global denominator of :func:`sft_loss`."""
    return sum(len(sft_row(tokenizer, e)[1]) for e in examples)
