"""Likelihood metrics of a model on text: answer log-likelihood, cross-entropy, forgetting, KL.

Every metric runs the model over left-padded batches (position ids count only real tokens, so
a padded row computes what it computes alone) in float32 log-probabilities (gathered chunk by chunk, ``routekit.logprobs``), and returns a
:class:`TextScores`: the metric summed over the scored tokens of each text, with the token
counts, so callers can take a token-weighted mean, a per-text mean, or bootstrap over texts.

- :func:`answer_loglik`: log p(continuation | prompt) of each example's reference answer
  (``Example.continuation``, the answer as it follows the prompt in text; no EOS).
- :func:`text_cross_entropy`: next-token cross-entropy over each text read as a document
  (the tokenizer's special tokens, the text, then EOS).
- :func:`forgetting`: PEFT's ``forgetting``, cross-entropy on held-out text after training
  minus before (token-weighted means; positive = the tuned model predicts the text worse).
- :func:`kl_divergence`: KL(base ‖ tuned) of the full next-token distributions at the same
  positions as the cross-entropy: after every prefix of the document, from the special
  tokens alone to the whole text (so on a task prompt it covers the answer's first token).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..errors import ConfigError
from ..logprobs import full_kl, gather_logprobs
from ..models import pad_token_id
from ..scoring import answer_row, document_rows
from ..tasks.base import Example


@dataclass(frozen=True)
class TextScores:
    """A per-token quantity summed over the scored tokens of each text, and their counts."""

    sums: tuple[float, ...]
    tokens: tuple[int, ...]

    def per_token(self) -> float:
        """Token-weighted mean: Σ sums / Σ tokens."""
        return sum(self.sums) / max(sum(self.tokens), 1)

    def per_text(self) -> float:
        """Mean over texts of each text's sum (e.g. the mean log-likelihood of an answer)."""
        return sum(self.sums) / max(len(self.sums), 1)

    def per_text_means(self) -> list[float]:
        """Each text's own per-token mean (the unit a bootstrap over texts resamples)."""
        return [s / max(n, 1) for s, n in zip(self.sums, self.tokens)]


@dataclass
class _Batch:
    ids: torch.Tensor  # B×L, left-padded
    attn: torch.Tensor  # B×L
    pos: torch.Tensor  # B×L position ids counting real tokens only
    scored: torch.Tensor  # B×(L-1): prediction j (of token j+1) counts
    index: list[int]  # which rows of the input these are


