"""Shared fixtures: the world's char tokenizer and tiny random Llama / Qwen2 / GPT-2 models."""

from __future__ import annotations

from pathlib import Path

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

from routekit.io import atomic_write_json
from routekit.world.config import WorldConfig
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


def peaked(model):
    # Larger output weights than the default init: peaked, tie-free next-token distributions,
    # so greedy tokens do not flip on float rounding between a batch and a single row.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def two_kinds_of_experts(tok, svf_cache) -> dict:
    """A tiny SVF-wrapped Llama base on the world tokenizer with two SVF experts (s1, s2) and
    two proxy experts (p1, p2, sharing one untuned model), all of which change greedy output."""
    import routekit as rk
    from routekit.svf import SVFConfig, SVFExpert, get_svf_model, svf_layers

    torch.manual_seed(0)
    v = len(tok)
    base = peaked(tiny_causal_lm("llama", vocab_size=v, seed=0))
    get_svf_model(base, SVFConfig(target_modules="all-linear",
                                  cache_dir=str(svf_cache)))
    layers = svf_layers(base)
    g = torch.Generator().manual_seed(3)

    def svf_expert(name):
        z = {n: torch.randn(layer.rank, generator=g).mul(1.5).exp() for n, layer in layers.items()}
        return SVFExpert(z, name=name, target_modules="all-linear",
                         base_fingerprint=base.svf_base_fingerprint)

    untuned = peaked(tiny_causal_lm("llama", vocab_size=v, seed=1, hidden=16))
    tuned = peaked(tiny_causal_lm("llama", vocab_size=v, seed=2, hidden=16))
    tuned2 = peaked(tiny_causal_lm("llama", vocab_size=v, seed=4, hidden=16))
    return {
        "tok": tok, "base": base,
        "s1": svf_expert("s1"), "s2": svf_expert("s2"),
        "p1": rk.ProxyExpert(tuned, untuned, "p1", tokenizer=tok),
        "p2": rk.ProxyExpert(tuned2, untuned, "p2", tokenizer=tok),
    }


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    """A world cache entry holding tiny random Llamas and the tiny world's config."""
    root = tmp_path_factory.mktemp("world")
    tok = build_tokenizer()
    for which, seed in (("base", 0), ("proxy", 1)):
        m = tiny_causal_lm("llama", vocab_size=len(tok), seed=seed)
        m.save_pretrained(root / which)
        tok.save_pretrained(root / which)
    atomic_write_json(root / "world_config.json", WorldConfig.tiny().model_dump(mode="json"))
    return root


@pytest.fixture(scope="session")
def tiny_world_built(tmp_path_factory):
    """The CI-sized world, trained once per session (about two minutes on one core) into its
    own cache: ``(cache directory, build info)``. Modules that need it set ROUTEKIT_CACHE to
    that directory while they use it (see ``test_world.tiny_world``)."""
    from routekit import world as world_mod

    cache = tmp_path_factory.mktemp("tiny-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROUTEKIT_CACHE", str(cache))
        info = world_mod.build(WorldConfig.tiny(), progress=False)
    return cache, info
