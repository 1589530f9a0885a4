"""Log-probabilities from logits without vocabulary-sized copies: the target tokens'
log-probabilities and the full-vocabulary KL, computed chunk by chunk in float32.

A (B, L, V) ``log_softmax`` in float32 is one more vocabulary-sized tensor per call, and
autograd keeps it for the backward pass (at V = 49,152, 32 sequences × 40 tokens is 250 MB
each). Here each chunk of at most :data:`CHUNK_ELEMENTS` logits is upcast, reduced to one
number per position (``x_t − logsumexp(x)``, or Σ p_ref (log p_ref − log p)) and dropped;
under autograd each chunk runs under ``torch.utils.checkpoint``, so the backward pass
recomputes it from the logits (a view, no copy) instead of keeping its float32
intermediates. What remains vocabulary-sized is the model's own logits and, in a backward
pass, their gradient. Results equal ``log_softmax(logits.float() / T).gather(...)`` to float32
rounding (tests/test_training.py checks 1e-6).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .errors import ConfigError

# Logits per chunk: 4M float32 numbers = 16 MB (85 positions at V = 49,152).
CHUNK_ELEMENTS = 1 << 22


def _positions_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


def _target_chunk(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    return x.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(x, dim=-1)


def _kl_chunk(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    ref = torch.log_softmax(ref_logits.float(), dim=-1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (ref.exp() * (ref - logp)).sum(-1)


def _by_chunks(fn, tensors: tuple[torch.Tensor, ...], vocab: int, *args) -> torch.Tensor:
    """``fn`` over chunks of positions of (B, L, ...) tensors (views, never copies), each
    chunk under non-reentrant checkpointing when autograd records it; results (B, L)."""
    batch, length = tensors[0].shape[:2]
    step = _positions_per_chunk(vocab)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    rows = []
    for b in range(batch):
        parts = []
        for s in range(0, length, step):
            chunk = tuple(t[b, s : s + step] for t in tensors)
            if grad:
                parts.append(checkpoint(fn, *chunk, *args, use_reentrant=False))
            else:
                parts.append(fn(*chunk, *args))
        rows.append(torch.cat(parts) if parts else tensors[0].new_zeros(0, dtype=torch.float32))
    return torch.stack(rows)


def gather_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / T)[targets] for (B, L, V) logits and (B, L) targets: (B, L) float32."""
    if logits.shape[:2] != targets.shape:
        raise ConfigError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree"
        )
    return _by_chunks(_target_chunk, (logits, targets), logits.shape[-1], temperature)


def full_kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(ref_logits) ‖ softmax(logits)) over the whole vocabulary at each of the
    (B, L) positions, exact, in float32 (gradient flows to ``logits``)."""
    if ref_logits.shape != logits.shape:
        raise ConfigError(f"logits {tuple(ref_logits.shape)} and {tuple(logits.shape)} disagree")
    return _by_chunks(_kl_chunk, (ref_logits, logits), logits.shape[-1])
