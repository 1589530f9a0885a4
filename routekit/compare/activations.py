"""Activation sparsity of hidden states per layer, with arXiv:2603.03415's metrics.

That paper finds that hidden states grow sparser as prompts move out of distribution. For a
hidden state h in R^d (one token at one layer):

- *top-k% energy*: the share of ‖h‖₂² held by the ⌊k·d⌋ (at least one) coordinates of
  largest magnitude; higher = sparser (1 when one coordinate holds everything, k for a flat
  vector);
- *L1 of the L2-normalised state*: ‖h / ‖h‖₂‖₁, between 1 (one non-zero coordinate) and
  √d (all magnitudes equal); lower = sparser;
- *effective rank over d*: for the (states × d) matrix of many hidden states,
  exp(entropy of its singular values normalised to sum 1) / d (Roy & Vetterli's effective
  rank, the same as ``routekit.analysis``'s ``rank_stats`` computes for weight
  updates); lower = the states share fewer directions.

A zero state has no direction: its energy share and L1 are reported as 0. By default the
state of each prompt's last token is measured (the one that produces the answer, as in the
paper); ``position="all"`` takes every real token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..analysis.rank import rank_stats
from ..errors import ConfigError
from ..models import pad_token_id
from ..scoring import encode_prompt
from .metrics import _batches, _device


def _check_k(k: float) -> None:
    if not 0 < k <= 1:
        raise ConfigError(f"k is a share of the coordinates in (0, 1], got {k}.")


def top_k_energy_share(states: torch.Tensor, k: float = 0.05) -> torch.Tensor:
    """Share of each state's squared L2 norm in its top ``k`` share of coordinates by
    magnitude; ``states`` is (..., d), the result (...)."""
    _check_k(k)
    d = states.shape[-1]
    n_top = max(1, math.floor(k * d + 1e-9))
    sq = states.double().square()
    total = sq.sum(-1)
    top = sq.topk(n_top, dim=-1).values.sum(-1)
    return torch.where(total > 0, top / total.clamp(min=1e-300), torch.zeros_like(total))


def l1_of_normalised(states: torch.Tensor) -> torch.Tensor:
    """‖h / ‖h‖₂‖₁ of each state (..., d) -> (...); 0 for a zero state."""
    h = states.double()
    l2 = h.norm(dim=-1)
    l1 = h.abs().sum(-1)
    return torch.where(l2 > 0, l1 / l2.clamp(min=1e-300), torch.zeros_like(l2))


def effective_rank_over_d(states: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values of the (n, d) ``states``) / d."""
    if states.dim() != 2 or states.shape[0] == 0:
        raise ConfigError(f"states must be a non-empty (n, d) matrix, got shape {tuple(states.shape)}.")
    _, _, erank = rank_stats(states.double(), states.device)
    return erank / states.shape[1]


@dataclass(frozen=True)
class LayerSparsity:
    """One layer's sparsity over a set of prompts (means over states where per state)."""

    layer: int  # 0 = embeddings, i = output of block i (the last includes the final norm)
    top_k_energy: float
    l1_normalised: float
    effective_rank_over_d: float
    n_states: int


@torch.no_grad()
def hidden_states(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
    *, position: str = "last", batch_size: int = 64,
) -> list[torch.Tensor]:
    """Per layer (embeddings first), the (states × d) float32 hidden states of ``prompts``:
    each prompt's last token (``position="last"``) or every real token (``"all"``)."""
    if position not in ("last", "all"):
        raise ConfigError(f"position must be 'last' or 'all', got {position!r}.")
    if isinstance(prompts, str) or not prompts:
        raise ConfigError("prompts must be a non-empty list of strings.")
    rows = [(encode_prompt(tokenizer, p), 0) for p in prompts]
    per_layer: list[list[torch.Tensor]] = []
    was_training = model.training
    model.eval()
    try:
        for batch in _batches(rows, pad_token_id(tokenizer), batch_size, _device(model)):
            out = model(input_ids=batch.ids, attention_mask=batch.attn, position_ids=batch.pos,
                        use_cache=False, output_hidden_states=True)
            real = batch.attn.bool()
            for i, h in enumerate(out.hidden_states):
                if len(per_layer) <= i:
                    per_layer.append([])
                # left padding: the last column is every row's last real token
                per_layer[i].append((h[:, -1] if position == "last" else h[real]).float().cpu())
    finally:
        model.train(was_training)
    return [torch.cat(parts) for parts in per_layer]


def layer_sparsity(states: Sequence[torch.Tensor], k: float = 0.05) -> list[LayerSparsity]:
    """The three metrics per layer of ``states`` (as :func:`hidden_states` returns them)."""
    _check_k(k)
    return [
        LayerSparsity(
            layer=layer,
            top_k_energy=float(top_k_energy_share(h, k).mean()),
            l1_normalised=float(l1_of_normalised(h).mean()),
            effective_rank_over_d=effective_rank_over_d(h),
            n_states=h.shape[0],
        )
        for layer, h in enumerate(states)
    ]


def prompt_sparsity(states: Sequence[torch.Tensor], k: float = 0.05) -> dict[str, list[float]]:
    """Per prompt, the per-state metrics averaged over layers: ``top_k_energy`` and
    ``l1_normalised``, one value per row of the last-token ``states`` of :func:`hidden_states`.
    These are what a bootstrap over prompts resamples (effective rank is a property of a
    set of states, so it has no per-prompt value)."""
    _check_k(k)
    if not states or len({h.shape[0] for h in states}) != 1:
        raise ConfigError("states must be one (prompts x d) matrix per layer, all with the same rows.")
    energy = torch.stack([top_k_energy_share(h, k) for h in states]).mean(0)
    l1 = torch.stack([l1_of_normalised(h) for h in states]).mean(0)
    return {"top_k_energy": energy.tolist(), "l1_normalised": l1.tolist()}


def activation_sparsity(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
    *, k: float = 0.05, position: str = "last", batch_size: int = 64,
) -> list[LayerSparsity]:
    """The three sparsity metrics of ``model``'s hidden states on ``prompts``, per layer."""
    _check_k(k)
    return layer_sparsity(
        hidden_states(model, tokenizer, prompts, position=position, batch_size=batch_size), k)