def _batches(
    rows: Sequence[tuple[list[int], int]], pad_id: int, batch_size: int, device: torch.device
) -> Iterator[_Batch]:
    """Left-padded batches of ``(ids, start)`` rows; token ``ids[t]`` is scored for t >= start."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    for k in range(0, len(rows), batch_size):
        chunk = rows[k : k + batch_size]
        length = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        attn = torch.zeros((len(chunk), length), dtype=torch.long)
        scored = torch.zeros((len(chunk), length), dtype=torch.bool)
        for i, (row, start) in enumerate(chunk):
            off = length - len(row)
            ids[i, off:] = torch.tensor(row, dtype=torch.long)
            attn[i, off:] = 1
            scored[i, off + max(start, 1) :] = True  # the first token is never predicted
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        yield _Batch(ids.to(device), attn.to(device), pos.to(device), scored[:, 1:].to(device),
                     list(range(k, k + len(chunk))))


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode and without autograd inside the block, its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _logits(model: nn.Module, batch: _Batch) -> torch.Tensor:
    """Next-token logits after ids[:, :j+1] for j < L-1, B×(L-1)×V (the model's dtype)."""
    with _evaluating(model):
        return model(
            input_ids=batch.ids, attention_mask=batch.attn, position_ids=batch.pos, use_cache=False
        ).logits[:, :-1]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _collect(n: int, sums: dict[int, float], counts: dict[int, int]) -> TextScores:
    return TextScores(tuple(sums[i] for i in range(n)), tuple(counts[i] for i in range(n)))


def score_rows(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: Sequence[tuple[list[int], int]],
    *, batch_size: int = 64,
) -> tuple[TextScores, list[bool]]:
    """Σ log p(ids[t] | ids[:t]) over t >= start of each ``(ids, start)`` row (the first token
    is never scored), and whether every scored token is the model's argmax (lm-eval's
    ``is_greedy``). Rows run in order, ``batch_size`` per forward, left-padded."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    greedy: dict[int, bool] = {}
    for batch in _batches(list(rows), pad_token_id(tokenizer), batch_size, _device(model)):
        logits = _logits(model, batch)
        target = batch.ids[:, 1:]
        # gathered chunk by chunk (routekit.logprobs): no vocabulary-sized float32 copy
        lp = gather_logprobs(logits, target).masked_fill(~batch.scored, 0.0)
        top = (logits.argmax(-1) == target) | ~batch.scored
        for i, s, c, g in zip(batch.index, lp.double().sum(-1).tolist(),
                              batch.scored.sum(-1).tolist(), top.all(-1).tolist()):
            sums[i], counts[i], greedy[i] = s, int(c), bool(g)
    return _collect(len(rows), sums, counts), [greedy[i] for i in range(len(rows))]


def _sum_target_logprobs(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: list[tuple[list[int], int]],
    batch_size: int,
) -> TextScores:
    return score_rows(model, tokenizer, rows, batch_size=batch_size)[0]


def answer_rows(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]
) -> list[tuple[list[int], int]]:
    """``(ids, start)`` rows scoring each example's reference answer (``continuation``) after
    its prompt: the joined tokenisation SFT trains on (:func:`routekit.scoring.answer_row`), without the stop token,
    so the scored tokens are the answer's own (a chat example's: its assistant turn's). The one
    row builder of :func:`answer_loglik` and of lm-eval's ``loglikelihood``."""
    rows = []
    eos = tokenizer.eos_token_id
    for e in examples:
        prompt, answer = answer_row(tokenizer, e.prompt, e.continuation)
        if answer and answer[-1] == eos:
            answer = answer[:-1]
        if not answer:
            raise ConfigError(f"example with prompt {e.prompt!r} has an empty reference answer.")
        rows.append((prompt + answer, len(prompt)))
    return rows


def _document_rows(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[tuple[list[int], int]]:
    if isinstance(texts, str):
        raise ConfigError("texts must be a list of strings, got one string; wrap it in a list.")
    return [(ids, 0) for ids, _ in document_rows(tokenizer, texts)]


# ----------------------------------------------------------------------------- public metrics
def answer_loglik(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
    *, batch_size: int = 64,
) -> TextScores:
    """log p(answer | prompt) of each example's reference answer (``continuation``, tokenised
    joined to the prompt as SFT does), summed over the answer's tokens; ``.per_text()`` is the
    mean log-likelihood of the answers."""
    return _sum_target_logprobs(model, tokenizer, answer_rows(tokenizer, examples), batch_size)


def text_cross_entropy(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
    *, batch_size: int = 64,
) -> TextScores:
    """Next-token cross-entropy (nats) of each text read as a document (special tokens, the
    text, EOS), summed over its predicted tokens; ``.per_token()`` is the usual mean loss."""
    scores = _sum_target_logprobs(model, tokenizer, _document_rows(tokenizer, texts), batch_size)
    return TextScores(tuple(-s for s in scores.sums), scores.tokens)


def forgetting(
    base: nn.Module, tuned: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
    *, batch_size: int = 64, before: TextScores | None = None,
) -> float:
    """PEFT's ``forgetting``: mean cross-entropy of ``tuned`` on ``texts`` minus that of
    ``base`` (pass ``before``, the base's :func:`text_cross_entropy`, to reuse it)."""
    if before is None:
        before = text_cross_entropy(base, tokenizer, texts, batch_size=batch_size)
    after = text_cross_entropy(tuned, tokenizer, texts, batch_size=batch_size)
    if after.tokens != before.tokens:
        raise ConfigError("`before` was computed on other texts than `texts`; recompute it.")
    return after.per_token() - before.per_token()


def kl_divergence(
    base: nn.Module, tuned: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
    *, batch_size: int = 64,
) -> TextScores:
    """Σ_v p_base(v) (log p_base(v) − log p_tuned(v)) after every prefix of each text (the
    full vocabulary, exact), summed per text; ``.per_token()`` is the mean over positions."""
    rows = _document_rows(tokenizer, texts)
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for batch in _batches(rows, pad_token_id(tokenizer), batch_size, _device(base)):
        ref = _logits(base, batch)
        tuned_batch = _Batch(*(t.to(_device(tuned)) for t in (batch.ids, batch.attn, batch.pos,
                                                              batch.scored)), batch.index)
        logits = _logits(tuned, tuned_batch).to(ref.device)
        if ref.shape[-1] != logits.shape[-1]:
            raise ConfigError(
                f"base and tuned models have different vocabularies ({ref.shape[-1]} vs "
                f"{logits.shape[-1]} logits); KL needs one shared vocabulary."
            )
        kl = full_kl(ref, logits).masked_fill(~batch.scored, 0.0).double()
        for i, s, c in zip(batch.index, kl.sum(-1).tolist(), batch.scored.sum(-1).tolist()):
            sums[i], counts[i] = s, int(c)
    return _collect(len(rows), sums, counts)
