"""routekit.compare metrics equal independent computations on tiny models and planted data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from routekit.compare import activations, behaviour, metrics, stats
from routekit.errors import ConfigError
from routekit.tasks.base import Example
from tests.conftest import tiny_causal_lm

EXAMPLES = [
    Example("backwards abc:", "cba"),
    Example("sum of 3 and 4 is", "7"),
    Example("q: where does kalo live? a:", "mirabu"),
    Example("x", "yz"),
    Example("country of vana?", "belkin"),
]
TEXTS = ["the cat sat.", "a dog ran home", "xyz", "moon and sun rise over the sea", "fig"]


def plain_logprobs(model, ids: list[int]) -> torch.Tensor:
    """One unpadded row: log p(ids[t+1] | ids[:t+1]) by softmax written out, float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    z = logits - logits.max(-1, keepdim=True).values
    logp = z - z.exp().sum(-1, keepdim=True).log()
    return logp.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


# --------------------------------------------------------------------------- likelihood
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_answer_loglik_equals_a_plain_forward_per_example(arch, char_tokenizer):
    model, tok = tiny_causal_lm(arch), char_tokenizer
    got = metrics.answer_loglik(model, tok, EXAMPLES, batch_size=2)  # ragged, left-padded batches
    for e, s, n in zip(EXAMPLES, got.sums, got.tokens):
        prompt = tok(e.prompt)["input_ids"]
        answer = tok(" " + e.reference, add_special_tokens=False)["input_ids"]
        lp = plain_logprobs(model, prompt + answer)[len(prompt) - 1 :]
        assert n == len(answer)
        assert s == pytest.approx(float(lp.sum()), rel=1e-5, abs=1e-5)
    assert got.per_text() == pytest.approx(sum(got.sums) / len(EXAMPLES))
    assert got.per_token() == pytest.approx(sum(got.sums) / sum(got.tokens))


def hand_cross_entropy(model, tok, texts) -> tuple[float, int]:
    total, count = 0.0, 0
    for t in texts:
        ids = tok(t)["input_ids"] + [tok.eos_token_id]
        total -= float(plain_logprobs(model, ids).sum())
        count += len(ids) - 1
    return total, count


def test_text_cross_entropy_and_forgetting_equal_hand_formulas(char_tokenizer):
    tok = char_tokenizer
    base, tuned = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=1)
    ce = metrics.text_cross_entropy(base, tok, TEXTS, batch_size=3)
    total, count = hand_cross_entropy(base, tok, TEXTS)
    assert sum(ce.tokens) == count
    assert ce.per_token() == pytest.approx(total / count, rel=1e-5)
    after, _ = hand_cross_entropy(tuned, tok, TEXTS)
    expected = after / count - total / count
    assert expected != pytest.approx(0.0, abs=1e-3)  # the two models really differ
    assert metrics.forgetting(base, tuned, tok, TEXTS) == pytest.approx(expected, rel=1e-5)
    assert metrics.forgetting(base, tuned, tok, TEXTS, before=ce) == pytest.approx(expected, rel=1e-5)
    assert metrics.forgetting(base, base, tok, TEXTS) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="other texts"):
        metrics.forgetting(base, tuned, tok, TEXTS[:2], before=ce)


def test_kl_divergence_equals_the_hand_formula(char_tokenizer):
    tok = char_tokenizer
    base, tuned = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=2)
    got = metrics.kl_divergence(base, tuned, tok, TEXTS, batch_size=2)
    total, count = 0.0, 0
    for t, s in zip(TEXTS, got.sums):
        ids = torch.tensor([tok(t)["input_ids"]])  # every prefix, from BOS to the whole text
        with torch.no_grad():
            p = torch.softmax(base(input_ids=ids).logits[0].double(), -1)
            q = torch.softmax(tuned(input_ids=ids).logits[0].double(), -1)
        per_text = float((p * (p.log() - q.log())).sum())
        assert s == pytest.approx(per_text, rel=1e-4)
        total, count = total + per_text, count + ids.shape[1]
    assert got.tokens == tuple(len(tok(t)["input_ids"]) for t in TEXTS)
    assert got.per_token() == pytest.approx(total / count, rel=1e-4)
    same = metrics.kl_divergence(base, base, tok, TEXTS)
    assert same.per_token() == pytest.approx(0.0, abs=1e-6)


def test_metrics_refuse_bad_input(char_tokenizer):
    tok, model = char_tokenizer, tiny_causal_lm("llama")
    with pytest.raises(ConfigError, match="one string"):
        metrics.text_cross_entropy(model, tok, "the cat sat.")
    with pytest.raises(ConfigError, match="batch_size"):
        metrics.text_cross_entropy(model, tok, TEXTS, batch_size=0)
    with pytest.raises(ConfigError, match="different vocabularies"):
        metrics.kl_divergence(model, tiny_causal_lm("llama", vocab_size=60), tok, TEXTS)
    with pytest.raises(ConfigError, match="empty reference"):
        metrics.answer_loglik(model, tok, [Example("abc ", "")])
