"""Shared fixtures: the world's char tokenizer and tiny random Llama / Qwen2 / GPT-2 models."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from routekit.world.tokenizer import build_tokenizer

ARCHS = ("llama", "qwen2", "gpt2")

# Tiny models run fastest on one thread, and two threads per test process oversubscribe a
# 2-core machine badly when anything else runs.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_tokenizer()


def tiny_causal_lm(arch: str, vocab_size: int = 56, seed: int = 0, hidden: int = 32):
    """A tiny random causal LM of the given architecture (no download)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, **common)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, **common)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=2, n_head=4, n_positions=128, **common)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model.eval()


@pytest.fixture
def tiny_model():
    return tiny_causal_lm
