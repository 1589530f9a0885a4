"""Pretraining the world's Llama models on the corpus.

A nanoGPT-style loop rather than ``transformers.Trainer``: pretraining here is 20 lines
over packed random windows of one token stream, and the Trainer's dataloader, logging and
checkpoint machinery would cost more per step than these tiny models' forward pass.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .config import ModelSize, PretrainConfig


def make_model(size: ModelSize, tokenizer: PreTrainedTokenizerFast, seq_len: int) -> LlamaForCausalLM:
    """A randomly initialised Llama of the given size for the world's tokenizer."""
    vocab = 8 * math.ceil(len(tokenizer) / 8)  # a round embedding size; tail rows unused
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads,
        max_position_embeddings=max(256, 4 * seq_len),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def encode_corpus(lines: list[str], tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """One long stream ``<bos> line <eos> <bos> line <eos> ...`` of token ids."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    enc = tokenizer(lines, add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for line in enc:
        ids.append(bos)
        ids.extend(line)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def pretrain(
    model: LlamaForCausalLM,
    stream: torch.Tensor,
    cfg: PretrainConfig,
    seed: int,
    desc: str = "pretrain",
    progress: bool = True,
) -> dict[str, float]:
    """Train ``model`` in place on random windows of ``stream``; returns the final loss and time.

    Windows start only at a ``<bos>`` so every sequence begins the way prompts do.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    bos = model.config.bos_token_id
    starts = torch.nonzero(stream[: len(stream) - cfg.seq_len - 1] == bos).squeeze(1)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))

    offsets = torch.arange(cfg.seq_len + 1)
    model.train()
    t0 = time.perf_counter()
    ema = None
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, unit="step", dynamic_ncols=True)
    for step in bar:
        idx = starts[torch.randint(len(starts), (cfg.batch_size,), generator=gen)]
        batch = stream[idx[:, None] + offsets]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        # bf16 autocast: matmuls in bfloat16 (about 1.25x faster steps on a CPU with bf16
        # instructions), float32 master weights, Adam state and loss.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{ema:.3f}")
    model.eval()
    return {"final_loss": float(ema or 0.0), "seconds": time.perf_counter() - t0}
